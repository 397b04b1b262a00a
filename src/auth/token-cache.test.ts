import { describe, expect, it } from 'vitest';
import { createTokenCache, tokenCacheKey } from './token-cache.js';

describe('createTokenCache', () => {
  it('is bounded: the least recently used entry goes first', () => {
    const cache = createTokenCache<string>({ maxEntries: 2, maxTtlMs: 60_000 });
    const later = Date.now() + 30_000;
    cache.set('a', 'A', later);
    cache.set('b', 'B', later);
    expect(cache.get('a')).toBe('A'); // a is now the most recent
    cache.set('c', 'C', later);
    expect(cache.size).toBe(2);
    expect(cache.get('b')).toBeUndefined();
    expect(cache.get('a')).toBe('A');
    expect(cache.get('c')).toBe('C');
  });

  it('never keeps an entry past the token expiry', () => {
    let now = 1_000_000;
    const cache = createTokenCache<string>({ maxEntries: 10, maxTtlMs: 300_000, now: () => now });
    cache.set('t', 'identity', now + 5_000);
    now += 4_999;
    expect(cache.get('t')).toBe('identity');
    now += 1;
    expect(cache.get('t')).toBeUndefined();
  });

  it('never keeps an entry past the maximum TTL, even for a long-lived token', () => {
    let now = 1_000_000;
    const cache = createTokenCache<string>({ maxEntries: 10, maxTtlMs: 60_000, now: () => now });
    cache.set('t', 'identity', now + 86_400_000);
    now += 60_000;
    expect(cache.get('t')).toBeUndefined();
  });

  it('does not store what has already expired', () => {
    const cache = createTokenCache<string>({ maxEntries: 10, maxTtlMs: 60_000 });
    cache.set('t', 'identity', Date.now() - 1);
    expect(cache.size).toBe(0);
  });

  it('counts hits and misses', () => {
    const seen: boolean[] = [];
    const cache = createTokenCache<string>({ maxEntries: 10, maxTtlMs: 60_000, onLookup: (hit) => seen.push(hit) });
    cache.get('x');
    cache.set('x', 'X', Date.now() + 10_000);
    cache.get('x');
    expect(seen).toEqual([false, true]);
  });
});

describe('tokenCacheKey', () => {
  it('differs by tenant, by audience scope and by token, and never contains the token', () => {
    const token = 'eyJhbGciOiJSUzI1NiJ9.payload.signature';
    const keys = new Set([
      tokenCacheKey('acme', 'istio-ca', token),
      tokenCacheKey('globex', 'istio-ca', token),
      tokenCacheKey('acme', 'meshgate-webhook', token),
      tokenCacheKey('acme', 'istio-ca', `${token}x`),
    ]);
    expect(keys.size).toBe(4);
    for (const key of keys) expect(key).not.toContain('payload');
  });

  it('cannot be made to collide by moving text between tenant and scope', () => {
    expect(tokenCacheKey('acme', 'x\0y', 't')).not.toBe(tokenCacheKey('acme\0x', 'y', 't'));
  });
});
