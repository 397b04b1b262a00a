/**
 * What one tenant may hold at once, whatever the listener or plane: connections and requests or
 * streams in flight. Over a limit, the request is refused with RESOURCE_EXHAUSTED, and a connection
 * over the limit is told to go away.
 *
 * A connection counts against its tenant (by SNI) from the TLS handshake, but against one of two
 * budgets: a tenant client certificate verified in the handshake makes it authenticated at once;
 * any other connection is unauthenticated until a request on it authenticates, and meanwhile
 * counts against the small `unauthenticatedConnections` budget and must authenticate within
 * `authenticationTimeout`, or it is closed. When that budget is full, a new connection makes room
 * by closing the tenant's oldest unauthenticated one: a caller with a credential always gets its
 * chance, and anonymous connections never use up what callers with credentials need.
 */
import type { TLSSocket } from 'node:tls';
import { MeshgateError } from '../errors.js';
import type { TenantCore } from '../tenancy/tenant.js';

export interface TenantLimits {
  /** Counts a new TLS connection for its tenant, and remembers if it went over the limit. */
  admitConnection(socket: TLSSocket, tenant: TenantCore | undefined): void;
  /** A request on the connection authenticated: it now counts against the tenant's limit (may throw). */
  authenticated(socket: TLSSocket): void;
  /** Whether the connection has authenticated, by its certificate or a request. */
  isAuthenticated(socket: TLSSocket): boolean;
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
  /** By tenant, its unauthenticated connections, oldest first. */
  const unauthenticated = new Map<string, Set<TLSSocket>>();
  const streams = new Map<string, number>();
  const overLimit = new WeakSet<TLSSocket>();
  /** Connections not yet authenticated: their tenant, and the deadline that closes them. */
  const pending = new WeakMap<TLSSocket, { tenant: TenantCore; deadline: NodeJS.Timeout }>();

  /** Takes a connection out of the unauthenticated ones, with its deadline. */
  const forget = (socket: TLSSocket): void => {
    const waiting = pending.get(socket);
    if (!waiting) return;
    clearTimeout(waiting.deadline);
    pending.delete(socket);
    const set = unauthenticated.get(waiting.tenant.id);
    set?.delete(socket);
    if (set?.size === 0) unauthenticated.delete(waiting.tenant.id);
  };

  /** Counts an authenticated connection; a connection over the limit is refused and closed. */
  const countAuthenticated = (socket: TLSSocket, tenant: TenantCore): void => {
    const id = tenant.id;
    const count = add(connections, id, 1);
    events.connections?.(id, count);
    if (count > tenant.config.limits.connections) overLimit.add(socket);
    socket.once('close', () => events.connections?.(id, add(connections, id, -1)));
  };

  const add = (counts: Map<string, number>, tenant: string, delta: number): number => {
    const count = (counts.get(tenant) ?? 0) + delta;
    if (count === 0) counts.delete(tenant);
    else counts.set(tenant, count);
    return count;
  };

  return {
    admitConnection(socket, tenant) {
      if (!tenant) return;
      // The tenant's own context verified the certificate against the tenant's client CA.
      if (socket.authorized) {
        countAuthenticated(socket, tenant);
        return;
      }
      const id = tenant.id;
      const before = unauthenticated.get(id);
      if (before && before.size >= tenant.config.limits.unauthenticatedConnections) {
        const oldest = before.values().next().value;
        if (oldest) {
          forget(oldest);
          oldest.destroy();
        }
      }
      // Looked up again: forgetting the oldest may have removed the tenant's set.
      const waiting = unauthenticated.get(id) ?? new Set<TLSSocket>();
      unauthenticated.set(id, waiting);
      waiting.add(socket);
      const deadline = setTimeout(() => socket.destroy(), tenant.config.limits.authenticationTimeout);
      deadline.unref();
      pending.set(socket, { tenant, deadline });
      socket.once('close', () => forget(socket));
    },
    authenticated(socket) {
      const waiting = pending.get(socket);
      if (!waiting) return;
      forget(socket);
      countAuthenticated(socket, waiting.tenant);
      if (overLimit.has(socket)) throw new MeshgateError('MG_ERR_LIMIT_CONNECTIONS', { detail: 'connection authenticated over the tenant limit' });
    },
    isAuthenticated(socket) {
      return !pending.has(socket);
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
