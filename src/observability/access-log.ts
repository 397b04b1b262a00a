/**
 * One access-log line and one set of metric updates per request, when it is over, whatever the
 * outcome: tenant, plane, identity subject, outcome code and duration.
 */
import type { RequestContext } from '../planes/plane.js';
import { redactTarget, redactTokens, type Logger } from './logger.js';
import { NONE, type Metrics } from './metrics.js';

/** The limit each MG_ERR_LIMIT_* code reports, as meshgate_limits_hit_total's `limit` label. */
const LIMITS: Readonly<Record<string, string>> = {
  MG_ERR_LIMIT_RATE: 'rate',
  MG_ERR_LIMIT_STREAMS: 'streams',
  MG_ERR_LIMIT_CONNECTIONS: 'connections',
};

export function observeRequest(context: RequestContext, metrics: Metrics, logger: Logger): void {
  const { exchange, error } = context;
  const durationMs = performance.now() - exchange.startedAt;
  const tenant = context.tenant?.id ?? NONE;
  const plane = context.plane ?? NONE;
  // OK, ABORTED (the client went away first), or the MG_ERR_* code.
  const outcome = error?.code ?? (exchange.completed ? 'OK' : 'ABORTED');
  const identity = context.authenticated?.identity;

  metrics.requests.inc({ tenant, plane, outcome });
  metrics.requestDuration.observe({ tenant, plane }, durationMs / 1000);
  if (error && error.status < 500) metrics.denials.inc({ tenant, plane, reason: error.code });
  if (error?.code.startsWith('MG_ERR_UPSTREAM_')) metrics.upstreamErrors.inc({ tenant, plane, reason: error.code });
  const limit = error === undefined ? undefined : LIMITS[error.code];
  if (limit !== undefined) metrics.limitsHit.inc({ tenant, plane, limit });

  const line = {
    requestId: exchange.id,
    listener: exchange.listener,
    protocol: exchange.protocol,
    tenant,
    plane,
    method: exchange.method,
    path: redactTarget(exchange.target),
    status: exchange.status,
    outcome,
    subject: identity?.subject,
    auth: identity?.method,
    cluster: identity?.cluster,
    // The rule that allowed it (`access.<plane>[i]`, or `default`): only once the rules allowed.
    rule: context.rule,
    upstreamStatus: context.upstreamStatus,
    grpcStatus: context.grpcStatus,
    durationMs: Math.round(durationMs * 100) / 100,
    remote: exchange.remoteAddress,
  };
  if (error?.code === 'MG_ERR_INTERNAL') {
    logger.error({ ...line, err: error.cause }, 'request failed inside meshgate');
  } else if (error) {
    // Details and causes can quote what the client sent (a cluster name, a header): no token in them either.
    const cause = describeCause(error.cause);
    logger.info({ ...line, detail: error.detail === undefined ? undefined : redactTokens(error.detail), cause: cause === undefined ? undefined : redactTokens(cause) }, 'request');
  } else {
    logger.info(line, 'request');
  }
}

function describeCause(cause: unknown): string | undefined {
  if (cause === undefined) return undefined;
  if (cause instanceof Error) return `${(cause as { code?: string }).code ?? cause.name}: ${cause.message}`;
  return typeof cause === 'string' ? cause : JSON.stringify(cause);
}
