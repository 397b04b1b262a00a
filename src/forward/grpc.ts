/**
 * Forwarding one gRPC stream, HTTP/2 in and HTTP/2 out, frame by frame through node:http2:
 *
 *  - headers and metadata (`-bin` keys too) pass as they are; so do messages of any size, in both
 *    directions, with backpressure (`pipe`, so HTTP/2 flow control reaches the far end);
 *  - trailers pass through, and a Trailers-Only answer stays Trailers-Only;
 *  - a client that cancels cancels upstream (RST_STREAM(CANCEL) via an AbortSignal, never an
 *    END_STREAM first); an upstream reset reaches the client as an error status;
 *  - a stream cut short never ends cleanly: without the upstream's trailers, the client gets a
 *    non-zero grpc-status.
 * There is no request timeout: xDS streams live for as long as the sidecar does.
 */
import { constants as h2, type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { ERROR_CODES, MeshgateError, toMeshgateError, type ErrorCode } from '../errors.js';
import { createMessageReader } from '../grpc/message-reader.js';
import { grpcStatusHeaders, respondTrailersOnly, statusOfReset, GRPC_STATUS } from '../grpc/status.js';
import type { H2Exchange } from '../listener/exchange.js';
import type { H2Pool } from './h2-pool.js';

export interface GrpcForwardRequest {
  /** Where the stream opens: a pool, or a stream opened already (see src/planes/xds/debug-fanout.ts). */
  readonly pool: Pick<H2Pool, 'open'>;
  /** The complete outbound headers, pseudo-headers included. */
  readonly headers: OutgoingHttpHeaders;
  readonly onBytes?: (direction: 'toUpstream' | 'toClient', bytes: number) => void;
  /** Called once the stream is open upstream, with a way to end it (a drain). */
  readonly onOpen?: (terminate: (code: number, message: string) => void) => void;
  /**
   * Checks each message the client sends before any byte of it goes upstream; throwing a
   * MeshgateError ends the stream with its status and cancels it upstream.
   */
  readonly checkMessage?: (payload: Buffer) => void;
}

/** The largest client message meshgate holds back to check; istio-agent's stay far below. */
const MAX_CHECKED_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface GrpcForwardResult {
  /** The grpc-status the client was sent, if it was sent one. */
  readonly grpcStatus: string | undefined;
  /** Set when meshgate or the upstream cut the stream short. */
  readonly error?: MeshgateError;
}

/** Response headers HTTP/2 forbids, or that belong to one hop. */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings']);

function forwardable(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !CONNECTION_SPECIFIC.has(name)) out[name] = value;
  }
  return out;
}

/** Opens the stream upstream (rejecting with a MeshgateError if it cannot), then relays it to its end. */
export async function forwardGrpc(exchange: H2Exchange, request: GrpcForwardRequest): Promise<GrpcForwardResult> {
  const { stream } = exchange;
  const abort = new AbortController();
  const up: ClientHttp2Stream = await request.pool.open(request.headers, { endStream: !exchange.hasBody, signal: abort.signal });

  return new Promise((resolve) => {
    let trailers: OutgoingHttpHeaders | undefined;
    let grpcStatus: string | undefined;
    let failure: MeshgateError | undefined;
    let ending = false;

    /** Ends the client's stream with an error status, whatever state it is in; the first one wins. */
    const endWith = (code: number, message: string, error: MeshgateError): void => {
      if (ending) return;
      ending = true;
      failure = error;
      if (stream.closed || stream.destroyed) return;
      if (!stream.headersSent) {
        grpcStatus = String(code);
        respondTrailersOnly(stream, code, message);
        return;
      }
      trailers = grpcStatusHeaders(code, message);
      grpcStatus = String(code);
      up.unpipe(stream);
      if (!stream.writableEnded) stream.end();
    };

    // A 'data' listener switches a stream to flowing mode, so one is only ever added together with
    // the pipe: node:http2 emits 'response' a tick after the HEADERS frame, and DATA that arrived
    // with it would otherwise flow past before the pipe was there, and be lost.
    const count = request.onBytes;
    if (exchange.hasBody) {
      const check = request.checkMessage;
      if (check) {
        const reader = createMessageReader({ maxMessageBytes: MAX_CHECKED_MESSAGE_BYTES, check });
        reader.on('error', (err) => {
          stream.unpipe(reader);
          abort.abort();
          const error = toMeshgateError(err);
          endWith(error.grpcStatus, `${error.code}: ${error.message}`, error);
        });
        stream.pipe(reader).pipe(up);
      } else {
        stream.pipe(up);
      }
      if (count) stream.on('data', (chunk: Buffer) => count('toUpstream', chunk.length));
    }

    up.on('response', (headers, flags) => {
      if (stream.closed || stream.destroyed) return;
      const out = forwardable(headers);
      if (flags & h2.NGHTTP2_FLAG_END_STREAM) {
        // Trailers-Only: the status travels in the one HEADERS frame.
        grpcStatus = typeof headers['grpc-status'] === 'string' ? headers['grpc-status'] : undefined;
        stream.respond(out, { endStream: true });
        return;
      }
      stream.respond(out, { waitForTrailers: true });
      up.pipe(stream);
      if (count) up.on('data', (chunk: Buffer) => count('toClient', chunk.length));
    });
    up.on('trailers', (headers: IncomingHttpHeaders) => {
      trailers = forwardable(headers);
      grpcStatus = typeof headers['grpc-status'] === 'string' ? headers['grpc-status'] : undefined;
    });
    stream.on('wantTrailers', () => {
      if (trailers === undefined) {
        // The upstream ended without a status: that is not a clean end, and must not look like one.
        // A lost connection is UNAVAILABLE, as gRPC says of a transport that closed (retry);
        // a stream istiod ended on a live connection without a status is INTERNAL.
        // rstCode is set once the stream has closed: undefined before, whatever its type says.
        const rst = up.rstCode as number | undefined;
        const lost = connectionLost(up) || (rst !== undefined && rst !== h2.NGHTTP2_NO_ERROR);
        const code = lost ? GRPC_STATUS.UNAVAILABLE : GRPC_STATUS.INTERNAL;
        const message = lost ? 'the connection to istiod was lost' : 'istiod ended the stream without a status';
        trailers = grpcStatusHeaders(code, `MG_ERR_UPSTREAM_RESET: ${message}`);
        grpcStatus = String(code);
        failure ??= new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: message });
      }
      stream.sendTrailers(trailers);
    });

    up.on('error', () => undefined);
    up.on('close', () => {
      const code = up.rstCode;
      if (code === h2.NGHTTP2_NO_ERROR || stream.closed || stream.destroyed) return;
      // A stream closed because its connection died was not reset by istiod: UNAVAILABLE (retry).
      if (connectionLost(up)) {
        endWith(GRPC_STATUS.UNAVAILABLE, 'MG_ERR_UPSTREAM_RESET: the connection to istiod was lost', new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: 'connection lost' }));
        return;
      }
      const status = statusOfReset(code);
      endWith(status, `MG_ERR_UPSTREAM_RESET: istiod reset the stream (HTTP/2 code ${code})`, new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: `RST_STREAM ${code}` }));
    });

    stream.on('error', () => undefined);
    stream.once('close', () => {
      // The client went away (or was cut off): cancel upstream, as RST_STREAM(CANCEL).
      if (!up.closed && !up.destroyed) abort.abort();
      resolve(failure ? { grpcStatus, error: failure } : { grpcStatus });
    });

    request.onOpen?.((code, message) => {
      abort.abort();
      // The message starts with the reason's code (a drain, a removed tenant, a replaced pool).
      const reason = message.split(':', 1)[0] ?? '';
      endWith(code, message, new MeshgateError(isErrorCode(reason) ? reason : 'MG_ERR_SHUTTING_DOWN'));
    });
  });
}

/** Whether an upstream stream ended because its whole connection did (not by istiod's choice). */
function connectionLost(stream: ClientHttp2Stream): boolean {
  // `closed` alone is a graceful close (GOAWAY, a drain): its streams still run, and their resets are istiod's.
  const session = stream.session;
  return session === undefined || session.destroyed;
}

function isErrorCode(text: string): text is ErrorCode {
  return Object.hasOwn(ERROR_CODES, text);
}
