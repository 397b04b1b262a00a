/**
 * Remote secrets as `istioctl create-remote-secret` makes them, against a real kube-apiserver: a
 * long-lived service-account token of the legacy kind (issuer `kubernetes/serviceaccount`, no
 * expiry, no audience), kept in a Secret of type `kubernetes.io/service-account-token`. meshgate
 * cannot check such a token offline (it has no expiry), so the cluster checks it: TokenReview, with
 * meshgate's own client certificate, then impersonation of the token's service account.
 *
 * No controller-manager runs here, so the suite plays the token controller: it signs the token with
 * the cluster's service-account key and stores it in the Secret, as the controller would. Everything
 * after that is the real API server's judgement.
 */
import { execFile } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { kubeconfig } from '../../src/cli/kubeconfig.js';
import { loadConfig } from '../../src/config/load.js';
import { buildGateway, type Gateway } from '../../src/gateway/build.js';
import { createLogger } from '../../src/observability/logger.js';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from '../../src/pki/certificates.js';
import { writeFile } from '../../src/sandbox/pki.js';
import { startEtcd, startKubeCluster, type KubeCluster } from './harness/kube.js';
import { binary, hasBinary, stopAll, waitFor } from './harness/processes.js';

const HOST = 'legacy.meshgate.test';
const CLUSTER = 'legacy-east';
const NAMESPACE = 'istio-system';
const READER = 'istio-reader-service-account';
const SECRET = 'istio-reader-service-account-istio-remote-secret-token';

let dir: string;
let cluster: KubeCluster;
let meshgateCa: CertificateAuthority;
let legacyToken: string;
let gateway: Gateway | undefined;
let port: number;

beforeAll(async () => {
  for (const program of ['etcd', 'kube-apiserver', 'kubectl']) {
    if (!hasBinary(program)) throw new Error(`${binary(program)} is missing: run interop/build.sh (npm run test:interop does)`);
  }
  dir = mkdtempSync(join(tmpdir(), 'meshgate-remote-secret-'));
  const etcd = await startEtcd(dir);
  cluster = await startKubeCluster({ id: CLUSTER, dir, etcd });

  // In the cluster: the reader service account (what create-remote-secret binds), allowed to read
  // pods; and meshgate's own identity, allowed to review tokens and to act as that account only.
  await cluster.kubectl(['create', 'namespace', NAMESPACE]);
  await cluster.kubectl(['create', 'serviceaccount', READER, '-n', NAMESPACE]);
  await cluster.apply([
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'pod-reader' }, rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] }] },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'reader-reads-pods' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'pod-reader' },
      subjects: [{ kind: 'ServiceAccount', name: READER, namespace: NAMESPACE }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'meshgate' },
      rules: [
        { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
        // A service account is impersonated as a serviceaccounts object, not as a user name.
        { apiGroups: [''], resources: ['serviceaccounts'], verbs: ['impersonate'], resourceNames: [READER] },
        { apiGroups: [''], resources: ['groups'], verbs: ['impersonate'], resourceNames: ['system:serviceaccounts', `system:serviceaccounts:${NAMESPACE}`] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'meshgate' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'meshgate' },
      subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: 'meshgate' }],
    },
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'app-0', namespace: 'default' }, spec: { containers: [{ name: 'app', image: 'app' }] } },
  ]);
  const uid = (await cluster.kubectl(['get', 'serviceaccount', READER, '-n', NAMESPACE, '-o', 'jsonpath={.metadata.uid}'])).trim();

  // What the token controller writes into a Secret of type service-account-token.
  legacyToken = await new SignJWT({
    'kubernetes.io/serviceaccount/namespace': NAMESPACE,
    'kubernetes.io/serviceaccount/secret.name': SECRET,
    'kubernetes.io/serviceaccount/service-account.name': READER,
    'kubernetes.io/serviceaccount/service-account.uid': uid,
  })
    .setProtectedHeader({ alg: 'RS256' })
    .setIssuer('kubernetes/serviceaccount')
    .setSubject(`system:serviceaccount:${NAMESPACE}:${READER}`)
    .sign(createPrivateKey(cluster.serviceAccountKey));
  await cluster.apply([
    {
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'kubernetes.io/service-account-token',
      metadata: { name: SECRET, namespace: NAMESPACE, annotations: { 'kubernetes.io/service-account.name': READER, 'kubernetes.io/service-account.uid': uid } },
      data: { token: Buffer.from(legacyToken).toString('base64') },
    },
  ]);

  meshgateCa = await createCertificateAuthority('meshgate interop CA');
}, 600_000);

afterAll(async () => {
  await gateway?.close(0);
  await stopAll();
});

/** meshgate with one tenant whose cluster checks tokens by TokenReview; `audiences` as given. */
async function startMeshgate(audiences: readonly string[] | undefined): Promise<void> {
  await gateway?.close(0);
  const home = mkdtempSync(join(dir, 'meshgate-'));
  const file = (name: string, content: string, secret = false): string => writeFile(join(home, name), content, secret);
  const server = await issueCertificate(meshgateCa, { commonName: HOST, dnsNames: [HOST], usage: 'server' });
  const own = await issueCertificate(cluster.clientCa, { commonName: 'meshgate', usage: 'client' });
  const config = {
    admin: { host: '127.0.0.1', port: 0 },
    security: { allowLoopbackUpstreams: true },
    listeners: { api: { host: '127.0.0.1', port: 0, planes: ['kube'] } },
    tenants: [
      {
        id: 'legacy',
        hosts: [HOST],
        tls: { cert: file('server.pem', server.cert), key: file('server-key.pem', server.key, true) },
        istiod: {},
        clusters: [
          {
            id: CLUSTER,
            issuer: 'kubernetes/serviceaccount',
            tokenReview: { cacheTtl: '1s', negativeTtl: '1s' },
            apiServer: { url: cluster.url, ca: cluster.caFile, credentials: { cert: file('own.pem', own.cert), key: file('own-key.pem', own.key, true) } },
          },
        ],
        kube: { authentication: ['token'], ...(audiences === undefined ? {} : { audiences }) },
        access: {
          kube: [
            {
              subject: `system:serviceaccount:${NAMESPACE}:${READER}`,
              allow: [
                { verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['pods'] },
                { verbs: ['get'], nonResourceURLs: ['/api', '/api/*', '/apis', '/apis/*'] },
              ],
            },
          ],
        },
      },
    ],
  };
  const configFile = join(home, 'meshgate.yaml');
  writeFileSync(configFile, stringify(config));
  gateway = buildGateway(loadConfig(configFile), { logger: createLogger('silent') });
  port = (await gateway.listen()).listeners.api?.port ?? 0;
}

/** The real kubectl through meshgate with the legacy token, as istiod's remote secret would carry it. */
async function kubectl(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const file = join(dir, `kubeconfig-${port}.yaml`);
  writeFileSync(file, kubeconfig({ tenant: 'legacy', cluster: CLUSTER, host: HOST, port, connectTo: '127.0.0.1', ca: meshgateCa.cert, token: legacyToken }));
  return promisify(execFile)(binary('kubectl'), ['--kubeconfig', file, ...args], { timeout: 60_000 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: unknown) => {
      const { code, stdout, stderr } = err as { code?: number; stdout?: string; stderr?: string };
      return { code: code ?? 1, stdout: stdout ?? '', stderr: stderr ?? '' };
    },
  );
}

/** One request through meshgate with the legacy token, for the Status body kubectl does not print on a 401. */
function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((done, fail) => {
    const req = request(
      { host: '127.0.0.1', port, path, servername: HOST, ca: meshgateCa.cert, headers: { host: HOST, authorization: `Bearer ${legacyToken}` } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => done({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', fail);
    req.end();
  });
}

const reviews = (): number =>
  cluster.audit().filter((e) => e.stage === 'ResponseComplete' && e.objectRef?.resource === 'tokenreviews' && e.user.username === 'meshgate').length;

describe('remote secrets with a legacy service-account token', () => {
  it('are refused when meshgate asks the cluster for the default audience (the issuer, kubernetes/serviceaccount)', async () => {
    await startMeshgate(undefined);
    const result = await kubectl(['get', 'pods', '-n', 'default', '-o', 'name']);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('You must be logged in to the server');
    // The API server's review said no: a legacy token is good only for the API server's own audiences.
    const status = await get(`/clusters/${CLUSTER}/api/v1/namespaces/default/pods`);
    expect(status.status).toBe(401);
    expect(status.body).toContain('MG_ERR_AUTHN_TOKEN_INVALID');
    expect(reviews()).toBeGreaterThanOrEqual(1);
  });

  it("work when meshgate asks for the API server's own audience: reviewed, cached, then impersonated", async () => {
    await startMeshgate([cluster.issuer]);
    const before = reviews();
    const result = await kubectl(['get', 'pods', '-n', 'default', '-o', 'name']);
    expect(result.stderr).toBe('');
    expect(result.stdout.trim()).toBe('pod/app-0');
    // The API server saw the reader account, impersonated by meshgate, and nothing else as it.
    const served = cluster.audit().filter((e) => e.stage === 'ResponseComplete' && e.objectRef?.resource === 'pods' && e.user.username === 'meshgate');
    expect(served.map((e) => e.impersonatedUser?.username)).toContain(`system:serviceaccount:${NAMESPACE}:${READER}`);
    expect(reviews()).toBeGreaterThan(before);
  });

  it('stop working within the cache time once the Secret is deleted: revocation costs a review per cache period', async () => {
    await startMeshgate([cluster.issuer]);
    expect((await kubectl(['get', 'pods', '-n', 'default', '-o', 'name'])).code).toBe(0);
    await cluster.kubectl(['delete', 'secret', SECRET, '-n', NAMESPACE]);
    // tokenReview.cacheTtl is 1 s here: the next review after it finds the Secret gone.
    const refused = await waitFor('the deleted token to be refused', async () => {
      const result = await kubectl(['get', 'pods', '-n', 'default', '-o', 'name']);
      return result.code === 0 ? undefined : result;
    });
    expect(refused.stderr).toContain('You must be logged in to the server');
    expect((await get(`/clusters/${CLUSTER}/api/v1/namespaces/default/pods`)).body).toContain('MG_ERR_AUTHN_TOKEN_INVALID');
  });
});
