/**
 * The TokenReview fallback, end to end: acme-west publishes no keys, so meshgate asks its API
 * server (the stand-in counts the reviews). Answers are cached both ways, calls are rate-limited,
 * and an API server that cannot answer means no, never yes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createIssuer } from '../src/sandbox/issuer.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { configCluster, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(async () => {
  await sandbox.close();
});

const reviews = (): number => sandbox.kubeApiServers.get('acme-west')?.tokenReviews() ?? 0;

function westIssuer() {
  const issuer = sandbox.issuers.get('acme-west');
  if (!issuer) throw new Error('no acme-west issuer');
  return issuer;
}

const mint = (audience?: string) => westIssuer().mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: audience ?? westIssuer().issuer });

function listPods(token: string, port = sandbox.info.listeners.api.port, localAddress?: string) {
  return call({
    port,
    servername: tenantOf(sandbox, 'acme').host,
    path: '/clusters/acme-west/api/v1/namespaces/bookinfo/pods',
    headers: { authorization: `Bearer ${token}` },
    ca: sandbox.info.caFile,
    ...(localAddress === undefined ? {} : { localAddress }),
  });
}

const codeOf = (res: { status: number; json: <T>() => T }): string =>
  res.status === 200 ? '200' : (res.json<{ message: string }>().message.split(':')[0] ?? '');

describe('TokenReview for a cluster without public keys', () => {
  it('accepts a valid token after one review, then from the cache', async () => {
    const token = await mint();
    const before = reviews();
    expect(codeOf(await listPods(token))).toBe('200');
    expect(codeOf(await listPods(token))).toBe('200');
    expect(codeOf(await listPods(token))).toBe('200');
    expect(reviews() - before).toBe(1);
    // The API server saw the token's own identity, impersonated by meshgate's certificate.
    const last = sandbox.kubeApiServers.get('acme-west')?.requests.at(-1);
    expect(last?.user?.username).toBe('system:serviceaccount:istio-system:istiod');
    expect(last?.headers['impersonate-group']).toBe('system:serviceaccounts, system:serviceaccounts:istio-system');
  });

  it('refuses a token the cluster rejects, and remembers the refusal', async () => {
    const stranger = await createIssuer('acme-west', westIssuer().issuer, 'RS256');
    const forged = await stranger.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: westIssuer().issuer });
    const before = reviews();
    expect(codeOf(await listPods(forged))).toBe('MG_ERR_AUTHN_TOKEN_INVALID');
    expect(codeOf(await listPods(forged))).toBe('MG_ERR_AUTHN_TOKEN_INVALID');
    expect(reviews() - before).toBe(1);
  });

  it("refuses a token of another audience (the cluster's review checks it too)", async () => {
    expect(codeOf(await listPods(await mint('istio-ca')))).toMatch(/^MG_ERR_AUTHN_TOKEN_(INVALID|AUDIENCE)$/);
  });

  it('refuses at once, without queueing, past the rate and burst: a source may spend half of them', async () => {
    let gateway: ExtraGateway | undefined;
    try {
      gateway = await startGatewayFrom(sandbox, (config) => {
        configCluster(config, 'acme', 'acme-west').cluster.tokenReview = { rate: 0.001, burst: 4 };
      });
      const port = gateway.port('api');
      const tokens = await Promise.all([mint(), mint(), mint(), mint(), mint()]);
      const codes = [];
      for (const token of tokens.slice(0, 3)) codes.push(codeOf(await listPods(token, port)));
      expect(codes).toEqual(['200', '200', 'MG_ERR_AUTHN_TOKENREVIEW_LIMITED']);
      const limited = await listPods(tokens[2], port);
      expect(limited.status).toBe(503);
      expect(limited.headers['retry-after']).toBe('1');
      // Another source has its own half; then the cluster's whole burst is spent.
      expect(codeOf(await listPods(tokens[3], port, '127.0.0.2'))).toBe('200');
      expect(codeOf(await listPods(tokens[4], port, '127.0.0.3'))).toBe('200');
      expect(codeOf(await listPods(await mint(), port, '127.0.0.4'))).toBe('MG_ERR_AUTHN_TOKENREVIEW_LIMITED');
      const metrics = await gateway.gateway.metrics.registry.metrics();
      expect(metrics).toMatch(/^meshgate_tokenreviews_total\{tenant="acme",cluster="acme-west",result="limited"\} 3$/m);
    } finally {
      await gateway?.close();
    }
  });

  it('keeps legitimate tokens working through a flood of forged ones from one source', async () => {
    let gateway: ExtraGateway | undefined;
    try {
      gateway = await startGatewayFrom(sandbox, (config) => {
        configCluster(config, 'acme', 'acme-west').cluster.tokenReview = { rate: 0.001, burst: 8 };
      });
      const port = gateway.port('api');
      // Anyone can mint tokens that name acme-west's public issuer, each one new to the cache.
      const stranger = await createIssuer('acme-west', westIssuer().issuer, 'RS256');
      const before = reviews();
      const flood = [];
      for (let i = 0; i < 40; i++) {
        const forged = await stranger.mint({ namespace: 'istio-system', serviceAccount: `attacker-${i}`, audience: westIssuer().issuer });
        flood.push(codeOf(await listPods(forged, port, '127.0.0.9')));
      }
      expect(flood.filter((c) => c === 'MG_ERR_AUTHN_TOKEN_INVALID')).toHaveLength(4);
      expect(flood.filter((c) => c === 'MG_ERR_AUTHN_TOKENREVIEW_LIMITED')).toHaveLength(36);
      expect(reviews() - before).toBe(4);
      // Freshly rotated, never-reviewed tokens from elsewhere still get their reviews.
      for (const source of ['127.0.0.1', '127.0.0.10']) expect(codeOf(await listPods(await mint(), port, source))).toBe('200');
    } finally {
      await gateway?.close();
    }
  });

  it('refuses without a review what a review would refuse: garbage, a foreign key type, expired, another audience', async () => {
    const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const hmac = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ iss: westIssuer().issuer, sub: 'system:serviceaccount:x:y', aud: [westIssuer().issuer] })}.c2ln`;
    const none = `${b64({ alg: 'none' })}.${b64({ iss: westIssuer().issuer, sub: 'system:serviceaccount:x:y' })}.`;
    const expired = await westIssuer().mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: westIssuer().issuer, lifetimeSeconds: -3600 });
    const otherAudience = await westIssuer().mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: 'vault' });
    const before = reviews();
    expect(codeOf(await listPods(hmac))).toBe('MG_ERR_AUTHN_TOKEN_INVALID');
    expect(codeOf(await listPods(none))).toBe('MG_ERR_AUTHN_TOKEN_INVALID');
    expect(codeOf(await listPods(expired))).toBe('MG_ERR_AUTHN_TOKEN_EXPIRED');
    expect(codeOf(await listPods(otherAudience))).toBe('MG_ERR_AUTHN_TOKEN_AUDIENCE');
    expect(reviews()).toBe(before);
  });

  it('fails closed when the API server cannot be reached', async () => {
    let gateway: ExtraGateway | undefined;
    try {
      gateway = await startGatewayFrom(sandbox, (config) => {
        // A port nothing listens on.
        configCluster(config, 'acme', 'acme-west').cluster.apiServer.url = 'https://127.0.0.1:1';
      });
      const res = await listPods(await mint(), gateway.port('api'));
      expect(res.status).toBe(503);
      expect(codeOf(res)).toBe('MG_ERR_AUTHN_TOKENREVIEW_UNAVAILABLE');
      expect(await gateway.gateway.metrics.registry.metrics()).toMatch(
        /^meshgate_tokenreviews_total\{tenant="acme",cluster="acme-west",result="error"\} 1$/m,
      );
    } finally {
      await gateway?.close();
    }
  });
});
