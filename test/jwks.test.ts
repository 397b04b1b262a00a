/**
 * Signing keys end to end: meshgate fetching a cluster's JWKS over HTTPS from the stand-in API
 * server's OIDC endpoint, which counts every fetch. A rotated key works after exactly one refresh; a flood of unknown key
 * ids costs at most one fetch per cluster per cooldown.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createIssuer } from '../src/sandbox/issuer.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

const COOLDOWN_MS = 400;

let sandbox: Sandbox;
let gateway: ExtraGateway;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  gateway = await startGatewayFrom(sandbox, (config) => {
    config.auth = { jwks: { cooldown: `${COOLDOWN_MS}ms` } };
  });
  // listen() warms every cluster's keys: let those first fetches land.
  for (let i = 0; i < 50 && fetches().east < 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
});
afterAll(async () => {
  await gateway.close();
  await sandbox.close();
});

const debugWith = (token: string) =>
  call({
    port: gateway.port('api'),
    servername: tenantOf(sandbox, 'acme').host,
    path: '/debug/syncz',
    headers: { authorization: `Bearer ${token}` },
    ca: sandbox.info.caFile,
  });

/** acme-east serves its keys; acme-west has none (TokenReview), so it is never asked for keys. */
const fetches = () => ({
  east: sandbox.kubeApiServers.get('acme-east')?.jwksFetches() ?? 0,
  west: sandbox.kubeApiServers.get('acme-west')?.jwksFetches() ?? 0,
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('JWKS over HTTPS', () => {
  it('accepts a token signed with a rotated key after exactly one refresh', async () => {
    const east = sandbox.issuers.get('acme-east');
    if (!east) throw new Error('no acme-east issuer');
    await sleep(COOLDOWN_MS + 50);
    const before = fetches();
    await east.rotate();
    const token = await east.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: 'istio-ca' });

    const res = await debugWith(token);
    expect(res.status).toBe(200);
    expect(fetches()).toEqual({ east: before.east + 1, west: before.west });

    // From then on, from memory.
    expect((await debugWith(token)).status).toBe(200);
    expect(fetches()).toEqual({ east: before.east + 1, west: before.west });
  });

  it('lets a flood of unknown key ids cost at most one fetch per cluster per cooldown', async () => {
    const stranger = await createIssuer('acme-east', sandbox.info.issuer, 'ES256');
    const tokens = await Promise.all(
      Array.from({ length: 200 }, () => stranger.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: 'istio-ca' })),
    );

    await sleep(COOLDOWN_MS + 50);
    const before = fetches();
    const started = performance.now();
    const results = await Promise.all(tokens.map((token) => debugWith(token)));
    const elapsed = performance.now() - started;

    expect(new Set(results.map((r) => `${r.status} ${r.json().code}`))).toEqual(new Set(['401 MG_ERR_AUTHN_TOKEN_INVALID']));
    // One fetch when the flood begins, and at most one more per cooldown that passes during it.
    const allowed = 1 + Math.floor(elapsed / COOLDOWN_MS);
    const after = fetches();
    expect(after.east - before.east).toBeGreaterThanOrEqual(1);
    expect(after.east - before.east).toBeLessThanOrEqual(allowed);
    expect(after.west).toBe(0);
    expect(allowed).toBeLessThan(tokens.length / 10);
  });
});
