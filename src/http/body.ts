/**
 * Bounded request bodies. A body is read whole only where the plane needs it (an AdmissionReview is
 * checked for size before istiod sees it). Each body is capped, and so is the sum of all bodies
 * being read at once, so that many large requests cannot add up to unbounded memory.
 */
import type { Readable } from 'node:stream';
import { MeshgateError } from '../errors.js';

export interface BodyBudget {
  /** Reserves bytes; false when the budget is spent. */
  take(bytes: number): boolean;
  give(bytes: number): void;
  readonly inUse: number;
}

export function createBodyBudget(limitBytes: number): BodyBudget {
  let inUse = 0;
  return {
    take(bytes) {
      if (inUse + bytes > limitBytes) return false;
      inUse += bytes;
      return true;
    },
    give(bytes) {
      inUse = Math.max(0, inUse - bytes);
    },
    get inUse() {
      return inUse;
    },
  };
}

export function declaredLength(header: string | undefined, maxBytes: number): number | undefined {
  if (header === undefined) return undefined;
  const length = Number(header);
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'Content-Length is not a number' });
  }
  if (length > maxBytes) {
    throw new MeshgateError('MG_ERR_REQUEST_BODY_TOO_LARGE', { message: `request body is larger than ${maxBytes} bytes` });
  }
  return length;
}

/**
 * Reads the whole body, at most `maxBytes`. Stops reading (without consuming the rest) as soon as
 * the cap is passed, and releases its share of the budget when the caller is done with the body.
 */
export function readBody(body: Readable, maxBytes: number, budget: BodyBudget): Promise<{ body: Buffer; release: () => void }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const release = (): void => budget.give(size);
    const fail = (error: MeshgateError): void => {
      if (done) return;
      done = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.pause();
      release();
      reject(error);
    };
    const onData = (chunk: Buffer): void => {
      if (size + chunk.length > maxBytes) {
        fail(new MeshgateError('MG_ERR_REQUEST_BODY_TOO_LARGE', { message: `request body is larger than ${maxBytes} bytes` }));
        return;
      }
      if (!budget.take(chunk.length)) {
        fail(new MeshgateError('MG_ERR_REQUEST_BUSY'));
        return;
      }
      size += chunk.length;
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      if (done) return;
      done = true;
      body.off('data', onData);
      resolve({ body: Buffer.concat(chunks, size), release });
    };
    body.on('data', onData);
    body.once('end', onEnd);
    const abrupt = (err?: unknown): void =>
      fail(new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'request body ended abruptly', cause: err }));
    body.once('error', abrupt);
    body.once('close', () => abrupt());
  });
}
