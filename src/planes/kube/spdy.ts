/**
 * A minimal SPDY/3.1 server session: the framing Kubernetes' streaming clients speak (moby/spdystream
 * behind `kubectl exec`, `attach` and `port-forward`), either on a raw socket after `101 Upgrade:
 * SPDY/3.1` or, since kubectl 1.31, inside the binary messages of a WebSocket whose subprotocol is
 * `SPDY/3.1+portforward.k8s.io`. The session only reads and writes bytes through a transport, so
 * both carriers drive it the same way. The sandbox's stand-in API server serves exec, attach and
 * port-forward with it, and the kube plane serves port-forwards to a tenant's istiod view with it.
 *
 * What it does: answers every client SYN_STREAM with an empty SYN_REPLY and hands the stream (a
 * Duplex) to `onStream`; carries data frames both ways with FIN; echoes PINGs; credits the client's
 * windows with WINDOW_UPDATEs. Header blocks (spdy-headers.ts) are zlib with the SPDY/3 dictionary,
 * one context per direction for the whole session, each block sync-flushed, so frames wait in order
 * behind a block being (de)compressed. It never honours the client's windows: spdystream implements
 * no flow control and sends no WINDOW_UPDATE, so waiting for one would stall.
 *
 * Bounded: frames over `maxFrameBytes`, header blocks over 1 MiB, and buffered input past two frames
 * end the session with GOAWAY; streams past `maxStreams` are refused with RST_STREAM. `receive()`
 * never throws: bad input ends the session.
 */
import { Duplex } from 'node:stream';
import { SpdyProtocolError, createHeaderContext, decodeHeaderBlock, encodeHeaderBlock, uint32s } from './spdy-headers.js';

export { SPDY_DICTIONARY } from './spdy-headers.js';

export interface SpdyTransport {
  /** Writes bytes; false when the carrier is full, and the session waits for `drained()`. */
  write(bytes: Buffer): boolean;
  end(): void;
}

export interface SpdySession {
  /** Feeds bytes read from the transport; frames are handled in order. */
  receive(bytes: Buffer): void;
  /** The carrier took what it had: streams that waited to write go on. */
  drained(): void;
  /** Destroys every stream and ends the transport (idempotent). */
  close(): void;
  readonly closed: boolean;
}

export interface SpdySessionOptions {
  /** Largest frame payload accepted; default 16 MiB (the 24-bit length's own limit). */
  readonly maxFrameBytes?: number;
  /** Streams open at once; default 1,000. */
  readonly maxStreams?: number;
  /** Bytes a stream may hold unread; more resets it (the client ignored that nobody reads). Default 16 MiB. */
  readonly maxStreamBufferBytes?: number;
}

const FrameType = { synStream: 1, synReply: 2, rstStream: 3, settings: 4, ping: 6, goAway: 7, headers: 8, windowUpdate: 9 } as const;
/** RST_STREAM status codes; GOAWAY's PROTOCOL_ERROR is 1 too. */
const RstStatus = { protocolError: 1, refusedStream: 3, cancel: 5 } as const;

const FLAG_FIN = 0x01;
const VERSION = 3;
const MAX_FRAME_BYTES = 16 * 1024 * 1024;
const MAX_STREAMS = 1000;
const DATA_CHUNK = 32 * 1024;
/** SPDY/3.1's initial stream and session windows; credit the client at half of it. */
const WINDOW_CREDIT_AT = 32 * 1024;
const EMPTY = Buffer.alloc(0);

/** One client-initiated stream. Write and `end()` send data and FIN; `reset()` sends RST_STREAM. */
export class SpdyStream extends Duplex {
  constructor(
    readonly id: number,
    readonly headers: Readonly<Record<string, string>>,
    private readonly sink: StreamSink,
  ) {
    super({ allowHalfOpen: true });
    // A handler's late write to a reset stream must not crash the process; the session reports nothing else.
    this.on('error', () => undefined);
  }

  override _read(): void {
    // Data is pushed as frames arrive.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    // A carrier that is full holds the writer back: a peer that does not read gets no more.
    if (this.sink.data(this.id, chunk, false)) callback();
    else this.sink.whenDrained(() => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.sink.data(this.id, EMPTY, true);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.sink.forget(this.id);
    callback(error);
  }

  /** Abandons the stream: RST_STREAM (CANCEL) unless both sides already finished. */
  reset(): void {
    this.destroy();
  }
}

interface StreamSink {
  /** Sends data frames; false when the carrier is full (the frames were still written). */
  data(id: number, bytes: Buffer, fin: boolean): boolean;
  /** Calls `go` once the carrier has room again (or the session closed). */
  whenDrained(go: () => void): void;
  /** The stream was destroyed: forget it, resetting it if it was still open. */
  forget(id: number): void;
}

interface StreamState {
  readonly stream: SpdyStream;
  localDone: boolean;
  remoteDone: boolean;
  unacked: number;
}

export function createSpdyServerSession(
  transport: SpdyTransport,
  onStream: (stream: SpdyStream) => void,
  options: SpdySessionOptions = {},
): SpdySession {
  const maxFrameBytes = Math.min(options.maxFrameBytes ?? MAX_FRAME_BYTES, MAX_FRAME_BYTES);
  const maxStreams = options.maxStreams ?? MAX_STREAMS;
  const maxStreamBuffer = options.maxStreamBufferBytes ?? MAX_FRAME_BYTES;
  let full = false;
  let waiting: (() => void)[] = [];
  const release = (): void => {
    full = false;
    const go = waiting;
    waiting = [];
    for (const next of go) next();
  };
  const inflate = createHeaderContext('inflate');
  const deflate = createHeaderContext('deflate');
  const streams = new Map<number, StreamState>();
  let inbox: Buffer[] = [];
  let inboxBytes = 0;
  let lastStreamId = 0;
  let sessionUnacked = 0;
  let decoding = false;
  let closed = false;
  // Frames wait behind a SYN_REPLY whose header block is still being compressed.
  let queued = 0;
  let tail: Promise<void> = Promise.resolve();

  const write = (frame: Buffer): void => {
    if (closed) return;
    if (queued === 0) {
      if (!transport.write(frame)) full = true;
    } else enqueue(() => frame);
  };
  const enqueue = (make: () => Buffer | Promise<Buffer>): void => {
    queued++;
    tail = tail.then(make).then(
      (frame) => {
        queued--;
        if (!closed) transport.write(frame);
      },
      () => {
        queued--;
        fail();
      },
    );
  };

  const sink: StreamSink = {
    whenDrained(go) {
      if (closed || !full) go();
      else waiting.push(go);
    },
    data(id, bytes, fin) {
      const state = streams.get(id);
      if (closed || !state || state.localDone) return true;
      for (let offset = 0; offset < bytes.length; offset += DATA_CHUNK) {
        const end = Math.min(offset + DATA_CHUNK, bytes.length);
        write(dataFrame(id, bytes.subarray(offset, end), fin && end === bytes.length));
      }
      if (fin && bytes.length === 0) write(dataFrame(id, EMPTY, true));
      if (fin) {
        state.localDone = true;
        settle(state);
      }
      return !full;
    },
    forget(id) {
      const state = streams.get(id);
      if (!state) return;
      streams.delete(id);
      if (!closed && !(state.localDone && state.remoteDone)) write(rstStream(id, RstStatus.cancel));
    },
  };

  const settle = (state: StreamState): void => {
    if (state.localDone && state.remoteDone) streams.delete(state.stream.id);
  };

  const fail = (): void => {
    if (closed) return;
    transport.write(controlFrame(FrameType.goAway, 0, uint32s(lastStreamId, RstStatus.protocolError)));
    close();
  };

  const close = (): void => {
    if (closed) return;
    closed = true;
    const open = [...streams.values()];
    streams.clear();
    for (const state of open) state.stream.destroy();
    inflate.close();
    deflate.close();
    inbox = [];
    release();
    transport.end();
  };

  const pump = (): void => {
    try {
      while (!closed && !decoding) {
        const frame = nextFrame();
        if (!frame) return;
        handleFrame(frame);
      }
    } catch {
      fail();
    }
  };

  const nextFrame = (): Buffer | undefined => {
    if (inboxBytes < 8) return undefined;
    if ((inbox[0]?.length ?? 0) < 8) inbox = [Buffer.concat(inbox)];
    const head = inbox[0] ?? EMPTY;
    const length = head.readUIntBE(5, 3);
    if (length > maxFrameBytes) throw new SpdyProtocolError('frame too large');
    // Check what the first word can tell before waiting for the payload: garbage fails fast.
    const word = head.readUInt32BE(0);
    if ((word & 0x80000000) === 0 ? word === 0 || word > lastStreamId : ((word >>> 16) & 0x7fff) !== VERSION) {
      throw new SpdyProtocolError('not a SPDY/3 frame');
    }
    if (inboxBytes < 8 + length) return undefined;
    const all = inbox.length === 1 ? head : Buffer.concat(inbox);
    const rest = all.subarray(8 + length);
    inbox = rest.length > 0 ? [rest] : [];
    inboxBytes -= 8 + length;
    return all.subarray(0, 8 + length);
  };

  const handleFrame = (frame: Buffer): void => {
    const word = frame.readUInt32BE(0);
    const flags = frame.readUInt8(4);
    const payload = frame.subarray(8);
    if ((word & 0x80000000) === 0) {
      handleData(word & 0x7fffffff, flags, payload);
      return;
    }
    const type = word & 0xffff;
    switch (type) {
      case FrameType.synStream:
      case FrameType.synReply:
      case FrameType.headers: {
        const fixed = type === FrameType.synStream ? 10 : 4;
        if (payload.length < fixed) throw new SpdyProtocolError('short frame');
        const id = payload.readUInt32BE(0) & 0x7fffffff;
        if (type === FrameType.synStream && (id % 2 === 0 || id <= lastStreamId)) throw new SpdyProtocolError('bad stream id');
        if (type === FrameType.synStream) lastStreamId = id;
        // Every header block goes through the shared inflate context, even ones that are ignored.
        decoding = true;
        inflate.run(payload.subarray(fixed)).then(
          (block) => {
            decoding = false;
            try {
              handleHeaders(type, id, flags, decodeHeaderBlock(block));
            } catch {
              fail();
              return;
            }
            pump();
          },
          () => fail(),
        );
        return;
      }
      case FrameType.rstStream: {
        if (payload.length !== 8) throw new SpdyProtocolError('bad RST_STREAM');
        const state = streams.get(payload.readUInt32BE(0) & 0x7fffffff);
        if (state) {
          state.localDone = state.remoteDone = true;
          state.stream.destroy();
        }
        return;
      }
      case FrameType.ping:
        if (payload.length !== 4) throw new SpdyProtocolError('bad PING');
        // Odd ids are the client's; echo them. Even ones would be answers to ours, and we send none.
        if (payload.readUInt32BE(0) % 2 === 1) write(controlFrame(FrameType.ping, 0, payload));
        return;
      case FrameType.settings:
        if (payload.length < 4) throw new SpdyProtocolError('bad SETTINGS');
        return;
      case FrameType.goAway:
      case FrameType.windowUpdate:
        if (payload.length !== 8) throw new SpdyProtocolError('bad control frame');
        return;
      default:
        // SPDY/3: unknown control frames are ignored.
        return;
    }
  };

  const handleHeaders = (type: number, id: number, flags: number, headers: Record<string, string>): void => {
    if (closed) return;
    if (type === FrameType.synStream) {
      if (streams.size >= maxStreams) {
        write(rstStream(id, RstStatus.refusedStream));
        return;
      }
      const stream = new SpdyStream(id, headers, sink);
      const state: StreamState = { stream, localDone: false, remoteDone: false, unacked: 0 };
      streams.set(id, state);
      const reply = (block: Buffer): Buffer => controlFrame(FrameType.synReply, 0, Buffer.concat([uint32s(id), block]));
      enqueue(() => deflate.run(encodeHeaderBlock({})).then(reply));
      onStream(stream);
      if ((flags & FLAG_FIN) !== 0) remoteFinished(state);
      return;
    }
    const state = streams.get(id);
    if (type === FrameType.headers && state && (flags & FLAG_FIN) !== 0) remoteFinished(state);
  };

  const handleData = (id: number, flags: number, payload: Buffer): void => {
    const state = streams.get(id);
    if (state && !state.remoteDone) {
      if (payload.length > 0) state.stream.push(payload);
      // Data nobody reads is bounded per stream: past the bound, the stream is reset.
      if (state.stream.readableLength > maxStreamBuffer) {
        state.localDone = state.remoteDone = true;
        state.stream.destroy();
        write(rstStream(id, RstStatus.cancel));
        return;
      }
      state.unacked += payload.length;
      if ((flags & FLAG_FIN) !== 0) remoteFinished(state);
      else if (state.unacked >= WINDOW_CREDIT_AT) {
        write(controlFrame(FrameType.windowUpdate, 0, uint32s(id, state.unacked)));
        state.unacked = 0;
      }
    }
    sessionUnacked += payload.length;
    if (sessionUnacked >= WINDOW_CREDIT_AT) {
      write(controlFrame(FrameType.windowUpdate, 0, uint32s(0, sessionUnacked)));
      sessionUnacked = 0;
    }
  };

  const remoteFinished = (state: StreamState): void => {
    if (state.remoteDone) return;
    state.remoteDone = true;
    state.stream.push(null);
    settle(state);
  };

  return {
    receive(bytes) {
      if (closed || bytes.length === 0) return;
      inbox.push(bytes);
      inboxBytes += bytes.length;
      // Input piling up behind a header block being decoded is bounded too.
      if (inboxBytes > 2 * (maxFrameBytes + 8)) {
        fail();
        return;
      }
      if (!decoding) pump();
    },
    close,
    drained: release,
    get closed() {
      return closed;
    },
  };
}

function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE((0x80000000 | (VERSION << 16) | type) >>> 0, 0);
  head.writeUInt32BE(((flags << 24) | payload.length) >>> 0, 4);
  return Buffer.concat([head, payload]);
}

function dataFrame(id: number, payload: Buffer, fin: boolean): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(id & 0x7fffffff, 0);
  head.writeUInt32BE((((fin ? FLAG_FIN : 0) << 24) | payload.length) >>> 0, 4);
  return Buffer.concat([head, payload]);
}

function rstStream(id: number, status: number): Buffer {
  return controlFrame(FrameType.rstStream, 0, uint32s(id, status));
}
