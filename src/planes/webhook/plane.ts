/**
 * The webhook plane: a mesh cluster's kube-apiserver calling istiod's sidecar injection and config
 * validation (istiod :15017), which has no client authentication of its own. meshgate supplies it:
 *
 *   path → method → content type → size → source network → credential → rules → cluster in path
 *   → body (bounded) → forward (TLS, verified) with the apiserver's own deadline (`?timeout=`)
 */
import { createAuthenticator, type Authenticator } from '../../auth/authenticate.js';
import { createPathKey } from '../../auth/path-key.js';
import type { WebhookSettings } from '../../config/schema.js';
import { parseGoDuration } from '../../config/units.js';
import { MeshgateError } from '../../errors.js';
import { createBodyBudget, declaredLength, readBody, type BodyBudget } from '../../http/body.js';
import { queryParam } from '../../http/canonical-path.js';
import { outboundHeaders } from '../../http/outbound.js';
import { forwardHttp } from '../../forward/http.js';
import type { HttpUpstream } from '../../forward/upstream.js';
import type { Lease } from '../../tenancy/registry.js';
import { leaseHttpUpstream } from '../../tenancy/upstreams.js';
import { plain } from '../../tenancy/tenant.js';
import { createAuthorizer, type Authorizer } from '../../policy/authorize.js';
import { createSourceCheck, type SourceCheck } from '../../policy/source-address.js';
import type { Plane } from '../plane.js';
import { parseWebhookPath } from './paths.js';

export interface WebhookState {
  readonly settings: WebhookSettings;
  readonly authenticate: Authenticator;
  readonly authorize: Authorizer;
  readonly checkSource: SourceCheck | undefined;
  readonly upstream: Lease<HttpUpstream>;
  /** This tenant's share of request bodies being read at once, so one tenant cannot starve the rest. */
  readonly bodyBudget: BodyBudget;
}

export interface WebhookPlaneDeps {
  /** The process-wide budget for request bodies being read at once. */
  readonly bodyBudget: BodyBudget;
}

const POST_ONLY = new MeshgateError('MG_ERR_REQUEST_METHOD_NOT_ALLOWED', {
  message: 'webhooks take POST only',
  headers: { allow: 'POST' },
});

export function createWebhookPlane(deps: WebhookPlaneDeps): Plane<WebhookState> {
  return {
    name: 'webhook',

    owns: (path) => /^\/(inject|validate|k)(\/|$)/.test(path),

    build(tenant) {
      const { webhook: settings, istiod } = tenant.config;
      if (!settings || !istiod.webhook) return undefined;
      return {
        settings,
        authenticate: createAuthenticator({
          methods: settings.authentication,
          audiences: settings.audiences,
          certificates: tenant.certificates,
          tokens: tenant.tokens,
          pathKey:
            settings.pathKeyFile === undefined ? undefined : createPathKey(tenant.id, tenant.files.text(settings.pathKeyFile)),
        }),
        authorize: createAuthorizer(tenant.id, tenant.config.access.webhook, 'webhook'),
        checkSource: createSourceCheck(settings.sourceCIDRs),
        upstream: leaseHttpUpstream(tenant, 'webhook/upstream', istiod.webhook),
        bodyBudget: tenant.resources.use('webhook/body-budget', settings.maxBufferedBytes, () =>
          plain(createBodyBudget(settings.maxBufferedBytes)),
        ).value,
      };
    },

    hold: (state) => state?.upstream.hold() ?? (() => undefined),

    async handle(context, state) {
      if (!state) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: 'this tenant has no webhook plane' });
      const { exchange, target, tenant } = context;
      const { settings } = state;

      const path = parseWebhookPath(target.path);
      if (exchange.method !== 'POST') throw POST_ONLY;
      checkContentType(exchange.headers['content-type']);
      declaredLength(exchange.headers['content-length'], settings.maxBodySize);
      // One deadline for the whole call, as the kube-apiserver has: reading the body and
      // istiod's answer share it.
      const deadlineAt = exchange.startedAt + deadline(target.query, settings);
      const remainingMs = (): number => Math.max(1, Math.round(deadlineAt - performance.now()));

      state.checkSource?.(exchange.remoteAddress);
      const authenticated = await state.authenticate({
        socket: exchange.socket,
        authorization: exchange.headers.authorization,
        pathKey: path.pathKey,
      });
      context.admit(authenticated);
      context.rule = state.authorize(authenticated.identity);
      const { identity } = authenticated;
      for (const cluster of path.clusters) {
        if (!tenant.clusters.has(cluster)) {
          throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_CLUSTER', { detail: `injection path names cluster ${cluster}` });
        }
        // A token proves which cluster calls: its API server injects that cluster's pods only.
        if (identity.cluster !== undefined && identity.cluster !== cluster) {
          throw new MeshgateError('MG_ERR_AUTHZ_CLUSTER_MISMATCH', { detail: `token of ${identity.cluster} injecting into ${cluster}` });
        }
      }

      const { body, release } = await readBody(exchange.body, {
        maxBytes: settings.maxBodySize,
        budgets: [state.bodyBudget, deps.bodyBudget],
        deadlineMs: remainingMs(),
      });
      try {
        const result = await forwardHttp(exchange, {
          upstream: state.upstream.value,
          path: target.query === undefined ? path.forwardPath : `${path.forwardPath}?${target.query}`,
          headers: outboundHeaders(exchange, { 'content-length': String(body.length) }),
          body,
          timeoutMs: remainingMs(),
        });
        context.upstreamStatus = result.status;
        if (result.error) context.error = result.error;
      } finally {
        release();
      }
    },
  };
}

/** istiod takes `application/json`, exactly, and nothing else (it answers 415 itself otherwise). */
function checkContentType(value: string | undefined): void {
  if (value !== 'application/json') {
    throw new MeshgateError('MG_ERR_REQUEST_CONTENT_TYPE', { message: 'webhooks take Content-Type: application/json only' });
  }
}

/** The apiserver's own deadline (`?timeout=10s`), bounded by the tenant's maximum. */
function deadline(query: string | undefined, settings: WebhookSettings): number {
  const text = queryParam(query, 'timeout');
  if (text === undefined) return settings.timeout;
  const ms = parseGoDuration(text);
  if (ms === undefined || ms <= 0) {
    throw new MeshgateError('MG_ERR_REQUEST_BAD_TIMEOUT', { message: `timeout "${text}" is not a positive duration` });
  }
  return Math.min(ms, settings.maxTimeout);
}
