/**
 * gRPC on the wire, as far as a proxy needs it: recognising a gRPC request, and answering one with
 * a status alone (a "Trailers-Only" response: one HEADERS frame with END_STREAM).
 */
import type { OutgoingHttpHeaders } from 'node:http';
import { constants as h2, type ServerHttp2Stream } from 'node:http2';

export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  RESOURCE_EXHAUSTED: 8,
} as const;

export function isGrpcContentType(value: string | string[] | undefined): boolean {
  return typeof value === 'string' && /^application\/grpc(\+|;|$)/.test(value);
}

/** `grpc-message` is percent-encoded: everything outside printable ASCII, and `%` itself. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte < 0x20 || byte > 0x7e || byte === 0x25 ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(byte);
  }
  return out;
}

export function grpcStatusHeaders(code: number, message: string): OutgoingHttpHeaders {
  return { 'grpc-status': String(code), 'grpc-message': encodeGrpcMessage(message) };
}

/** Answers a stream with a status and nothing else, then stops the client sending. */
export function respondTrailersOnly(stream: ServerHttp2Stream, code: number, message: string, extra: OutgoingHttpHeaders = {}): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ ...extra, [h2.HTTP2_HEADER_STATUS]: 200, 'content-type': 'application/grpc', ...grpcStatusHeaders(code, message) }, { endStream: true });
  // The client may still be sending (a stream refused mid-request): once the answer is out,
  // RST_STREAM(NO_ERROR) ends that (RFC 9113 §8.1).
  stream.once('finish', () => {
    if (!stream.readableEnded && !stream.closed) stream.close(h2.NGHTTP2_NO_ERROR);
  });
}

/** The gRPC status a reset stream stands for (as grpc-go maps RST_STREAM codes). */
export function statusOfReset(rstCode: number): number {
  switch (rstCode) {
    case h2.NGHTTP2_REFUSED_STREAM:
      return GRPC_STATUS.UNAVAILABLE;
    case h2.NGHTTP2_CANCEL:
      return GRPC_STATUS.CANCELLED;
    case h2.NGHTTP2_ENHANCE_YOUR_CALM:
      return GRPC_STATUS.RESOURCE_EXHAUSTED;
    default:
      return GRPC_STATUS.INTERNAL;
  }
}
