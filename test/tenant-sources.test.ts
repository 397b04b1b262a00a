/**
 * Where tenants come from, end to end:
 *  - the file, watched by `meshgate serve` itself: a rotated certificate on disk applies without a
 *    signal and without cutting a stream, and a bad file keeps the last good tenants (logged, counted);
 *  - MeshTenant resources and their Secrets on an API server (the sandbox's stand-in, written and
 *    read with @kubernetes/client-node): applied within seconds, an invalid one refused with a
 *    status condition while the others carry on, a rotated Secret applied without a restart, and a
 *    deleted MeshTenant's streams ended with a status.
 */
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../src/config/load.js';
import { startServing, type Serving } from '../src/gateway/serve.js';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { MESH_TENANT, TENANT_LABEL, type MeshTenantCondition } from '../src/tenancy/mesh-tenant.js';
import { ROOT, run, start } from './helpers/cli.js';
import { adsClient, adsOnce, bearer, holdAdsStream, identifierOf, metadata, status, TYPE_URL, type AdsClient, type HeldStream } from './helpers/grpc.js';
import { keyOf, secretOf, toMeshTenant } from './helpers/mesh-tenants.js';
import { silent, startTestSandbox, tenantOf } from './helpers/sandbox.js';

type RawConfig = Record<string, any>;
type TenantId = 'acme' | 'globex';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const clients: AdsClient[] = [];
afterAll(() => {
  for (const client of clients) client.close();
});

function ads(port: number, tenant: TenantId): AdsClient {
  const client = adsClient({ port, host: tenantOf(sandbox, tenant).host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  clients.push(client);
  return client;
}

/** An ADS stream held open, asked again whenever the test wants to know it still works. */
function holdStream(port: number, tenant: TenantId, ca = sandbox.info.caFile): HeldStream {
  const info = tenantOf(sandbox, tenant);
  const client = adsClient({ port, host: info.host, ca, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  clients.push(client);
  return holdAdsStream(client, metadata(bearer(info.tokens.xds)));
}

function servedCertificate(port: number, servername: string, ca: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['h2'] }, () => {
      resolve(socket.getPeerX509Certificate()?.fingerprint256 ?? '');
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

/** Retries `probe` until it returns a value, or fails after `timeoutMs`. */
async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const tenantIn = (config: RawConfig, id: TenantId): RawConfig => {
  const found = (config.tenants as RawConfig[]).find((t) => t.id === id);
  if (!found) throw new Error(`no tenant ${id}`);
  return found;
};

describe('the config file, watched by meshgate serve', () => {
  it('applies a certificate rotated on disk without a signal, keeps streams, and keeps the last good config when the file breaks', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-watched-'));
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    const acme = tenantIn(config, 'acme');
    copyFileSync(acme.tls.cert, join(dir, 'acme.pem'));
    copyFileSync(acme.tls.key, join(dir, 'acme-key.pem'));
    acme.tls = { ...acme.tls, cert: join(dir, 'acme.pem'), key: join(dir, 'acme-key.pem') };
    config.admin = { host: '127.0.0.1', port: 0 };
    for (const listener of Object.values(config.listeners as Record<string, RawConfig>)) listener.port = 0;
    config.reload = { pollInterval: '200ms' };
    const file = join(dir, 'meshgate.yaml');
    writeFileSync(file, stringify(config));

    const server = start(['serve', '--config', file, '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/);
      const serving = JSON.parse(line) as { admin: { port: number }; listeners: Record<string, { port: number }> };
      const xds = serving.listeners.xds?.port ?? 0;
      const metrics = async () => (await fetch(`http://127.0.0.1:${serving.admin.port}/metrics`)).text();
      const stream = holdStream(xds, 'acme');
      expect(await stream.ask('sidecar~a')).toMatchObject({ tenant: 'acme' });

      // The certificate is renewed on disk (as cert-manager or a Secret volume would): no SIGHUP.
      const ca = await createCertificateAuthority('renewed server CA');
      const host = tenantOf(sandbox, 'acme').host;
      const renewed = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server' });
      writeFileSync(join(dir, 'acme-key.pem'), renewed.key);
      writeFileSync(join(dir, 'acme.pem'), renewed.cert);
      const trust = [readFileSync(sandbox.info.caFile, 'utf8'), ca.cert];
      const fingerprint = new X509Certificate(renewed.cert).fingerprint256;
      await eventually(async () => ((await servedCertificate(xds, host, trust)) === fingerprint ? true : undefined));
      expect(await stream.ask('sidecar~a2')).toMatchObject({ tenant: 'acme' });

      // A broken file: the tenants in use stay, the failure is logged and counted.
      writeFileSync(file, 'tenants: [');
      await server.waitFor(/"msg":"config reload failed; keeping the config in use"/);
      expect(await metrics()).toMatch(/^meshgate_tenant_source_errors_total\{source="file"\} 1$/m);
      expect(await stream.ask('sidecar~a3')).toMatchObject({ tenant: 'acme' });
      const fresh = await adsOnce(ads(xds, 'globex'), metadata(bearer(tenantOf(sandbox, 'globex').tokens.xds)), { node: { id: 'g' }, type_url: TYPE_URL.cluster });
      expect(fresh.response).toBeDefined();
      stream.cancel();
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
  }, 60_000);
});

describe('MeshTenant resources on an API server', () => {
  const namespace = 'meshgate';
  let kc: KubeConfig;
  let core: CoreV1Api;
  let custom: CustomObjectsApi;
  let serving: Serving | undefined;
  let base: RawConfig;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'meshgate-meshtenants-'));
    // The config cluster: the stand-in API server of acme-east, reached with meshgate's own certificate.
    const url = tenantOf(sandbox, 'acme').kubeApiServers['acme-east'] ?? '';
    const certs = join(sandbox.info.dir, 'certs');
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'config', cluster: { server: url, 'certificate-authority': join(certs, 'cluster-ca.pem') } }],
        users: [{ name: 'meshgate', user: { 'client-certificate': join(certs, 'meshgate-cluster-client.pem'), 'client-key': join(certs, 'meshgate-cluster-client-key.pem') } }],
        contexts: [{ name: 'config', context: { cluster: 'config', user: 'meshgate' } }],
        'current-context': 'config',
      }),
    );
    kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    core = kc.makeApiClient(CoreV1Api);
    custom = kc.makeApiClient(CustomObjectsApi);

    base = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    const tenants = base.tenants as RawConfig[];
    delete base.tenants;
    base.admin = { host: '127.0.0.1', port: 0 };
    for (const listener of Object.values(base.listeners as Record<string, RawConfig>)) listener.port = 0;
    base.reload = { watch: false };
    base.tenantSource = { kubernetes: { namespace, kubeconfig } };
    const file = join(dir, 'meshgate.yaml');
    writeFileSync(file, stringify(base));

    // globex, as a MeshTenant whose files are keys of one Secret.
    const globex = toMeshTenant(tenants.find((t) => t.id === 'globex') ?? {}, 'globex-files');
    await core.createNamespacedSecret({ namespace, body: secretOf('globex-files', 'globex', globex.data) });
    await custom.createNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, body: globex.object });

    serving = await startServing(file, loadConfig(file), (load) => load(), { logger: silent() });
  });
  afterAll(async () => {
    serving?.close();
    await serving?.gateway.close(0);
  });

  const port = (): number => serving?.addresses.listeners.xds?.port ?? 0;

  const readyOf = async (name: string): Promise<MeshTenantCondition | undefined> => {
    const object = (await custom.getNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, name })) as {
      status?: { conditions?: MeshTenantCondition[] };
    };
    return object.status?.conditions?.find((c) => c.type === 'Ready');
  };

  it('serves the tenants of MeshTenants that exist at start, and marks them Ready', async () => {
    if (!serving) throw new Error('not serving');
    expect(serving.gateway.current().tenants.map((t) => t.id)).toEqual(['globex']);
    const outcome = await adsOnce(ads(port(), 'globex'), metadata(bearer(tenantOf(sandbox, 'globex').tokens.xds)), { node: { id: 'g' }, type_url: TYPE_URL.cluster });
    expect(identifierOf(outcome.response)).toMatchObject({ tenant: 'globex' });
    const ready = await eventually(async () => ((await readyOf('globex'))?.status === 'True' ? readyOf('globex') : undefined));
    expect(ready).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
  });

  it('applies a new MeshTenant within seconds, and refuses an invalid one with a status condition while the others carry on', async () => {
    const stream = holdStream(port(), 'globex');
    await stream.ask('sidecar~g');

    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    const acme = toMeshTenant(tenantIn(config, 'acme'), 'acme-files');
    await core.createNamespacedSecret({ namespace, body: secretOf('acme-files', 'acme', acme.data) });
    await custom.createNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, body: acme.object });
    // An invalid one: a host that globex already has, and a Secret that does not exist.
    const thief = structuredClone(acme.object);
    thief.metadata = { name: 'thief', namespace };
    thief.spec.hosts = [tenantOf(sandbox, 'globex').host];
    thief.spec.tls.key = { secretKeyRef: { name: 'no-such-secret', key: 'tls.key' } };
    await custom.createNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, body: thief });
    // And one that names globex's Secret for its own istiod token: the Secret is not its own.
    const borrower = structuredClone(acme.object);
    borrower.metadata = { name: 'borrower', namespace };
    borrower.spec.hosts = ['borrower.meshgate.test'];
    const globexKeys = Object.keys((await core.readNamespacedSecret({ name: 'globex-files', namespace })).data ?? {});
    borrower.spec.istiod.xds.token.file = { secretKeyRef: { name: 'globex-files', key: globexKeys.find((k) => k.endsWith('.jwt')) ?? globexKeys[0] } };
    await custom.createNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, body: borrower });

    const acmeAnswer = await eventually(async () => {
      const outcome = await adsOnce(ads(port(), 'acme'), metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), { node: { id: 'a' }, type_url: TYPE_URL.cluster });
      return outcome.response ? identifierOf(outcome.response) : undefined;
    });
    expect(acmeAnswer).toMatchObject({ tenant: 'acme' });
    const refused = await eventually(async () => ((await readyOf('thief'))?.status === 'False' ? readyOf('thief') : undefined));
    expect(refused).toMatchObject({ status: 'False', reason: 'Invalid' });
    expect(refused.message).toContain('Secret meshgate/no-such-secret does not exist');
    const borrowed = await eventually(async () => ((await readyOf('borrower'))?.status === 'False' ? readyOf('borrower') : undefined));
    expect(borrowed.message).toContain('Secret meshgate/globex-files is not labelled meshgate.dev/tenant: borrower');
    expect(serving?.gateway.current().tenants.map((t) => t.id).sort()).toEqual(['acme', 'globex']);
    expect(await stream.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    stream.cancel();
  }, 30_000);

  it('applies a rotated Secret without a restart, while established streams carry on', async () => {
    const stream = holdStream(port(), 'globex');
    await stream.ask('sidecar~g');
    const ca = await createCertificateAuthority('rotated globex CA');
    const host = tenantOf(sandbox, 'globex').host;
    const rotated = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server' });
    const secret = await core.readNamespacedSecret({ name: 'globex-files', namespace });
    const data = { ...(secret.data ?? {}) };
    const { tls } = tenantIn(parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig, 'globex') as { tls: { cert: string; key: string } };
    data[keyOf(basename(tls.cert))] = Buffer.from(rotated.cert).toString('base64');
    data[keyOf(basename(tls.key))] = Buffer.from(rotated.key).toString('base64');
    await core.replaceNamespacedSecret({ name: 'globex-files', namespace, body: secretOf('globex-files', 'globex', data) });

    const trust = [readFileSync(sandbox.info.caFile, 'utf8'), ca.cert];
    const fingerprint = new X509Certificate(rotated.cert).fingerprint256;
    await eventually(async () => ((await servedCertificate(port(), host, trust)) === fingerprint ? true : undefined));
    expect(await stream.ask('sidecar~g2')).toMatchObject({ tenant: 'globex' });
    stream.cancel();
  }, 30_000);

  it("ends a deleted MeshTenant's streams with a status, and the other tenants carry on", async () => {
    const acme = holdStream(port(), 'acme');
    await acme.ask('sidecar~a');
    await custom.deleteNamespacedCustomObject({ group: MESH_TENANT.group, version: MESH_TENANT.version, namespace, plural: MESH_TENANT.plural, name: 'acme' });
    const ended = await acme.ended;
    expect(ended.code).toBe(status.UNAVAILABLE);
    expect(ended.details).toMatch(/^MG_ERR_TENANT_REMOVED: /);
    expect(serving?.gateway.current().tenants.map((t) => t.id)).toEqual(['globex']);
  }, 30_000);
});

describe('meshgate check --tenants', () => {
  it('checks MeshTenant YAML, with the Secrets in it, as meshgate would serve it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-check-'));
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
    const documents: RawConfig[] = [];
    for (const id of ['acme', 'globex'] as const) {
      const { object, data } = toMeshTenant(tenantIn(config, id), `${id}-files`);
      documents.push({ apiVersion: 'v1', kind: 'Secret', metadata: { name: `${id}-files`, namespace: 'meshgate', labels: { [TENANT_LABEL]: id } }, data }, object);
    }
    // The sandbox's upstreams are on loopback: check against its settings.
    const base: RawConfig = { ...config, tenantSource: { kubernetes: { namespace: 'meshgate' } } };
    delete base.tenants;
    const baseFile = join(dir, 'meshgate.yaml');
    writeFileSync(baseFile, stringify(base));
    const good = join(dir, 'tenants.yaml');
    writeFileSync(good, documents.map((d) => stringify(d)).join('---\n'));
    const ok = await run(['check', '--tenants', good, '--config', baseFile]);
    expect(ok.stdout).toContain('MeshTenant acme: ok');
    expect(ok.stdout).toContain('2 of 2 would be served');
    expect(ok.code).toBe(0);

    const bad = structuredClone(documents[1]) as RawConfig;
    bad.metadata.name = 'acme-copy';
    bad.spec.clusters[0].jwks = { url: 'not a url' };
    writeFileSync(good, [...documents, bad].map((d) => stringify(d)).join('---\n'));
    const refused = await run(['check', '--tenants', good, '--config', baseFile]);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toMatch(/MeshTenant acme-copy: invalid\n {2}spec\.clusters\[0\]\.jwks\.url: /);
    expect(refused.stdout).toContain('2 of 3 would be served');
  }, 30_000);

  it('prints a CRD equal to the one deploy/ ships', async () => {
    const printed = await run(['crd']);
    expect(printed.code).toBe(0);
    expect(printed.stdout).toBe(readFileSync(join(ROOT, 'deploy', 'base', 'crd-meshtenant.yaml'), 'utf8'));
  });
});
