import { describe, expect, it } from 'vitest';
import { createIssuer } from '../sandbox/issuer.js';
import { createJwksSource } from './jwks.js';
import { createTokenVerifier } from './jwt.js';
import { createTokenCache } from './token-cache.js';
import type { Identity } from './identity.js';

const ISSUER = 'https://kubernetes.default.svc.cluster.local';

/** A verifier over one cluster whose JWKS loads come from `load`, counted. */
async function setup(cooldownMs: number, maxAgeMs = 600_000) {
  const issuer = await createIssuer('east', ISSUER, 'ES256');
  let loads = 0;
  let failing = false;
  const source = createJwksSource({
    // A load takes a little while, as a fetch would, so concurrent callers really overlap it.
    load: async () => {
      loads++;
      await new Promise((r) => setTimeout(r, 10));
      if (failing) throw new Error('JWKS endpoint down');
      return issuer.jwks();
    },
    cooldownMs,
    maxAgeMs,
  });
  const verify = createTokenVerifier({
    tenant: 'acme',
    issuers: [{ cluster: 'east', issuer: ISSUER, keys: source }],
    clockToleranceMs: 0,
    cache: createTokenCache<Identity>({ maxEntries: 100, maxTtlMs: 60_000 }),
  });
  const mint = () => issuer.mint({ namespace: 'ns', serviceAccount: 'sa', audience: 'istio-ca' });
  return {
    issuer,
    source,
    verify,
    mint,
    loads: () => loads,
    fail: (value: boolean) => {
      failing = value;
    },
  };
}

describe('createJwksSource', () => {
  it('loads once, lazily, and serves from memory after that', async () => {
    const s = await setup(60_000);
    expect(s.loads()).toBe(0);
    await s.verify(await s.mint(), ['istio-ca']);
    await s.verify(await s.mint(), ['istio-ca']);
    expect(s.loads()).toBe(1);
  });

  it('accepts a rotated key after exactly one reload, once the cooldown allows it', async () => {
    const s = await setup(50);
    await s.verify(await s.mint(), ['istio-ca']);
    await s.issuer.rotate();
    const rotated = await s.mint();
    await new Promise((r) => setTimeout(r, 60));
    await expect(s.verify(rotated, ['istio-ca'])).resolves.toMatchObject({ cluster: 'east' });
    expect(s.loads()).toBe(2);
  });

  it('lets a flood of unknown key ids cause at most one load per cooldown', async () => {
    const s = await setup(60_000);
    const stranger = await createIssuer('east', ISSUER, 'ES256');
    const flood = () =>
      Promise.all(Array.from({ length: 200 }, () => stranger.mint({ namespace: 'ns', serviceAccount: 'sa', audience: 'istio-ca' })));
    const first = await Promise.allSettled((await flood()).map((t) => s.verify(t, ['istio-ca'])));
    expect(first.map((r) => r.status)).toEqual(Array(200).fill('rejected'));
    expect(s.loads()).toBe(1);
    const second = await Promise.allSettled((await flood()).map((t) => s.verify(t, ['istio-ca'])));
    expect(second.map((r) => (r.status === 'rejected' ? (r.reason as { code?: string }).code : 'ok'))).toEqual(
      Array(200).fill('MG_ERR_AUTHN_TOKEN_INVALID'),
    );
    expect(s.loads()).toBe(1);
  });

  it('shares one reload among concurrent callers', async () => {
    const s = await setup(0);
    await s.verify(await s.mint(), ['istio-ca']);
    await s.issuer.rotate();
    const rotated = await Promise.all(Array.from({ length: 20 }, () => s.mint()));
    const results = await Promise.all(rotated.map((t) => s.verify(t, ['istio-ca'])));
    expect(results).toHaveLength(20);
    expect(s.loads()).toBe(2);
  });

  it('fails closed: no keys, no verification', async () => {
    const s = await setup(60_000);
    s.fail(true);
    await expect(s.verify(await s.mint(), ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_JWKS_UNAVAILABLE' });
    // Within the cooldown a second caller does not hammer the endpoint.
    await expect(s.verify(await s.mint(), ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_JWKS_UNAVAILABLE' });
    expect(s.loads()).toBe(1);
  });

  it('stops trusting keys older than maxAge when they cannot be reloaded', async () => {
    const s = await setup(0, 30);
    await s.verify(await s.mint(), ['istio-ca']);
    s.fail(true);
    await new Promise((r) => setTimeout(r, 40));
    await expect(s.verify(await s.mint(), ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_JWKS_UNAVAILABLE' });
  });
});
