/**
 * The SPDY/3.1 server session, driven by a tiny client written here from the spec (frames, header
 * blocks deflated with the SPDY/3 dictionary over one shared context), not from the session's code.
 */
import { createHash } from 'node:crypto';
import { constants, createDeflate, createInflate, type Deflate, type Inflate } from 'node:zlib';
import { describe, expect, it, vi } from 'vitest';
import { SPDY_DICTIONARY, createSpdyServerSession, type SpdySessionOptions, type SpdyStream } from './spdy.js';

interface Frame {
  readonly control: boolean;
  readonly type: number;
  readonly streamId: number;
  readonly flags: number;
  readonly payload: Buffer;
  headers?: Record<string, string>;
}

/** Feeds one zlib stream a block at a time, collecting what each sync-flushed write produces. */
function zlibPipe(stream: Deflate | Inflate): (input: Buffer) => Promise<Buffer> {
  let out: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => out.push(chunk));
  return (input) =>
    new Promise((resolve, reject) => {
      out = [];
      stream.write(input, (error) => (error ? reject(error) : resolve(Buffer.concat(out))));
    });
}

function u32(...values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeUInt32BE(v >>> 0, i * 4));
  return b;
}

/** A test-only SPDY client: encodes frames, and parses what the session wrote. */
function startClient(options: SpdySessionOptions = {}, onStream: (stream: SpdyStream) => void = (s) => s.pipe(s)) {
  const deflate = zlibPipe(createDeflate({ dictionary: SPDY_DICTIONARY, flush: constants.Z_SYNC_FLUSH }));
  const inflate = zlibPipe(createInflate({ dictionary: SPDY_DICTIONARY, flush: constants.Z_SYNC_FLUSH }));
  let written = Buffer.alloc(0);
  let ended = false;
  const session = createSpdyServerSession(
    {
      write: (bytes) => {
        written = Buffer.concat([written, bytes]);
        return true;
      },
      end: () => {
        ended = true;
      },
    },
    onStream,
    options,
  );
  const control = (type: number, flags: number, payload: Buffer) =>
    Buffer.concat([u32((0x80000000 | (3 << 16) | type) >>> 0, (flags << 24) | payload.length), payload]);

  const headerBlock = async (headers: Record<string, string>) => {
    const parts = [u32(Object.keys(headers).length)];
    for (const [name, value] of Object.entries(headers)) {
      parts.push(u32(name.length), Buffer.from(name), u32(value.length), Buffer.from(value));
    }
    return deflate(Buffer.concat(parts));
  };

  /** Parses every frame written so far, inflating header blocks in order. */
  const frames = async (): Promise<Frame[]> => {
    const out: Frame[] = [];
    for (let offset = 0; offset + 8 <= written.length; ) {
      const word = written.readUInt32BE(offset);
      const length = written.readUIntBE(offset + 5, 3);
      const payload = written.subarray(offset + 8, offset + 8 + length);
      const isControl = (word & 0x80000000) !== 0;
      const type = isControl ? word & 0xffff : 0;
      const frame: Frame = {
        control: isControl,
        type,
        streamId: isControl ? (length >= 4 ? payload.readUInt32BE(0) & 0x7fffffff : 0) : word,
        flags: written.readUInt8(offset + 4),
        payload,
      };
      if (type === 2) {
        const block = await inflate(payload.subarray(4));
        frame.headers = {};
        for (let i = 0, at = 4; i < block.readUInt32BE(0); i++) {
          const name = block.toString('utf8', at + 4, at + 4 + block.readUInt32BE(at));
          at += 4 + name.length;
          frame.headers[name] = block.toString('utf8', at + 4, at + 4 + block.readUInt32BE(at));
          at += 4 + block.readUInt32BE(at);
        }
      }
      out.push(frame);
      offset += 8 + length;
    }
    written = Buffer.alloc(0);
    return out;
  };

  return {
    session,
    ended: () => ended,
    frames,
    async synStream(id: number, headers: Record<string, string>, fin = false) {
      const block = await headerBlock(headers);
      return control(1, fin ? 1 : 0, Buffer.concat([u32(id, 0), Buffer.from([0, 0]), block]));
    },
    data: (id: number, payload: Buffer | string, fin = false) => {
      const bytes = Buffer.from(payload);
      return Buffer.concat([u32(id, ((fin ? 1 : 0) << 24) | bytes.length), bytes]);
    },
    ping: (id: number) => control(6, 0, u32(id)),
  };
}

const settle = () => new Promise((r) => setTimeout(r, 20));

describe('SPDY/3.1 server session', () => {
  it('builds the SPDY/3 dictionary', () => {
    expect(SPDY_DICTIONARY.length).toBe(1423);
    expect(createHash('sha256').update(SPDY_DICTIONARY).digest('hex')).toBe('51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02');
  });

  it('replies to a stream, echoes its data and honours FIN both ways', async () => {
    const seen: SpdyStream[] = [];
    const client = startClient({}, (stream) => {
      seen.push(stream);
      if (stream.headers.streamtype === 'data') stream.pipe(stream);
      else stream.resume();
    });
    client.session.receive(await client.synStream(1, { streamtype: 'data', port: '9080', requestid: '0' }));
    // A second header block checks that the inflate context carries over between blocks.
    client.session.receive(await client.synStream(3, { streamtype: 'error', port: '9080', requestid: '0' }, true));
    client.session.receive(client.data(1, 'hello '));
    client.session.receive(client.data(1, 'spdy', true));
    await settle();

    expect(seen.map((s) => [s.id, s.headers])).toEqual([
      [1, { streamtype: 'data', port: '9080', requestid: '0' }],
      [3, { streamtype: 'error', port: '9080', requestid: '0' }],
    ]);
    const frames = await client.frames();
    expect(frames.filter((f) => f.control && f.type === 2).map((f) => [f.streamId, f.headers])).toEqual([
      [1, {}],
      [3, {}],
    ]);
    const data = frames.filter((f) => !f.control && f.streamId === 1);
    expect(Buffer.concat(data.map((f) => f.payload)).toString()).toBe('hello spdy');
    expect(data.at(-1)?.flags).toBe(1);
    // Stream 3 arrived half-closed; ending our side finishes it.
    seen[1]?.end('bye');
    await settle();
    const more = await client.frames();
    expect(more.map((f) => [f.streamId, f.flags, f.payload.toString()])).toEqual([
      [3, 0, 'bye'],
      [3, 1, ''],
    ]);
    expect(client.ended()).toBe(false);
  });

  it('echoes PINGs and credits windows as data arrives', async () => {
    const client = startClient({}, (stream) => stream.resume());
    client.session.receive(client.ping(1));
    client.session.receive(await client.synStream(1, {}));
    client.session.receive(client.data(1, Buffer.alloc(40_000)));
    await settle();
    const frames = await client.frames();
    expect(frames.find((f) => f.type === 6)?.payload).toEqual(u32(1));
    const updates = frames.filter((f) => f.type === 9).map((f) => [f.payload.readUInt32BE(0), f.payload.readUInt32BE(4)]);
    expect(updates).toEqual([
      [1, 40_000],
      [0, 40_000],
    ]);
  });

  it('refuses streams past the cap', async () => {
    const client = startClient({ maxStreams: 1 });
    client.session.receive(await client.synStream(1, {}));
    client.session.receive(await client.synStream(3, {}));
    await settle();
    const rst = (await client.frames()).find((f) => f.type === 3);
    expect(rst && [rst.payload.readUInt32BE(0), rst.payload.readUInt32BE(4)]).toEqual([3, 3]);
  });

  it('resets a stream whose unread data passes its bound, and keeps the session', async () => {
    const client = startClient({ maxStreamBufferBytes: 64 * 1024 }, () => undefined);
    client.session.receive(await client.synStream(1, {}));
    await vi.waitFor(async () => expect((await client.frames()).some((f) => f.type === 2)).toBe(true));
    client.session.receive(client.data(1, Buffer.alloc(40 * 1024)));
    client.session.receive(client.data(1, Buffer.alloc(40 * 1024)));
    const rst = (await client.frames()).find((f) => f.type === 3);
    expect(rst && [rst.payload.readUInt32BE(0), rst.payload.readUInt32BE(4)]).toEqual([1, 5]);
    expect(client.session.closed).toBe(false);
  });

  it('holds a writer back while its carrier is full, until the carrier drains', async () => {
    let room = false;
    let written = 0;
    let stream: SpdyStream | undefined;
    const session = createSpdyServerSession(
      {
        write: (bytes) => {
          written += bytes.length;
          return room;
        },
        end: () => undefined,
      },
      (s) => (stream = s),
    );
    const client = startClient();
    session.receive(await client.synStream(1, {}));
    await vi.waitFor(() => expect(stream).toBeDefined());
    await vi.waitFor(() => expect(written).toBeGreaterThan(0));
    let accepted = 0;
    stream?.write(Buffer.alloc(1000), () => accepted++);
    stream?.write(Buffer.alloc(1000), () => accepted++);
    await new Promise((r) => setImmediate(r));
    // The first frame went to the carrier, which said it was full: nothing more is taken.
    expect(accepted).toBe(0);
    room = true;
    session.drained();
    await vi.waitFor(() => expect(accepted).toBe(2));
  });

  it.each([
    ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['a SPDY/2 frame', Buffer.from([0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])],
    ['a truncated RST_STREAM', Buffer.from([0x80, 0x03, 0x00, 0x03, 0, 0, 0, 2, 0, 0])],
    ['data on a stream never opened', Buffer.from([0, 0, 0, 7, 0, 0, 0, 1, 0x41])],
    ['a header block that is not zlib', Buffer.from([0x80, 0x03, 0x00, 0x01, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])],
  ])('ends the session on %s without throwing', async (_name, bytes) => {
    const client = startClient();
    expect(() => client.session.receive(bytes)).not.toThrow();
    await settle();
    expect(client.ended()).toBe(true);
    expect(client.session.closed).toBe(true);
    const goAway = (await client.frames()).find((f) => f.type === 7);
    expect(goAway?.payload.readUInt32BE(4)).toBe(1);
    expect(() => client.session.receive(bytes)).not.toThrow();
  });

  it('ends the session on a frame larger than the limit', async () => {
    const client = startClient({ maxFrameBytes: 1024 });
    client.session.receive(await client.synStream(1, {}));
    client.session.receive(client.data(1, Buffer.alloc(2048)));
    await settle();
    expect(client.ended()).toBe(true);
  });
});
