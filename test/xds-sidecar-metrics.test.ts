/**
 * Sidecar metrics (Envoy's MetricsService) through meshgate, from the sidecar's side: a grpc-js
 * client stream of real `StreamMetricsMessage`s (envoy-api and Prometheus client protos), to a
 * stand-in collector per tenant that records what it got.
 */
import { readFileSync } from 'node:fs';
import { credentials, type ClientWritableStream, loadPackageDefinition, Metadata, Server, ServerCredentials, status, type ServerReadableStream, type ServiceClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { PROTO_INCLUDE_DIRS } from '../src/grpc/proto-root.js';
import { METRICS_SERVICE_PROTO } from '../src/planes/metrics/protos.js';
import { storeOf } from '../src/planes/metrics/stream-metrics.js';
import type { XdsState } from '../src/planes/xds/plane.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { bearer, metadata, upstreamTls } from './helpers/grpc.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

const definition = loadSync(METRICS_SERVICE_PROTO, { includeDirs: PROTO_INCLUDE_DIRS, keepCase: true, longs: String, enums: String, defaults: false, oneofs: true });
const MetricsService = (loadPackageDefinition(definition) as any).envoy.service.metrics.v3.MetricsService as ServiceClientConstructor;

interface Received {
  readonly metadata: Record<string, unknown>;
  readonly messages: { identifier?: { node?: { id?: string } }; envoy_metrics?: { name?: string }[] }[];
}

interface Collector {
  readonly url: string;
  readonly caFile: string;
  readonly serverName: string;
  readonly received: Received[];
  close(): Promise<void>;
}

/** A stand-in collector: a grpc-js MetricsService over TLS on port 0 that records every stream. */
async function startCollector(): Promise<Collector> {
  const tls = await upstreamTls('collector.test');
  const received: Received[] = [];
  const server = new Server();
  server.addService(MetricsService.service, {
    StreamMetrics: (call: ServerReadableStream<Received['messages'][number], object>, callback: (err: null, response: object) => void) => {
      const entry: Received = { metadata: call.metadata.getMap(), messages: [] };
      received.push(entry);
      call.on('data', (message: Received['messages'][number]) => entry.messages.push(message));
      call.on('error', () => undefined);
      call.on('end', () => callback(null, {}));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], false), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { url: `https://127.0.0.1:${port}`, caFile: tls.caFile, serverName: tls.serverName, received, close: () => {
      server.forceShutdown();
      return Promise.resolve();
    },
  };
}

const NODE = 'sidecar~10.1.0.7~productpage-v1-6b7f6dc4f5-x2x7p.bookinfo~bookinfo.svc.cluster.local';
const OTHER_NODE = 'sidecar~10.1.0.8~reviews-v2-5d8f7b8c9-abcde.bookinfo~bookinfo.svc.cluster.local';

const node = (id: string, cluster?: string) => ({
  identifier: { node: { id, ...(cluster === undefined ? {} : { metadata: { fields: { CLUSTER_ID: { stringValue: cluster } } } }) } },
});

const counter = (name: string, value: number, labels: Record<string, string> = {}) => ({
  name,
  type: 'COUNTER',
  metric: [{ label: Object.entries(labels).map(([n, v]) => ({ name: n, value: v })), counter: { value } }],
});

interface MetricsClient {
  StreamMetrics(md: Metadata, callback: (err: ServiceError | null) => void): ClientWritableStream<object>;
}

let sandbox: Sandbox;
let gateway: ExtraGateway;
let acmeCollector: Collector;
let globexCollector: Collector;

beforeAll(async () => {
  sandbox = await startTestSandbox();
  [acmeCollector, globexCollector] = await Promise.all([startCollector(), startCollector()]);
  const collectorOf = (c: Collector) => ({ url: c.url, ca: c.caFile, serverName: c.serverName });
  gateway = await startGatewayFrom(sandbox, (config) => {
    const tenants = config.tenants as Record<string, any>[];
    const acme = tenants.find((t) => t.id === 'acme');
    const globex = tenants.find((t) => t.id === 'globex');
    if (!acme || !globex) throw new Error('sandbox tenants changed');
    acme.metrics = { collector: collectorOf(acmeCollector), expose: { maxProxies: 2, maxSeries: 3 } };
    globex.metrics = { collector: collectorOf(globexCollector) };
  });
});
afterAll(async () => {
  await gateway.close();
  await acmeCollector.close();
  await sandbox.close();
});

/** Streams the messages as a sidecar does, ends the stream, and returns how it ended. */
function streamMetrics(tenant: 'acme' | 'globex', md: Metadata, messages: object[]): Promise<{ code: number; details: string }> {
  const host = tenantOf(sandbox, tenant).host;
  const port = gateway.port('xds');
  const client = new MetricsService(`127.0.0.1:${port}`, credentials.createSsl(readFileSync(sandbox.info.caFile)), {
    'grpc.ssl_target_name_override': host,
    'grpc.default_authority': `${host}:${port}`,
    'grpc.use_local_subchannel_pool': 1,
  });
  return new Promise((resolve) => {
    const call = (client as unknown as MetricsClient).StreamMetrics(md, (err) => {
      client.close();
      resolve(err ? { code: err.code, details: err.details } : { code: status.OK, details: '' });
    });
    call.on('error', () => undefined);
    for (const message of messages) call.write(message);
    call.end();
  });
}

const token = (tenant: 'acme' | 'globex') => metadata(bearer(tenantOf(sandbox, tenant).tokens.xds));
const receivedBy = (collector: Collector, id: string) => collector.received.filter((r) => r.messages[0]?.identifier?.node?.id === id);

describe('forwarding to the tenant\'s own collector', () => {
  it("sends an acme sidecar's messages to acme's collector only, with clusterid pinned and without the sidecar's token", async () => {
    const id = 'sidecar~10.1.0.9~ratings-v1-1.bookinfo~bookinfo.svc.cluster.local';
    const outcome = await streamMetrics('acme', token('acme'), [
      { ...node(id, 'acme-east'), envoy_metrics: [counter('envoy_cluster_upstream_rq_total', 7, { envoy_cluster_name: 'outbound|9080||reviews' })] },
      { envoy_metrics: [counter('envoy_cluster_upstream_rq_total', 9, { envoy_cluster_name: 'outbound|9080||reviews' })] },
    ]);
    expect(outcome.code).toBe(status.OK);
    const [got] = receivedBy(acmeCollector, id);
    expect(got?.messages.map((m) => m.envoy_metrics?.[0]?.name)).toEqual(['envoy_cluster_upstream_rq_total', 'envoy_cluster_upstream_rq_total']);
    expect(got?.metadata.clusterid).toBe('acme-east');
    expect(got?.metadata.authorization).toBeUndefined();
    expect(receivedBy(globexCollector, id)).toEqual([]);
    expect(await gateway.gateway.metrics.registry.getSingleMetricAsString('meshgate_xds_metrics_messages_total')).toMatch(/tenant="acme"} [1-9]/);
  });

  it("sends globex's to globex's collector only, with clusterid set to its token's cluster", async () => {
    const id = 'sidecar~10.2.0.1~details-v1-1.bookinfo~bookinfo.svc.cluster.local';
    const outcome = await streamMetrics('globex', token('globex'), [{ ...node(id), envoy_metrics: [counter('envoy_server_live', 1)] }]);
    expect(outcome.code).toBe(status.OK);
    expect(receivedBy(globexCollector, id)[0]?.metadata.clusterid).toBe('globex-main');
    expect(receivedBy(acmeCollector, id)).toEqual([]);
  });
});

describe('refusals', () => {
  const refused = async (tenant: 'acme' | 'globex', md: Metadata, messages: object[]) => {
    const before = acmeCollector.received.reduce((n, r) => n + r.messages.length, 0);
    const outcome = await streamMetrics(tenant, md, messages);
    // Not one message of a refused stream reached the collector.
    expect(acmeCollector.received.reduce((n, r) => n + r.messages.length, 0)).toBe(before);
    return outcome;
  };

  it('refuses an unauthenticated sidecar', async () => {
    const outcome = await refused('acme', metadata(), [{ ...node(NODE), envoy_metrics: [counter('envoy_x', 1)] }]);
    expect(outcome.code).toBe(status.UNAUTHENTICATED);
    expect(outcome.details).toMatch(/^MG_ERR_AUTHN_REQUIRED: /);
  });

  it("refuses globex's token on acme's host", async () => {
    const outcome = await refused('acme', token('globex'), [{ ...node(NODE), envoy_metrics: [counter('envoy_x', 1)] }]);
    expect(outcome.code).toBe(status.UNAUTHENTICATED);
    expect(outcome.details).toMatch(/^MG_ERR_AUTHN_/);
  });

  it("refuses a node whose CLUSTER_ID is another tenant's cluster", async () => {
    const outcome = await refused('acme', token('acme'), [{ ...node(NODE, 'globex-main'), envoy_metrics: [counter('envoy_x', 1)] }]);
    expect(outcome.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.details).toMatch(/^MG_ERR_ROUTE_UNKNOWN_CLUSTER: /);
  });

  it("refuses a node whose CLUSTER_ID is another of the tenant's clusters than the token's", async () => {
    const outcome = await refused('acme', token('acme'), [{ ...node(NODE, 'acme-west'), envoy_metrics: [counter('envoy_x', 1)] }]);
    expect(outcome.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.details).toMatch(/^MG_ERR_AUTHZ_CLUSTER_MISMATCH: /);
  });

  it("refuses a node in another namespace than the token's service account", async () => {
    const outcome = await refused('acme', token('acme'), [{ ...node('sidecar~10.1.0.7~istiod-1.istio-system~istio-system.svc.cluster.local'), envoy_metrics: [] }]);
    expect(outcome.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.details).toMatch(/^MG_ERR_AUTHZ_NODE_MISMATCH: /);
  });

  it('refuses a stream whose first message names no node, and one that changes node', async () => {
    const first = await refused('acme', token('acme'), [{ envoy_metrics: [counter('envoy_x', 1)] }]);
    expect(first.code).toBe(status.INVALID_ARGUMENT);
    expect(first.details).toMatch(/^MG_ERR_METRICS_IDENTIFIER: /);
    const changed = await streamMetrics('acme', token('acme'), [{ ...node(NODE), envoy_metrics: [] }, { ...node(OTHER_NODE), envoy_metrics: [] }]);
    expect(changed.code).toBe(status.INVALID_ARGUMENT);
    expect(changed.details).toMatch(/^MG_ERR_METRICS_IDENTIFIER: /);
  });
});

describe('the latest values by proxy, within bounds', () => {
  const acmeStore = () => {
    const snapshot = gateway.gateway.current();
    const tenant = snapshot.tenants.find((t) => t.id === 'acme');
    if (!tenant) throw new Error('no acme');
    const store = storeOf((snapshot.planeState(tenant, 'xds') as XdsState | undefined)?.metrics);
    if (!store) throw new Error('acme keeps no sidecar metrics');
    return store;
  };
  /** What the provider's Prometheus scrapes: the admin listener's page for one tenant. */
  const scrape = (tenant: string) => fetch(`http://127.0.0.1:${gateway.addresses.admin.port}/tenants/${tenant}/sidecar-metrics`);

  it('keeps the latest value per proxy, labelled by pod and namespace, and drops and counts what is over maxSeries', async () => {
    const outcome = await streamMetrics('acme', token('acme'), [
      { ...node(NODE), envoy_metrics: [counter('envoy_http_rq_total', 1, { envoy_http_conn_manager_prefix: 'inbound_0_0_0_0_9080' })] },
      {
        envoy_metrics: [
          counter('envoy_http_rq_total', 5, { envoy_http_conn_manager_prefix: 'inbound_0_0_0_0_9080' }),
          counter('envoy_a_total', 1),
          counter('envoy_b_total', 1),
          counter('envoy_c_total', 1),
        ],
      },
    ]);
    expect(outcome.code).toBe(status.OK);
    const page = await scrape('acme');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await page.text();
    expect(text).toBe(acmeStore().render());
    expect(text).toContain('envoy_http_rq_total{pod="productpage-v1-6b7f6dc4f5-x2x7p",namespace="bookinfo",envoy_http_conn_manager_prefix="inbound_0_0_0_0_9080"} 5');
    expect(text).not.toContain('} 1\nenvoy_http_rq_total');
    expect(text).not.toContain('envoy_c_total');
    expect(acmeStore().stats().series).toBeLessThanOrEqual(3);
    await vi.waitFor(async () =>
      expect(await gateway.gateway.metrics.registry.getSingleMetricAsString('meshgate_xds_metrics_series_dropped_total')).toMatch(/reason="max_series"} [1-9]/),
    );
    // Nothing of globex's sidecars is among acme's.
    expect(text).not.toContain('details-v1');
  });

  it("serves a page only for a tenant that keeps its sidecars' metrics", async () => {
    // globex sends to its collector and keeps nothing here; an unknown tenant has no page either.
    for (const tenant of ['globex', 'nobody', '..%2Facme']) expect((await scrape(tenant)).status, tenant).toBe(404);
  });
});

describe('a collector that is down', () => {
  it('ends the stream with UNAVAILABLE and MG_ERR_UPSTREAM_UNAVAILABLE', async () => {
    await globexCollector.close();
    const outcome = await streamMetrics('globex', token('globex'), [{ ...node('sidecar~10.2.0.2~x-1.bookinfo~bookinfo.svc.cluster.local'), envoy_metrics: [] }]);
    expect(outcome.code).toBe(status.UNAVAILABLE);
    expect(outcome.details).toMatch(/^MG_ERR_UPSTREAM_(UNAVAILABLE|RESET): /);
  });
});
