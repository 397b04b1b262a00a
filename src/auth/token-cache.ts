/**
 * Verified tokens, so that a sidecar's token is checked once rather than on every call. Bounded in
 * entries (least recently used goes first), and an entry never outlives its token. The key is a hash
 * of everything the verification depended on: tenant, plane audiences and the token itself, so an
 * entry made for one tenant or plane can never answer for another.
 */
import { hash } from 'node:crypto';

export interface TokenCache<T> {
  get(key: string): T | undefined;
  set(key: string, value: T, expiresAt: number): void;
  readonly size: number;
}

export interface TokenCacheOptions {
  readonly maxEntries: number;
  /** Upper bound on an entry's life, whatever the token's expiry. */
  readonly maxTtlMs: number;
  readonly now?: () => number;
  readonly onLookup?: (hit: boolean) => void;
}

export function createTokenCache<T>(options: TokenCacheOptions): TokenCache<T> {
  const now = options.now ?? Date.now;
  const entries = new Map<string, { value: T; expiresAt: number }>();
  return {
    get(key) {
      const entry = entries.get(key);
      if (entry === undefined || entry.expiresAt <= now()) {
        if (entry) entries.delete(key);
        options.onLookup?.(false);
        return undefined;
      }
      // Refresh recency: a Map iterates in insertion order, so the oldest entry comes first.
      entries.delete(key);
      entries.set(key, entry);
      options.onLookup?.(true);
      return entry.value;
    },
    set(key, value, expiresAt) {
      const bounded = Math.min(expiresAt, now() + options.maxTtlMs);
      if (bounded <= now()) return;
      entries.delete(key);
      entries.set(key, { value, expiresAt: bounded });
      while (entries.size > options.maxEntries) {
        const oldest = entries.keys().next();
        if (oldest.done === true) break;
        entries.delete(oldest.value);
      }
    },
    get size() {
      return entries.size;
    },
  };
}

/** The cache key: a digest, so the cache never holds a usable token. */
export function tokenCacheKey(tenant: string, scope: string, token: string): string {
  // JSON keeps the fields apart whatever they contain; the token comes last, whole. The one-shot
  // hash() costs a fraction of a createHash() object on this hot path.
  return hash('sha256', JSON.stringify([tenant, scope]) + token, 'base64url');
}
