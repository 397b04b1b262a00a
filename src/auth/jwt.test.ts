import { generateKeyPairSync } from 'node:crypto';
import { SignJWT, UnsecuredJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { createIssuer, type Issuer } from '../sandbox/issuer.js';
import type { Identity } from './identity.js';
import { createJwksSource } from './jwks.js';
import { bearerToken, createTokenVerifier } from './jwt.js';
import { createTokenCache } from './token-cache.js';

const KIND_ISSUER = 'https://kubernetes.default.svc.cluster.local';

const sourceOf = (issuer: Issuer) =>
  createJwksSource({ load: () => Promise.resolve(issuer.jwks()), cooldownMs: 0, maxAgeMs: 60_000 });

function tenantWith(...clusters: Issuer[]) {
  const cache = createTokenCache<Identity>({ maxEntries: 100, maxTtlMs: 60_000 });
  return createTokenVerifier({
    tenant: 'acme',
    issuers: clusters.map((c) => ({ cluster: c.cluster, issuer: c.issuer, keys: sourceOf(c) })),
    clockToleranceMs: 30_000,
    cache,
  });
}

const claims = { namespace: 'istio-system', serviceAccount: 'kiali', audience: 'istio-ca' };

describe('createTokenVerifier', () => {
  it.each(['RS256', 'ES256'] as const)('accepts a Kubernetes-shaped %s token and names its cluster', async (alg) => {
    const east = await createIssuer('acme-east', KIND_ISSUER, alg);
    const verify = tenantWith(east);
    await expect(verify(await east.mint(claims), ['istio-ca'])).resolves.toMatchObject({
      tenant: 'acme',
      method: 'token',
      subject: 'system:serviceaccount:istio-system:kiali',
      cluster: 'acme-east',
    });
  });

  it('tells clusters that share an issuer string apart by their keys', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const west = await createIssuer('acme-west', KIND_ISSUER, 'RS256');
    const verify = tenantWith(east, west);
    await expect(verify(await west.mint(claims), ['istio-ca'])).resolves.toMatchObject({ cluster: 'acme-west' });
    await expect(verify(await east.mint(claims), ['istio-ca'])).resolves.toMatchObject({ cluster: 'acme-east' });
  });

  it("refuses another tenant's token even when its issuer string is the same (issuer confusion)", async () => {
    const acme = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const globex = await createIssuer('globex-main', KIND_ISSUER, 'ES256');
    const verify = tenantWith(acme);
    await expect(verify(await globex.mint(claims), ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_INVALID' });
  });

  it('refuses an issuer that is not one of the tenant clusters', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    await expect(verify(await east.mint({ ...claims, issuer: 'https://evil.example' }), ['istio-ca'])).rejects.toMatchObject({
      code: 'MG_ERR_AUTHN_TOKEN_ISSUER',
    });
  });

  it('refuses the wrong audience (audience confusion across planes)', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    const kubeToken = await east.mint({ ...claims, audience: KIND_ISSUER });
    await expect(verify(kubeToken, ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_AUDIENCE' });
    await expect(verify(await east.mint(claims), ['meshgate-webhook'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_AUDIENCE' });
  });

  it('refuses an expired token beyond the clock tolerance, and accepts one within it', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    await expect(verify(await east.mint({ ...claims, lifetimeSeconds: -120 }), ['istio-ca'])).rejects.toMatchObject({
      code: 'MG_ERR_AUTHN_TOKEN_EXPIRED',
    });
    await expect(verify(await east.mint({ ...claims, lifetimeSeconds: -5 }), ['istio-ca'])).resolves.toMatchObject({ cluster: 'acme-east' });
  });

  it('refuses a token that is not valid yet', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    await expect(verify(await east.mint({ ...claims, notBeforeSeconds: 600 }), ['istio-ca'])).rejects.toMatchObject({
      code: 'MG_ERR_AUTHN_TOKEN_EXPIRED',
    });
  });

  it('refuses a token signed by a key the cluster does not hold, even with its key id', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: east.kid })
      .setIssuer(KIND_ISSUER)
      .setSubject('system:serviceaccount:istio-system:istiod')
      .setAudience('istio-ca')
      .setExpirationTime('2h')
      .sign(privateKey);
    await expect(verify(forged, ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_INVALID' });
  });

  it('refuses alg "none" and HMAC tokens', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'RS256');
    const verify = tenantWith(east);
    const unsigned = new UnsecuredJWT({ sub: 's' }).setIssuer(KIND_ISSUER).setAudience('istio-ca').setExpirationTime('1h').encode();
    await expect(verify(unsigned, ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_INVALID' });
    const hmac = await new SignJWT({ sub: 's' })
      .setProtectedHeader({ alg: 'HS256', kid: east.kid })
      .setIssuer(KIND_ISSUER)
      .setAudience('istio-ca')
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(JSON.stringify(east.jwks())));
    await expect(verify(hmac, ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_INVALID' });
  });

  it('refuses garbage as malformed', async () => {
    const verify = tenantWith(await createIssuer('acme-east', KIND_ISSUER, 'RS256'));
    for (const garbage of ['x', 'a.b.c', 'eyJhbGciOiJSUzI1NiJ9.e30']) {
      await expect(verify(garbage, ['istio-ca'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_MALFORMED' });
    }
  });

  it('caches per tenant and audience: a cached token is not accepted for another audience', async () => {
    const east = await createIssuer('acme-east', KIND_ISSUER, 'ES256');
    const verify = tenantWith(east);
    const token = await east.mint(claims);
    await verify(token, ['istio-ca']);
    await expect(verify(token, ['meshgate-webhook'])).rejects.toMatchObject({ code: 'MG_ERR_AUTHN_TOKEN_AUDIENCE' });
  });
});

describe('bearerToken', () => {
  it('reads a bearer token and refuses anything else', () => {
    expect(bearerToken(undefined)).toBeUndefined();
    expect(bearerToken('Bearer abc.def.ghi')).toBe('abc.def.ghi');
    expect(bearerToken('bearer abc')).toBe('abc');
    for (const bad of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer a b', ['Bearer a', 'Bearer b']]) {
      expect(() => bearerToken(bad)).toThrow(expect.objectContaining({ code: 'MG_ERR_AUTHN_TOKEN_MALFORMED' }) as Error);
    }
  });
});
