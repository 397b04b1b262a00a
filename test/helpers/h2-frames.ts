/**
 * HTTP/2 by hand, for tests that must control what shares a TLS record or how fast frames come:
 * frame encoding and parsing, and header blocks as HPACK literals (no Huffman, no indexing), which
 * every decoder accepts.
 */
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export const FRAME = { DATA: 0x0, HEADERS: 0x1, RST_STREAM: 0x3, SETTINGS: 0x4, PING: 0x6, GOAWAY: 0x7, WINDOW_UPDATE: 0x8 } as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

function hpackLength(length: number): Buffer {
  // A 7-bit prefix integer (RFC 7541 §5.1), Huffman bit clear.
  if (length < 127) return Buffer.from([length]);
  const bytes = [127];
  let rest = length - 127;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** A header block of "literal without indexing, new name" fields. */
export function headerBlock(headers: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    headers.flatMap(([name, value]) => [Buffer.from([0x00]), hpackLength(name.length), Buffer.from(name), hpackLength(Buffer.byteLength(value)), Buffer.from(value)]),
  );
}

export function settings(entries: readonly (readonly [number, number])[] = []): Buffer {
  const payload = Buffer.alloc(entries.length * 6);
  entries.forEach(([id, value], i) => {
    payload.writeUInt16BE(id, i * 6);
    payload.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FRAME.SETTINGS, 0, 0, payload);
}

/** Splits complete frames off the front of `buffer`; returns them and what is left. */
export function parseFrames(buffer: Buffer): { frames: Frame[]; rest: Buffer } {
  const frames: Frame[] = [];
  let offset = 0;
  while (buffer.length - offset >= 9) {
    const length = buffer.readUIntBE(offset, 3);
    if (buffer.length - offset < 9 + length) break;
    frames.push({
      type: buffer[offset + 3] ?? 0,
      flags: buffer[offset + 4] ?? 0,
      streamId: buffer.readUInt32BE(offset + 5) & 0x7fffffff,
      payload: buffer.subarray(offset + 9, offset + 9 + length),
    });
    offset += 9 + length;
  }
  return { frames, rest: buffer.subarray(offset) };
}

/** Reads frames off a socket as they come (the client preface, if any, is skipped first). */
export function onFrames(socket: TLSSocket, handle: (frame: Frame) => void, { preface = false } = {}): void {
  let pending: Buffer = Buffer.alloc(0);
  let skipped = !preface;
  socket.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    if (!skipped) {
      if (pending.length < PREFACE.length) return;
      pending = pending.subarray(PREFACE.length);
      skipped = true;
    }
    const { frames, rest } = parseFrames(pending);
    pending = rest;
    for (const f of frames) handle(f);
  });
}

export interface RawH2Server {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * A TLS server speaking HTTP/2 by hand: it sends its SETTINGS, acknowledges the peer's, and hands
 * every other frame to `onFrame` with a way to write bytes back in one go (one TLS record).
 */
export async function startRawH2Server(
  tls: { cert: string; key: string },
  onFrame: (frame: Frame, write: (bytes: Buffer) => void) => void,
): Promise<RawH2Server> {
  const sockets = new Set<TLSSocket>();
  const server = createTlsServer({ cert: tls.cert, key: tls.key, ALPNProtocols: ['h2'] }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.write(settings());
    const write = (bytes: Buffer): void => {
      if (!socket.destroyed) socket.write(bytes);
    };
    onFrames(
      socket,
      (f) => {
        if (f.type === FRAME.SETTINGS && !(f.flags & FLAG.ACK)) write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
        else if (f.type === FRAME.PING && !(f.flags & FLAG.ACK)) write(frame(FRAME.PING, FLAG.ACK, 0, f.payload));
        else onFrame(f, write);
      },
      { preface: true },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A TLS client connection that has sent the preface and an empty SETTINGS, for flooding tests. */
export function rawH2Client(port: number, servername: string, ca: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['h2'] }, () => {
      socket.write(Buffer.concat([PREFACE, settings()]));
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
