/**
 * Reloads that cut nothing (DESIGN.md §5, invariant 7): an unchanged reload, a changed tenant, an
 * added one, a removed one and rotated files, each with xDS streams and kube watches held open
 * through them, well past the drain bound the config gives. The registry keeps what did not change;
 * what did is replaced for new work while the old work finishes on the old resource.
 */
import { X509Certificate } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../src/config/load.js';
import { buildGateway, type Gateway } from '../src/gateway/build.js';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import { startSandbox, type Sandbox } from '../src/sandbox/sandbox.js';
import { adsClient, adsOnce, bearer, holdAdsStream, metadata, status, TYPE_URL, type AdsClient, type HeldStream } from './helpers/grpc.js';
import { silent, tenantOf } from './helpers/sandbox.js';

type TenantId = 'acme' | 'globex';
type RawConfig = Record<string, any>;

let sandbox: Sandbox;
beforeAll(async () => {
  // Pods change every 200 ms, so a watch that is still alive sees a MODIFIED event soon.
  sandbox = await startSandbox({ dir: mkdtempSync(join(tmpdir(), 'meshgate-reload-')), portBase: 0, logger: silent(), podChangeIntervalMs: 200 });
});
afterAll(() => sandbox.close());

/** A meshgate of its own, from a config file that each test rewrites and reloads. */
interface Subject {
  readonly gateway: Gateway;
  readonly file: string;
  port(listener: 'xds' | 'api'): number;
  /** Rewrites the config with `edit` applied to the original, and reloads it. */
  reload(edit?: (config: RawConfig) => void): void;
  close(): Promise<void>;
}

const opened: Subject[] = [];
afterAll(async () => {
  for (const subject of opened) await subject.close();
});

async function startSubject(edit: (config: RawConfig) => void = () => undefined): Promise<Subject> {
  const original = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
  // A drain bound far below the old 120 s timer: every test outlives it many times over.
  original.reload = { drainTimeout: '300ms', watch: false };
  const file = join(mkdtempSync(join(tmpdir(), 'meshgate-reload-config-')), 'meshgate.yaml');
  const write = (change: (config: RawConfig) => void): void => {
    const config = structuredClone(original);
    change(config);
    writeFileSync(file, stringify(config));
  };
  write(edit);
  const gateway = buildGateway(loadConfig(file), { logger: silent() });
  const addresses = await gateway.listen();
  const subject: Subject = {
    gateway,
    file,
    port: (listener) => addresses.listeners[listener]?.port ?? 0,
    reload(change = edit) {
      write(change);
      gateway.reload(() => loadConfig(file));
    },
    close: () => gateway.close(0),
  };
  opened.push(subject);
  return subject;
}

const clients: AdsClient[] = [];
afterAll(() => {
  for (const client of clients) client.close();
});


function holdStream(subject: Subject, tenant: TenantId): HeldStream {
  const info = tenantOf(sandbox, tenant);
  // A client of its own: a connection, and a TLS handshake, of its own.
  const client = adsClient({ port: subject.port('xds'), host: info.host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  clients.push(client);
  return holdAdsStream(client, metadata(bearer(info.tokens.xds)));
}

/** A kube watch held open over HTTP/1.1: counts the events it gets, and tells when it ends. */
interface HeldWatch {
  /** Resolves at the next MODIFIED event. */
  nextEvent(): Promise<void>;
  readonly ended: Promise<{ complete: boolean }>;
  close(): void;
}

function holdWatch(subject: Subject, tenant: TenantId): HeldWatch {
  const info = tenantOf(sandbox, tenant);
  const cluster = tenant === 'acme' ? 'acme-east' : 'globex-main';
  // acme's operator certificate; globex-main takes the caller's own token (passthrough).
  const credential =
    tenant === 'acme'
      ? { cert: readFileSync(info.clientCert, 'utf8'), key: readFileSync(info.clientKey, 'utf8'), headers: {} }
      : { headers: { authorization: `Bearer ${info.tokens.kube}` } };
  const waiting: (() => void)[] = [];
  let resolveEnded: (value: { complete: boolean }) => void = () => undefined;
  const ended = new Promise<{ complete: boolean }>((resolve) => (resolveEnded = resolve));
  const req = httpsRequest({
    host: '127.0.0.1',
    port: subject.port('api'),
    path: `/clusters/${cluster}/api/v1/namespaces/bookinfo/pods?watch=1`,
    ca: readFileSync(sandbox.info.caFile, 'utf8'),
    servername: info.host,
    ...credential,
    headers: { host: info.host, ...credential.headers },
    agent: false,
  });
  req.on('error', () => resolveEnded({ complete: false }));
  req.on('response', (res) => {
    res.on('data', (chunk: Buffer) => {
      if (chunk.includes('"MODIFIED"')) for (const wake of waiting.splice(0)) wake();
    });
    res.on('error', () => undefined);
    res.on('close', () => resolveEnded({ complete: res.complete }));
  });
  req.end();
  return {
    ended,
    nextEvent: () =>
      Promise.race([
        new Promise<void>((resolve) => waiting.push(resolve)),
        ended.then(() => Promise.reject(new Error('the watch ended'))),
      ]),
    close: () => req.destroy(),
  };
}

function tenantIn(config: RawConfig, id: TenantId): RawConfig {
  const found = (config.tenants as RawConfig[]).find((t) => t.id === id);
  if (!found) throw new Error(`the config has no tenant ${id}`);
  return found;
}

function drop(config: RawConfig, id: TenantId): void {
  config.tenants = (config.tenants as RawConfig[]).filter((t) => t.id !== id);
}

const poolOf = (subject: Subject, tenant: TenantId): unknown => {
  const snapshot = subject.gateway.current();
  const core = snapshot.tenants.find((t) => t.id === tenant);
  return core === undefined ? undefined : (snapshot.planeState(core, 'xds') as { pool: unknown }).pool;
};

const metric = async (subject: Subject, pattern: RegExp): Promise<number> => {
  const text = await subject.gateway.metrics.registry.metrics();
  return Number(pattern.exec(text)?.[1] ?? 0);
};

/** meshgate_upstream_replica_up of each of the tenant's istiod replicas. */
const replicasUp = async (subject: Subject, tenant: TenantId): Promise<number[]> =>
  (await subject.gateway.metrics.upstreamReplicaUp.get()).values.filter((v) => v.labels.tenant === tenant).map((v) => v.value);

describe('reloads that cut nothing', () => {
  it('keeps every stream, watch, pool and cached token through an unchanged reload', async () => {
    const subject = await startSubject();
    const acme = holdStream(subject, 'acme');
    const globex = holdStream(subject, 'globex');
    const watch = holdWatch(subject, 'acme');
    expect(await acme.ask('sidecar~a')).toMatchObject({ tenant: 'acme' });
    expect(await globex.ask('sidecar~g')).toMatchObject({ tenant: 'globex' });
    await watch.nextEvent();
    const pools = [poolOf(subject, 'acme'), poolOf(subject, 'globex')];
    const before = subject.gateway.resources.stats();
    const hits = await metric(subject, /^meshgate_token_cache_lookups_total\{result="hit"\} (\d+)$/m);

    for (let i = 0; i < 3; i++) subject.reload();

    expect(subject.gateway.current().version).toBe(4);
    expect([poolOf(subject, 'acme'), poolOf(subject, 'globex')]).toEqual(pools);
    expect(subject.gateway.resources.stats()).toEqual(before);
    expect(await metric(subject, /^meshgate_tenant_resources_closed_total\{reason="\w+"\} (\d+)$/m)).toBe(0);
    // The token verified before the reloads is still in the cache: a new stream is a hit.
    const again = await adsOnce(adsClientFor(subject, 'acme'), metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), { node: { id: 'x' }, type_url: TYPE_URL.cluster });
    expect(again.response).toBeDefined();
    expect(await metric(subject, /^meshgate_token_cache_lookups_total\{result="hit"\} (\d+)$/m)).toBe(hits + 1);

    // Well past the drain bound (300 ms): the streams and the watch are the same ones, alive.
    await watch.nextEvent();
    await waitPastDrain(subject);
    expect(await acme.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });
    expect(await globex.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    await watch.nextEvent();
    acme.cancel();
    globex.cancel();
    watch.close();
  }, 30_000);

  it("replaces a changed tenant's pool for new work, lets its old streams finish on the old one, and leaves the other tenant alone", async () => {
    const subject = await startSubject();
    const acmeOld = holdStream(subject, 'acme');
    const globex = holdStream(subject, 'globex');
    const globexWatch = holdWatch(subject, 'globex');
    await acmeOld.ask('sidecar~a');
    await globex.ask('sidecar~g');
    await globexWatch.nextEvent();
    const acmePool = poolOf(subject, 'acme');
    const globexPool = poolOf(subject, 'globex');

    // acme's istiod pool settings change: its pool is replaced. Its rules change too.
    subject.reload((config) => {
      const acme = tenantIn(config, 'acme');
      acme.istiod.xds.maxStreamsPerSession = 999;
    });
    expect(poolOf(subject, 'acme')).not.toBe(acmePool);
    expect(poolOf(subject, 'globex')).toBe(globexPool);
    // The old acme stream still runs on the old pool; a new one goes over the new pool.
    expect(await acmeOld.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });
    const acmeNew = holdStream(subject, 'acme');
    expect(await acmeNew.ask('sidecar~a3')).toMatchObject({ tenant: 'acme' });

    // At the drain bound, the stream still on the old pool is told why, and reconnects.
    const ended = await acmeOld.ended;
    expect(ended.code).toBe(status.UNAVAILABLE);
    expect(ended.details).toMatch(/^MG_ERR_UPSTREAM_REPLACED: /);
    // globex saw nothing of it, past the drain bound; neither did acme's new stream.
    expect(await globex.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    expect(await acmeNew.ask('sidecar~a4')).toMatchObject({ tenant: 'acme' });
    await globexWatch.nextEvent();
    expect(subject.gateway.resources.stats().draining).toBe(0);
    // The old pool closed after the new one reported the replica: the replica is still up.
    expect(await replicasUp(subject, 'acme')).toEqual([1]);
    acmeNew.cancel();
    globex.cancel();
    globexWatch.close();
  }, 30_000);

  it("ends a removed tenant's streams and watches with a status, and the other tenant carries on", async () => {
    const subject = await startSubject();
    const acme = holdStream(subject, 'acme');
    const acmeWatch = holdWatch(subject, 'acme');
    const globex = holdStream(subject, 'globex');
    const globexWatch = holdWatch(subject, 'globex');
    await acme.ask('sidecar~a');
    await globex.ask('sidecar~g');
    await acmeWatch.nextEvent();
    await globexWatch.nextEvent();
    const globexPool = poolOf(subject, 'globex');

    subject.reload((config) => {
      drop(config, 'acme');
    });

    const ended = await acme.ended;
    expect(ended.code).toBe(status.UNAVAILABLE);
    expect(ended.details).toMatch(/^MG_ERR_TENANT_REMOVED: /);
    expect(await acmeWatch.ended).toEqual({ complete: false });
    // A new connection for acme fails: no tenant is served under its name any more, so the
    // handshake gets the listener's default certificate, which no client accepts for the name.
    const refused = await adsOnce(adsClientFor(subject, 'acme'), metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), { type_url: TYPE_URL.cluster });
    expect(refused.response).toBeUndefined();
    expect(refused.status.code).toBe(status.UNAVAILABLE);

    await waitPastDrain(subject);
    expect(poolOf(subject, 'globex')).toBe(globexPool);
    expect(await globex.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    await globexWatch.nextEvent();
    expect(await metric(subject, /^meshgate_tenant_resources_closed_total\{reason="removed"\} (\d+)$/m)).toBeGreaterThan(0);
    // A removed tenant's replicas leave the health metric with it.
    expect(await replicasUp(subject, 'acme')).toEqual([]);
    expect(await replicasUp(subject, 'globex')).toEqual([1]);
    globex.cancel();
    globexWatch.close();
  }, 30_000);

  it("adds a tenant without touching the streams of the tenants already there", async () => {
    const subject = await startSubject((config) => {
      drop(config, 'globex');
    });
    const acme = holdStream(subject, 'acme');
    const acmeWatch = holdWatch(subject, 'acme');
    await acme.ask('sidecar~a');
    await acmeWatch.nextEvent();
    const acmePool = poolOf(subject, 'acme');

    subject.reload(() => undefined);

    const globex = holdStream(subject, 'globex');
    expect(await globex.ask('sidecar~g')).toMatchObject({ tenant: 'globex' });
    await waitPastDrain(subject);
    expect(poolOf(subject, 'acme')).toBe(acmePool);
    expect(await acme.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });
    await acmeWatch.nextEvent();
    acme.cancel();
    globex.cancel();
    acmeWatch.close();
  }, 30_000);

  it('serves a rotated server certificate to new handshakes, while established streams carry on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-rotate-'));
    const certFile = join(dir, 'acme.pem');
    const keyFile = join(dir, 'acme-key.pem');
    const subject = await startSubject((config) => {
      const acme = tenantIn(config, 'acme');
      if (!existsSync(certFile)) {
        copyFileSync(acme.tls.cert, certFile);
        copyFileSync(acme.tls.key, keyFile);
      }
      acme.tls.cert = certFile;
      acme.tls.key = keyFile;
    });
    const acme = holdStream(subject, 'acme');
    const globex = holdStream(subject, 'globex');
    await acme.ask('sidecar~a');
    await globex.ask('sidecar~g');
    const globexPool = poolOf(subject, 'globex');
    const acmePool = poolOf(subject, 'acme');

    const ca = await createCertificateAuthority('rotated server CA');
    const host = tenantOf(sandbox, 'acme').host;
    const rotated = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server' });
    writeFileSync(certFile, rotated.cert);
    writeFileSync(keyFile, rotated.key);
    subject.reload();

    const served = await peerCertificate(subject.port('xds'), host, [readFileSync(sandbox.info.caFile, 'utf8'), ca.cert]);
    expect(served).toBe(new X509Certificate(rotated.cert).fingerprint256);
    // Only acme's TLS context was new: its pool, and all of globex, are as they were.
    expect(poolOf(subject, 'acme')).toBe(acmePool);
    expect(poolOf(subject, 'globex')).toBe(globexPool);
    await waitPastDrain(subject);
    expect(await acme.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });
    expect(await globex.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    acme.cancel();
    globex.cancel();
  }, 30_000);

  it("sends a rotated credential file's new token on new requests, without replacing a pool or ending a watch", async () => {
    const subject = await startSubject();
    const watch = holdWatch(subject, 'acme');
    await watch.nextEvent();
    const config = parse(readFileSync(subject.file, 'utf8')) as RawConfig;
    const east = (tenantIn(config, 'acme').clusters as RawConfig[]).find((c) => c.id === 'acme-east') ?? {};
    const tokenFile: string = east.apiServer.credentials.tokenFile;
    const issuer = sandbox.issuers.get('acme-east');
    if (!issuer) throw new Error('no acme-east issuer');
    const renewed = await issuer.mint({ namespace: 'meshgate-system', serviceAccount: 'meshgate', audience: issuer.issuer });
    const stats = subject.gateway.resources.stats();
    const original = readFileSync(tokenFile, 'utf8');
    try {
      writeFileSync(tokenFile, `${renewed}\n`);
      subject.reload();
      expect(subject.gateway.resources.stats()).toEqual(stats);

      const seen: string[] = [];
      const apiServer = sandbox.kubeApiServers.get('acme-east');
      const record = (request: { headers: Readonly<Record<string, unknown>> }) => seen.push(String(request.headers.authorization));
      const from = apiServer?.requests.length ?? 0;
      const list = await listPods(subject);
      expect(list).toBe(200);
      for (const request of apiServer?.requests.slice(from) ?? []) record(request);
      expect(seen).toContain(`Bearer ${renewed}`);

      await waitPastDrain(subject);
      await watch.nextEvent();
    } finally {
      writeFileSync(tokenFile, original);
      watch.close();
    }
  }, 30_000);
});

describe('past the 120 s after which an old snapshot used to be disposed', () => {
  it('keeps every established stream and watch through an unchanged reload, a changed and an added tenant, and a rotated file', async () => {
    // The default drain bound (30 minutes), as a provider runs it.
    const subject = await startSubject((config) => {
      config.reload = { watch: false };
      drop(config, 'globex');
    });
    const acme = holdStream(subject, 'acme');
    const acmeWatch = holdWatch(subject, 'acme');
    await acme.ask('sidecar~a');
    await acmeWatch.nextEvent();

    subject.reload((config) => {
      config.reload = { watch: false };
      drop(config, 'globex');
    });
    // globex is added; then its rules change, and its pool is replaced.
    subject.reload((config) => (config.reload = { watch: false }));
    const globex = holdStream(subject, 'globex');
    const globexWatch = holdWatch(subject, 'globex');
    await globex.ask('sidecar~g');
    await globexWatch.nextEvent();
    subject.reload((config) => {
      config.reload = { watch: false };
      const changed = tenantIn(config, 'globex');
      changed.istiod.xds.maxStreamsPerSession = 999;
      changed.access.debug = [{ subject: 'system:serviceaccount:istio-system:istiod' }];
    });

    // Past the old 120 s timer, with room to spare.
    await new Promise((resolve) => setTimeout(resolve, 125_000));
    expect(await acme.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });
    expect(await globex.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    await acmeWatch.nextEvent();
    await globexWatch.nextEvent();
    expect(await metric(subject, /^meshgate_tenant_resources_closed_total\{reason="\w+"\} (\d+)$/m)).toBe(0);
    acme.cancel();
    globex.cancel();
    acmeWatch.close();
    globexWatch.close();
  }, 180_000);
});

describe('repeated reloads', () => {
  it('leak no sockets, timers or memory over 1,000 reloads that replace a pool each time', async () => {
    const subject = await startSubject();
    const gc = collector();
    const acmeToken = tenantOf(sandbox, 'acme').tokens.xds;
    const configs = [0, 1].map((n) => {
      const config = parse(readFileSync(subject.file, 'utf8')) as RawConfig;
      tenantIn(config, 'acme').istiod.xds.maxStreamsPerSession = 500 + n;
      const file = join(mkdtempSync(join(tmpdir(), 'meshgate-reload-loop-')), 'meshgate.yaml');
      writeFileSync(file, stringify(config));
      return loadConfig(file);
    });
    const exercise = async (): Promise<void> => {
      // A stream makes the current pool open a session to istiod; the next reload must close it.
      const outcome = await adsOnce(adsClientFor(subject, 'acme'), metadata(bearer(acmeToken)), { node: { id: 'loop' }, type_url: TYPE_URL.cluster });
      expect(outcome.response).toBeDefined();
    };
    await exercise();
    gc();
    const handles = process.getActiveResourcesInfo().length;
    const heap = process.memoryUsage().heapUsed;

    for (let i = 0; i < 1_000; i++) {
      const next = configs[i % 2];
      if (next === undefined) throw new Error('no config');
      subject.gateway.reload(() => next);
      if (i % 100 === 99) await exercise();
    }
    closeClients();
    await exercise();
    closeClients();
    // Closed sessions and sockets leave the handle list on the next turns of the loop.
    await waitFor(() => process.getActiveResourcesInfo().length <= handles + 2 && subject.gateway.resources.stats().holds === 0);
    gc();

    expect(subject.gateway.resources.stats()).toMatchObject({ draining: 0, holds: 0 });
    expect(process.getActiveResourcesInfo().length).toBeLessThanOrEqual(handles + 2);
    // 1,000 snapshots of two tenants were built: a leak of one per reload would show in MiB.
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(8 * 1024 * 1024);
    // Each reload replaced acme's pool: closed when its last stream ended, or at the drain bound.
    const replaced = await metric(subject, /^meshgate_tenant_resources_closed_total\{reason="replaced"\} (\d+)$/m);
    const drained = await metric(subject, /^meshgate_tenant_resources_closed_total\{reason="drained"\} (\d+)$/m);
    expect(replaced + drained).toBeGreaterThanOrEqual(1_000);
  }, 120_000);
});

function adsClientFor(subject: Subject, tenant: TenantId): AdsClient {
  const client = adsClient({
    port: subject.port('xds'),
    host: tenantOf(sandbox, tenant).host,
    ca: sandbox.info.caFile,
    channel: { 'grpc.use_local_subchannel_pool': 1 },
  });
  clients.push(client);
  return client;
}

function closeClients(): void {
  for (const client of clients.splice(0)) client.close();
}

/**
 * Lets twice the drain bound pass. What is tested is that streams outlive it, so time passing is
 * the condition itself; the tests where a drain does happen wait for its effect instead.
 */
async function waitPastDrain(subject: Subject): Promise<void> {
  const drainMs = subject.gateway.current().config.reload.drainTimeout;
  await new Promise((resolve) => setTimeout(resolve, 2 * drainMs));
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
}

function collector(): () => void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  return () => {
    gc();
    gc();
  };
}

function peerCertificate(port: number, servername: string, ca: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['h2'] }, () => {
      resolve(socket.getPeerX509Certificate()?.fingerprint256 ?? '');
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

function listPods(subject: Subject): Promise<number> {
  const info = tenantOf(sandbox, 'acme');
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: subject.port('api'),
        path: '/clusters/acme-east/api/v1/namespaces/bookinfo/pods',
        ca: readFileSync(sandbox.info.caFile, 'utf8'),
        servername: info.host,
        cert: readFileSync(info.clientCert, 'utf8'),
        key: readFileSync(info.clientKey, 'utf8'),
        headers: { host: info.host },
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end();
  });
}
