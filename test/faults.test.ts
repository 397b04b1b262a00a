/**
 * Fault injection. acme's istiod (xDS and webhook ports), its mesh API server and its JWKS endpoint
 * are each reached through a proxy that the test turns bad: connections refused, reset, hung,
 * answered with garbage, read slowly, or cut in the middle of a watch and of an exec. In every
 * case: meshgate stays up, the caller gets a clear error, acme recovers once the fault clears, and
 * globex is served throughout. (A corrupted config file and certificate files that disappear are
 * faults of the tenant source: test/tenant-sources.test.ts and the last cases here; SIGTERM under
 * load ends this file.)
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../src/config/load.js';
import { startServing, type Serving } from '../src/gateway/serve.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { start } from './helpers/cli.js';
import { startFaultProxy, type FaultMode, type FaultProxy } from './helpers/fault-proxy.js';
import { adsClient, adsOnce, bearer, metadata, status, TYPE_URL } from './helpers/grpc.js';
import { admissionReview, silent, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

type TenantId = 'acme' | 'globex';
type RawConfig = Record<string, any>;

let sandbox: Sandbox;
let gateway: ExtraGateway;
const proxies: Record<'xds' | 'webhook' | 'apiServer' | 'jwks', FaultProxy> = {} as never;

const hostPort = (url: string): { host: string; port: number } => {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: Number(parsed.port) };
};

beforeAll(async () => {
  sandbox = await startTestSandbox();
  const acme = tenantOf(sandbox, 'acme');
  const apiServer = acme.kubeApiServers['acme-east'] ?? '';
  proxies.xds = await startFaultProxy(hostPort(acme.istiod.xds), { slowBytesPerSecond: 32 * 1024 });
  proxies.webhook = await startFaultProxy(hostPort(acme.istiod.webhook));
  proxies.apiServer = await startFaultProxy(hostPort(apiServer));
  proxies.jwks = await startFaultProxy(hostPort(apiServer));
  gateway = await startGatewayFrom(sandbox, (config) => {
    // Keys age out after a second, so that a JWKS fault shows as soon as a fresh token arrives.
    config.auth = { jwks: { cooldown: '100ms', timeout: '500ms', maxAge: '1s' }, tokenCache: { maxEntries: 10_000, maxTtl: '5m' } };
    const tenant = (config.tenants as RawConfig[]).find((t) => t.id === 'acme') ?? {};
    tenant.istiod.xds = { ...tenant.istiod.xds, url: proxies.xds.url(tenant.istiod.xds.url), connectTimeout: '1s' };
    tenant.istiod.webhook = { ...tenant.istiod.webhook, url: proxies.webhook.url(tenant.istiod.webhook.url) };
    tenant.webhook = { ...tenant.webhook, timeout: '1s' };
    tenant.kube = { ...tenant.kube, requestTimeout: '1s' };
    const east = (tenant.clusters as RawConfig[]).find((c) => c.id === 'acme-east') ?? {};
    east.apiServer = { ...east.apiServer, url: proxies.apiServer.url(east.apiServer.url) };
    east.jwks = { ...east.jwks, url: proxies.jwks.url(east.jwks.url) };
  });
});
afterAll(async () => {
  await gateway.close();
  for (const proxy of Object.values(proxies)) await proxy.close();
  await sandbox.close();
});

/** One ADS request: its first answer, or the status it ended with. */
async function ads(tenant: TenantId, token = tenantOf(sandbox, tenant).tokens.xds) {
  const client = adsClient({ port: gateway.port('xds'), host: tenantOf(sandbox, tenant).host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  try {
    return await adsOnce(client, metadata(bearer(token)), { node: { id: 'sidecar~faults' }, type_url: TYPE_URL.cluster }, { deadlineMs: 8_000 });
  } finally {
    client.close();
  }
}

interface Answer {
  readonly status: number;
  readonly code?: string;
}

function https(port: number, tenant: TenantId, path: string, options: { method?: string; headers?: Record<string, string>; body?: string; cert?: boolean } = {}): Promise<Answer> {
  const info = tenantOf(sandbox, tenant);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: options.method ?? 'GET',
        servername: info.host,
        ca: readFileSync(sandbox.info.caFile),
        ...(options.cert === false ? {} : { cert: readFileSync(info.clientCert), key: readFileSync(info.clientKey) }),
        headers: { host: info.host, ...options.headers },
        agent: false,
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => {
          let code: string | undefined;
          try {
            const body = JSON.parse(text) as { code?: unknown; details?: { causes?: { reason?: string }[] }; reason?: string; message?: string };
            code = typeof body.code === 'string' ? body.code : /MG_ERR_\w+/.exec(body.message ?? '')?.[0];
          } catch {
            code = undefined;
          }
          resolve({ status: res.statusCode ?? 0, ...(code === undefined ? {} : { code }) });
        });
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** An injection request the way each tenant's API server sends it. */
function inject(tenant: TenantId): Promise<Answer> {
  const info = tenantOf(sandbox, tenant);
  const url = new URL(info.webhook.inject);
  const byCert = info.webhookAuthentication.includes('clientCertificate');
  return https(gateway.port('webhook'), tenant, `${url.pathname}${url.search}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(byCert ? {} : { authorization: `Bearer ${info.tokens.webhook}` }) },
    body: admissionReview(randomUUID()),
    cert: byCert,
  });
}

const listPods = (tenant: TenantId): Promise<Answer> =>
  tenant === 'acme'
    ? https(gateway.port('api'), 'acme', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods')
    : https(gateway.port('api'), 'globex', '/clusters/globex-main/api/v1/namespaces/bookinfo/pods', { headers: { authorization: `Bearer ${tenantOf(sandbox, 'globex').tokens.kube}` }, cert: false });

/** globex, on every plane, while acme's upstreams misbehave. */
async function expectGlobexServed(): Promise<void> {
  expect((await ads('globex')).response).toBeDefined();
  expect((await inject('globex')).status).toBe(200);
  expect((await listPods('globex')).status).toBe(200);
}

/** acme, on every plane, once the fault clears: retried, since pools and key sources back off. */
async function expectAcmeRecovers(): Promise<void> {
  await vi.waitFor(async () => expect((await ads('acme')).response).toBeDefined(), { timeout: 15_000, interval: 250 });
  await vi.waitFor(async () => expect((await inject('acme')).status).toBe(200), { timeout: 15_000, interval: 250 });
  await vi.waitFor(async () => expect((await listPods('acme')).status).toBe(200), { timeout: 15_000, interval: 250 });
}

const MODES: readonly FaultMode[] = ['refuse', 'reset', 'hang', 'garbage'];

describe("istiod and the mesh API server misbehave (acme's), globex is served throughout", () => {
  it.each(MODES)('%s: a clear error on every plane, then recovery', async (mode) => {
    const heapBefore = process.memoryUsage().heapUsed;
    // A broken upstream: what was connected is cut, and what connects meets the fault.
    for (const proxy of [proxies.xds, proxies.webhook, proxies.apiServer]) {
      await proxy.set(mode);
      proxy.resetAll();
    }
    try {
      const stream = await ads('acme');
      expect(stream.response).toBeUndefined();
      expect(stream.status.code).toBe(status.UNAVAILABLE);
      expect(stream.status.details).toMatch(/^MG_ERR_UPSTREAM_(UNAVAILABLE|RESET|TLS|TIMEOUT): /);

      const webhook = await inject('acme');
      expect(webhook.status).toBeGreaterThanOrEqual(502);
      expect(webhook.code).toMatch(/^MG_ERR_UPSTREAM_(UNAVAILABLE|RESET|TLS|TIMEOUT)$/);
      const list = await listPods('acme');
      expect(list.status).toBeGreaterThanOrEqual(502);
      expect(list.code).toMatch(/^MG_ERR_UPSTREAM_(UNAVAILABLE|RESET|TLS|TIMEOUT)$/);

      await expectGlobexServed();
    } finally {
      for (const proxy of [proxies.xds, proxies.webhook, proxies.apiServer]) await proxy.set('pass');
    }
    await expectAcmeRecovers();
    // Nothing piles up per failed attempt.
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(64 * 1024 * 1024);
  }, 60_000);

  it('loses the connection to istiod mid-stream: the open ADS stream ends with UNAVAILABLE (retry), and the next one works', async () => {
    const info = tenantOf(sandbox, 'acme');
    const client = adsClient({ port: gateway.port('xds'), host: info.host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
    const call = client.StreamAggregatedResources(metadata(bearer(info.tokens.xds)));
    call.on('error', () => undefined);
    const ended = new Promise<{ code: number; details: string }>((resolve) => call.on('status', resolve));
    await new Promise((resolve) => {
      call.once('data', resolve);
      call.write({ node: { id: 'sidecar~mid' }, type_url: TYPE_URL.cluster });
    });
    proxies.xds.resetAll();
    const outcome = await ended;
    expect(outcome.code).toBe(status.UNAVAILABLE);
    expect(outcome.details).toBe('MG_ERR_UPSTREAM_RESET: the connection to istiod was lost');
    client.close();
    await expectGlobexServed();
    await expectAcmeRecovers();
  }, 30_000);

  it('reads slowly: a sidecar pushing fast is held back by flow control, and meshgate buffers little', async () => {
    await proxies.xds.set('slow');
    const info = tenantOf(sandbox, 'acme');
    const client = adsClient({ port: gateway.port('xds'), host: info.host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
    try {
      const call = client.StreamAggregatedResources(metadata(bearer(info.tokens.xds)));
      call.on('error', () => undefined);
      call.on('data', () => undefined);
      const heapBefore = process.memoryUsage().heapUsed;
      // 16 MiB of DiscoveryRequests as fast as the client can write; istiod takes 32 KiB/s.
      const filler = 'x'.repeat(64 * 1024);
      let refused = 0;
      for (let i = 0; i < 256; i++) if (!call.write({ node: { id: `sidecar~${filler}` }, type_url: TYPE_URL.cluster })) refused++;
      // The writes back up in the client, not in meshgate.
      await vi.waitFor(() => expect(proxies.xds.accepted()).toBeGreaterThan(0));
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(refused).toBeGreaterThan(0);
      expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(48 * 1024 * 1024);
      await expectGlobexServed();
      call.cancel();
    } finally {
      client.close();
      await proxies.xds.set('pass');
    }
    await expectAcmeRecovers();
  }, 60_000);
});

describe('the mesh API server dies during a watch and during an exec', () => {
  it('ends the watch and the exec (never as if complete), keeps globex watching, and serves new ones after', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const watch = (tenant: TenantId) => {
      const cluster = tenant === 'acme' ? 'acme-east' : 'globex-main';
      const info = tenantOf(sandbox, tenant);
      let events = 0;
      const req = httpsRequest({
        host: '127.0.0.1',
        port: gateway.port('api'),
        path: `/clusters/${cluster}/api/v1/namespaces/bookinfo/pods?watch=1`,
        servername: info.host,
        ca: readFileSync(sandbox.info.caFile),
        ...(tenant === 'acme' ? { cert: readFileSync(info.clientCert), key: readFileSync(info.clientKey) } : {}),
        headers: { host: info.host, ...(tenant === 'globex' ? { authorization: `Bearer ${info.tokens.kube}` } : {}) },
        agent: false,
      });
      const ended = new Promise<boolean>((resolve) => {
        req.on('response', (res) => {
          res.on('data', () => events++);
          res.on('error', () => undefined);
          res.on('close', () => resolve(res.complete));
        });
        req.on('error', () => resolve(false));
      });
      req.end();
      return { ended, events: () => events, close: () => req.destroy() };
    };
    const acmeWatch = watch('acme');
    const globexWatch = watch('globex');
    await vi.waitFor(() => expect(acmeWatch.events()).toBeGreaterThan(0));

    const pods = JSON.parse(await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(
        { host: '127.0.0.1', port: gateway.port('api'), path: '/clusters/acme-east/api/v1/namespaces/bookinfo/pods', servername: acme.host, ca: readFileSync(sandbox.info.caFile), cert: readFileSync(acme.clientCert), key: readFileSync(acme.clientKey), headers: { host: acme.host }, agent: false },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve(text));
        },
      );
      req.on('error', reject);
      req.end();
    })) as { items: { metadata: { name: string } }[] };
    const pod = pods.items[0]?.metadata.name ?? '';
    const exec = new WebSocket(`wss://127.0.0.1:${gateway.port('api')}/clusters/acme-east/api/v1/namespaces/bookinfo/pods/${pod}/exec?command=cat&stdin=true&stdout=true`, ['v4.channel.k8s.io'], {
      servername: acme.host,
      ca: readFileSync(sandbox.info.caFile),
      cert: readFileSync(acme.clientCert),
      key: readFileSync(acme.clientKey),
      headers: { host: acme.host },
    } as WebSocket.ClientOptions);
    const echoed = new Promise<string>((resolve) => exec.on('message', (data: Buffer) => data[0] === 1 && resolve(data.subarray(1).toString())));
    const execClosed = new Promise<number>((resolve) => exec.on('close', (code) => resolve(code)));
    exec.on('error', () => undefined);
    await new Promise((resolve) => exec.once('open', resolve));
    exec.send(Buffer.concat([Buffer.from([0]), Buffer.from('ping')]));
    expect(await echoed).toBe('ping');

    proxies.apiServer.resetAll();
    expect(await acmeWatch.ended).toBe(false);
    expect(await execClosed).not.toBe(1000);
    // globex's watch saw nothing of it: it goes on getting events.
    const seen = globexWatch.events();
    await vi.waitFor(() => expect(globexWatch.events()).toBeGreaterThan(seen), { timeout: 15_000 });
    globexWatch.close();
    await expectAcmeRecovers();
  }, 60_000);
});

describe("acme's JWKS endpoint misbehaves", () => {
  it.each(['refuse', 'hang', 'garbage'] as const)('%s: tokens of that cluster are refused with MG_ERR_AUTHN_JWKS_UNAVAILABLE, and accepted once it is back', async (mode) => {
    const issuer = sandbox.issuers.get('acme-east');
    if (!issuer) throw new Error('no acme-east issuer');
    // Tokens not seen before, so that the token cache cannot answer for them.
    const fresh = () => issuer.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: 'istio-ca' });
    await proxies.jwks.set(mode);
    proxies.jwks.resetAll();
    try {
      // Once the keys in memory are older than auth.jwks.maxAge, they must be reloaded, and cannot be.
      await vi.waitFor(
        async () => {
          const refused = await ads('acme', await fresh());
          expect(refused.status.code).toBe(status.UNAVAILABLE);
          expect(refused.status.details).toMatch(/^MG_ERR_AUTHN_JWKS_UNAVAILABLE: /);
        },
        { timeout: 15_000, interval: 250 },
      );
      await expectGlobexServed();
    } finally {
      await proxies.jwks.set('pass');
    }
    await vi.waitFor(async () => expect((await ads('acme', await fresh())).response).toBeDefined(), { timeout: 15_000, interval: 250 });
  }, 30_000);
});

describe('certificate files disappear while meshgate serves', () => {
  it('keeps serving with the certificates loaded, says why it cannot reload, and takes them back when they return', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-vanish-'));
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    const acme = (config.tenants as RawConfig[]).find((t) => t.id === 'acme') ?? {};
    for (const [field, name] of [['cert', 'acme.pem'], ['key', 'acme-key.pem']] as const) {
      writeFileSync(join(dir, name), readFileSync(acme.tls[field] as string));
      acme.tls[field] = join(dir, name);
    }
    config.admin = { host: '127.0.0.1', port: 0 };
    for (const listener of Object.values(config.listeners as Record<string, RawConfig>)) listener.port = 0;
    config.reload = { pollInterval: '100ms' };
    const file = join(dir, 'meshgate.yaml');
    writeFileSync(file, stringify(config));
    const serving: Serving | undefined = await startServing(file, loadConfig(file), (load) => load(), { logger: silent() });
    if (!serving) throw new Error('not serving');
    try {
      const failures = async () => Number(/^meshgate_tenant_source_errors_total\{source="file"\} (\d+)$/m.exec(await serving.gateway.metrics.registry.metrics())?.[1] ?? 0);
      renameSync(join(dir, 'acme.pem'), join(dir, 'acme.pem.gone'));
      await vi.waitFor(async () => expect(await failures()).toBeGreaterThan(0), { timeout: 10_000 });
      expect(existsSync(join(dir, 'acme.pem'))).toBe(false);
      // The certificate in memory still serves new handshakes.
      const port = serving.addresses.listeners.xds?.port ?? 0;
      const client = adsClient({ port, host: tenantOf(sandbox, 'acme').host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
      const outcome = await adsOnce(client, metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), { type_url: TYPE_URL.cluster });
      client.close();
      expect(outcome.response).toBeDefined();
      const version = serving.gateway.current().version;
      renameSync(join(dir, 'acme.pem.gone'), join(dir, 'acme.pem'));
      await vi.waitFor(() => expect(serving.gateway.current().version).toBeGreaterThan(version), { timeout: 10_000 });
    } finally {
      serving.close();
      await serving.gateway.close(0);
    }
  }, 30_000);
});

describe('SIGTERM under load', () => {
  it('drains: streams end with UNAVAILABLE, requests in flight finish, and meshgate exits 0', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-sigterm-'));
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    config.admin = { host: '127.0.0.1', port: 0 };
    for (const listener of Object.values(config.listeners as Record<string, RawConfig>)) listener.port = 0;
    writeFileSync(join(dir, 'meshgate.yaml'), stringify(config));
    const server = start(['serve', '--config', join(dir, 'meshgate.yaml'), '--drain-seconds', '1']);
    const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/);
    const ports = (JSON.parse(line) as { listeners: Record<string, { port: number }> }).listeners;
    const xdsPort = ports.xds?.port ?? 0;
    const webhookPort = ports.webhook?.port ?? 0;

    // 20 held ADS streams, and a steady stream of webhook calls.
    const streams = Array.from({ length: 20 }, (_, i) => {
      const tenant: TenantId = i % 2 === 0 ? 'acme' : 'globex';
      const info = tenantOf(sandbox, tenant);
      const client = adsClient({ port: xdsPort, host: info.host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
      const call = client.StreamAggregatedResources(metadata(bearer(info.tokens.xds)));
      call.on('error', () => undefined);
      call.on('data', () => undefined);
      call.write({ node: { id: `sidecar~${i}` }, type_url: TYPE_URL.cluster });
      return { client, ended: new Promise<{ code: number; details: string }>((resolve) => call.on('status', resolve)) };
    });
    const state = { stop: false };
    const answers: number[] = [];
    const load = (async () => {
      const info = tenantOf(sandbox, 'globex');
      const url = new URL(info.webhook.inject);
      while (!state.stop) {
        const answer = await new Promise<number>((resolve) => {
          const req = httpsRequest(
            { host: '127.0.0.1', port: webhookPort, path: `${url.pathname}${url.search}`, method: 'POST', servername: info.host, ca: readFileSync(sandbox.info.caFile), headers: { host: info.host, 'content-type': 'application/json' }, agent: false },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('error', () => resolve(0));
          req.end(admissionReview(randomUUID()));
        });
        answers.push(answer);
      }
    })();
    await vi.waitFor(() => expect(answers.filter((a) => a === 200).length).toBeGreaterThan(5), { timeout: 15_000 });

    const exit = server.stop('SIGTERM');
    const outcomes = await Promise.all(streams.map((s) => s.ended));
    expect(await exit).toBe(0);
    state.stop = true;
    await load;
    for (const s of streams) s.client.close();
    for (const outcome of outcomes) {
      expect(outcome.code).toBe(status.UNAVAILABLE);
      expect(outcome.details).toMatch(/^MG_ERR_SHUTTING_DOWN: /);
    }
    // Every call answered before the drain was a success; after it, connections are refused.
    expect(answers.filter((a) => a !== 200 && a !== 0 && a !== 503)).toEqual([]);
    expect(server.stderr()).not.toMatch(/Uncaught|TypeError|RangeError/);
  }, 60_000);
});
