import { EventEmitter } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { TenantCore } from '../tenancy/tenant.js';
import { createTenantLimits } from './limits.js';

/** Just what the limits read of a socket: `authorized`, `destroy()` and its 'close'. */
function socket(authorized = false): TLSSocket & { destroyed: boolean } {
  const emitter = new EventEmitter();
  const fake = Object.assign(emitter, {
    authorized,
    destroyed: false,
    destroy() {
      if (!fake.destroyed) {
        fake.destroyed = true;
        emitter.emit('close');
      }
      return fake;
    },
  });
  return fake as unknown as TLSSocket & { destroyed: boolean };
}

const tenant = (limits: { connections: number; unauthenticatedConnections: number; authenticationTimeout: number }): TenantCore =>
  ({ id: 'acme', config: { limits: { streams: 10, ...limits } } }) as unknown as TenantCore;

afterEach(() => vi.useRealTimers());

describe('createTenantLimits', () => {
  it('counts a connection against the limit only once it authenticates', () => {
    const counts: number[] = [];
    const limits = createTenantLimits({ connections: (_t, n) => counts.push(n) });
    const acme = tenant({ connections: 1, unauthenticatedConnections: 5, authenticationTimeout: 10_000 });
    const [a, b, c] = [socket(), socket(), socket()];
    for (const s of [a, b, c]) limits.admitConnection(s, acme);
    expect(counts).toEqual([]);
    expect(limits.isAuthenticated(a)).toBe(false);
    limits.authenticated(a);
    expect(limits.isAuthenticated(a)).toBe(true);
    expect(() => limits.authenticated(b)).toThrow(expect.objectContaining({ code: 'MG_ERR_LIMIT_CONNECTIONS' }));
    expect(counts).toEqual([1, 2]);
    // A certificate verified in the handshake counts at once.
    limits.admitConnection(socket(true), acme);
    expect(counts).toEqual([1, 2, 3]);
    for (const s of [a, b, c]) s.destroy();
  });

  it('closes the oldest unauthenticated connection to make room, and keeps tracking the newcomer', () => {
    const limits = createTenantLimits();
    const acme = tenant({ connections: 10, unauthenticatedConnections: 1, authenticationTimeout: 10_000 });
    const [first, second, third] = [socket(), socket(), socket()];
    limits.admitConnection(first, acme);
    limits.admitConnection(second, acme);
    expect(first.destroyed).toBe(true);
    // The second is still the one to make room for the third.
    limits.admitConnection(third, acme);
    expect(second.destroyed).toBe(true);
    expect(third.destroyed).toBe(false);
    third.destroy();
  });

  it('closes a connection that has not authenticated within the timeout, and no other', () => {
    vi.useFakeTimers();
    const limits = createTenantLimits();
    const acme = tenant({ connections: 10, unauthenticatedConnections: 10, authenticationTimeout: 1_000 });
    const [idle, busy] = [socket(), socket()];
    limits.admitConnection(idle, acme);
    limits.admitConnection(busy, acme);
    limits.authenticated(busy);
    vi.advanceTimersByTime(1_001);
    expect(idle.destroyed).toBe(true);
    expect(busy.destroyed).toBe(false);
    busy.destroy();
  });
});
