/**
 * Envoy's MetricsService (`envoy.service.metrics.v3.MetricsService/StreamMetrics`) on the xds
 * listener: a sidecar streams its stats, and meshgate sends them to its own tenant's collector
 * only, keeps their latest values for the tenant's Prometheus endpoint, or both.
 *
 *   (the xds plane: gRPC → credential → rules, as for ADS) → the node the first message names
 *   (its CLUSTER_ID the credential's cluster, its namespace the token's) → collector | store
 *
 * Each message is read before any byte of it goes on: the collector never sees a message of a
 * node the caller may not speak for. The caller's token never goes to the collector: meshgate
 * sends the collector token the tenant configured, if any, and `clusterid` set to the cluster
 * the caller proved.
 */
import type { OutgoingHttpHeaders } from 'node:http2';
import type { Identity } from '../../auth/identity.js';
import type { XdsUpstreamConfig } from '../../config/schema.js';
import { ERROR_CODES, MeshgateError, toMeshgateError, type ErrorCode } from '../../errors.js';
import { forwardGrpc } from '../../forward/grpc.js';
import { createH2Pool, type H2Pool } from '../../forward/h2-pool.js';
import { createMessageReader } from '../../grpc/message-reader.js';
import { grpcStatusHeaders, GRPC_STATUS, respondTrailersOnly } from '../../grpc/status.js';
import type { H2Exchange } from '../../listener/exchange.js';
import { closeMessage, type CloseReason, type Lease } from '../../tenancy/registry.js';
import type { TenantCore } from '../../tenancy/tenant.js';
import type { RoutedContext } from '../plane.js';
import { checkNodeClaim, clusterOfMetadata, type ProxyName } from './node-identity.js';
import { decodeStreamMetrics, STREAM_METRICS_METHOD } from './protos.js';
import { createMetricsStore, type DropReason, type MetricsStore } from './store.js';

export { STREAM_METRICS_METHOD };

export interface MetricsServiceEvents {
  readonly onStream?: (tenant: string, delta: 1 | -1) => void;
  readonly onMessage?: (tenant: string) => void;
  readonly onDropped?: (tenant: string, reason: DropReason, count: number) => void;
}

type End = (code: number, message: string) => void;

interface Collector {
  readonly pool: H2Pool;
  readonly streams: Set<End>;
}

interface Sink {
  readonly store: MetricsStore;
  readonly streams: Set<End>;
}

export interface MetricsState {
  readonly collector?: Lease<Collector>;
  readonly collectorToken?: string;
  readonly store?: Lease<Sink>;
}

/** The proved caller, as the xds plane established it. */
export interface MetricsCaller {
  readonly identity: Identity;
  /** The cluster of the caller's credential. */
  readonly cluster: string;
  /** The tenant's clusters. */
  readonly clusters: ReadonlySet<string>;
}

const endAll = (streams: Set<End>, reason: CloseReason): void => {
  const message = closeMessage(reason);
  for (const end of [...streams]) end(GRPC_STATUS.UNAVAILABLE, message);
  streams.clear();
};

/** The tenant's collector pool and store, from its registry resources; undefined without `metrics`. */
export function buildMetricsState(tenant: TenantCore): MetricsState | undefined {
  const settings = tenant.config.metrics;
  if (!settings) return undefined;
  const { collector, expose } = settings;
  return {
    ...(collector ? { collector: leaseCollector(tenant, collector) } : {}),
    ...(collector?.token ? { collectorToken: tenant.files.text(collector.token.file).trim() } : {}),
    ...(expose
      ? {
          store: tenant.resources.use('metrics/store', expose, () => {
            const streams = new Set<End>();
            return { value: { store: createMetricsStore(expose), streams }, close: (reason) => endAll(streams, reason) };
          }),
        }
      : {}),
  };
}

function leaseCollector(tenant: TenantCore, upstream: XdsUpstreamConfig): Lease<Collector> {
  const ca = upstream.ca === undefined ? undefined : tenant.files.text(upstream.ca);
  const { token: _token, ...connection } = upstream;
  return tenant.resources.use('metrics/collector', { connection, ca, allowLoopback: tenant.allowLoopbackUpstreams }, () => {
    const pool = createH2Pool({ config: upstream, ca, allowLoopback: tenant.allowLoopbackUpstreams });
    const streams = new Set<End>();
    return {
      value: { pool, streams },
      close(reason) {
        endAll(streams, reason);
        pool.close();
      },
    };
  });
}

export function holdMetrics(state: MetricsState | undefined): () => void {
  const releases = [state?.collector?.hold(), state?.store?.hold()];
  return () => {
    for (const release of releases) release?.();
  };
}

/** The store a tenant's Prometheus endpoint reads, if it exposes its sidecars' metrics. */
export const storeOf = (state: MetricsState | undefined): MetricsStore | undefined => state?.store?.value.store;

/** Answers one StreamMetrics stream of an authenticated, authorized caller. */
export async function handleStreamMetrics(
  context: RoutedContext,
  state: MetricsState | undefined,
  caller: MetricsCaller,
  events: MetricsServiceEvents = {},
): Promise<void> {
  if (!state) throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_METHOD', { message: 'this tenant does not take sidecar metrics' });
  const exchange = context.exchange as H2Exchange;
  const tenant = caller.identity.tenant;
  const check = createMessageCheck(state, caller, events);
  const streams = [state.collector?.value.streams, state.store?.value.streams].filter((s) => s !== undefined);
  let terminate: End | undefined;
  const onOpen = (end: End): void => {
    terminate = end;
    for (const s of streams) s.add(end);
  };
  events.onStream?.(tenant, 1);
  try {
    const result = state.collector
      ? await forwardGrpc(exchange, { pool: state.collector.value.pool, headers: collectorHeaders(context, state, caller), onOpen, checkMessage: check })
      : await sink(exchange, check, onOpen);
    context.grpcStatus = result.grpcStatus;
    if (result.error) context.error = result.error;
  } finally {
    if (terminate) for (const s of streams) s.delete(terminate);
    events.onStream?.(tenant, -1);
  }
}

function collectorHeaders(context: RoutedContext, state: MetricsState, caller: MetricsCaller): OutgoingHttpHeaders {
  const { exchange } = context;
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(exchange.headers)) {
    if (value !== undefined && !name.startsWith(':') && name !== 'host' && name !== 'authorization') headers[name] = value;
  }
  return {
    ...headers,
    ':method': 'POST',
    ':scheme': 'https',
    ':path': STREAM_METRICS_METHOD,
    ':authority': state.collector?.value.pool.authority ?? '',
    te: 'trailers',
    clusterid: caller.cluster,
    'x-request-id': exchange.id,
    ...(state.collectorToken === undefined ? {} : { authorization: `Bearer ${state.collectorToken}` }),
  };
}

/** Decodes each message, checks the node it names, and records its values when the tenant exposes them. */
function createMessageCheck(state: MetricsState, caller: MetricsCaller, events: MetricsServiceEvents): (payload: Buffer) => void {
  const tenant = caller.identity.tenant;
  let node: string | undefined;
  let name: ProxyName = {};
  return (payload) => {
    let message;
    try {
      message = decodeStreamMetrics(payload);
    } catch (err) {
      throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'not a StreamMetricsMessage', cause: err });
    }
    const claimed = message.identifier?.node;
    if (claimed) {
      const id = claimed.id ?? '';
      if (node !== undefined && id !== node) {
        throw new MeshgateError('MG_ERR_METRICS_IDENTIFIER', { message: 'a later message names another node', detail: `${node}, then ${id}` });
      }
      name = checkNodeClaim({ id, ...optionalCluster(clusterOfMetadata(claimed.metadata)) }, caller.identity, caller.cluster, caller.clusters);
      node = id;
    } else if (node === undefined) {
      throw new MeshgateError('MG_ERR_METRICS_IDENTIFIER', { message: 'the first message has no identifier.node' });
    }
    events.onMessage?.(tenant);
    const store = state.store?.value.store;
    if (!store) return;
    const dropped = store.record(node, name, message.envoy_metrics ?? []);
    for (const [reason, count] of Object.entries(dropped) as [DropReason, number][]) events.onDropped?.(tenant, reason, count);
  };
}

const optionalCluster = (cluster: string | undefined): { cluster?: string } => (cluster === undefined ? {} : { cluster });

/** The largest message kept to read; Envoy's flushes of a busy sidecar stay well below. */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/**
 * No collector: meshgate is the MetricsService itself. Envoy never ends the stream; a client that
 * does gets the (empty) StreamMetricsResponse and OK.
 */
function sink(exchange: H2Exchange, check: (payload: Buffer) => void, onOpen: (end: End) => void): Promise<{ grpcStatus: string | undefined; error?: MeshgateError }> {
  const { stream } = exchange;
  return new Promise((resolve) => {
    let grpcStatus: string | undefined;
    let failure: MeshgateError | undefined;
    const fail = (error: MeshgateError, code = error.grpcStatus): void => {
      if (failure) return;
      failure = error;
      grpcStatus = String(code);
      stream.unpipe(reader);
      respondTrailersOnly(stream, code, `${error.code}: ${error.message}`);
    };
    const reader = createMessageReader({ maxMessageBytes: MAX_MESSAGE_BYTES, check });
    reader.on('error', (err) => fail(toMeshgateError(err)));
    reader.on('data', () => undefined);
    reader.on('end', () => {
      if (failure || stream.closed || stream.destroyed) return;
      grpcStatus = String(GRPC_STATUS.OK);
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers(grpcStatusHeaders(GRPC_STATUS.OK, '')));
      // One empty StreamMetricsResponse: an uncompressed message of length 0.
      stream.end(Buffer.alloc(5));
    });
    stream.on('error', () => undefined);
    stream.once('close', () => resolve(failure ? { grpcStatus, error: failure } : { grpcStatus }));
    stream.pipe(reader);
    onOpen((code, message) => {
      const reason = message.split(':', 1)[0] ?? '';
      fail(new MeshgateError(Object.hasOwn(ERROR_CODES, reason) ? (reason as ErrorCode) : 'MG_ERR_SHUTTING_DOWN'), code);
    });
  });
}
