/**
 * Reading gRPC messages off a request stream as they pass, so that each can be checked before any
 * byte of it goes on. A message is `compressed flag (1 byte) | length (4 bytes, big-endian) |
 * payload`; messages may be split across DATA frames or share one.
 *
 * The reader holds back at most one message, of at most `maxMessageBytes`: it is released, whole
 * and unchanged, only once `check` has accepted it. A compressed message cannot be checked and is
 * refused, as is one over the limit, without buffering it.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { MeshgateError } from '../errors.js';

export interface MessageReaderOptions {
  readonly maxMessageBytes: number;
  /** Throws (a MeshgateError) to refuse the message; the stream then ends with that error. */
  readonly check: (payload: Buffer) => void;
}

const PREFIX = 5;

export function createMessageReader(options: MessageReaderOptions): Transform {
  let pending: Buffer[] = [];
  let pendingBytes = 0;

  /** Everything held, as one buffer (and kept as one). */
  const joined = (): Buffer => {
    const first = pending[0];
    if (pending.length === 1 && first !== undefined) return first;
    const all = Buffer.concat(pending, pendingBytes);
    pending = [all];
    return all;
  };

  const take = (bytes: number): Buffer => {
    const all = joined();
    const head = all.subarray(0, bytes);
    const rest = all.subarray(bytes);
    pending = rest.length > 0 ? [rest] : [];
    pendingBytes = rest.length;
    return head;
  };

  return new Transform({
    transform(chunk: Buffer, _encoding, done: TransformCallback) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      try {
        while (pendingBytes >= PREFIX) {
          const first = pending[0];
          const head = first !== undefined && first.length >= PREFIX ? first : joined();
          const compressed = head[0] !== 0;
          const length = head.readUInt32BE(1);
          if (compressed) {
            throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'meshgate reads xDS requests: send them uncompressed' });
          }
          if (length > options.maxMessageBytes) {
            throw new MeshgateError('MG_ERR_REQUEST_BODY_TOO_LARGE', { message: `an xDS request message over ${options.maxMessageBytes} bytes` });
          }
          if (pendingBytes < PREFIX + length) break;
          const message = take(PREFIX + length);
          options.check(message.subarray(PREFIX));
          this.push(message);
        }
        done();
      } catch (err) {
        pending = [];
        pendingBytes = 0;
        done(err instanceof Error ? err : new Error(String(err)));
      }
    },
    flush(done: TransformCallback) {
      // A message cut off by the end of the stream is not forwarded: it was never checked.
      done(pendingBytes === 0 ? null : new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'the stream ended inside a gRPC message' }));
    },
  });
}
