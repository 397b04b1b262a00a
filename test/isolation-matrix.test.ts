/**
 * DESIGN.md §5 invariant 1: a credential of tenant A never reaches a backend of tenant B.
 *
 * Every credential of every tenant (certificate, tokens, path key) against every tenant's host and
 * every cluster's injection path, on the webhook and debug planes, over HTTP/1.1 and HTTP/2. The
 * stand-in istiods record what reaches them: an allowed call reaches exactly its own tenant's
 * istiod, once; a denied call reaches no istiod at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, type Protocol } from './helpers/client.js';
import { admissionReview, drainIstiodRequests, startTestSandbox, tenantOf } from './helpers/sandbox.js';

interface Credential {
  readonly name: string;
  readonly tenant: string;
  readonly kind: 'certificate' | 'webhook-token' | 'debug-token' | 'path-key';
}

interface Target {
  readonly tenant: string;
  readonly plane: 'webhook' | 'debug';
  /** Cluster named in the injection path; undefined for /validate and debug. */
  readonly cluster?: string;
}

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const TENANTS = ['acme', 'globex'] as const;
const CLUSTERS: Record<string, string[]> = { acme: ['acme-east', 'acme-west'], globex: ['globex-main'] };
/** What each tenant's planes accept in the sandbox (src/sandbox/sandbox.ts). */
const ACCEPTS: Record<string, Record<Target['plane'], Credential['kind'][]>> = {
  acme: { webhook: ['certificate', 'webhook-token'], debug: ['certificate', 'debug-token'] },
  globex: { webhook: ['path-key'], debug: ['certificate', 'debug-token'] },
};

const credentials: Credential[] = TENANTS.flatMap((tenant) => [
  { name: `${tenant} certificate`, tenant, kind: 'certificate' as const },
  { name: `${tenant} webhook token`, tenant, kind: 'webhook-token' as const },
  { name: `${tenant} debug token`, tenant, kind: 'debug-token' as const },
  ...(tenant === 'globex' ? [{ name: `${tenant} path key`, tenant, kind: 'path-key' as const }] : []),
]);
const allClusters = Object.values(CLUSTERS).flat();
const targets: Target[] = TENANTS.flatMap((tenant) => [
  ...allClusters.map((cluster) => ({ tenant, plane: 'webhook' as const, cluster })),
  { tenant, plane: 'webhook' as const },
  { tenant, plane: 'debug' as const },
]);

/** The cluster whose issuer signed each tenant's sandbox tokens. */
const TOKEN_CLUSTER: Record<string, string> = { acme: 'acme-east', globex: 'globex-main' };

/** The rule under test, stated independently of meshgate's code. */
function shouldAllow(credential: Credential, target: Target): boolean {
  const isToken = credential.kind === 'webhook-token' || credential.kind === 'debug-token';
  return (
    credential.tenant === target.tenant &&
    ACCEPTS[target.tenant]?.[target.plane].includes(credential.kind) === true &&
    (target.cluster === undefined || CLUSTERS[target.tenant]?.includes(target.cluster) === true) &&
    // A token injects into its own cluster only.
    (!isToken || target.cluster === undefined || target.cluster === TOKEN_CLUSTER[credential.tenant])
  );
}

async function attempt(credential: Credential, target: Target, protocol: Protocol) {
  const owner = sandbox.info.tenants[credential.tenant];
  const host = sandbox.info.tenants[target.tenant]?.host;
  if (!owner || !host) throw new Error('sandbox tenants missing');
  const headers: Record<string, string> = {};
  const tls: { cert?: string; key?: string } = {};
  let prefix = '';
  switch (credential.kind) {
    case 'certificate':
      Object.assign(tls, { cert: owner.clientCert, key: owner.clientKey });
      break;
    case 'webhook-token':
      headers.authorization = `Bearer ${owner.tokens.webhook}`;
      break;
    case 'debug-token':
      headers.authorization = `Bearer ${owner.tokens.debug}`;
      break;
    case 'path-key':
      prefix = new URL(owner.webhook.inject).pathname.replace(/\/inject\/.*$/, '');
      break;
  }
  if (target.plane === 'debug') {
    // The caller also claims another tenant's cluster: meshgate must replace it, never pass it.
    headers.clusterid = 'globex-main';
    return call({ port: sandbox.info.listeners.api.port, servername: host, path: `${prefix}/debug/syncz`, headers, ca: sandbox.info.caFile, protocol, ...tls });
  }
  const path = target.cluster === undefined ? '/validate' : `/inject/cluster/${target.cluster}/net/network1`;
  return call({
    port: sandbox.info.listeners.webhook.port,
    servername: host,
    method: 'POST',
    path: `${prefix}${path}?timeout=10s`,
    headers: { ...headers, 'content-type': 'application/json' },
    body: admissionReview(`uid-${credential.kind}-${target.tenant}`),
    ca: sandbox.info.caFile,
    protocol,
    ...tls,
  });
}

describe.each(['h1', 'h2'] as const)('isolation matrix over %s', (protocol) => {
  it('allows each credential only on its own tenant, its accepted planes and its own clusters', async () => {
    drainIstiodRequests(sandbox);
    let allowed = 0;
    let denied = 0;
    const wrong: string[] = [];

    for (const credential of credentials) {
      for (const target of targets) {
        const expected = shouldAllow(credential, target);
        const res = await attempt(credential, target, protocol);
        const reached = drainIstiodRequests(sandbox);
        const label = `${credential.name} → ${target.tenant} ${target.plane}${target.cluster ? ` ${target.cluster}` : ''}`;
        const hits = [...reached].filter(([, requests]) => requests.length > 0);

        if (expected) {
          allowed++;
          if (res.status !== 200) wrong.push(`${label}: expected 200, got ${res.status} ${res.body}`);
          if (hits.length !== 1 || hits[0]?.[0] !== target.tenant || hits[0][1].length !== 1) {
            wrong.push(`${label}: reached ${JSON.stringify(hits.map(([t, r]) => [t, r.length]))}`);
          }
          if (res.headers['x-sandbox-istiod'] !== `istiod-${target.tenant}`) wrong.push(`${label}: answered by ${String(res.headers['x-sandbox-istiod'])}`);
        } else {
          denied++;
          if (res.status < 400 || res.status >= 500) wrong.push(`${label}: expected a 4xx denial, got ${res.status}`);
          if (!/^MG_ERR_/.test(res.json().code ?? '')) wrong.push(`${label}: no error code in ${res.body}`);
          if (hits.length > 0) wrong.push(`${label}: denied, yet reached ${hits.map(([t]) => t).join(', ')}`);
        }
      }
    }

    expect(wrong).toEqual([]);
    expect(credentials).toHaveLength(7);
    expect(targets).toHaveLength(10);
    expect({ allowed, denied }).toEqual({ allowed: 11, denied: 59 });
  });
});

describe('what an allowed call carries upstream', () => {
  it('pins clusterid on the debug plane to the cluster whose issuer verified the token', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    const res = await call({
      port: sandbox.info.listeners.api.port,
      servername: acme.host,
      path: '/debug/syncz',
      headers: { authorization: `Bearer ${acme.tokens.debug}`, clusterid: 'globex-main' },
      ca: sandbox.info.caFile,
    });
    expect(res.status).toBe(200);
    const [request] = drainIstiodRequests(sandbox).get('acme') ?? [];
    expect(request?.headers.clusterid).toBe('acme-east');
    expect(request?.headers.authorization).toBe(`Bearer ${acme.tokens.debug}`);
    expect(res.json<{ caller: string }>().caller).toBe('system:serviceaccount:istio-system:kiali');
  });

  it("sends the tenant's own istiod token for a certificate caller, never another tenant's", async () => {
    drainIstiodRequests(sandbox);
    const globex = tenantOf(sandbox, 'globex');
    const res = await call({
      port: sandbox.info.listeners.api.port,
      servername: globex.host,
      path: '/version',
      cert: globex.clientCert,
      key: globex.clientKey,
      ca: sandbox.info.caFile,
    });
    expect(res.status).toBe(200);
    const [request] = drainIstiodRequests(sandbox).get('globex') ?? [];
    expect(request?.headers.clusterid).toBe('globex-main');
    expect(res.json<{ caller: string }>().caller).toBe('system:serviceaccount:istio-system:meshgate');
  });

  it('strips the caller token and the path key from webhook calls', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');
    await call({
      port: sandbox.info.listeners.webhook.port,
      servername: acme.host,
      method: 'POST',
      path: '/inject/cluster/acme-east/net/network1',
      headers: { authorization: `Bearer ${acme.tokens.webhook}`, 'content-type': 'application/json' },
      body: admissionReview('strip'),
      ca: sandbox.info.caFile,
    });
    await call({
      port: sandbox.info.listeners.webhook.port,
      servername: globex.host,
      method: 'POST',
      path: new URL(globex.webhook.inject).pathname,
      headers: { 'content-type': 'application/json' },
      body: admissionReview('strip'),
      ca: sandbox.info.caFile,
    });
    const reached = drainIstiodRequests(sandbox);
    expect(reached.get('acme')?.[0]?.headers.authorization).toBeUndefined();
    expect(reached.get('globex')?.[0]?.url).toBe('/inject/cluster/globex-main/net/network1');
  });
});
