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
import { renderHttpError } from '../http/render.js';
import type { Exchange } from '../listener/exchange.js';
import { resolveTenant } from '../listener/route.js';
import { observeRequest } from '../observability/access-log.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Plane, RequestContext, RoutedContext } from '../planes/plane.js';
import type { Snapshot } from '../tenancy/snapshot.js';

export interface RequestHandlerDeps {
  readonly current: () => Snapshot;
  readonly planes: readonly Plane[];
  readonly metrics: Metrics;
  readonly logger: Logger;
}

/** The exchange handler for a listener that serves `planeNames`. */
export function createRequestHandler(deps: RequestHandlerDeps, planeNames: readonly PlaneName[]): (exchange: Exchange) => void {
  const planes = deps.planes.filter((plane) => planeNames.includes(plane.name));

  return (exchange) => {
    // One snapshot for the whole request, even if a reload swaps it meanwhile.
    const snapshot = deps.current();
    const context: RequestContext = { exchange };
    // Observe once the exchange is over *and* every stage has recorded its part.
    let pending = 2;
    const done = (): void => {
      if (--pending === 0) observeRequest(context, deps.metrics, deps.logger);
    };
    exchange.onClose(done);
    handle(context, snapshot, planes)
      .catch((err: unknown) => {
        const error = toMeshgateError(err);
        context.error = error;
        renderHttpError(exchange, error);
      })
      .finally(done);
  };
}

async function handle(context: RequestContext, snapshot: Snapshot, planes: readonly Plane[]): Promise<void> {
  const { exchange } = context;
  sanitizeRequestHeaders(exchange.headers);
  context.tenant = resolveTenant(exchange, snapshot);
  context.target = parseRequestTarget(exchange.target);
  const plane = planes.find((p) => p.owns(context.target?.path ?? ''));
  if (!plane) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND');
  context.plane = plane.name;
  await plane.handle(context as RoutedContext, snapshot.planeState(context.tenant, plane.name));
}
