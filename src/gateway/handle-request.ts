/**
 * The path of one request over an HTTP plane (DESIGN.md §2):
 *
 *   header hygiene → route (SNI tenant, Host check, canonical path, plane) → the plane's own
 *   pipeline (checks → authenticate → authorize → forward)
 *
 * with one renderer for whatever a stage throws, and observation (access log, metrics) in a
 * finally, when the exchange is over.
 */
import type { PlaneName } from '../config/schema.js';
import { MeshgateError, toMeshgateError } from '../errors.js';
import { parseRequestTarget } from '../http/canonical-path.js';
import { sanitizeRequestHeaders } from '../http/headers.js';
import { renderError } from '../http/render.js';
import { isGrpcContentType } from '../grpc/status.js';
import type { Exchange } from '../listener/exchange.js';
import { resolveTenant } from '../listener/route.js';
import { observeRequest } from '../observability/access-log.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Plane, RequestContext, RoutedContext } from '../planes/plane.js';
import type { TenantLimits } from '../policy/limits.js';
import type { RequestRates } from '../policy/request-rate.js';
import type { Snapshot } from '../tenancy/snapshot.js';

export interface RequestHandlerDeps {
  readonly current: () => Snapshot;
  readonly planes: readonly Plane[];
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly limits: TenantLimits;
  readonly rates: RequestRates;
}

/** The exchange handler for a listener that serves `planeNames`. */
export function createRequestHandler(deps: RequestHandlerDeps, planeNames: readonly PlaneName[]): (exchange: Exchange) => void {
  const planes = deps.planes.filter((plane) => planeNames.includes(plane.name));

  return (exchange) => {
    // One snapshot for the whole request, even if a reload swaps it meanwhile.
    const snapshot = deps.current();
    const context: RequestContext = {
      exchange,
      admit(authenticated) {
        context.authenticated = authenticated;
        deps.limits.authenticated(exchange.socket);
        // Only now, once the caller is known: anonymous requests never spend the tenant's rate.
        if (context.tenant && context.plane) deps.rates.take(context.tenant, context.plane);
      },
    };
    // Observe once the exchange is over *and* every stage has recorded its part.
    let pending = 2;
    let release: (() => void) | undefined;
    const done = (): void => {
      if (--pending > 0) return;
      release?.();
      try {
        observeRequest(context, deps.metrics, deps.logger);
      } catch (err) {
        // Observation must never take the process down.
        deps.logger.error({ err, requestId: exchange.id }, 'could not record a request');
      }
    };
    exchange.onClose(done);
    handle(context, snapshot, planes, deps.limits, (r) => (release = r))
      .catch((err: unknown) => {
        const error = toMeshgateError(err);
        context.error = error;
        // A connection over its limit, or one that reaches no tenant (no SNI, an unknown one),
        // gets its answer and is closed: kept alive, it would hold a slot of the listener for nothing.
        // So is a connection that has not authenticated and was just refused: it may try again on a
        // new connection, within the unauthenticated budget.
        if (error.code === 'MG_ERR_LIMIT_CONNECTIONS' || !reachesTenant(exchange, snapshot) || !deps.limits.isAuthenticated(exchange.socket)) {
          exchange.closeConnectionAfter();
        }
        if (context.render) context.render(exchange, error);
        else renderError(exchange, error);
        exchange.refused();
        if (isGrpcContentType(exchange.headers['content-type'])) context.grpcStatus ??= String(error.grpcStatus);
      })
      .finally(done);
  };
}

function reachesTenant(exchange: Exchange, snapshot: Snapshot): boolean {
  return exchange.serverName !== undefined && snapshot.tenantForHost(exchange.serverName) !== undefined;
}

async function handle(
  context: RequestContext,
  snapshot: Snapshot,
  planes: readonly Plane[],
  limits: TenantLimits,
  holdSlot: (release: () => void) => void,
): Promise<void> {
  const { exchange } = context;
  const rawPath = exchange.target.split('?', 1)[0] ?? '';
  context.render = planes.find((p) => p.owns(rawPath, exchange))?.renderError;
  context.stripped = sanitizeRequestHeaders(exchange.headers);
  const tenant = resolveTenant(exchange, snapshot);
  context.tenant = tenant;
  limits.checkConnection(exchange.socket);
  holdSlot(limits.acquireStream(tenant));
  // CONNECT, plain or extended (RFC 8441 WebSocket), is how HTTP/2 would upgrade: never forwarded.
  if (exchange.protocol === 'h2' && (exchange.method === 'CONNECT' || exchange.headers[':protocol'] !== undefined)) {
    throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', {
      message: 'exec, attach and port-forward need HTTP/1.1 (WebSocket or SPDY/3.1), not HTTP/2',
    });
  }
  const target = parseRequestTarget(exchange.target);
  context.target = target;
  const plane = planes.find((p) => p.owns(target.path, exchange));
  if (!plane) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND');
  context.plane = plane.name;
  if (exchange.protocol === 'upgrade' && plane.upgrades !== true) throw new MeshgateError('MG_ERR_REQUEST_UPGRADE');
  const state = snapshot.planeState(context.tenant, plane.name);
  // In the same turn as the snapshot was read: nothing it leases can have been closed yet.
  const release = plane.hold?.(state);
  try {
    await plane.handle(context as RoutedContext, state);
  } finally {
    release?.();
  }
}
