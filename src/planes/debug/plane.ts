/**
 * The debug plane: Kiali, istioctl and operators reading istiod's debug endpoints (istiod :15014).
 * GET only, an allowlist of endpoints, nothing that changes state. istiod still applies its own
 * namespace rules: the caller's verified token is passed on, with `clusterid` set to the cluster
 * whose issuer verified it. A caller that proved itself with a client certificate has no token,
 * so meshgate sends the tenant's configured istiod token instead.
 *
 * meshgate must never reach a real istiod from loopback: istiod serves every debug endpoint to a
 * loopback caller without authentication. Config refuses loopback upstreams outside the sandbox,
 * and the upstream's resolver refuses names that resolve to loopback.
 */
import { createAuthenticator, type Authenticator } from '../../auth/authenticate.js';
import type { DebugSettings } from '../../config/schema.js';
import { MeshgateError } from '../../errors.js';
import { outboundHeaders } from '../../http/outbound.js';
import { forwardHttp } from '../../forward/http.js';
import type { HttpUpstream } from '../../forward/upstream.js';
import type { Lease } from '../../tenancy/registry.js';
import { leaseHttpUpstream } from '../../tenancy/upstreams.js';
import { createAuthorizer, type Authorizer } from '../../policy/authorize.js';
import type { Plane } from '../plane.js';
import { DEFAULT_DEBUG_ENDPOINTS, checkDebugEndpoint, debugEndpoint } from './endpoints.js';

export interface DebugState {
  readonly settings: DebugSettings;
  readonly endpoints: ReadonlySet<string>;
  readonly authenticate: Authenticator;
  readonly authorize: Authorizer;
  readonly upstream: Lease<HttpUpstream>;
  /** meshgate's own token for this tenant's istiod, for certificate callers. */
  readonly ownToken?: { readonly token: string; readonly cluster: string };
}

const GET_ONLY = new MeshgateError('MG_ERR_REQUEST_METHOD_NOT_ALLOWED', {
  message: 'debug endpoints take GET only',
  headers: { allow: 'GET, HEAD' },
});

export function createDebugPlane(): Plane<DebugState> {
  return {
    name: 'debug',

    owns: (path) => path === '/version' || path.startsWith('/debug/'),

    build(tenant) {
      const upstreamConfig = tenant.config.istiod.debug;
      if (!upstreamConfig) return undefined;
      const settings = tenant.config.debug;
      const own = upstreamConfig.token;
      return {
        settings,
        endpoints: new Set(settings.endpoints ?? DEFAULT_DEBUG_ENDPOINTS),
        authenticate: createAuthenticator({
          methods: settings.authentication,
          audiences: settings.audiences,
          certificates: tenant.certificates,
          tokens: tenant.tokens,
        }),
        authorize: createAuthorizer(tenant.id, tenant.config.access.debug, 'debug'),
        upstream: leaseHttpUpstream(tenant, 'debug/upstream', upstreamConfig),
        ...(own ? { ownToken: { token: tenant.files.text(own.file).trim(), cluster: own.cluster } } : {}),
      };
    },

    hold: (state) => state?.upstream.hold() ?? (() => undefined),

    async handle(context, state) {
      if (!state) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: 'this tenant has no debug plane' });
      const { exchange, target } = context;

      if (exchange.method !== 'GET' && exchange.method !== 'HEAD') throw GET_ONLY;
      // A body on a GET is how a second request gets smuggled to istiod behind the first.
      if (exchange.hasBody) throw new MeshgateError('MG_ERR_REQUEST_BODY_UNEXPECTED', { message: 'debug requests take no body' });
      checkDebugEndpoint(debugEndpoint(target.path), target.query, state.endpoints, target.path);

      const authenticated = await state.authenticate({ socket: exchange.socket, authorization: exchange.headers.authorization });
      context.admit(authenticated);
      context.rule = state.authorize(authenticated.identity);

      const credential = authenticated.bearer
        ? { token: authenticated.bearer.token, cluster: authenticated.bearer.identity.cluster ?? '' }
        : state.ownToken;
      if (!credential) throw new MeshgateError('MG_ERR_AUTHN_REQUIRED', { message: 'debug endpoints need a bearer token' });

      const result = await forwardHttp(exchange, {
        upstream: state.upstream.value,
        path: target.query === undefined ? target.path : `${target.path}?${target.query}`,
        headers: outboundHeaders(exchange, { authorization: `Bearer ${credential.token}`, clusterid: credential.cluster }),
        timeoutMs: state.settings.timeout,
      });
      context.upstreamStatus = result.status;
      if (result.error) context.error = result.error;
    },
  };
}
