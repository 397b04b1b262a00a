/**
 * meshgate never lends a caller more authority than it has, on the xds plane (DESIGN.md §5,
 * invariant 8): a certificate caller rides on the tenant's istiod token, so it gets only what
 * `access.xds` grants it, and never a workload certificate unless a rule names CreateCertificate;
 * and debug type URLs in ADS requests pass the debug plane's allowlist, whoever sends them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { createCertificateRequest } from '../src/pki/certificates.js';
import { adsClient, adsOnce, bearer, caClient, metadata, status, TYPE_URL, type AdsClient, type ClientTarget } from './helpers/grpc.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
let granting: ExtraGateway;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  // The same config, but acme's certificate callers are also granted CreateCertificate by name.
  granting = await startGatewayFrom(sandbox, (config) => {
    const acme = (config.tenants as Record<string, any>[]).find((t) => t.id === 'acme')!;
    acme.access.xds = [
      { method: 'token' },
      { method: 'clientCertificate', uri: 'spiffe://acme.meshgate.test/ns/istio-system/*', methods: ['StreamAggregatedResources', 'CreateCertificate'] },
    ];
  });
});
afterAll(async () => {
  await granting.close();
  await sandbox.close();
});

const clients: { close(): void }[] = [];
afterAll(() => {
  for (const client of clients) client.close();
});

const acme = () => tenantOf(sandbox, 'acme');
const target = (port = sandbox.info.listeners.xds.port, certificate = true): ClientTarget => ({
  port,
  host: acme().host,
  ca: sandbox.info.caFile,
  ...(certificate ? { cert: acme().clientCert, key: acme().clientKey } : {}),
});
const ads = (t: ClientTarget): AdsClient => {
  const client = adsClient(t);
  clients.push(client);
  return client;
};

function createCertificate(t: ClientTarget, md = metadata()): Promise<{ code: number; details: string; chain?: string[] }> {
  const client = caClient(t);
  clients.push(client);
  return createCertificateRequest('sidecar').then(
    ({ csr }) =>
      new Promise((resolve) =>
        client.CreateCertificate({ csr, validity_duration: 3600 }, md, {}, (err, res) =>
          resolve(err ? { code: err.code, details: err.details } : { code: status.OK, details: '', chain: res?.cert_chain ?? [] }),
        ),
      ),
  );
}

const istiodCalls = () => sandbox.xdsIstiods.get('acme')?.calls.length ?? 0;
const istiodRequests = () => sandbox.xdsIstiods.get('acme')?.requests ?? [];

describe('CreateCertificate', () => {
  it('is refused to a certificate caller that no rule grants it, and reaches no istiod', async () => {
    const before = istiodCalls();
    const refused = await createCertificate(target());
    expect(refused.code).toBe(status.PERMISSION_DENIED);
    expect(refused.details).toMatch(/^MG_ERR_AUTHZ_DENIED: CreateCertificate is not granted to this caller: a certificate caller needs a rule naming it/);
    expect(istiodCalls()).toBe(before);
  });

  it('is granted to a certificate caller by a rule that names it', async () => {
    const granted = await createCertificate(target(granting.port('xds')));
    expect(granted.code).toBe(status.OK);
    expect(granted.chain?.length).toBeGreaterThan(0);
  });

  it('stays open to a token caller, whose own token istiod reviews', async () => {
    const granted = await createCertificate(target(undefined, false), metadata(bearer(acme().tokens.xds)));
    expect(granted.code).toBe(status.OK);
  });

  it('limits a certificate caller to the methods its rule names', async () => {
    // The granting rule names StreamAggregatedResources, not Delta.
    const outcome = await adsOnce(ads(target(granting.port('xds'))), metadata(), { node: { id: 'istioctl' }, type_url: TYPE_URL.syncz }, { delta: true });
    expect(outcome.status.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.status.details).toMatch(/^MG_ERR_AUTHZ_DENIED: DeltaAggregatedResources is not granted/);
  });
});

describe('debug type URLs on the xds plane pass the debug allowlist', () => {
  const forbidden: [string, object][] = [
    ['adsz?push=true', { type_url: 'istio.io/debug', resource_names: ['adsz?push=true'] }],
    ['force_disconnect', { type_url: 'istio.io/debug', resource_names: ['force_disconnect?proxyID=x'] }],
    ['pprof/heap', { type_url: 'istio.io/debug', resource_names: ['pprof/heap'] }],
    ['cachez?clear', { type_url: 'istio.io/debug', resource_names: ['cachez?clear=true'] }],
    ['istio.io/debug/pprof', { type_url: 'istio.io/debug/pprof' }],
    ['an endpoint off the allowlist', { type_url: 'istio.io/debug', resource_names: ['connections'] }],
  ];

  for (const [who, credentials] of [
    ['a token caller', { t: () => target(undefined, false), md: () => metadata(bearer(acme().tokens.debug)) }],
    ['a certificate caller', { t: () => target(), md: () => metadata() }],
  ] as const) {
    it.each(forbidden)(`refuses ${who}'s %s before istiod sees it`, async (_name, request) => {
      const before = istiodRequests().length;
      const outcome = await adsOnce(ads(credentials.t()), credentials.md(), { node: { id: 'istioctl' }, ...request });
      expect(outcome.status.code).toBe(status.PERMISSION_DENIED);
      expect(outcome.status.details).toMatch(/^MG_ERR_AUTHZ_DEBUG_ENDPOINT: /);
      expect(istiodRequests().slice(before)).toEqual([]);
    });
  }

  it('refuses a forbidden request later on a stream that began with an allowed one, and cancels it upstream', async () => {
    const call = ads(target(undefined, false)).StreamAggregatedResources(metadata(bearer(acme().tokens.debug)));
    call.on('error', () => undefined);
    const ended = new Promise<{ code: number; details: string }>((resolve) => call.on('status', resolve));
    const first = new Promise((resolve) => call.once('data', resolve));
    call.write({ node: { id: 'istioctl-mixed' }, type_url: TYPE_URL.syncz });
    await first;
    const before = istiodRequests().length;
    call.write({ type_url: 'istio.io/debug', resource_names: ['adsz?push=true'] });
    const outcome = await ended;
    expect(outcome.code).toBe(status.PERMISSION_DENIED);
    expect(outcome.details).toMatch(/^MG_ERR_AUTHZ_DEBUG_ENDPOINT: debug endpoint "adsz" is not allowed/);
    expect(istiodRequests().slice(before)).toEqual([]);
  });

  it('still forwards the allowed ones: syncz by its own type URL and by istio.io/debug', async () => {
    for (const request of [{ type_url: TYPE_URL.syncz }, { type_url: 'istio.io/debug', resource_names: ['syncz'] }]) {
      const before = istiodRequests().length;
      await adsOnce(ads(target(undefined, false)), metadata(bearer(acme().tokens.debug)), { node: { id: 'istioctl' }, ...request });
      expect(istiodRequests().slice(before)).toContainEqual(expect.objectContaining({ typeUrl: request.type_url }));
    }
  });
});
