/**
 * The kube plane: istiod (remote secrets), Kiali, kubectl and istioctl reaching a tenant's mesh
 * cluster API servers at `/clusters/<clusterId>/<kubernetes path>`, on the tenant's own host.
 *
 *   route (the cluster must be the SNI tenant's) → authenticate (client certificate or a token of
 *   that cluster) → attributes (RequestInfo) → the tenant's kube rules → upstream credentials
 *   (the caller's token, or meshgate's own with Impersonate-*) → forward, stream or tunnel
 *
 * Client-sent `Impersonate-*` never gets this far: header hygiene removed it, in any spelling,
 * and refused a `Connection:` that names it. meshgate's own are set last, replacing.
 *
 * A cluster `via: agent` is reached the same way, with every connection (pooled, or an upgrade's
 * own) opened through its agent's tunnel instead of dialed (src/forward/agent-tunnels.ts).
 */
import type { Duplex } from 'node:stream';
import { createAuthenticator, type Authenticated, type Authenticator } from '../../auth/authenticate.js';
import type { Identity } from '../../auth/identity.js';
import type { KubeSettings } from '../../config/schema.js';
import { MeshgateError } from '../../errors.js';
import type { AgentTunnels } from '../../forward/agent-tunnels.js';
import { forwardHttp } from '../../forward/http.js';
import { openTunnel } from '../../forward/tunnel.js';
import { createHttpUpstream, type HttpUpstream } from '../../forward/upstream.js';
import type { Lease } from '../../tenancy/registry.js';
import { outboundHeaders } from '../../http/outbound.js';
import type { Exchange } from '../../listener/exchange.js';
import { createAuthorizer, type Authorizer } from '../../policy/authorize.js';
import { isLongRunning, parseKubeRequest, type KubeRequest } from '../../policy/kube-request.js';
import { createKubeDecision, type KubeDecision } from '../../policy/kube-rules.js';
import type { Plane, RoutedContext } from '../plane.js';
import type { TenantCore } from '../../tenancy/tenant.js';
import { buildControlPlaneView, handleViewRequest, viewActor, type ControlPlaneView } from './istiod-view/view.js';
import { renderKubeError } from './status.js';
import { refuseReservedIdentity } from './reserved-identity.js';
import { takeWebSocketBearer } from './websocket-bearer.js';

type Credential = { readonly kind: 'passthrough' } | { readonly kind: 'token'; readonly token: string } | { readonly kind: 'certificate' };

/**
 * A cluster's pool, as a registry resource: with it, the long-running requests (watches, tunnels)
 * running on it, which end when it is closed (its cluster or tenant was removed, or the drain bound
 * of a replaced one passed). Tunnels have connections of their own, outside the pool.
 */
interface ClusterPool {
  readonly upstream: HttpUpstream;
  readonly longRunning: Set<Exchange>;
}

interface KubeCluster {
  readonly id: string;
  readonly pool: Lease<ClusterPool>;
  /** The API server URL's own path (a proxy in front of it), without a trailing "/". */
  readonly basePath: string;
  readonly credential: Credential;
  /** Reached through its agent's tunnel. */
  readonly viaAgent: boolean;
}

export interface KubeState {
  readonly settings: KubeSettings;
  readonly clusters: ReadonlyMap<string, KubeCluster>;
  readonly authenticate: Authenticator;
  readonly sameTenant: Authorizer;
  readonly decide: KubeDecision;
  /** The tenant's istiod as Kiali finds it (docs/kiali.md), when configured. */
  readonly view?: ControlPlaneView | undefined;
}

export interface KubePlaneHooks {
  readonly onRequest?: (tenant: string, cluster: string, verb: string, code: string) => void;
  readonly onWatch?: (tenant: string, cluster: string, delta: 1 | -1) => void;
  readonly onTunnel?: (tenant: string, cluster: string, protocol: string, delta: 1 | -1) => void;
  readonly onUpstreamLatency?: (tenant: string, cluster: string, seconds: number) => void;
  /** A watch, exec, attach or port-forward is about to be forwarded: the audit record of its start (its end is the access log). */
  readonly onLongRunning?: (event: LongRunningStart) => void;
  /** A request forwarded through a port-forward to a control-plane view's istiod: port, endpoint, status (0: refused port). */
  readonly onViewForward?: (tenant: string, port: number, endpoint: string, status: number) => void;
  /** Spends one of the tenant's tokens for `plane` (limits.requestRate), or throws MG_ERR_LIMIT_RATE. */
  readonly takeRate?: (tenant: TenantCore, plane: 'debug') => void;
}

export interface LongRunningStart {
  readonly requestId: string;
  readonly tenant: string;
  readonly cluster: string;
  readonly identity: Identity;
  readonly request: KubeRequest;
}

const UPGRADES = new Set(['websocket', 'spdy/3.1']);
const TUNNEL_SUBRESOURCES = new Set(['exec', 'attach', 'portforward']);
const VERBS = new Set(['get', 'list', 'watch', 'create', 'update', 'patch', 'delete', 'deletecollection', 'proxy']);

/** `agents`: the tunnels that clusters `via: agent` are reached through. */
export function createKubePlane(hooks: KubePlaneHooks = {}, agents?: AgentTunnels): Plane<KubeState> {
  return {
    name: 'kube',

    owns: (path) => path.startsWith('/clusters/'),

    upgrades: true,

    renderError: renderKubeError,

    build(tenant) {
      const clusters = new Map<string, KubeCluster>();
      for (const cluster of tenant.config.clusters) {
        const server = cluster.apiServer;
        if (server === undefined) continue;
        const credentials = server.credentials;
        const certificate =
          typeof credentials === 'object' && 'cert' in credentials
            ? { cert: tenant.files.text(credentials.cert), key: tenant.files.text(credentials.key) }
            : undefined;
        const viaAgent = server.via === 'agent';
        // An agent cluster has no address: its name is the one its certificate is for (the schema requires it).
        const target = { url: server.url ?? `https://${server.serverName ?? cluster.id}`, ca: server.ca, serverName: server.serverName };
        const inputs = {
          url: server.url,
          via: server.via,
          serverName: server.serverName,
          ca: server.ca === undefined ? undefined : tenant.files.text(server.ca),
          certificate,
          allowLoopback: tenant.allowLoopbackUpstreams,
        };
        // One pool per cluster: a connection made for one cluster never carries another's request.
        const pool = tenant.resources.use(`kube/${cluster.id}`, inputs, () => {
          const upstream = createHttpUpstream(target, tenant.files, {
            allowLoopback: tenant.allowLoopbackUpstreams,
            clientCertificate: certificate,
            // Watches hold a connection each; the tenant's stream limit bounds them.
            maxSockets: Number.POSITIVE_INFINITY,
            // Only this tenant's tunnels of this cluster: the key is the tenant's own id.
            dial: viaAgent ? () => dialAgent(agents, tenant.id, cluster.id) : undefined,
          });
          const longRunning = new Set<Exchange>();
          return {
            value: { upstream, longRunning },
            close() {
              for (const exchange of longRunning) exchange.abort();
              longRunning.clear();
              upstream.close();
            },
          };
        });
        clusters.set(cluster.id, {
          id: cluster.id,
          pool,
          basePath: new URL(target.url).pathname.replace(/\/+$/, ''),
          viaAgent,
          credential:
            credentials === 'passthrough'
              ? { kind: 'passthrough' }
              : 'tokenFile' in credentials
                ? { kind: 'token', token: tenant.files.text(credentials.tokenFile).trim() }
                : { kind: 'certificate' },
        });
      }
      const viewConfig = tenant.config.controlPlaneView;
      const view = viewConfig && buildControlPlaneView(tenant, viewConfig, createAuthorizer(tenant.id, tenant.config.access.debug, 'debug'));
      if (clusters.size === 0 && !view) return undefined;
      const settings = tenant.config.kube;
      return {
        view,
        settings,
        clusters,
        authenticate: createAuthenticator({
          methods: settings.authentication,
          // A service-account token's audience is its API server's: by default, the issuer.
          audiences: settings.audiences ?? [...new Set(tenant.config.clusters.map((c) => c.issuer))],
          certificates: tenant.certificates,
          tokens: tenant.tokens,
        }),
        sameTenant: createAuthorizer(tenant.id, undefined, 'kube'),
        decide: createKubeDecision(tenant.config.access.kube ?? []),
      };
    },

    async handle(context, state) {
      const { exchange, target } = context;
      const route = clusterRoute(target.path);
      if (state?.view?.cluster === route.cluster) return handleView(context, state, state.view, route.path, hooks);
      const cluster = state?.clusters.get(route.cluster);
      // The same answer whether the cluster is another tenant's, unknown, or has no API server.
      if (!state || !cluster) throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_CLUSTER', { detail: `cluster ${route.cluster}` });
      const tenant = context.tenant.id;
      let request: KubeRequest | undefined;
      let code = '';
      const release = cluster.pool.hold();
      const { upstream, longRunning: running } = cluster.pool.value;
      try {
        const authenticated = await authenticateCaller(context, state);
        const actor = actorOf(authenticated, cluster);
        state.sameTenant(actor);
        request = parseKubeRequest(exchange.method, route.path, target.query);
        context.rule = state.decide(actor, cluster.id, request);
        // Said at once, rather than as a failed connection: no agent of the cluster is connected here.
        if (cluster.viaAgent && agents?.has(tenant, cluster.id) !== true) {
          throw new MeshgateError('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE', { detail: `cluster ${cluster.id}` });
        }
        if (exchange.protocol === 'upgrade' && (!TUNNEL_SUBRESOURCES.has(request.subresource) || request.resource !== 'pods')) {
          throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', { message: 'upgrades are for pods exec, attach and portforward only' });
        }

        const headers = upstreamHeaders(exchange, cluster, authenticated, actor);
        const path = `${cluster.basePath}${route.path}${target.query === undefined ? '' : `?${target.query}`}`;
        const started = performance.now();
        const onResponse = (status: number): void => {
          code = String(status);
          hooks.onUpstreamLatency?.(tenant, cluster.id, (performance.now() - started) / 1000);
        };

        // A watch or a tunnel outlives no credential it was opened with.
        const longRunning = exchange.protocol === 'upgrade' || isLongRunning(request, target.query);
        const cutAtExpiry = longRunning ? endAtExpiry(exchange, credentialExpiry(authenticated, cluster), context) : undefined;
        exchange.onClose(() => clearTimeout(cutAtExpiry));
        if (longRunning) {
          hooks.onLongRunning?.({ requestId: exchange.id, tenant, cluster: cluster.id, identity: actor, request });
          running.add(exchange);
          exchange.onClose(() => running.delete(exchange));
        }

        if (exchange.protocol === 'upgrade') {
          const protocol = exchange.upgrade.toLowerCase() === 'websocket' ? 'websocket' : 'spdy';
          const result = await openTunnel(exchange, {
            upstream,
            path,
            headers,
            handshakeTimeoutMs: state.settings.requestTimeout,
            onResponse,
            onOpen: () => {
              hooks.onTunnel?.(tenant, cluster.id, protocol, 1);
              return () => hooks.onTunnel?.(tenant, cluster.id, protocol, -1);
            },
          });
          context.upstreamStatus = result.status;
          return;
        }

        const watching = request.verb === 'watch';
        if (watching) hooks.onWatch?.(tenant, cluster.id, 1);
        try {
          const result = await forwardHttp(exchange, {
            upstream,
            path,
            headers,
            body: exchange.hasBody ? 'stream' : undefined,
            timeoutMs: longRunning ? undefined : state.settings.requestTimeout,
            streaming: longRunning,
            onResponse,
          });
          context.upstreamStatus = result.status;
          // An expiry cut is the reason, not the reset it caused.
          if (result.error) context.error ??= result.error;
        } finally {
          if (watching) hooks.onWatch?.(tenant, cluster.id, -1);
        }
      } catch (err) {
        code = err instanceof MeshgateError ? String(err.status) : '500';
        throw err;
      } finally {
        release();
        hooks.onRequest?.(tenant, cluster.id, verbLabel(request), code || '0');
      }
    },
  };
}

/** Checks the upgrade, authenticates the caller (a WebSocket's bearer too), and records who it is. */
async function authenticateCaller(context: RoutedContext, state: KubeState): Promise<Authenticated> {
  const { exchange } = context;
  refuseUnsupportedUpgrade(exchange);
  const bearer = takeWebSocketBearer(exchange.headers);
  const authenticated = await state.authenticate({ socket: exchange.socket, authorization: bearer ?? exchange.headers.authorization });
  context.admit(authenticated);
  return authenticated;
}

/** The `verb` label of meshgate_kube_requests_total: a known verb, `nonresource`, or `other`. */
function verbLabel(request: KubeRequest | undefined): string {
  const verb = request?.verb ?? '';
  return VERBS.has(verb) ? verb : request?.resourceRequest === false ? 'nonresource' : 'other';
}

/** A request to the tenant's control-plane view: authenticated and rate-counted as any kube request, answered by meshgate. */
async function handleView(context: RoutedContext, state: KubeState, view: ControlPlaneView, path: string, hooks: KubePlaneHooks): Promise<void> {
  const { exchange, target } = context;
  const tenant = context.tenant.id;
  let request: KubeRequest | undefined;
  let code = '';
  try {
    const authenticated = await authenticateCaller(context, state);
    const actor = viewActor(authenticated);
    state.sameTenant(actor);
    request = parseKubeRequest(exchange.method, path, target.query);
    // A port-forward or a watch outlives no credential it was opened with, as on a cluster.
    if (exchange.protocol === 'upgrade' || isLongRunning(request, target.query)) {
      const cut = endAtExpiry(exchange, viewCredentialExpiry(authenticated), context);
      exchange.onClose(() => clearTimeout(cut));
    }
    await handleViewRequest(context, view, actor, request, state.decide, {
      onTunnel: (protocol, delta) => hooks.onTunnel?.(tenant, view.cluster, protocol, delta),
      onForward: (port, endpoint, status) => hooks.onViewForward?.(tenant, port, endpoint, status),
      takeRate: () => hooks.takeRate?.(context.tenant, 'debug'),
    });
    code = String(context.upstreamStatus ?? exchange.status ?? 0);
  } catch (err) {
    code = err instanceof MeshgateError ? String(err.status) : '500';
    throw err;
  } finally {
    hooks.onRequest?.(tenant, view.cluster, verbLabel(request), code || '0');
  }
}

function dialAgent(agents: AgentTunnels | undefined, tenant: string, cluster: string): Duplex {
  if (!agents) throw new MeshgateError('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE', { detail: 'this gateway takes no agents' });
  return agents.dial(tenant, cluster);
}

/** `/clusters/acme-east/api/v1/pods` → acme-east and `/api/v1/pods`. The path is already canonical. */
function clusterRoute(path: string): { cluster: string; path: string } {
  const rest = path.slice('/clusters/'.length);
  const slash = rest.indexOf('/');
  return slash === -1 ? { cluster: rest, path: '/' } : { cluster: rest.slice(0, slash), path: rest.slice(slash) };
}

/**
 * Upgrades are HTTP/1.1 only, WebSocket or SPDY/3.1 (h2c, TLS/1.0 and the rest are refused). Over
 * HTTP/2, CONNECT is refused by the request handler, and an `Upgrade` header is a protocol error
 * that nghttp2 resets before meshgate sees it.
 */
function refuseUnsupportedUpgrade(exchange: Exchange): void {
  if (exchange.protocol === 'upgrade' && !UPGRADES.has(exchange.upgrade.toLowerCase())) {
    throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', { message: `Upgrade "${exchange.upgrade.slice(0, 40)}" is not supported: use websocket or SPDY/3.1` });
  }
}

/**
 * Who the API server will see. With the caller's own token (passthrough), the token's identity;
 * with meshgate's credential, the certificate's identity if one was presented, else the token's.
 * A token always has to be this cluster's: one cluster's token is never sent to, or vouched for
 * on, another.
 */
function actorOf(authenticated: Authenticated, cluster: KubeCluster): Identity {
  const { bearer, identity } = authenticated;
  if (bearer && bearer.identity.cluster !== cluster.id) {
    throw new MeshgateError('MG_ERR_AUTHZ_CLUSTER_MISMATCH', { detail: `token of ${bearer.identity.cluster ?? '?'} for cluster ${cluster.id}` });
  }
  if (cluster.credential.kind === 'passthrough') {
    if (!bearer) {
      throw new MeshgateError('MG_ERR_AUTHN_REQUIRED', { message: `cluster ${cluster.id} takes the caller's own bearer token` });
    }
    return bearer.identity;
  }
  refuseReservedIdentity(identity);
  return identity;
}

type Expiry = { at: number; code: 'MG_ERR_AUTHN_TOKEN_EXPIRED' | 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' } | undefined;

/** When the credential that opened a long-running request expires: the token forwarded or vouched for, and the certificate. */
function credentialExpiry(authenticated: Authenticated, cluster: KubeCluster): Expiry {
  const certificate = authenticated.identity.method === 'clientCertificate' && cluster.credential.kind !== 'passthrough' ? authenticated.identity.expiresAt : undefined;
  return earlierExpiry(authenticated.bearer?.identity.expiresAt, certificate);
}

/** The same for a request to the control-plane view, where every credential counts. */
function viewCredentialExpiry(authenticated: Authenticated): Expiry {
  const certificate = authenticated.identity.method === 'clientCertificate' ? authenticated.identity.expiresAt : undefined;
  return earlierExpiry(authenticated.bearer?.identity.expiresAt, certificate);
}

function earlierExpiry(token: number | undefined, certificate: number | undefined): Expiry {
  if (token !== undefined && (certificate === undefined || token <= certificate)) return { at: token, code: 'MG_ERR_AUTHN_TOKEN_EXPIRED' };
  return certificate === undefined ? undefined : { at: certificate, code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' };
}

/** setTimeout's limit (about 24.8 days); a credential valid longer is checked by nothing sooner. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Cuts the exchange off (never a clean end) when the credential expires; the timer, to clear. */
function endAtExpiry(exchange: Exchange, expiry: Expiry, context: { error?: MeshgateError }): NodeJS.Timeout | undefined {
  if (expiry === undefined) return undefined;
  const remaining = expiry.at - Date.now();
  if (remaining > MAX_TIMER_MS) return undefined;
  const timer = setTimeout(() => {
    context.error = new MeshgateError(expiry.code, { detail: 'credential expired during a long-running request' });
    exchange.abort();
  }, Math.max(0, remaining));
  timer.unref();
  return timer;
}

function upstreamHeaders(exchange: Exchange, cluster: KubeCluster, authenticated: Authenticated, actor: Identity): Record<string, string | string[]> {
  const own: Record<string, string | string[]> = {};
  const credential = cluster.credential;
  if (credential.kind === 'passthrough') {
    own.authorization = `Bearer ${authenticated.bearer?.token ?? ''}`;
  } else {
    if (credential.kind === 'token') own.authorization = `Bearer ${credential.token}`;
    // Set, never appended: the API server unions repeated Impersonate-Group values.
    own['impersonate-user'] = actor.subject;
    const groups = actor.groups ?? [];
    if (groups.length > 0) own['impersonate-group'] = [...groups];
  }
  // The body streams through, so its framing must too.
  const length = exchange.headers['content-length'];
  if (exchange.protocol !== 'upgrade' && exchange.hasBody) {
    if (typeof length === 'string') own['content-length'] = length;
    else own['transfer-encoding'] = 'chunked';
  }
  const headers = outboundHeaders(exchange, own);
  return headers as Record<string, string | string[]>;
}
