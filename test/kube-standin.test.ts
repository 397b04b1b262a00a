/**
 * The stand-in kube-apiserver on its own (no meshgate), driven by the real kubectl 1.32 where it
 * can be: list, table and watch output, exec and port-forward over both WebSocket and SPDY,
 * `auth whoami` with and without impersonation; and over node:https for what kubectl does not show:
 * protobuf bytes both ways, TokenReview, the raw watch stream, Status bodies, OIDC discovery.
 */
import { execFile, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority, type IssuedCertificate } from '../src/pki/certificates.js';
import { createIssuer, type Issuer } from '../src/sandbox/issuer.js';
import { startKubeApiServerStandIn, type KubeApiServerStandIn } from '../src/sandbox/standins/kube-apiserver.js';

const KUBECTL = '/usr/bin/kubectl';
const ISSUER = 'https://kubernetes.default.svc.cluster.local';

let dir: string;
let ca: CertificateAuthority;
let issuer: Issuer;
let standIn: KubeApiServerStandIn;
let token: string;
let tokenConfig: string;
let impersonatorConfig: string;
let strangerConfig: string;
let pods: string[];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'meshgate-kube-'));
  ca = await createCertificateAuthority('sandbox cluster CA');
  const [server, admin, other] = await Promise.all([
    issueCertificate(ca, { commonName: 'kube-apiserver', ipAddresses: ['127.0.0.1'], usage: 'server' }),
    issueCertificate(ca, { commonName: 'meshgate', organization: 'meshgate-proxies', usage: 'client' }),
    issueCertificate(ca, { commonName: 'mallory', organization: 'devs', usage: 'client' }),
  ]);
  issuer = await createIssuer('acme-east', ISSUER, 'ES256');
  standIn = await startKubeApiServerStandIn({
    cluster: 'acme-east',
    tls: server,
    clientCa: ca.cert,
    issuer,
    impersonators: ['meshgate'],
    podChangeIntervalMs: 300,
  });
  token = await issuer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: ISSUER });
  tokenConfig = kubeconfig('token', { token });
  impersonatorConfig = kubeconfig('impersonator', certificateUser(admin));
  strangerConfig = kubeconfig('stranger', certificateUser(other));
  const listed = await kubectl(tokenConfig, ['get', 'pods', '-n', 'bookinfo', '-o', 'name']);
  pods = listed.stdout.trim().split('\n');
});
afterAll(async () => {
  await standIn.close();
});

const b64 = (text: string) => Buffer.from(text).toString('base64');
const certificateUser = (c: IssuedCertificate) => ({ 'client-certificate-data': b64(c.cert), 'client-key-data': b64(c.key) });
const podNamed = (prefix: string) => (pods.find((p) => p.startsWith(`pod/${prefix}-`)) ?? '').replace(/^pod\//, '');

function kubeconfig(name: string, user: Record<string, string>): string {
  const file = join(dir, `${name}.kubeconfig`);
  const cluster = { server: standIn.url, 'certificate-authority-data': b64(ca.cert) };
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'acme-east', cluster }],
    users: [{ name, user }],
    contexts: [{ name: 'acme-east', context: { cluster: 'acme-east', user: name } }],
    'current-context': 'acme-east',
  };
  writeFileSync(file, JSON.stringify(config));
  return file;
}

const kubectlEnv = (extra: Record<string, string> = {}) => ({ ...process.env, HOME: dir, NO_PROXY: '127.0.0.1', ...extra });
const kubectlArgs = (config: string, args: readonly string[]) => ['--kubeconfig', config, '--cache-dir', join(dir, 'cache'), ...args];

function kubectl(
  config: string,
  args: readonly string[],
  { env = {}, input }: { env?: Record<string, string>; input?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(KUBECTL, kubectlArgs(config, args), { env: kubectlEnv(env), timeout: 20_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Spawns a long-running kubectl and resolves once its stdout matches `pattern`. */
function kubectlUntil(
  config: string,
  args: readonly string[],
  pattern: RegExp,
  env: Record<string, string> = {},
): Promise<{ child: ChildProcessWithoutNullStreams; match: RegExpExecArray; stdout: () => string; stderr: () => string }> {
  const child = spawn(KUBECTL, kubectlArgs(config, args), { env: kubectlEnv(env) });
  // Never outlive the test, whatever happens to it.
  setTimeout(() => child.kill(), 25_000).unref();
  let stdout = '';
  let stderr = '';
  return new Promise((resolve, reject) => {
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = pattern.exec(stdout);
      if (match) resolve({ child, match, stdout: () => stdout, stderr: () => stderr });
    });
    child.on('exit', (code) => reject(new Error(`kubectl exited (${code}) before ${pattern}: ${stdout} ${stderr}`)));
  });
}

type Json = Record<string, any>;

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  json(): Json;
}

interface CallOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
}

function call(path: string, { method = 'GET', headers = {}, body }: CallOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const { port } = new URL(standIn.url);
    const req = request({ host: '127.0.0.1', port, path, method, headers, ca: ca.cert }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        const json = (): Json => JSON.parse(bytes.toString()) as Json;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: bytes, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const bearer = () => ({ authorization: `Bearer ${token}` });

/** Connects to a forwarded port, sends `payload` and reads as many bytes back. */
function echoThrough(port: number, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let size = 0;
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= payload.length) {
        socket.end();
        resolve(Buffer.concat(chunks));
      }
    });
    socket.on('error', reject);
    socket.write(payload);
  });
}

describe('kubectl against the stand-in kube-apiserver', () => {
  it('lists pods by name', () => {
    expect(pods).toHaveLength(3);
    expect(pods.every((p) => /^pod\/(productpage|reviews|ratings)-v1-[a-z0-9]{10}-[a-z0-9]{5}$/.test(p))).toBe(true);
  });

  it('prints the pod table', async () => {
    const result = await kubectl(tokenConfig, ['get', 'pods', '-n', 'bookinfo']);
    expect(result.stderr).toBe('');
    expect(result.stdout).toMatch(/^NAME\s/);
    for (const pod of pods) expect(result.stdout).toContain(pod.replace(/^pod\//, ''));
  });

  it('gets one namespace and one service, and says NotFound for an unknown pod', async () => {
    expect((await kubectl(tokenConfig, ['get', 'ns', 'bookinfo', '-o', 'jsonpath={.metadata.labels.istio-injection}'])).stdout).toBe('enabled');
    expect((await kubectl(tokenConfig, ['get', 'svc', '-n', 'bookinfo', 'reviews', '-o', 'jsonpath={.spec.ports[0].port}'])).stdout).toBe('9080');
    const missing = await kubectl(tokenConfig, ['get', 'pod', '-n', 'bookinfo', 'nope']);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain('pods "nope" not found');
  });

  it('watches pods until one is MODIFIED', async () => {
    // `-o name` would print names without the event type; the table has an EVENT column.
    const { child, stdout } = await kubectlUntil(
      tokenConfig,
      ['get', 'pods', '-n', 'bookinfo', '--watch', '--output-watch-events'],
      /^MODIFIED\s+(productpage|reviews|ratings)-v1-\S+\s/m,
    );
    child.kill();
    expect(stdout()).toMatch(/^EVENT\s+NAME\s+AGE\nADDED\s/);
  });

  it.each([
    ['WebSocket', {}, 'websocket'],
    ['SPDY/3.1', { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' }, 'SPDY/3.1'],
  ])('execs over %s', async (_name, env, upgrade) => {
    const before = standIn.requests.length;
    const result = await kubectl(tokenConfig, ['exec', '-n', 'bookinfo', podNamed('productpage-v1'), '--', 'echo', 'hello', 'world'], { env });
    expect(result).toMatchObject({ code: 0, stdout: 'hello world\n', stderr: '' });
    const exec = standIn.requests.slice(before).find((r) => r.url.includes('/exec?'));
    expect(exec?.upgrade).toBe(upgrade);
    expect(exec?.user?.username).toBe('system:serviceaccount:istio-system:kiali');

    const cat = await kubectl(tokenConfig, ['exec', '-i', '-n', 'bookinfo', podNamed('reviews-v1'), '--', 'cat'], { env, input: 'from stdin\n' });
    expect(cat).toMatchObject({ code: 0, stdout: 'from stdin\n' });
    const failed = await kubectl(tokenConfig, ['exec', '-n', 'bookinfo', podNamed('reviews-v1'), '--', 'false'], { env });
    expect(failed.code).toBe(1);
  });

  it.each([
    ['SPDY over WebSocket', {}, 'websocket'],
    ['SPDY/3.1', { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' }, 'SPDY/3.1'],
  ])('port-forwards over %s', async (_name, env, upgrade) => {
    const before = standIn.requests.length;
    const { child, match, stderr } = await kubectlUntil(
      tokenConfig,
      // -v=6: kubectl says when a WebSocket upgrade failed and it fell back to SPDY.
      ['port-forward', '-v=6', '-n', 'bookinfo', `pod/${podNamed('productpage-v1')}`, ':9080'],
      /Forwarding from 127\.0\.0\.1:(\d+) -> 9080/,
      env,
    );
    try {
      const port = Number(match[1]);
      expect((await echoThrough(port, Buffer.from('ping'))).toString()).toBe('ping');
      // Past SPDY's 64 KiB windows, and a second connection after the first closed.
      const big = Buffer.alloc(300_000, 'meshgate');
      expect((await echoThrough(port, big)).equals(big)).toBe(true);
    } finally {
      child.kill();
    }
    expect(standIn.requests.slice(before).find((r) => r.url.includes('/portforward'))?.upgrade).toBe(upgrade);
    // The WebSocket was accepted, not refused and quietly replaced by SPDY.
    expect(stderr()).not.toMatch(/fallback to secondary dialer/);
  });

  it('tells who the token is', async () => {
    const result = await kubectl(tokenConfig, ['auth', 'whoami', '-o', 'json']);
    expect(result.code).toBe(0);
    const userInfo = JSON.parse(result.stdout).status.userInfo;
    expect(userInfo.username).toBe('system:serviceaccount:istio-system:kiali');
    expect(userInfo.groups).toEqual(['system:serviceaccounts', 'system:serviceaccounts:istio-system', 'system:authenticated']);
  });

  it('lets an impersonator act as someone else', async () => {
    const self = JSON.parse((await kubectl(impersonatorConfig, ['auth', 'whoami', '-o', 'json'])).stdout).status.userInfo;
    expect(self).toEqual({ username: 'meshgate', groups: ['meshgate-proxies', 'system:authenticated'] });
    const result = await kubectl(impersonatorConfig, ['--as', 'alice', '--as-group', 'devs', 'auth', 'whoami', '-o', 'json']);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout).status.userInfo).toEqual({ username: 'alice', groups: ['devs', 'system:authenticated'] });
    expect(standIn.requests.at(-1)?.user).toEqual({ username: 'alice', groups: ['devs', 'system:authenticated'] });
  });

  it('forbids impersonation to anyone else', async () => {
    // Not `auth whoami`: kubectl turns its 403 into "the selfsubjectreviews API is not enabled …".
    const result = await kubectl(strangerConfig, ['--as', 'alice', 'get', 'pods', '-n', 'bookinfo']);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('User "mallory" cannot impersonate resource "users"');
    expect(standIn.requests.at(-1)?.user?.username).toBe('mallory');
  });
});

describe('the stand-in kube-apiserver over HTTPS', () => {
  it('answers an unauthenticated request with a 401 Status, and an unknown path with a 404 Status', async () => {
    const res = await call('/api/v1/namespaces');
    expect(res.status).toBe(401);
    expect(res.body.toString()).toBe(
      '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}',
    );
    expect(standIn.requests.at(-1)?.user).toBeUndefined();
    const bad = await call('/api/v1/namespaces', { headers: { authorization: 'Bearer not-a-jwt' } });
    expect(bad.status).toBe(401);
    const unknown = await call('/apis/example.com/v1/widgets', { headers: bearer() });
    expect(unknown.status).toBe(404);
    expect(unknown.json()).toMatchObject({ kind: 'Status', reason: 'NotFound', code: 404 });
  });

  it('answers an exec upgrade for an unknown pod with a 404 Status', async () => {
    const headers = { ...bearer(), connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'v4.channel.k8s.io' };
    const res = await call('/api/v1/namespaces/bookinfo/pods/nope/exec?command=ls&stdout=true', { method: 'POST', headers });
    expect(res.status).toBe(404);
    expect(res.json()).toMatchObject({ kind: 'Status', reason: 'NotFound', message: 'pods "nope" not found', code: 404 });
    expect(standIn.requests.at(-1)).toMatchObject({ upgrade: 'SPDY/3.1', user: { username: 'system:serviceaccount:istio-system:kiali' } });
  });

  it('serves /version, OIDC discovery and the JWKS without credentials, counting JWKS fetches', async () => {
    expect((await call('/version')).json()).toMatchObject({ major: '1', minor: '32', gitVersion: 'v1.32.0-meshgate-sandbox' });
    const discovery = (await call('/.well-known/openid-configuration')).json();
    expect(discovery).toMatchObject({ issuer: ISSUER, jwks_uri: `${standIn.url}/openid/v1/jwks`, id_token_signing_alg_values_supported: ['ES256'] });
    const before = standIn.jwksFetches();
    const jwks = await call('/openid/v1/jwks');
    expect(jwks.headers['content-type']).toBe('application/jwk-set+json');
    expect(jwks.json()).toEqual(issuer.jwks());
    expect(standIn.jwksFetches()).toBe(before + 1);
  });

  it('serves the protobuf blob byte for byte, and echoes protobuf bodies', async () => {
    const blob = standIn.protobufBlob;
    expect(blob.subarray(0, 4).toString('latin1')).toBe('k8s\0');
    expect(new Set(blob).size).toBe(256);
    const accept = 'application/vnd.kubernetes.protobuf, */*';
    const res = await call('/api/v1/namespaces/bookinfo/configmaps/blob', { headers: { ...bearer(), accept } });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/vnd.kubernetes.protobuf');
    expect(res.body.equals(blob)).toBe(true);

    const headers = { ...bearer(), 'content-type': 'application/vnd.kubernetes.protobuf', accept: 'application/vnd.kubernetes.protobuf' };
    const created = await call('/api/v1/namespaces/bookinfo/configmaps', { method: 'POST', headers, body: blob });
    expect(created.status).toBe(201);
    expect(created.body.equals(blob)).toBe(true);
    const replaced = await call('/api/v1/namespaces/bookinfo/configmaps/blob', { method: 'PUT', headers, body: blob.subarray(0, 1000) });
    expect(replaced.status).toBe(200);
    expect(replaced.body.equals(blob.subarray(0, 1000))).toBe(true);

    const json = await call('/api/v1/namespaces/bookinfo/configmaps', {
      method: 'POST',
      headers: { ...bearer(), 'content-type': 'application/json' },
      body: JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings' }, data: { a: 'b' } }),
    });
    expect(json.status).toBe(201);
    expect(json.json()).toMatchObject({ kind: 'ConfigMap', metadata: { name: 'settings', namespace: 'bookinfo' }, data: { a: 'b' } });
    expect(json.json().metadata.uid).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('reviews tokens: accepts one for its audience, denies a wrong audience or a bad token, and counts', async () => {
    const review = (spec: object) =>
      call('/apis/authentication.k8s.io/v1/tokenreviews', {
        method: 'POST',
        headers: { ...bearer(), 'content-type': 'application/json' },
        body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec }),
      });
    const before = standIn.tokenReviews();
    const subject = await issuer.mint({ namespace: 'bookinfo', serviceAccount: 'reviews', audience: ['istio-ca', 'other'] });

    const accepted = (await review({ token: subject, audiences: ['istio-ca'] })).json();
    expect(accepted.status).toMatchObject({
      authenticated: true,
      user: {
        username: 'system:serviceaccount:bookinfo:reviews',
        groups: ['system:serviceaccounts', 'system:serviceaccounts:bookinfo', 'system:authenticated'],
      },
      audiences: ['istio-ca'],
    });
    expect(accepted.status.user.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect((await review({ token: subject, audiences: ['vault'] })).json().status).toMatchObject({ authenticated: false });
    const forged = (await review({ token: 'e30.e30.e30' })).json();
    expect(forged.status.authenticated).toBe(false);
    expect(forged.status.error).toMatch(/invalid bearer token/);
    expect(standIn.tokenReviews()).toBe(before + 3);
    // The caller must be authenticated itself.
    expect((await call('/apis/authentication.k8s.io/v1/tokenreviews', { method: 'POST', body: '{}' })).status).toBe(401);
  });

  it('streams watch events as they happen, and ends the watch after timeoutSeconds', async () => {
    const { port } = new URL(standIn.url);
    const events: { type: string; object: Json }[] = [];
    const started = Date.now();
    const ended = await new Promise<boolean>((resolve, reject) => {
      const path = '/api/v1/namespaces/bookinfo/pods?watch=1&timeoutSeconds=2';
      const req = request({ host: '127.0.0.1', port, path, headers: bearer(), ca: ca.cert }, (res) => {
        let buffered = '';
        res.on('data', (chunk: Buffer) => {
          buffered += chunk.toString();
          const lines = buffered.split('\n');
          buffered = lines.pop() ?? '';
          for (const line of lines) events.push(JSON.parse(line) as { type: string; object: Json });
        });
        res.on('end', () => resolve(true));
      });
      req.on('error', reject);
      req.end();
    });
    expect(ended).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(events.slice(0, 3).map((e) => e.type)).toEqual(['ADDED', 'ADDED', 'ADDED']);
    const modified = events.filter((e) => e.type === 'MODIFIED');
    expect(modified.length).toBeGreaterThanOrEqual(3);
    expect(modified[0]?.object.metadata.annotations['sandbox.meshgate.io/changed-at']).toBeDefined();
    expect(new Set(modified.map((e) => String(e.object.metadata.resourceVersion))).size).toBe(modified.length);
  });

  it('ends the initial events of a watch-list with the initial-events-end bookmark', async () => {
    const { port } = new URL(standIn.url);
    const path = '/api/v1/namespaces/bookinfo/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1';
    const lines = await new Promise<{ type: string; object: Json }[]>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, headers: bearer(), ca: ca.cert }, (res) => {
        let body = '';
        res.on('data', (chunk: Buffer) => (body += chunk.toString()));
        res.on('end', () => resolve(body.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { type: string; object: Json })));
      });
      req.on('error', reject);
      req.end();
    });
    const bookmark = lines.findIndex((e) => e.type === 'BOOKMARK');
    expect(lines.slice(0, bookmark).map((e) => e.type)).toEqual(['ADDED', 'ADDED', 'ADDED']);
    expect(lines[bookmark]?.object).toMatchObject({ kind: 'Pod', apiVersion: 'v1', metadata: { annotations: { 'k8s.io/initial-events-end': 'true' } } });
    expect(lines[bookmark]?.object.metadata.resourceVersion).toMatch(/^\d+$/);
  });

  it('honours fieldSelector for lists and watches', async () => {
    const name = podNamed('ratings-v1');
    const list = await call(`/api/v1/pods?fieldSelector=metadata.name%3D${name}`, { headers: bearer() });
    expect(list.json()).toMatchObject({ kind: 'PodList', items: [{ metadata: { name, namespace: 'bookinfo' } }] });
    expect(list.json().metadata.resourceVersion).toMatch(/^\d+$/);
    const all = await call('/api/v1/pods', { headers: bearer() });
    const namespaces = (all.json().items as Json[]).map((p) => String(p.metadata.namespace)).sort();
    expect(namespaces).toEqual(['bookinfo', 'bookinfo', 'bookinfo', 'istio-system']);
  });
});
