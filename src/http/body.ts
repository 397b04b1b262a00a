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

export interface ReadBodyOptions {
  readonly maxBytes: number;
  /** Every budget must have room for each chunk: the tenant's own, and the process's. */
  readonly budgets: readonly BodyBudget[];
  /** The whole body must arrive within this, or MG_ERR_REQUEST_TIMEOUT. */
  readonly deadlineMs: number;
}

/**
 * Reads the whole body, at most `maxBytes`, within `deadlineMs`. Stops reading (without
 * consuming the rest) as soon as a limit is passed, and releases its share of the budgets when
 * the caller is done with the body.
 */
export function readBody(body: Readable, options: ReadBodyOptions): Promise<{ body: Buffer; release: () => void }> {
  const { maxBytes, budgets } = options;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const release = (): void => {
      for (const budget of budgets) budget.give(size);
    };
    const take = (bytes: number): boolean => {
      const taken: BodyBudget[] = [];
      for (const budget of budgets) {
        if (!budget.take(bytes)) {
          for (const t of taken) t.give(bytes);
          return false;
        }
        taken.push(budget);
      }
      return true;
    };
    const fail = (error: MeshgateError): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
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
      if (!take(chunk.length)) {
        fail(new MeshgateError('MG_ERR_REQUEST_BUSY'));
        return;
      }
      size += chunk.length;
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      body.off('data', onData);
      resolve({ body: Buffer.concat(chunks, size), release });
    };
    const timer = setTimeout(() => {
      fail(new MeshgateError('MG_ERR_REQUEST_TIMEOUT', { message: `request body did not arrive within ${options.deadlineMs} ms` }));
    }, options.deadlineMs);
    body.on('data', onData);
    body.once('end', onEnd);
    const abrupt = (err?: unknown): void => {
      // 'close' also follows a normal end: build the error (a stack capture) only when it is one.
      if (!done) fail(new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'request body ended abruptly', cause: err }));
    };
    body.once('error', abrupt);
    body.once('close', () => abrupt());
  });
}
