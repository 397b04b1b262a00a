/**
 * Properties of the two readers every ADS request passes through (fast-check, bounded runs):
 * whatever bytes arrive, they throw nothing but a MeshgateError, and the message reader passes on
 * exactly the messages it accepted, byte for byte, however the stream is cut into chunks.
 */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MeshgateError } from '../errors.js';
import { readDiscoveryRequest } from './discovery-request.js';
import { createMessageReader } from './message-reader.js';

const RUNS = { numRuns: 300 };

const frame = (payload: Uint8Array): Buffer => {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
};

/** Cuts `bytes` at the given offsets. */
const cut = (bytes: Buffer, offsets: number[]): Buffer[] => {
  const points = [...new Set(offsets.map((o) => o % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const point of [...points, bytes.length]) {
    if (point > from) chunks.push(bytes.subarray(from, point));
    from = point;
  }
  return chunks;
};

async function pass(chunks: Buffer[], refuse: (payload: Buffer) => boolean) {
  const out: Buffer[] = [];
  const reader = createMessageReader({
    maxMessageBytes: 4096,
    check: (payload) => {
      if (refuse(payload)) throw new MeshgateError('MG_ERR_AUTHZ_DEBUG_ENDPOINT');
    },
  });
  const sink = new Writable({ write: (chunk: Buffer, _e, done) => (out.push(chunk), done()) });
  const error: unknown = await pipeline(Readable.from(chunks), reader, sink).then(
    () => undefined,
    (err: unknown) => err,
  );
  return { passed: Buffer.concat(out), error };
}

describe('readDiscoveryRequest on any bytes', () => {
  it('answers or throws a MeshgateError, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.constantFrom('sotw' as const, 'delta' as const), (bytes, kind) => {
        try {
          const fields = readDiscoveryRequest(Buffer.from(bytes), kind);
          expect(typeof fields.typeUrl).toBe('string');
        } catch (err) {
          expect(err).toBeInstanceOf(MeshgateError);
        }
      }),
      RUNS,
    );
  });
});

describe('createMessageReader on any chunking', () => {
  it('passes on exactly the accepted messages up to the first refused one, byte for byte', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ payload: fc.uint8Array({ maxLength: 64 }), refused: fc.boolean() }), { maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        async (messages, offsets) => {
          const refusedAt = messages.findIndex((m) => m.refused);
          const bytes = Buffer.concat(messages.map((m) => frame(m.payload)));
          const marked = new Set(messages.filter((m) => m.refused).map((m) => Buffer.from(m.payload).toString('hex')));
          const { passed, error } = await pass(cut(bytes, offsets), (payload) => marked.has(payload.toString('hex')));
          // Messages equal to a refused one are refused too: the first such decides.
          const firstRefused = messages.findIndex((m) => marked.has(Buffer.from(m.payload).toString('hex')));
          const accepted = firstRefused === -1 ? messages : messages.slice(0, firstRefused);
          expect(passed.equals(Buffer.concat(accepted.map((m) => frame(m.payload))))).toBe(true);
          expect(error === undefined).toBe(refusedAt === -1);
          if (error !== undefined) expect(error).toBeInstanceOf(MeshgateError);
        },
      ),
      RUNS,
    );
  });

  it('never passes on a byte of a stream cut inside a message, or of any garbage prefix it cannot read', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 256 }), fc.array(fc.nat(), { maxLength: 6 }), async (bytes, offsets) => {
        const { passed, error } = await pass(cut(Buffer.from(bytes), offsets), () => false);
        // Whatever was passed on is a whole number of well-formed, uncompressed frames.
        let at = 0;
        while (at < passed.length) {
          expect(passed[at]).toBe(0);
          at += 5 + passed.readUInt32BE(at + 1);
        }
        expect(at).toBe(passed.length);
        if (error !== undefined) expect(error).toBeInstanceOf(MeshgateError);
      }),
      RUNS,
    );
  });
});
