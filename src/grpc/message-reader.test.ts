import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { MeshgateError } from '../errors.js';
import { createMessageReader } from './message-reader.js';

const frame = (payload: string, compressed = false): Buffer => {
  const body = Buffer.from(payload);
  const head = Buffer.alloc(5);
  head[0] = compressed ? 1 : 0;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
};

/** Runs chunks through a reader; returns the messages checked, the bytes passed on, and the error. */
async function run(chunks: Buffer[], refuse: (payload: string) => boolean = () => false, maxMessageBytes = 1024) {
  const checked: string[] = [];
  const out: Buffer[] = [];
  const reader = createMessageReader({
    maxMessageBytes,
    check: (payload) => {
      checked.push(payload.toString());
      if (refuse(payload.toString())) throw new MeshgateError('MG_ERR_AUTHZ_DEBUG_ENDPOINT');
    },
  });
  const sink = new Writable({ write: (chunk: Buffer, _e, done) => (out.push(chunk), done()) });
  const error = await pipeline(Readable.from(chunks), reader, sink).then(
    () => undefined,
    (err: unknown) => (err instanceof MeshgateError ? err.code : String(err)),
  );
  return { checked, passed: Buffer.concat(out), error };
}

describe('createMessageReader', () => {
  it('passes messages on whole and unchanged, however the bytes are split or joined', async () => {
    const bytes = Buffer.concat([frame('one'), frame(''), frame('three')]);
    for (const chunks of [[bytes], [...bytes].map((b) => Buffer.from([b])), [bytes.subarray(0, 7), bytes.subarray(7)]]) {
      const { checked, passed, error } = await run(chunks);
      expect(checked).toEqual(['one', '', 'three']);
      expect(passed.equals(bytes)).toBe(true);
      expect(error).toBeUndefined();
    }
  });

  it('passes on nothing of a refused message, nor anything after it', async () => {
    const { checked, passed, error } = await run([Buffer.concat([frame('ok'), frame('bad'), frame('later')])], (p) => p === 'bad');
    expect(checked).toEqual(['ok', 'bad']);
    expect(passed.equals(frame('ok'))).toBe(true);
    expect(error).toBe('MG_ERR_AUTHZ_DEBUG_ENDPOINT');
  });

  it.each([
    ['a compressed message, which it cannot read', [frame('x', true)], 'MG_ERR_REQUEST_MALFORMED'],
    ['a message over the limit, before buffering it', [frame('x'.repeat(2048)).subarray(0, 10)], 'MG_ERR_REQUEST_BODY_TOO_LARGE'],
    ['a stream that ends inside a message', [frame('truncated').subarray(0, 8)], 'MG_ERR_REQUEST_MALFORMED'],
  ])('refuses %s', async (_name, chunks, code) => {
    const { passed, error } = await run(chunks);
    expect(error).toBe(code);
    expect(passed.length).toBe(0);
  });
});
