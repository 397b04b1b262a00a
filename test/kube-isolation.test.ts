/**
 * Tenant isolation on the kube plane, through meshgate to the stand-in API servers: which
 * credential reaches which cluster, who the API server sees (never a client-chosen impersonation),
 * and the tenant's rules, refused as Kubernetes Status objects.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueCertificate } from '../src/pki/certificates.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, rawTls, type Protocol } from './helpers/client.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(async () => {
  await sandbox.close();
});

type Tenant = 'acme' | 'globex';
interface Credential {
  readonly name: string;
  readonly cert?: string;
  readonly key?: string;
  readonly token?: string;
}

/** Every API request each stand-in API server received, cleared after reading (its OIDC keys are fetched at any time). */
function drainKube(): Map<string, { method: string; url: string; user?: string; headers: Record<string, unknown> }[]> {
  const seen = new Map<string, { method: string; url: string; user?: string; headers: Record<string, unknown> }[]>();
  for (const [cluster, server] of sandbox.kubeApiServers) {
    seen.set(
      cluster,
      server.requests
        .splice(0)
        .filter((r) => !r.url.startsWith('/openid/') && !r.url.startsWith('/.well-known/'))
        .map((r) => ({ method: r.method, url: r.url, headers: { ...r.headers }, ...(r.user ? { user: r.user.username } : {}) })),
    );
  }
  return seen;
}

function kubeCall(tenant: Tenant, path: string, credential: Credential, extra: { headers?: Record<string, string | string[]>; protocol?: Protocol; method?: string } = {}) {
  return call({
    port: sandbox.info.listeners.api.port,
    servername: tenantOf(sandbox, tenant).host,
    path,
    ca: sandbox.info.caFile,
    ...(credential.cert ? { cert: credential.cert, key: credential.key } : {}),
    headers: { ...(credential.token ? { authorization: `Bearer ${credential.token}` } : {}), ...extra.headers },
    ...(extra.protocol ? { protocol: extra.protocol } : {}),
    ...(extra.method ? { method: extra.method } : {}),
  });
}

interface KubeStatus {
  kind: string;
  status: string;
  reason: string;
  code: number;
  message: string;
}

describe('the kube plane isolation matrix', () => {
  it('lets each credential reach only its own tenant and the clusters it belongs to', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');
    const west = sandbox.issuers.get('acme-west');
    if (!west) throw new Error('no acme-west issuer');
    const westToken = await west.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: west.issuer });
    const credentials: Record<string, Credential> = {
      'acme cert': { name: 'acme cert', cert: acme.clientCert, key: acme.clientKey },
      'acme-east token': { name: 'acme-east token', token: acme.tokens.kube },
      'acme-west token': { name: 'acme-west token', token: westToken },
      'globex token': { name: 'globex token', token: globex.tokens.kube },
      'globex cert': { name: 'globex cert', cert: globex.clientCert, key: globex.clientKey },
    };
    const targets: [Tenant, string][] = [
      ['acme', 'acme-east'],
      ['acme', 'acme-west'],
      ['acme', 'globex-main'],
      ['globex', 'globex-main'],
      ['globex', 'acme-east'],
    ];
    const expected: Record<string, string> = {
      'acme cert → acme/acme-east': '200',
      'acme cert → acme/acme-west': '200',
      'acme cert → acme/globex-main': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'acme cert → globex/globex-main': 'MG_ERR_AUTHN_CLIENT_CERT_INVALID',
      'acme cert → globex/acme-east': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'acme-east token → acme/acme-east': '200',
      'acme-east token → acme/acme-west': 'MG_ERR_AUTHZ_CLUSTER_MISMATCH',
      'acme-east token → acme/globex-main': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      // globex-main shares acme-east's issuer string, but not its keys.
      'acme-east token → globex/globex-main': 'MG_ERR_AUTHN_TOKEN_INVALID',
      'acme-east token → globex/acme-east': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'acme-west token → acme/acme-east': 'MG_ERR_AUTHZ_CLUSTER_MISMATCH',
      'acme-west token → acme/acme-west': '200',
      'acme-west token → acme/globex-main': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'acme-west token → globex/globex-main': 'MG_ERR_AUTHN_TOKEN_ISSUER',
      'acme-west token → globex/acme-east': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'globex token → acme/acme-east': 'MG_ERR_AUTHN_TOKEN_INVALID',
      'globex token → acme/acme-west': 'MG_ERR_AUTHN_TOKEN_INVALID',
      'globex token → acme/globex-main': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'globex token → globex/globex-main': '200',
      'globex token → globex/acme-east': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      'globex cert → acme/acme-east': 'MG_ERR_AUTHN_CLIENT_CERT_INVALID',
      'globex cert → acme/acme-west': 'MG_ERR_AUTHN_CLIENT_CERT_INVALID',
      'globex cert → acme/globex-main': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
      // globex-main takes the caller's own token (passthrough): a certificate alone cannot pass.
      'globex cert → globex/globex-main': 'MG_ERR_AUTHN_REQUIRED',
      'globex cert → globex/acme-east': 'MG_ERR_ROUTE_UNKNOWN_CLUSTER',
    };

    drainKube();
    const outcomes: Record<string, string> = {};
    for (const credential of Object.values(credentials)) {
      for (const [tenant, cluster] of targets) {
        const res = await kubeCall(tenant, `/clusters/${cluster}/api/v1/namespaces/bookinfo/pods`, credential);
        const key = `${credential.name} → ${tenant}/${cluster}`;
        if (res.status === 200) {
          outcomes[key] = '200';
          // The stand-in names its own cluster in each object: the request reached that cluster, and no other.
          const seen = drainKube();
          const reached = [...seen].filter(([, requests]) => requests.some((r) => r.url.startsWith('/api/v1/namespaces/bookinfo/pods')));
          expect(reached.map(([c]) => c), key).toEqual([cluster]);
        } else {
          const status = res.json<KubeStatus>();
          expect(status).toMatchObject({ kind: 'Status', status: 'Failure', code: res.status });
          outcomes[key] = status.message.split(':')[0] ?? '';
          const reachedApi = [...drainKube()].filter(([, requests]) => requests.some((r) => r.url.includes('/pods')));
          expect(reachedApi, key).toEqual([]);
        }
      }
    }
    expect(outcomes).toEqual(expected);
  });

  it('answers unknown clusters, other tenants\' clusters and clusters without an API server alike', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const cert = { name: 'acme cert', cert: acme.clientCert, key: acme.clientKey };
    const bodies = await Promise.all(
      ['globex-main', 'no-such-cluster', 'acme-east.', 'ACME-EAST'].map(async (cluster) => {
        const res = await kubeCall('acme', `/clusters/${cluster}/api/v1/pods`, cert);
        const status = res.json<KubeStatus>();
        return `${res.status} ${status.reason} ${status.message}`;
      }),
    );
    expect(new Set(bodies).size).toBe(1);
    expect(bodies[0]).toMatch(/^403 Forbidden MG_ERR_ROUTE_UNKNOWN_CLUSTER: /);
  });

  it.each([
    '/clusters/acme-east/api/v1/namespaces/../../../clusters/globex-main/api/v1/pods',
    '/clusters/acme-east%2F..%2Fglobex-main/api/v1/pods',
    '/clusters/acme-east//api/v1/pods',
    '/clusters/acme-east/api/v1/namespaces/%2e%2e/pods',
    '/clusters/acme-east/api\\v1/pods',
  ])('refuses the non-canonical path %s before anything else, as a Status', async (path) => {
    const acme = tenantOf(sandbox, 'acme');
    drainKube();
    const res = await kubeCall('acme', path, { name: 'cert', cert: acme.clientCert, key: acme.clientKey });
    expect(res.status).toBe(400);
    expect(res.json<KubeStatus>()).toMatchObject({ kind: 'Status', reason: 'BadRequest' });
    expect(res.json<KubeStatus>().message).toMatch(/^MG_ERR_REQUEST_PATH_NOT_CANONICAL: /);
    expect([...drainKube().values()].flat()).toEqual([]);
  });
});

describe('impersonation on the kube plane', () => {
  const acmeCert = (): Credential => ({ name: 'acme cert', cert: tenantOf(sandbox, 'acme').clientCert, key: tenantOf(sandbox, 'acme').clientKey });
  const whoami = async (tenant: Tenant, cluster: string, credential: Credential, headers: Record<string, string | string[]>, protocol: Protocol = 'h1') => {
    const res = await kubeCall(tenant, `/clusters/${cluster}/apis/authentication.k8s.io/v1/selfsubjectreviews`, credential, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      protocol,
    });
    return res;
  };

  it.each([
    ['Impersonate-User', 'system:admin'],
    ['IMPERSONATE-USER', 'system:admin'],
    ['impersonate_user', 'system:admin'],
    ['Impersonate_Group', 'system:masters'],
    ['impersonate-group', 'system:masters'],
    ['Impersonate-Uid', '0'],
    ['IMPERSONATE-EXTRA-SCOPES', 'everything'],
    ['impersonate-extra-authentication.kubernetes.io%2fcredential-id', 'x'],
  ])('never lets a client-sent %s reach the API server (h1 and h2)', async (name, value) => {
    for (const protocol of ['h1', 'h2'] as const) {
      drainKube();
      const res = await whoami('acme', 'acme-east', acmeCert(), { [name]: value }, protocol);
      expect(res.status).toBe(201);
      const review = JSON.parse(res.body) as { status: { userInfo: { username: string; groups: string[] } } };
      // meshgate's values, exactly: the certificate's CN and O, nothing appended.
      expect(review.status.userInfo.username).toBe('acme-mesh-client');
      expect(review.status.userInfo.groups).toEqual(['acme', 'system:authenticated']);
      const [seen] = drainKube().get('acme-east') ?? [];
      const impersonation = Object.entries(seen?.headers ?? {}).filter(([h]) => h.toLowerCase().replaceAll('_', '-').startsWith('impersonate-'));
      expect(impersonation).toEqual([
        ['impersonate-user', 'acme-mesh-client'],
        ['impersonate-group', 'acme'],
      ]);
    }
  });

  it('sends no impersonation at all to a passthrough cluster: the caller is its own token', async () => {
    const globex = tenantOf(sandbox, 'globex');
    drainKube();
    const res = await whoami('globex', 'globex-main', { name: 'globex token', token: globex.tokens.kube }, {
      'Impersonate-User': 'system:admin',
      'Impersonate-Group': 'system:masters',
    });
    expect(res.status).toBe(201);
    expect(JSON.parse(res.body)).toMatchObject({ status: { userInfo: { username: 'system:serviceaccount:istio-system:istiod' } } });
    const [seen] = drainKube().get('globex-main') ?? [];
    expect(Object.keys(seen?.headers ?? {}).filter((h) => h.startsWith('impersonate'))).toEqual([]);
  });

  it.each([
    'close, Impersonate-User',
    'Impersonate-Group',
    'keep-alive, impersonate_user',
    'Authorization',
    'X-Remote-User',
  ])('refuses "Connection: %s" (a hop that honours it would drop what meshgate sets)', async (connection) => {
    const acme = tenantOf(sandbox, 'acme');
    drainKube();
    const path = '/clusters/acme-east/apis/authentication.k8s.io/v1/selfsubjectreviews';
    const { text } = await rawTls(
      { port: sandbox.info.listeners.api.port, servername: acme.host, ca: sandbox.info.caFile, cert: acme.clientCert, key: acme.clientKey },
      `POST ${path} HTTP/1.1\r\nHost: ${acme.host}\r\nConnection: ${connection}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
      { waitForCloseMs: 3_000 },
    );
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain('"kind":"Status"');
    expect(text).toContain('MG_ERR_REQUEST_HOP_BY_HOP');
    expect([...drainKube().values()].flat()).toEqual([]);
  });

  it('refuses a certificate that claims a reserved Kubernetes name, never impersonating it', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const ca = { cert: readFileSync(acme.clientCa, 'utf8'), key: readFileSync(acme.clientCaKey, 'utf8') };
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-reserved-'));
    const results = [];
    for (const [cn, org] of [
      ['system:admin', 'acme'],
      ['alice', 'system:masters'],
    ] as const) {
      const issued = await issueCertificate(ca, { commonName: cn, organization: org, usage: 'client' });
      const cert = join(dir, `${cn}.pem`.replaceAll(':', '_'));
      const key = `${cert}.key`;
      writeFileSync(cert, issued.cert);
      writeFileSync(key, issued.key);
      drainKube();
      const res = await whoami('acme', 'acme-east', { name: cn, cert, key }, {});
      expect(res.status).toBe(403);
      results.push(res.json<KubeStatus>().message.split(':')[0]);
      expect([...drainKube().values()].flat()).toEqual([]);
    }
    expect(results).toEqual(['MG_ERR_KUBE_IDENTITY_RESERVED', 'MG_ERR_KUBE_IDENTITY_RESERVED']);
  });
});

describe("the tenant's kube rules", () => {
  it('refuses what the profile does not allow with a 403 Forbidden Status, and never forwards it', async () => {
    const acme = tenantOf(sandbox, 'acme');
    drainKube();
    // The kube token is istiod's: the istiod profile reads pods but may not delete them, nor exec.
    const token = { name: 'istiod', token: acme.tokens.kube };
    expect((await kubeCall('acme', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods', token)).status).toBe(200);
    drainKube();
    for (const [method, path] of [
      ['DELETE', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods'],
      ['POST', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods/p/exec?command=ls'],
      ['GET', '/clusters/acme-east/apis/apps/v1/deployments'],
    ] as const) {
      const res = await kubeCall('acme', path, token, { method });
      expect(res.status).toBe(403);
      expect(res.json<KubeStatus>()).toMatchObject({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Forbidden', code: 403 });
      expect(res.json<KubeStatus>().message).toMatch(/^MG_ERR_KUBE_FORBIDDEN: .* is forbidden: User "system:serviceaccount:istio-system:istiod" cannot /);
    }
    expect([...drainKube().values()].flat()).toEqual([]);
  });

  it("denies the operators' certificate secrets, though it allows everything else", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const res = await kubeCall('acme', '/clusters/acme-west/api/v1/namespaces/istio-system/secrets/cacerts', {
      name: 'cert',
      cert: acme.clientCert,
      key: acme.clientKey,
    });
    expect(res.status).toBe(403);
    expect(res.json<KubeStatus>().message).toContain('secrets "cacerts" is forbidden');
  });
});
