/**
 * Each tenant's request rate, per plane (limits.requestRate): over it, every caller gets the answer
 * it understands. HTTP: 429 with Retry-After. gRPC: RESOURCE_EXHAUSTED with server pushback.
 * Kubernetes: a Status with reason TooManyRequests, which the real kubectl waits for and retries.
 * Buckets are the tenant's and the plane's own; anonymous callers never spend them; a reload keeps
 * them unless the tenant's rate changed.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ApiException, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { kubeconfig } from '../src/cli/kubeconfig.js';
import { loadConfig } from '../src/config/load.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, type CallOptions, type CallResult } from './helpers/client.js';
import { adsClient, adsOnce, bearer, metadata, status, TYPE_URL } from './helpers/grpc.js';
import { admissionReview, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

type TenantId = 'acme' | 'globex';
type Rates = Record<string, { perSecond: number; burst: number }>;

/** A meshgate over the sandbox's stand-ins, with these request rates for both tenants. */
async function gatewayWith(rates: Partial<Record<TenantId, Rates>>): Promise<ExtraGateway> {
  const gateway = await startGatewayFrom(sandbox, (config) => {
    for (const tenant of config.tenants as Record<string, any>[]) {
      const requestRate = rates[tenant.id as TenantId];
      if (requestRate) tenant.limits = { requestRate };
    }
  });
  closers.push(() => gateway.close());
  return gateway;
}

function debug(gateway: ExtraGateway, id: TenantId, change: Partial<CallOptions> = {}): Promise<CallResult> {
  const tenant = tenantOf(sandbox, id);
  return call({ port: gateway.port('api'), servername: tenant.host, path: '/debug/syncz', ca: sandbox.info.caFile, headers: bearer(tenant.tokens.debug), ...change });
}

function kubeList(gateway: ExtraGateway, id: TenantId): Promise<CallResult> {
  const tenant = tenantOf(sandbox, id);
  const cluster = tenant.clusters[0] ?? '';
  return call({
    port: gateway.port('api'),
    servername: tenant.host,
    path: `/clusters/${cluster}/api/v1/namespaces/bookinfo/pods`,
    ca: sandbox.info.caFile,
    headers: bearer(tenant.tokens.kube),
  });
}

function inject(gateway: ExtraGateway): Promise<CallResult> {
  const tenant = tenantOf(sandbox, 'acme');
  return call({
    port: gateway.port('webhook'),
    servername: tenant.host,
    method: 'POST',
    path: '/inject/cluster/acme-east/net/network1?timeout=10s',
    headers: { 'content-type': 'application/json' },
    body: admissionReview('rate'),
    ca: sandbox.info.caFile,
    cert: tenant.clientCert,
    key: tenant.clientKey,
  });
}

function expectLimited(result: CallResult): void {
  expect(result.status).toBe(429);
  expect(Number(result.headers['retry-after'])).toBeGreaterThanOrEqual(1);
}

/** A kubeconfig for `id`'s first cluster through `gateway`, as `meshgate kubeconfig` writes it. */
function kubeconfigFor(gateway: ExtraGateway, id: TenantId): string {
  const tenant = tenantOf(sandbox, id);
  const file = join(mkdtempSync(join(tmpdir(), 'meshgate-rate-')), 'kubeconfig.yaml');
  writeFileSync(
    file,
    kubeconfig({
      tenant: id,
      cluster: tenant.clusters[0] ?? '',
      host: tenant.host,
      port: gateway.port('api'),
      connectTo: '127.0.0.1',
      ca: readFileSync(sandbox.info.caFile, 'utf8'),
      token: tenant.tokens.kube,
    }),
  );
  return file;
}

async function limitsHit(gateway: ExtraGateway, tenant: TenantId, plane: string): Promise<number> {
  const metric = await gateway.gateway.metrics.limitsHit.get();
  return metric.values.find((v) => v.labels.tenant === tenant && v.labels.plane === plane && v.labels.limit === 'rate')?.value ?? 0;
}

describe('per-tenant request rates', () => {
  it('answers HTTP callers over the rate with 429 and Retry-After, and counts it', async () => {
    const gateway = await gatewayWith({ acme: { debug: { perSecond: 0.25, burst: 2 } } });
    expect((await debug(gateway, 'acme')).status).toBe(200);
    expect((await debug(gateway, 'acme')).status).toBe(200);
    const over = await debug(gateway, 'acme');
    expectLimited(over);
    expect(Number(over.headers['retry-after'])).toBeLessThanOrEqual(4);
    expect(over.json()).toMatchObject({ code: 'MG_ERR_LIMIT_RATE' });
    expect(await limitsHit(gateway, 'acme', 'debug')).toBe(1);
    const denials = (await gateway.gateway.metrics.denials.get()).values.find((v) => v.labels.reason === 'MG_ERR_LIMIT_RATE');
    expect(denials?.labels).toMatchObject({ tenant: 'acme', plane: 'debug' });
  });

  it("keeps each tenant's and each plane's budget apart", async () => {
    const gateway = await gatewayWith({
      acme: { debug: { perSecond: 0.25, burst: 1 }, kube: { perSecond: 0.25, burst: 1 } },
      globex: { debug: { perSecond: 0.25, burst: 1 } },
    });
    expect((await debug(gateway, 'acme')).status).toBe(200);
    expectLimited(await debug(gateway, 'acme'));
    // acme's kube plane, and globex's debug plane, each have a bucket of their own.
    expect((await kubeList(gateway, 'acme')).status).toBe(200);
    expect((await debug(gateway, 'globex')).status).toBe(200);
    expectLimited(await kubeList(gateway, 'acme'));
    expectLimited(await debug(gateway, 'globex'));
  });

  it('spends nothing on callers that did not authenticate', async () => {
    const gateway = await gatewayWith({ acme: { debug: { perSecond: 0.25, burst: 1 } } });
    for (let i = 0; i < 5; i++) expect((await debug(gateway, 'acme', { headers: {} })).status).toBe(401);
    for (let i = 0; i < 5; i++) expect((await debug(gateway, 'acme', { headers: bearer('not.a.token') })).status).toBe(401);
    expect((await debug(gateway, 'acme')).status).toBe(200);
    expectLimited(await debug(gateway, 'acme'));
  });

  it("answers the webhook's caller with 429 and Retry-After", async () => {
    const gateway = await gatewayWith({ acme: { webhook: { perSecond: 0.25, burst: 1 } } });
    expect((await inject(gateway)).status).toBe(200);
    const over = await inject(gateway);
    expectLimited(over);
    expect(over.json()).toMatchObject({ code: 'MG_ERR_LIMIT_RATE' });
    expect(await limitsHit(gateway, 'acme', 'webhook')).toBe(1);
  });

  it('refuses new xDS streams over the rate with RESOURCE_EXHAUSTED and a pushback', async () => {
    const gateway = await gatewayWith({ acme: { xds: { perSecond: 0.25, burst: 1 } } });
    const acme = tenantOf(sandbox, 'acme');
    const client = adsClient({ port: gateway.port('xds'), host: acme.host, ca: sandbox.info.caFile });
    closers.push(() => client.close());
    const request = { node: { id: 'rate-1' }, type_url: TYPE_URL.cluster };
    expect((await adsOnce(client, metadata(bearer(acme.tokens.xds)), request)).response).toBeDefined();
    const over = await adsOnce(client, metadata(bearer(acme.tokens.xds)), request);
    expect(over.status.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(over.status.details).toMatch(/^MG_ERR_LIMIT_RATE: /);
    expect(Number(over.status.metadata.get('grpc-retry-pushback-ms')[0])).toBeGreaterThanOrEqual(1000);
    expect(await limitsHit(gateway, 'acme', 'xds')).toBe(1);
  });

  it('answers the kube plane with a Status TooManyRequests that client-node reads', async () => {
    const gateway = await gatewayWith({ acme: { kube: { perSecond: 0.25, burst: 1 } } });
    const config = new KubeConfig();
    config.loadFromFile(kubeconfigFor(gateway, 'acme'));
    const api = config.makeApiClient(CoreV1Api);
    expect((await api.listNamespacedPod({ namespace: 'bookinfo' })).items.length).toBeGreaterThan(0);
    const error = await api.listNamespacedPod({ namespace: 'bookinfo' }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(ApiException);
    const { code, body, headers } = error as ApiException<string>;
    expect(code).toBe(429);
    expect(Number(headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const statusObject = JSON.parse(body) as { kind: string; reason: string; code: number; details: { retryAfterSeconds: number } };
    expect(statusObject).toMatchObject({ kind: 'Status', reason: 'TooManyRequests', code: 429 });
    expect(statusObject.details.retryAfterSeconds).toBe(Number(headers['retry-after']));
  });

  it('makes the real kubectl wait for Retry-After and retry, then succeed', async () => {
    // One request a second: kubectl's discovery and list requests come faster than that.
    const gateway = await gatewayWith({ acme: { kube: { perSecond: 1, burst: 1 } } });
    const cache = mkdtempSync(join(tmpdir(), 'meshgate-rate-cache-'));
    const { stdout, stderr } = await promisify(execFile)(
      '/usr/bin/kubectl',
      ['--kubeconfig', kubeconfigFor(gateway, 'acme'), '--cache-dir', cache, 'get', 'pods', '-n', 'bookinfo', '-o', 'name', '-v=4'],
      { timeout: 30_000 },
    );
    // client-go logs each wait it makes on a Retry-After, and still gets its answer.
    expect(stderr).toMatch(/Got a Retry-After 1s response for attempt \d+/);
    expect(stdout).toMatch(/^pod\//);
    expect(await limitsHit(gateway, 'acme', 'kube')).toBeGreaterThanOrEqual(1);
  });

  it("keeps a tenant's bucket across a reload, unless that tenant's rate changed", async () => {
    const rate = { debug: { perSecond: 0.25, burst: 1 } };
    const gateway = await gatewayWith({ acme: rate, globex: rate });
    expect((await debug(gateway, 'acme')).status).toBe(200);
    expect((await debug(gateway, 'globex')).status).toBe(200);
    expectLimited(await debug(gateway, 'acme'));
    expectLimited(await debug(gateway, 'globex'));

    const reloadWith = (edit: (tenants: Record<string, any>[]) => void): void => {
      const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
      for (const tenant of config.tenants as Record<string, any>[]) tenant.limits = { requestRate: rate };
      edit(config.tenants as Record<string, any>[]);
      const file = join(mkdtempSync(join(tmpdir(), 'meshgate-rate-reload-')), 'meshgate.yaml');
      writeFileSync(file, stringify(config));
      gateway.gateway.reload(() => loadConfig(file));
    };
    // The same rates: a reload is no way to refill a budget.
    reloadWith(() => undefined);
    expectLimited(await debug(gateway, 'acme'));
    expectLimited(await debug(gateway, 'globex'));
    // acme's rate changes: acme starts afresh, globex's bucket is left as it was.
    reloadWith((tenants) => {
      const acme = tenants.find((t) => t.id === 'acme');
      if (acme) acme.limits = { requestRate: { debug: { perSecond: 0.25, burst: 2 } } };
    });
    expect((await debug(gateway, 'acme')).status).toBe(200);
    expectLimited(await debug(gateway, 'globex'));
  });
});
