/**
 * Path keys: a secret in the webhook URL (`/k/<key>/inject/…`) for managed clusters whose
 * kube-apiserver cannot present a credential. Compared in constant time, as digests, so neither
 * the content nor the length of the expected key leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Identity } from './identity.js';

export interface PathKey {
  readonly tenant: string;
  readonly digest: Buffer;
}

export function createPathKey(tenant: string, key: string): PathKey {
  return { tenant, digest: digest(key.trim()) };
}

export function pathKeyIdentity(candidate: string, expected: PathKey): Identity | undefined {
  if (!timingSafeEqual(digest(candidate), expected.digest)) return undefined;
  return { tenant: expected.tenant, method: 'pathKey', subject: 'path-key', uris: [] };
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}
