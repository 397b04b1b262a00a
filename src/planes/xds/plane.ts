/**
 * The xDS plane: istio-agent's ADS and CA streams, and istioctl's debug requests, to the tenant's
 * istiod (:15012), over gRPC.
 *
 *   gRPC over HTTP/2 only → one of three methods → credential (a JWT, audience istio-ca, from one
 *   of the tenant's clusters; or a client certificate of the tenant) → rules → `clusterid`
 *   (must be the tenant's, and a token's own cluster; missing: meshgate sets it) → forward
 *
 * The caller's token is passed on, so istiod still runs its own TokenReview. A caller that proved
 * itself with a certificate has no token: meshgate sends the tenant's configured istiod token.
 */
import { createAuthenticator, type Authenticator } from '../../auth/authenticate.js';
import type { XdsUpstreamConfig } from '../../config/schema.js';
import { closeMessage, type Lease } from '../../tenancy/registry.js';
import type { TenantCore } from '../../tenancy/tenant.js';
import type { Identity } from '../../auth/identity.js';
import { MeshgateError } from '../../errors.js';
import { forwardGrpc } from '../../forward/grpc.js';
import { createH2Pool, type H2Pool, type H2PoolEvents } from '../../forward/h2-pool.js';
import { GRPC_STATUS, isGrpcContentType } from '../../grpc/status.js';
import type { OutgoingHttpHeaders } from 'node:http2';
import type { Exchange } from '../../listener/exchange.js';
import { createAuthorizer, type Authorizer } from '../../policy/authorize.js';
import type { Plane, RoutedContext } from '../plane.js';
import { readDiscoveryRequest } from '../../grpc/discovery-request.js';
import { DEFAULT_DEBUG_ENDPOINTS } from '../debug/endpoints.js';
import { checkDebugRequest, createMethodPolicy, type MethodPolicy } from './requests.js';
import { openWhilePeeking, serveFanout, type FanoutOutcome } from './debug-fanout.js';
import { buildMetricsState, handleStreamMetrics, holdMetrics, STREAM_METRICS_METHOD, type MetricsServiceEvents, type MetricsState } from '../metrics/stream-metrics.js';

/**
 * The only methods forwarded, each with the kind of DiscoveryRequest its client sends (read on its
 * way), or none for the CA. Anything else (reflection, health, …) is UNIMPLEMENTED.
 */
export const XDS_METHODS: ReadonlyMap<string, 'sotw' | 'delta' | undefined> = new Map([
  ['/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources', 'sotw'],
  ['/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources', 'delta'],
  ['/istio.v1.auth.IstioCertificateService/CreateCertificate', undefined],
]);

/**
 * A tenant's pool towards istiod, as a registry resource, with the streams running on it. Closed
 * (the tenant or its xds upstream was removed, or a replaced pool's drain bound passed), it ends
 * each stream with UNAVAILABLE and a message saying why: sidecars reconnect, and find out.
 */
interface XdsPool {
  readonly pool: H2Pool;
  readonly streams: Set<(code: number, message: string) => void>;
}

export interface XdsState {
  readonly tenant: string;
  readonly authenticate: Authenticator;
  readonly authorize: Authorizer;
  readonly mayCall: MethodPolicy;
  /** The tenant's debug allowlist, for debug type URLs. */
  readonly debugEndpoints: ReadonlySet<string>;
  /** How long each replica has to answer a per-replica debug request (`xds.debugFanoutTimeout`). */
  readonly debugFanoutTimeoutMs: number;
  readonly pool: Lease<XdsPool>;
  /** Sidecar metrics (Envoy's MetricsService), when the tenant takes them: src/planes/metrics. */
  readonly metrics?: MetricsState | undefined;
  readonly ownToken?: { readonly token: string; readonly cluster: string };
  readonly clusters: ReadonlySet<string>;
}

export interface XdsPlaneDeps {
  readonly poolEvents?: (tenant: string) => H2PoolEvents;
  readonly onStream?: (tenant: string, delta: 1 | -1) => void;
  readonly onStreamEnd?: (tenant: string, seconds: number) => void;
  readonly onBytes?: (tenant: string, direction: 'toUpstream' | 'toClient', bytes: number) => void;
  /** A debug request asked of every replica was answered (or failed). */
  readonly onDebugFanout?: (tenant: string, outcome: FanoutOutcome) => void;
  readonly metricsService?: MetricsServiceEvents;
}

export interface XdsPlane extends Plane<XdsState> {
  /** Ends every open stream with UNAVAILABLE, so that sidecars reconnect elsewhere (a drain). */
  terminateAll(): void;
}

const NOT_GRPC = (): MeshgateError => new MeshgateError('MG_ERR_REQUEST_NOT_GRPC');

export function createXdsPlane(deps: XdsPlaneDeps = {}): XdsPlane {
  const open = new Set<(code: number, message: string) => void>();

  function leasePool(tenant: TenantCore, upstream: XdsUpstreamConfig): Lease<XdsPool> {
    const ca = upstream.ca === undefined ? undefined : tenant.files.text(upstream.ca);
    // The own token is a header of each stream, not part of a connection: it is not an input.
    const { token: _token, ...connection } = upstream;
    const inputs = { connection, ca, allowLoopback: tenant.allowLoopbackUpstreams };
    return tenant.resources.use('xds/pool', inputs, () => {
      const pool = createH2Pool({
        config: upstream,
        ca,
        allowLoopback: tenant.allowLoopbackUpstreams,
        ...(deps.poolEvents ? { events: deps.poolEvents(tenant.id) } : {}),
      });
      const streams = new Set<(code: number, message: string) => void>();
      return {
        value: { pool, streams },
        close(reason) {
          for (const end of [...streams]) {
            open.delete(end);
            end(GRPC_STATUS.UNAVAILABLE, closeMessage(reason));
          }
          streams.clear();
          pool.close();
        },
      };
    });
  }

  return {
    name: 'xds',

    // gRPC requests are this plane's; so are requests to its services that are not gRPC, to be
    // told so.
    owns: (path, exchange) => isGrpcRequest(exchange) || path.startsWith('/envoy.') || path.startsWith('/istio.'),

    build(tenant) {
      const upstream = tenant.config.istiod.xds;
      if (!upstream) return undefined;
      const settings = tenant.config.xds;
      const own = upstream.token;
      return {
        tenant: tenant.id,
        authenticate: createAuthenticator({
          methods: settings.authentication,
          audiences: settings.audiences,
          certificates: tenant.certificates,
          tokens: tenant.tokens,
        }),
        authorize: createAuthorizer(tenant.id, tenant.config.access.xds, 'xds'),
        mayCall: createMethodPolicy(tenant.config.access.xds),
        debugEndpoints: new Set(tenant.config.debug.endpoints ?? DEFAULT_DEBUG_ENDPOINTS),
        debugFanoutTimeoutMs: settings.debugFanoutTimeout,
        pool: leasePool(tenant, upstream),
        metrics: buildMetricsState(tenant),
        clusters: new Set(tenant.clusters.keys()),
        ...(own ? { ownToken: { token: tenant.files.text(own.file).trim(), cluster: own.cluster } } : {}),
      };
    },

    hold: (state) => {
      const releases = [state?.pool.hold(), holdMetrics(state?.metrics)];
      return () => {
        for (const release of releases) release?.();
      };
    },

    async handle(context, state) {
      const { exchange, target } = context;
      if (exchange.protocol !== 'h2' || !isGrpcRequest(exchange) || exchange.method !== 'POST') throw NOT_GRPC();
      if ((!XDS_METHODS.has(target.path) && target.path !== STREAM_METRICS_METHOD) || target.query !== undefined) {
        throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_METHOD', { message: `meshgate does not forward ${target.path}` });
      }
      if (!state) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: 'this tenant has no xds plane' });

      const authenticated = await state.authenticate({ socket: exchange.socket, authorization: exchange.headers.authorization });
      context.admit(authenticated);
      state.authorize(authenticated.identity);
      // The rule that allowed is the one that grants the method too.
      context.rule = state.mayCall(authenticated.identity, target.path);
      const credential = upstreamCredential(context, state, authenticated.bearer);
      if (target.path === STREAM_METRICS_METHOD) {
        const caller = { identity: authenticated.identity, cluster: credential.cluster, clusters: state.clusters };
        return handleStreamMetrics(context, state.metrics, caller, deps.metricsService);
      }

      const headers: OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(exchange.headers)) {
        if (value !== undefined && !name.startsWith(':') && name !== 'host' && name !== 'authorization') headers[name] = value;
      }
      Object.assign(headers, {
        ':method': 'POST',
        ':scheme': 'https',
        ':path': target.path,
        ':authority': state.pool.value.pool.authority,
        // gRPC needs `te: trailers`; as a hop-by-hop header it was removed, so it is set again.
        te: 'trailers',
        authorization: `Bearer ${credential.token}`,
        clusterid: credential.cluster,
        'x-request-id': exchange.id,
      });

      // Every ADS request is read on its way: debug type URLs pass the debug allowlist.
      const kind = XDS_METHODS.get(target.path);
      deps.onStream?.(state.tenant, 1);
      const started = performance.now();
      let terminate: ((code: number, message: string) => void) | undefined;
      const { pool, streams } = state.pool.value;
      try {
        // istioctl's per-replica debug requests are asked of every replica: ./debug-fanout.ts.
        const peeked = kind === 'sotw' ? openWhilePeeking(exchange, pool, headers) : undefined;
        const fanout = await peeked?.fanout;
        if (fanout || exchange.stream.closed) peeked?.cancel();
        const result = exchange.stream.closed
          ? { grpcStatus: undefined }
          : fanout
          ? await serveFanout({
              stream: exchange.stream,
              pool,
              headers,
              first: fanout.fields,
              firstMessage: fanout.message,
              debugEndpoints: state.debugEndpoints,
              timeoutMs: state.debugFanoutTimeoutMs,
              ...(deps.onDebugFanout ? { onOutcome: (outcome: FanoutOutcome) => deps.onDebugFanout?.(state.tenant, outcome) } : {}),
            })
          : await forwardGrpc(exchange, {
              pool: peeked?.pool ?? pool,
              headers,
              ...(deps.onBytes ? { onBytes: (direction, bytes) => deps.onBytes?.(state.tenant, direction, bytes) } : {}),
              onOpen: (end) => {
                terminate = end;
                open.add(end);
                streams.add(end);
              },
              ...(kind === undefined ? {} : { checkMessage: (payload: Buffer) => checkDebugRequest(readDiscoveryRequest(payload, kind), state.debugEndpoints) }),
            });
        context.grpcStatus = result.grpcStatus;
        if (result.error) context.error = result.error;
      } finally {
        if (terminate) {
          open.delete(terminate);
          streams.delete(terminate);
        }
        deps.onStream?.(state.tenant, -1);
        deps.onStreamEnd?.(state.tenant, (performance.now() - started) / 1000);
      }
    },

    terminateAll() {
      for (const end of [...open]) end(GRPC_STATUS.UNAVAILABLE, 'MG_ERR_SHUTTING_DOWN: meshgate is shutting down; reconnect');
      open.clear();
    },
  };
}


function isGrpcRequest(exchange: Exchange): boolean {
  return isGrpcContentType(exchange.headers['content-type']);
}

/**
 * The token and `clusterid` to send. A token caller's own token, with the cluster that issued it;
 * a claimed `clusterid` must be one of the tenant's clusters and, for a token, the token's own.
 * A certificate caller: the tenant's configured istiod token and its cluster.
 */
function upstreamCredential(
  context: RoutedContext,
  state: XdsState,
  bearer: { readonly token: string; readonly identity: Identity } | undefined,
): { token: string; cluster: string } {
  const claimed = [...new Set(context.stripped?.get('clusterid') ?? [])];
  if (claimed.length > 1) {
    throw new MeshgateError('MG_ERR_AUTHZ_CLUSTER_MISMATCH', { message: 'more than one clusterid', detail: claimed.join(', ') });
  }
  const [claimedCluster] = claimed;
  if (claimedCluster !== undefined && !state.clusters.has(claimedCluster)) {
    throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_CLUSTER', { message: 'clusterid is not a cluster of this tenant', detail: claimedCluster });
  }
  const credential =
    bearer?.identity.cluster !== undefined ? { token: bearer.token, cluster: bearer.identity.cluster } : state.ownToken;
  if (!credential) throw new MeshgateError('MG_ERR_AUTHN_REQUIRED', { message: 'xds streams need a bearer token' });
  if (claimedCluster !== undefined && claimedCluster !== credential.cluster) {
    throw new MeshgateError('MG_ERR_AUTHZ_CLUSTER_MISMATCH', {
      message: "clusterid is not the cluster of the caller's credential",
      detail: `${claimedCluster} claimed, ${credential.cluster} proved`,
    });
  }
  return credential;
}
