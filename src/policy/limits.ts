/**
 * What one tenant may hold at once, whatever the listener or plane: connections (counted by the
 * SNI at the TLS handshake) and requests or streams in flight. Over a limit, the request is
 * refused with RESOURCE_EXHAUSTED, and a connection over the limit is told to go away.
 */
import type { TLSSocket } from 'node:tls';
import { MeshgateError } from '../errors.js';
import type { TenantCore } from '../tenancy/tenant.js';

export interface TenantLimits {
  /** Counts a new TLS connection for its tenant, and remembers if it went over the limit. */
  admitConnection(socket: TLSSocket, tenant: TenantCore | undefined): void;
  /** Throws MG_ERR_LIMIT_CONNECTIONS for a connection admitted over its tenant's limit. */
  checkConnection(socket: TLSSocket): void;
  /** Takes a request slot for the tenant, or throws MG_ERR_LIMIT_STREAMS; returns its release. */
  acquireStream(tenant: TenantCore): () => void;
}

export interface TenantLimitEvents {
  readonly connections?: (tenant: string, count: number) => void;
  readonly streams?: (tenant: string, count: number) => void;
}

export function createTenantLimits(events: TenantLimitEvents = {}): TenantLimits {
  const connections = new Map<string, number>();
  const streams = new Map<string, number>();
  const overLimit = new WeakSet<TLSSocket>();

  const add = (counts: Map<string, number>, tenant: string, delta: number): number => {
    const count = (counts.get(tenant) ?? 0) + delta;
    if (count === 0) counts.delete(tenant);
    else counts.set(tenant, count);
    return count;
  };

  return {
    admitConnection(socket, tenant) {
      if (!tenant) return;
      const id = tenant.id;
      const count = add(connections, id, 1);
      events.connections?.(id, count);
      if (count > tenant.config.limits.connections) overLimit.add(socket);
      socket.once('close', () => events.connections?.(id, add(connections, id, -1)));
    },
    checkConnection(socket) {
      if (overLimit.has(socket)) {
        throw new MeshgateError('MG_ERR_LIMIT_CONNECTIONS', { detail: 'connection admitted over the tenant limit' });
      }
    },
    acquireStream(tenant) {
      const id = tenant.id;
      if ((streams.get(id) ?? 0) >= tenant.config.limits.streams) {
        throw new MeshgateError('MG_ERR_LIMIT_STREAMS', { detail: `${tenant.config.limits.streams} in flight` });
      }
      events.streams?.(id, add(streams, id, 1));
      let released = false;
      return () => {
        if (released) return;
        released = true;
        events.streams?.(id, add(streams, id, -1));
      };
    },
  };
}
