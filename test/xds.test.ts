/**
 * The xds plane through meshgate to the sandbox's stand-in istiods, with real grpc-js clients:
 * State of the World and Delta ADS, the CA, istioctl's syncz; and the isolation matrix.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { adsClient, adsOnce, bearer, caClient, identifierOf, metadata, status, TYPE_URL, type AdsClient } from './helpers/grpc.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';
import { xdsProtos } from '../src/sandbox/xds-protos.js';
import { createCertificateRequest } from '../src/pki/certificates.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const target = (tenant: 'acme' | 'globex', extra: { cert?: string; key?: string } = {}) => ({
  port: sandbox.info.listeners.xds.port,
  host: tenantOf(sandbox, tenant).host,
  ca: sandbox.info.caFile,
  ...extra,
});

const clients: AdsClient[] = [];
const ads = (tenant: 'acme' | 'globex', extra: { cert?: string; key?: string } = {}): AdsClient => {
  const client = adsClient(target(tenant, extra));
  clients.push(client);
  return client;
};
afterAll(() => {
  for (const client of clients) client.close();
});

const NODE = 'sidecar~10.1.0.7~productpage-v1-6b7f6dc4f5-x2x7p.bookinfo~bookinfo.svc.cluster.local';

describe('State of the World and Delta ADS', () => {
  it("answers a sidecar's CDS request from its own tenant's istiod, node id echoed, clusterid pinned", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const outcome = await adsOnce(ads('acme'), metadata(bearer(acme.tokens.xds)), { node: { id: NODE }, type_url: TYPE_URL.cluster });
    expect(outcome.response?.type_url).toBe(TYPE_URL.cluster);
    expect(identifierOf(outcome.response)).toEqual({ tenant: 'acme', istiod: 'istiod-acme', node: NODE, clusterid: 'acme-east' });
    const [cluster] = (outcome.response?.resources ?? []).map((r) => xdsProtos().unpack(r));
    expect(cluster).toMatchObject({ name: 'outbound|9080||productpage.bookinfo.svc.cluster.local' });
  });

  it('answers Delta ADS the same way', async () => {
    const globex = tenantOf(sandbox, 'globex');
    const outcome = await adsOnce(ads('globex'), metadata(bearer(globex.tokens.xds)), { node: { id: NODE }, type_url: TYPE_URL.cluster }, { delta: true });
    expect(identifierOf(outcome.response)).toMatchObject({ tenant: 'globex', node: NODE, clusterid: 'globex-main' });
  });

  it("lets istioctl list the proxies connected to the tenant's istiod (istio.io/debug/syncz), and only those", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');
    // A sidecar of each tenant stays connected.
    const acmeCall = ads('acme').StreamAggregatedResources(metadata(bearer(acme.tokens.xds)));
    const globexCall = ads('globex').StreamAggregatedResources(metadata(bearer(globex.tokens.xds)));
    for (const [call, id] of [[acmeCall, 'sidecar~acme-pod'], [globexCall, 'sidecar~globex-pod']] as const) {
      call.on('error', () => undefined);
      const first = new Promise((resolve) => call.once('data', resolve));
      call.write({ node: { id }, type_url: TYPE_URL.cluster });
      await first;
    }
    try {
      // istioctl: a token for its own identity, no clusterid.
      const outcome = await adsOnce(ads('acme'), metadata(bearer(acme.tokens.debug)), { node: { id: 'istioctl' }, type_url: TYPE_URL.syncz });
      const proxies = (outcome.response?.resources ?? []).map((r) => (xdsProtos().unpack(r) as { node: { id: string } }).node.id);
      expect(proxies).toContain('sidecar~acme-pod');
      expect(proxies).not.toContain('sidecar~globex-pod');
    } finally {
      acmeCall.cancel();
      globexCall.cancel();
    }
  });

  it("accepts istioctl's client certificate (--cert-dir), sending the tenant's own istiod token for it", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const outcome = await adsOnce(ads('acme', { cert: acme.clientCert, key: acme.clientKey }), metadata(), { node: { id: 'istioctl' }, type_url: TYPE_URL.syncz });
    expect(outcome.status.code).toBe(status.CANCELLED);
    expect(identifierOf(outcome.response)).toMatchObject({ tenant: 'acme', clusterid: 'acme-east' });
    const call = sandbox.xdsIstiods.get('acme')?.calls.findLast((c) => c.nodeId === 'istioctl');
    expect(String(call?.metadata.authorization)).toMatch(/^Bearer /);
    expect(String(call?.metadata.authorization)).not.toContain(acme.tokens.debug);
  });
});

describe('gRPC on the webhook listener', () => {
  it('answers istioctl where it looks when no istiod pod is visible (the injection URL host:port), beside the webhooks', async () => {
    // istioctl falls back to the host and port of the injection webhook URL as its xDS address.
    const acme = tenantOf(sandbox, 'acme');
    const client = adsClient({ ...target('acme'), port: sandbox.info.listeners.webhook.port });
    clients.push(client);
    const outcome = await adsOnce(client, metadata(bearer(acme.tokens.debug)), { node: { id: 'istioctl-fallback' }, type_url: TYPE_URL.syncz });
    expect(identifierOf(outcome.response)).toMatchObject({ tenant: 'acme', istiod: 'istiod-acme', clusterid: 'acme-east' });
  });
});

describe('the CA', () => {
  it("signs a workload CSR with the tenant's mesh CA, for the token's identity", async () => {
    const globex = tenantOf(sandbox, 'globex');
    const { csr, publicKey } = await createCertificateRequest('sidecar');

    const client = caClient(target('globex'));
    const response = await new Promise<{ cert_chain: string[] }>((resolve, reject) =>
      client.CreateCertificate({ csr, validity_duration: 3600 }, metadata(bearer(globex.tokens.xds)), {}, (err, res) =>
        err || !res ? reject(err ?? new Error('no response')) : resolve(res),
      ),
    );
    client.close();
    const [leaf, root] = response.cert_chain.map((pem) => new X509Certificate(pem));
    const meshCa = new X509Certificate(readFileSync(globex.meshCaFile));
    expect(root?.fingerprint256).toBe(meshCa.fingerprint256);
    expect(leaf?.verify(meshCa.publicKey)).toBe(true);
    expect(leaf?.subjectAltName).toBe('URI:spiffe://globex.local/ns/bookinfo/sa/productpage');
    expect(leaf?.publicKey.export({ type: 'spki', format: 'pem' })).toBe(publicKey);
  });
});

describe('isolation matrix on the xds plane', () => {
  type Attempt = { name: string; tenant: 'acme' | 'globex'; run: () => Promise<{ code: number; details: string; reached: string[] }> };

  const reachedSince = (counts: Map<string, number>): string[] =>
    [...sandbox.xdsIstiods].flatMap(([id, istiod]) => istiod.calls.slice(counts.get(id) ?? 0).map(() => id));

  const attempt = (host: 'acme' | 'globex', md: Record<string, string>, cert?: 'acme' | 'globex', path: 'sotw' | 'unknown' = 'sotw') => async () => {
    const counts = new Map([...sandbox.xdsIstiods].map(([id, istiod]) => [id, istiod.calls.length]));
    const extra = cert ? { cert: tenantOf(sandbox, cert).clientCert, key: tenantOf(sandbox, cert).clientKey } : {};
    let code: number;
    let details: string;
    if (path === 'unknown') {
      // grpc.reflection: a real gRPC call to a method meshgate does not forward.
      const client = ads(host, extra);
      const unknown = await new Promise<{ code: number; details: string }>((resolve) => {
        const call = client.makeBidiStreamRequest(
          '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo',
          (b: Buffer) => b,
          (b: Buffer) => b,
          metadata(md),
        );
        call.on('error', () => undefined);
        call.on('status', (s: { code: number; details: string }) => resolve(s));
        call.end();
      });
      ({ code, details } = unknown);
    } else {
      const outcome = await adsOnce(ads(host, extra), metadata(md), { node: { id: `matrix-${host}` }, type_url: TYPE_URL.cluster });
      ({ code, details } = outcome.status);
    }
    await new Promise((r) => setTimeout(r, 20));
    return { code, details, reached: reachedSince(counts) };
  };

  it('allows each tenant only its own, and refuses every crossing with the right status', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');
    const expired = await sandbox.issuers.get('acme-east')?.mint({ namespace: 'bookinfo', serviceAccount: 'productpage', audience: 'istio-ca', lifetimeSeconds: -3600 });
    const cases: (Attempt & { expect: { code: number; mg?: string; reached: string[] } })[] = [
      { name: "acme's token on acme", tenant: 'acme', run: attempt('acme', bearer(acme.tokens.xds)), expect: { code: status.CANCELLED, reached: ['acme'] } },
      { name: "globex's token on globex", tenant: 'globex', run: attempt('globex', bearer(globex.tokens.xds)), expect: { code: status.CANCELLED, reached: ['globex'] } },
      { name: "acme's certificate on acme", tenant: 'acme', run: attempt('acme', {}, 'acme'), expect: { code: status.CANCELLED, reached: ['acme'] } },
      { name: "acme's token on globex's host", tenant: 'globex', run: attempt('globex', bearer(acme.tokens.xds)), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_TOKEN_INVALID', reached: [] } },
      { name: "globex's token on acme's host", tenant: 'acme', run: attempt('acme', bearer(globex.tokens.xds)), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_TOKEN_INVALID', reached: [] } },
      { name: "acme's certificate on globex's host", tenant: 'globex', run: attempt('globex', {}, 'acme'), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID', reached: [] } },
      { name: "acme's token with globex's clusterid", tenant: 'acme', run: attempt('acme', { ...bearer(acme.tokens.xds), clusterid: 'globex-main' }), expect: { code: status.PERMISSION_DENIED, mg: 'MG_ERR_ROUTE_UNKNOWN_CLUSTER', reached: [] } },
      { name: "acme's token with another acme cluster's clusterid", tenant: 'acme', run: attempt('acme', { ...bearer(acme.tokens.xds), clusterid: 'acme-west' }), expect: { code: status.PERMISSION_DENIED, mg: 'MG_ERR_AUTHZ_CLUSTER_MISMATCH', reached: [] } },
      { name: 'no token', tenant: 'acme', run: attempt('acme', {}), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_REQUIRED', reached: [] } },
      { name: 'an expired token', tenant: 'acme', run: attempt('acme', bearer(expired ?? '')), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_TOKEN_EXPIRED', reached: [] } },
      { name: 'the wrong audience', tenant: 'acme', run: attempt('acme', bearer(acme.tokens.webhook)), expect: { code: status.UNAUTHENTICATED, mg: 'MG_ERR_AUTHN_TOKEN_AUDIENCE', reached: [] } },
      { name: 'an unknown method', tenant: 'acme', run: attempt('acme', bearer(acme.tokens.xds), undefined, 'unknown'), expect: { code: status.UNIMPLEMENTED, mg: 'MG_ERR_ROUTE_UNKNOWN_METHOD', reached: [] } },
    ];
    const wrong: string[] = [];
    for (const c of cases) {
      const got = await c.run();
      const mg = /^(MG_ERR_[A-Z_]+)/.exec(got.details)?.[1];
      if (got.code !== c.expect.code || mg !== c.expect.mg || JSON.stringify(got.reached) !== JSON.stringify(c.expect.reached)) {
        wrong.push(`${c.name}: got ${got.code} ${got.details} reaching [${got.reached.join(',')}]`);
      }
    }
    expect(wrong).toEqual([]);
    expect(cases.filter((c) => c.expect.reached.length > 0)).toHaveLength(3);
    expect(cases.filter((c) => c.expect.reached.length === 0)).toHaveLength(9);
  });

  it("never passes a client's x-forwarded-client-cert, and replaces the caller's clusterid", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const outcome = await adsOnce(
      ads('acme'),
      metadata({
        ...bearer(acme.tokens.xds),
        'x-forwarded-client-cert': 'URI=spiffe://cluster.local/ns/istio-system/sa/istiod',
        clusterid: 'acme-east',
        'x-test-bin': Buffer.from([0, 1, 2, 255]),
      }),
      { node: { id: 'xfcc-probe' }, type_url: TYPE_URL.cluster },
    );
    expect(outcome.response).toBeDefined();
    const call = sandbox.xdsIstiods.get('acme')?.calls.findLast((c) => c.nodeId === 'xfcc-probe');
    expect(call?.metadata['x-forwarded-client-cert']).toBeUndefined();
    expect(call?.metadata.clusterid).toBe('acme-east');
    expect(call?.metadata['x-test-bin']).toEqual(Buffer.from([0, 1, 2, 255]));
  });
});

describe('metrics', () => {
  const scrape = async (): Promise<string> => (await fetch(`${sandbox.info.admin}/metrics`)).text();
  const value = (text: string, series: string): number => {
    const escaped = series.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return Number(new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text)?.[1] ?? Number.NaN);
  };

  it('counts connections, streams, durations, bytes, upstream sessions and denials for the plane', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const client = ads('acme');
    const call = client.StreamAggregatedResources(metadata(bearer(acme.tokens.xds)));
    call.on('error', () => undefined);
    await new Promise((resolve) => {
      call.once('data', resolve);
      call.write({ node: { id: 'metrics-probe' }, type_url: TYPE_URL.cluster });
    });
    const open = await scrape();
    expect(value(open, 'meshgate_tenant_connections{tenant="acme"}')).toBeGreaterThanOrEqual(1);
    expect(value(open, 'meshgate_tenant_streams{tenant="acme"}')).toBeGreaterThanOrEqual(1);
    expect(value(open, 'meshgate_xds_streams{tenant="acme"}')).toBeGreaterThanOrEqual(1);
    const replica = new URL(sandbox.xdsIstiods.get('acme')?.url ?? '').host;
    expect(value(open, `meshgate_xds_upstream_sessions{tenant="acme",replica="${replica}"}`)).toBeGreaterThanOrEqual(1);

    const ended = new Promise((resolve) => call.on('status', resolve));
    call.cancel();
    await ended;
    await adsOnce(ads('acme'), metadata(), { node: { id: 'metrics-denied' }, type_url: TYPE_URL.cluster });
    await new Promise((r) => setTimeout(r, 50));
    const after = await scrape();
    expect(value(after, 'meshgate_xds_stream_duration_seconds_count{tenant="acme"}')).toBeGreaterThanOrEqual(1);
    expect(value(after, 'meshgate_xds_bytes_total{tenant="acme",direction="to_upstream"}')).toBeGreaterThan(0);
    expect(value(after, 'meshgate_xds_bytes_total{tenant="acme",direction="to_client"}')).toBeGreaterThan(0);
    expect(value(after, 'meshgate_denials_total{tenant="acme",plane="xds",reason="MG_ERR_AUTHN_REQUIRED"}')).toBeGreaterThanOrEqual(1);
  });
});
