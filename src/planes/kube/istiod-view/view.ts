/**
 * A tenant's control-plane view on the kube plane (docs/kiali.md): a cluster of meshgate's own, at
 * `/clusters/<controlPlaneView.cluster>`, in which Kiali finds the tenant's istiod as it would in the
 * provider's cluster, and port-forwards to it. Reads are decided by the tenant's `access.kube` rules
 * (with the view's name as the cluster); a port-forward additionally by its `access.debug` rules,
 * since it reaches istiod's debug port with meshgate's own istiod token.
 */
import type { Authenticated } from '../../../auth/authenticate.js';
import type { Identity } from '../../../auth/identity.js';
import type { ControlPlaneViewConfig } from '../../../config/schema.js';
import { MeshgateError } from '../../../errors.js';
import type { HttpUpstream } from '../../../forward/upstream.js';
import type { Authorizer } from '../../../policy/authorize.js';
import type { KubeRequest } from '../../../policy/kube-request.js';
import type { KubeDecision } from '../../../policy/kube-rules.js';
import type { Lease } from '../../../tenancy/registry.js';
import type { TenantCore } from '../../../tenancy/tenant.js';
import { leaseHttpUpstream } from '../../../tenancy/upstreams.js';
import { DEFAULT_DEBUG_ENDPOINTS } from '../../debug/endpoints.js';
import type { RoutedContext } from '../../plane.js';
import { buildViewContents, type ViewContents } from './objects.js';
import { servePortForward } from './port-forward.js';
import { refuseReservedIdentity } from '../reserved-identity.js';
import { serveViewRequest } from './serve.js';

export interface ControlPlaneView {
  readonly cluster: string;
  readonly contents: ViewContents;
  /** The watches running on this view, ended cleanly when a reload changes it. */
  readonly watches: Lease<Set<() => void>>;
  /** istiod's debug port: one per replica (`istiod.debug.replicas`), or `istiod.debug.url`; the i-th pod's is the i-th. */
  readonly upstreams: readonly Lease<HttpUpstream>[];
  readonly endpoints: ReadonlySet<string>;
  readonly token: { readonly token: string; readonly cluster: string };
  readonly timeoutMs: number;
  readonly authorizeDebug: Authorizer;
}

export interface ViewHooks {
  readonly onTunnel?: (protocol: string, delta: 1 | -1) => void;
  readonly onForward?: (port: number, endpoint: string, status: number) => void;
  /** Spends a token of the tenant's debug request rate, or throws MG_ERR_LIMIT_RATE. */
  readonly takeRate?: () => void;
}

export function buildControlPlaneView(tenant: TenantCore, config: ControlPlaneViewConfig, authorizeDebug: Authorizer): ControlPlaneView | undefined {
  const debug = tenant.config.istiod.debug;
  // Config requires both with a view; without them there is nothing to forward to, or with.
  if (!debug?.token) return undefined;
  const contents = buildViewContents({
    tenant: tenant.id,
    host: tenant.config.hosts[0] ?? '',
    config,
    clusterId: config.clusterId ?? tenant.config.clusters[0]?.id ?? '',
    meshConfig: config.meshConfig === undefined ? undefined : tenant.files.text(config.meshConfig),
    replicas: debug.replicas?.length ?? 1,
  });
  const watches = tenant.resources.use(`kube/view/${config.cluster}`, { resourceVersion: contents.resourceVersion }, () => {
    const running = new Set<() => void>();
    return {
      value: running,
      close() {
        for (const end of [...running]) end();
      },
    };
  });
  return {
    cluster: config.cluster,
    contents,
    watches,
    upstreams: debug.replicas
      ? debug.replicas.map((url) => leaseHttpUpstream(tenant, `debug/replica/${url}`, { url, ca: debug.ca, serverName: debug.serverName }))
      : [leaseHttpUpstream(tenant, 'debug/upstream', debug)],
    endpoints: new Set(tenant.config.debug.endpoints ?? DEFAULT_DEBUG_ENDPOINTS),
    token: { token: tenant.files.text(debug.token.file).trim(), cluster: debug.token.cluster },
    timeoutMs: tenant.config.debug.timeout,
    authorizeDebug,
  };
}

/** Who the view sees: the caller's identity, checked as the kube plane checks it for meshgate's own credential. */
export function viewActor(authenticated: Authenticated): Identity {
  const { identity } = authenticated;
  refuseReservedIdentity(identity);
  return authenticated.bearer?.identity ?? identity;
}

/**
 * Serves one request to the view, already authenticated: decides it, then answers it (reads) or
 * tunnels it (a port-forward to the istiod pod).
 */
export async function handleViewRequest(
  context: RoutedContext,
  view: ControlPlaneView,
  actor: Identity,
  request: KubeRequest,
  decide: KubeDecision,
  hooks: ViewHooks,
): Promise<void> {
  const { exchange } = context;
  const releaseWatches = view.watches.hold();
  const releaseUpstreams = view.upstreams.map((upstream) => upstream.hold());
  try {
    if (request.resourceRequest && request.resource === 'pods' && request.subresource === 'portforward') {
      if (exchange.protocol !== 'upgrade') {
        throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', { message: 'a port-forward is an upgrade: SPDY/3.1, or a WebSocket' });
      }
      context.rule = authorizePortForward(view, actor, request, decide);
      const protocol = exchange.upgrade.toLowerCase() === 'websocket' ? 'websocket' : 'spdy';
      const upstream = view.upstreams[view.contents.pods.indexOf(request.name)] ?? view.upstreams[0];
      if (!upstream) throw new MeshgateError('MG_ERR_INTERNAL', { detail: 'a view with no upstream' });
      const result = await servePortForward(exchange, {
        upstream: upstream.value,
        endpoints: view.endpoints,
        token: view.token,
        timeoutMs: view.timeoutMs,
        onRequest: hooks.onForward,
        takeRate: hooks.takeRate,
        onOpen: () => {
          hooks.onTunnel?.(protocol, 1);
          return () => hooks.onTunnel?.(protocol, -1);
        },
      });
      context.upstreamStatus = result.status;
      return;
    }
    if (exchange.protocol === 'upgrade') {
      throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', { message: "the control-plane view's only upgrade is a port-forward to its istiod pod" });
    }
    context.rule = decide(actor, view.cluster, request);
    await serveViewRequest({
      exchange,
      request,
      query: context.target.query,
      contents: view.contents,
      watches: view.watches.value,
      canI: (asked) => {
        try {
          if (asked.resource === 'pods' && asked.subresource === 'portforward') authorizePortForward(view, actor, asked, decide);
          else decide(actor, view.cluster, asked);
          return true;
        } catch {
          return false;
        }
      },
    });
  } finally {
    for (const release of releaseUpstreams) release();
    releaseWatches();
  }
}

/**
 * A port-forward to the view's istiod pod: the pod must be one, and both rule sets must allow it,
 * since it reaches istiod with meshgate's token: `access.kube` the port-forward itself (`create` on
 * `pods/portforward`, which no profile grants), and `access.debug` the caller.
 */
function authorizePortForward(view: ControlPlaneView, actor: Identity, request: KubeRequest, decide: KubeDecision): string {
  // A review may ask about no pod in particular ("can I port-forward in istio-system?").
  const named = request.name !== '' || request.path !== '';
  if (request.namespace !== view.contents.namespace || (named && !view.contents.pods.includes(request.name))) {
    throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: `pods "${request.name.slice(0, 100)}" not found` });
  }
  decide(actor, view.cluster, request);
  return view.authorizeDebug(actor);
}
