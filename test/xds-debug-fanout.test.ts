/**
 * istioctl's per-replica debug requests across every istiod replica of a tenant: three replicas
 * (grpc-js, each knowing only the sidecars connected to it, as istiod does), sidecars spread
 * across them by meshgate's pool, and istioctl's `istio.io/debug/syncz` and `config_dump` asked
 * through meshgate with real grpc-js clients.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { xdsProtos } from '../src/sandbox/xds-protos.js';
import { ISTIOD_METADATA_KEY } from '../src/planes/xds/debug-fanout.js';
import {
  adsClient,
  adsOnce,
  bearer,
  identifierOf,
  metadata,
  status,
  TYPE_URL,
  type AdsCall,
  type AdsClient,
  type DiscoveryResponse,
} from './helpers/grpc.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';
import { startIstiodReplicas, type IstiodReplicas } from './helpers/istiod-replicas.js';

const CONFIG_DUMP = 'istio.io/debug/config_dump';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  await sandbox.close();
});

const startReplicas = async (prefix: string, count: number) => {
  const started = await startIstiodReplicas(prefix, count);
  closers.push(() => started.close());
  return started;
};

type Xds = IstiodReplicas['xds'];

/** A meshgate whose acme (and, if given, globex) istiod replicas are the ones started here. */
async function gatewayTo(acme: Xds, { globex, debugEndpoints, timeoutMs = 5000 }: { globex?: Xds; debugEndpoints?: string[]; timeoutMs?: number } = {}): Promise<ExtraGateway> {
  const gateway = await startGatewayFrom(
    sandbox,
    (config) => {
      for (const [id, xds] of [['acme', acme], ['globex', globex]] as const) {
        if (!xds) continue;
        const tenant = (config.tenants as Record<string, any>[]).find((t) => t.id === id);
        if (!tenant) throw new Error(`no tenant ${id}`);
        const { url: _single, ...rest } = tenant.istiod.xds;
        tenant.istiod.xds = { ...rest, ...xds };
        if (debugEndpoints && id === 'acme') tenant.debug = { ...tenant.debug, endpoints: debugEndpoints };
        if (id === 'acme') tenant.xds = { ...tenant.xds, debugFanoutTimeout: `${timeoutMs}ms` };
      }
    },
  );
  closers.push(() => gateway.close());
  return gateway;
}

function client(port: number, tenant: 'acme' | 'globex' = 'acme'): AdsClient {
  const c = adsClient({ port, host: tenantOf(sandbox, tenant).host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  closers.push(() => c.close());
  return c;
}

/** Sidecars with an ADS stream each, held open, once each has its first answer. */
async function connectSidecars(c: AdsClient, ids: string[], tenant: 'acme' | 'globex' = 'acme'): Promise<AdsCall[]> {
  const calls: AdsCall[] = [];
  for (const id of ids) {
    const call = c.StreamAggregatedResources(metadata(bearer(tenantOf(sandbox, tenant).tokens.xds)));
    call.on('error', () => undefined);
    const first = new Promise((resolve) => call.once('data', resolve));
    call.write({ node: { id }, type_url: TYPE_URL.cluster });
    await first;
    calls.push(call);
    closers.push(() => call.cancel());
  }
  return calls;
}

interface Listed {
  readonly id: string;
  readonly istiod: string | undefined;
  readonly cluster?: string | undefined;
}

function proxiesOf(response: DiscoveryResponse | undefined): Listed[] {
  return (response?.resources ?? []).map((r) => {
    const config = xdsProtos().unpack(r) as { node: { id: string; metadata?: { fields?: Record<string, { stringValue?: string }> } } };
    const fields = config.node.metadata?.fields;
    return { id: config.node.id, istiod: fields?.[ISTIOD_METADATA_KEY]?.stringValue, cluster: fields?.CLUSTER_ID?.stringValue };
  });
}

const istioctl = (c: AdsClient, request: object = { node: { id: 'istioctl' }, type_url: TYPE_URL.syncz }) =>
  adsOnce(c, metadata(bearer(tenantOf(sandbox, 'acme').tokens.debug)), request);

async function metric(gateway: ExtraGateway, name: string): Promise<string> {
  return (await gateway.gateway.metrics.registry.getSingleMetricAsString(name)).split('\n').filter((l) => !l.startsWith('#')).join('\n');
}

describe('istio.io/debug/syncz across every replica', () => {
  it('lists every proxy once, each with the replica it is connected to, and names every replica as the control plane', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds);
    const c = client(gateway.port('xds'));
    const sidecars = ['sidecar~a', 'sidecar~b', 'sidecar~c', 'sidecar~d', 'sidecar~e', 'sidecar~f'];
    await connectSidecars(c, sidecars);
    // The pool spread the sidecars: each replica holds two, and no sidecar is on two replicas.
    expect(replicas.map((r) => r.connected.size)).toEqual([2, 2, 2]);
    // A proxy that reconnected shows on two replicas for a moment: listed once all the same.
    const [first, second] = replicas;
    second?.alsoLists.push([...(first?.connected ?? [])][0] ?? '');

    const outcome = await istioctl(c);
    const listed = proxiesOf(outcome.response);
    expect(listed.map((p) => p.id).sort()).toEqual(sidecars);
    for (const proxy of listed) {
      const holder = replicas.find((r) => r.connected.has(proxy.id));
      expect(proxy.istiod, proxy.id).toBe(holder?.name);
      // What istiod said of the proxy is kept.
      expect(proxy.cluster).toBe('acme-east');
    }
    expect(identifierOf(outcome.response)).toMatchObject({ Component: 'istiod', ID: 'istiod-acme-0,istiod-acme-1,istiod-acme-2', Info: { version: '1.32-dev' } });
    expect(outcome.response?.type_url).toBe(TYPE_URL.syncz);
    // Every replica was asked once, with the caller's own token.
    for (const replica of replicas) {
      expect(replica.asked).toEqual([{ typeUrl: TYPE_URL.syncz, authorization: `Bearer ${tenantOf(sandbox, 'acme').tokens.debug}`, clusterid: expect.any(String) as string, node: 'istioctl' }]);
    }
    expect(await metric(gateway, 'meshgate_xds_debug_fanout_total')).toContain('meshgate_xds_debug_fanout_total{tenant="acme",outcome="complete"} 1');
  });

  it('reports a replica that does not answer in time as MISSING, and still lists the others’ proxies', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds, { timeoutMs: 300 });
    const c = client(gateway.port('xds'));
    await connectSidecars(c, ['sidecar~a', 'sidecar~b', 'sidecar~c']);
    const hung = replicas[2];
    if (!hung) throw new Error('three replicas');
    hung.hang = true;

    const outcome = await istioctl(c);
    expect(outcome.response).toBeDefined();
    const listed = proxiesOf(outcome.response);
    const answered = replicas.slice(0, 2).flatMap((r) => [...r.connected]);
    expect(listed.filter((p) => !p.id.startsWith('MISSING')).map((p) => p.id).sort()).toEqual(answered.sort());
    // The hung replica's proxy is not listed, but the replica is: a row of its own, and in ISTIOD.
    expect(listed.filter((p) => p.id.startsWith('MISSING'))).toEqual([{ id: 'MISSING: istiod replica 3 of 3 did not answer (no answer within 300 ms)', istiod: 'MISSING(replica 3 of 3)' }]);
    expect(identifierOf(outcome.response)).toMatchObject({ ID: 'istiod-acme-0,istiod-acme-1,MISSING(replica 3 of 3)' });
    expect(hung.asked).toHaveLength(1);
    expect(await metric(gateway, 'meshgate_xds_debug_fanout_total')).toContain('outcome="partial"} 1');
    expect(await metric(gateway, 'meshgate_xds_debug_fanout_replicas_missing_total')).toContain('meshgate_xds_debug_fanout_replicas_missing_total{tenant="acme"} 1');
  });

  it('merges istioctl x internal-debug syncz (istio.io/debug, syncz) too: every proxy once, each with its replica, a hung one MISSING', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds, { timeoutMs: 300 });
    const c = client(gateway.port('xds'));
    const sidecars = ['sidecar~a', 'sidecar~b', 'sidecar~c', 'sidecar~d'];
    await connectSidecars(c, sidecars);
    const [first, second, third] = replicas;
    if (!first || !second || !third) throw new Error('three replicas');
    second.alsoLists.push([...first.connected][0] ?? '');
    third.hang = true;

    const outcome = await istioctl(c, { node: { id: 'istioctl' }, type_url: 'istio.io/debug', resource_names: ['syncz'] });
    expect(outcome.response?.type_url).toBe('istio.io/debug');
    const [any] = outcome.response?.resources ?? [];
    expect(any?.type_url).toBe('istio.io/debug');
    const listed = JSON.parse(Buffer.from(any?.value ?? []).toString('utf8')) as { proxy?: string; istiod: string; cluster_id?: string; error?: string }[];
    const answered = [...first.connected, ...second.connected];
    expect(listed.filter((e) => e.proxy !== undefined).map((e) => e.proxy).sort()).toEqual(answered.sort());
    for (const entry of listed.filter((e) => e.proxy !== undefined)) {
      expect(entry.istiod, entry.proxy).toBe(replicas.find((r) => r.connected.has(entry.proxy ?? ''))?.name);
      expect(entry.cluster_id).toBe('acme-east');
    }
    expect(listed.filter((e) => e.proxy === undefined)).toEqual([{ istiod: 'MISSING(replica 3 of 3)', error: 'did not answer (no answer within 300 ms)' }]);
    expect(identifierOf(outcome.response)).toMatchObject({ ID: 'istiod-acme-0,istiod-acme-1,MISSING(replica 3 of 3)' });
    for (const replica of replicas) expect(replica.asked.map((a) => a.typeUrl)).toEqual(['istio.io/debug']);
  });

  it('fails with UNAVAILABLE when no replica answers', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 2);
    for (const replica of replicas) replica.hang = true;
    const gateway = await gatewayTo(xds, { timeoutMs: 200 });
    const outcome = await istioctl(client(gateway.port('xds')));
    expect(outcome.response).toBeUndefined();
    expect(outcome.status.code).toBe(status.UNAVAILABLE);
    expect(outcome.status.details).toBe('MG_ERR_UPSTREAM_UNAVAILABLE: none of 2 istiod replicas answered');
    expect(await metric(gateway, 'meshgate_xds_debug_fanout_total')).toContain('outcome="failed"} 1');
  });

  it("asks only the tenant's own replicas: another tenant's are never asked, and its proxies never listed", async () => {
    const acme = await startReplicas('istiod-acme', 3);
    const globex = await startReplicas('istiod-globex', 3);
    const gateway = await gatewayTo(acme.xds, { globex: globex.xds });
    await connectSidecars(client(gateway.port('xds'), 'globex'), ['sidecar~globex-1', 'sidecar~globex-2', 'sidecar~globex-3'], 'globex');
    await connectSidecars(client(gateway.port('xds')), ['sidecar~acme-1']);

    const outcome = await istioctl(client(gateway.port('xds')));
    expect(proxiesOf(outcome.response).map((p) => p.id)).toEqual(['sidecar~acme-1']);
    expect(acme.replicas.map((r) => r.asked.length)).toEqual([1, 1, 1]);
    expect(globex.replicas.flatMap((r) => r.asked)).toEqual([]);
  });

  it('still sends a sidecar’s ADS stream to one replica only', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds);
    await connectSidecars(client(gateway.port('xds')), ['sidecar~only']);
    expect(replicas.flatMap((r) => r.streams)).toEqual(['sidecar~only']);
    expect(replicas.flatMap((r) => r.asked)).toEqual([]);
  });

  it('keeps the debug allowlist: syncz, when not allowed, is refused before any replica is asked', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds, { debugEndpoints: ['config_dump'] });
    const outcome = await istioctl(client(gateway.port('xds')));
    expect(outcome.status.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.status.details).toMatch(/^MG_ERR_AUTHZ_DEBUG_ENDPOINT: /);
    expect(replicas.flatMap((r) => r.asked)).toEqual([]);
  });

  it('ends a stream it answers when a request other than a per-replica debug one follows', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 2);
    const gateway = await gatewayTo(xds);
    const call = client(gateway.port('xds')).StreamAggregatedResources(metadata(bearer(tenantOf(sandbox, 'acme').tokens.debug)));
    call.on('error', () => undefined);
    const ended = new Promise<{ code: number; details: string }>((resolve) => call.on('status', resolve));
    const first = new Promise((resolve) => call.once('data', resolve));
    call.write({ node: { id: 'istioctl' }, type_url: TYPE_URL.syncz });
    await first;
    // A second syncz on the same stream is answered again, from every replica.
    const second = new Promise((resolve) => call.once('data', resolve));
    call.write({ type_url: TYPE_URL.syncz });
    await second;
    expect(replicas.map((r) => r.asked.length)).toEqual([2, 2]);
    // Each replica's stream opens with the node, though the second request did not repeat it.
    expect(replicas.flatMap((r) => r.asked.map((a) => a.node))).toEqual(['istioctl', 'istioctl', 'istioctl', 'istioctl']);
    call.write({ type_url: TYPE_URL.cluster });
    const status_ = await ended;
    expect(status_.code).toBe(status.INVALID_ARGUMENT);
    expect(status_.details).toMatch(/^MG_ERR_REQUEST_MALFORMED: a stream meshgate answers from every istiod replica carries per-replica debug requests only/);
  });
});

describe('istio.io/debug/config_dump across every replica', () => {
  it("returns the config of the replica the proxy is connected to", async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 3);
    const gateway = await gatewayTo(xds);
    const c = client(gateway.port('xds'));
    await connectSidecars(c, ['sidecar~a', 'sidecar~b', 'sidecar~c']);
    const holder = replicas.find((r) => r.connected.has('sidecar~c'));
    const outcome = await istioctl(c, { node: { id: 'istioctl' }, type_url: CONFIG_DUMP, resource_names: ['sidecar~c'] });
    expect((outcome.response?.resources ?? []).map((r) => xdsProtos().unpack(r).name)).toEqual([`dump of sidecar~c by ${holder?.name ?? ''}`]);
    expect(identifierOf(outcome.response)).toMatchObject({ ID: holder?.name });
  });

  it('answers as istiod does (no resources) for a proxy no replica knows, and UNAVAILABLE when a replica that might know it is missing', async () => {
    const { replicas, xds } = await startReplicas('istiod-acme', 2);
    const gateway = await gatewayTo(xds, { timeoutMs: 300 });
    const c = client(gateway.port('xds'));
    const unknown = await istioctl(c, { node: { id: 'istioctl' }, type_url: CONFIG_DUMP, resource_names: ['sidecar~nowhere'] });
    expect(unknown.response?.resources ?? []).toEqual([]);
    const [, second] = replicas;
    if (second) second.hang = true;
    const missing = await istioctl(c, { node: { id: 'istioctl' }, type_url: CONFIG_DUMP, resource_names: ['sidecar~nowhere'] });
    expect(missing.status.code).toBe(status.UNAVAILABLE);
    expect(missing.status.details).toMatch(/1 of 2 istiod replicas did not answer/);
    await vi.waitFor(() => expect(second?.asked).toHaveLength(2));
  });
});
