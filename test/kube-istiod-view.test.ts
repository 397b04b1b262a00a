/**
 * The control-plane view (docs/kiali.md): the tenant's istiod, found the way Kiali looks for it
 * (a Deployment labelled app=istiod with CLUSTER_ID and EXTERNAL_ISTIOD, a Running pod with its
 * revision, the istio ConfigMap), and port-forwarded to the way Kiali does it (client-go's SPDY
 * port-forward, one GET per forward) and the way kubectl ≥ 1.31 does (SPDY inside a WebSocket): the
 * real kubectl and @kubernetes/client-node against meshgate, with the sandbox's stand-in istiod
 * behind the debug plane. Kiali itself cannot be built here (docs/interop.md).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { AppsV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubeconfig } from '../src/cli/kubeconfig.js';
import { loadConfig } from '../src/config/load.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { buildGateway } from '../src/gateway/build.js';
import { drainIstiodRequests, silent, startGatewayFrom, startTestSandbox, tenantOf } from './helpers/sandbox.js';

const KUBECTL = '/usr/bin/kubectl';

let sandbox: Sandbox;
let dir: string;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  dir = mkdtempSync(join(tmpdir(), 'meshgate-view-'));
});
afterAll(async () => {
  await sandbox.close();
});

const acme = () => tenantOf(sandbox, 'acme');
const globex = () => tenantOf(sandbox, 'globex');
const caPem = () => readFileSync(sandbox.info.caFile, 'utf8');

/** Kiali's own token, from its home cluster acme-east, with that API server's audience. */
async function kialiToken(cluster = 'acme-east'): Promise<string> {
  const issuer = sandbox.issuers.get(cluster);
  if (!issuer) throw new Error(`no ${cluster} issuer`);
  return issuer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: issuer.issuer });
}

/** A kubeconfig for the view `cluster` on `host`, as Kiali's remote-cluster secret holds it. */
function viewKubeconfig(options: { token?: string; cert?: boolean; tenant?: 'acme' | 'globex'; cluster?: string; host?: string; port?: number }): string {
  const tenant = options.tenant ?? 'acme';
  const info = tenantOf(sandbox, tenant);
  const text = kubeconfig({
    tenant,
    cluster: options.cluster ?? info.controlPlaneView.cluster,
    host: options.host ?? info.host,
    port: options.port ?? sandbox.info.listeners.api.port,
    connectTo: '127.0.0.1',
    ca: caPem(),
    ...(options.token === undefined ? {} : { token: options.token }),
    ...(options.cert ? { clientCert: { cert: readFileSync(info.clientCert, 'utf8'), key: readFileSync(info.clientKey, 'utf8') } } : {}),
  });
  const file = join(dir, `${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, text, { mode: 0o600 });
  return file;
}

function kubectl(config: string, args: readonly string[], env: Record<string, string> = {}) {
  return promisify(execFile)(KUBECTL, ['--kubeconfig', config, ...args], { timeout: 20_000, env: { ...process.env, ...env } });
}

async function kubectlFails(config: string, args: readonly string[]): Promise<string> {
  return kubectl(config, args).then(
    ({ stdout }) => {
      throw new Error(`kubectl ${args.join(' ')} succeeded: ${stdout}`);
    },
    (err: unknown) => (err as { stderr: string }).stderr,
  );
}

/** `kubectl port-forward` to the view's istiod pod; the local ports, in the order asked, and the process. */
function portForward(config: string, ports: readonly number[], env: Record<string, string> = {}) {
  return new Promise<{ local: number[]; child: ChildProcess; output: () => string }>((resolve, reject) => {
    const pod = `pod/${podName()}`;
    const child = spawn(KUBECTL, ['--kubeconfig', config, 'port-forward', '-n', 'istio-system', pod, ...ports.map((p) => `:${p}`)], { env: { ...process.env, ...env } });
    let output = '';
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`kubectl port-forward did not start:\n${output}`));
    }, 20_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      const local = [...output.matchAll(/Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)/g)].map((m) => Number(m[1]));
      if (local.length === ports.length) {
        clearTimeout(timer);
        resolve({ local, child, output: () => output });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', () => clearTimeout(timer));
  });
}

let pod = '';
const podName = (): string => pod;

/** The status and code of a SPDY port-forward upgrade to acme's view pod that meshgate refuses. */
function upgradeStatus(port: number, token: string): Promise<{ status: number; code: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1',
      port,
      servername: acme().host,
      ca: caPem(),
      method: 'POST',
      path: `/clusters/acme-istiod/api/v1/namespaces/istio-system/pods/${podName()}/portforward`,
      headers: { host: acme().host, authorization: `Bearer ${token}`, connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'portforward.k8s.io' },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, code: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(body) as { details: { causes: { reason: string }[] } }).details.causes[0]?.reason ?? '' }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Waits until `check` passes (or throws its last failure after 10 s). */
async function eventually(check: () => Promise<void> | void): Promise<void> {
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe('what Kiali looks for', () => {
  it('finds istiod by its Deployment, its Running pod, its Service and its istio ConfigMap, with client-node and Kiali\'s token', async () => {
    const config = new KubeConfig();
    config.loadFromFile(viewKubeconfig({ token: await kialiToken() }));
    const apps = config.makeApiClient(AppsV1Api);
    const core = config.makeApiClient(CoreV1Api);

    // Kiali: every Deployment labelled app=istiod, in every namespace.
    const deployments = await apps.listDeploymentForAllNamespaces({ labelSelector: 'app=istiod' });
    expect(deployments.items).toHaveLength(1);
    const deployment = deployments.items[0];
    expect(deployment?.metadata).toMatchObject({ name: 'istiod', namespace: 'istio-system', labels: { app: 'istiod', 'istio.io/rev': 'default' } });
    const container = deployment?.spec?.template.spec?.containers[0];
    expect(container?.env).toEqual(
      expect.arrayContaining([
        { name: 'CLUSTER_ID', value: 'acme-east' },
        { name: 'EXTERNAL_ISTIOD', value: 'true' },
      ]),
    );
    expect(container?.args).toContain('--monitoringAddr=:15014');

    // Its pods: app=istiod and the revision, Running.
    const pods = await core.listNamespacedPod({ namespace: 'istio-system', labelSelector: 'app=istiod,istio.io/rev=default' });
    expect(pods.items).toHaveLength(1);
    expect(pods.items[0]?.status?.phase).toBe('Running');
    expect(pods.items[0]?.metadata?.creationTimestamp).toBeInstanceOf(Date);
    pod = pods.items[0]?.metadata?.name ?? '';
    expect(await core.listNamespacedPod({ namespace: 'istio-system', labelSelector: 'app=istiod,istio.io/rev=canary' })).toMatchObject({ items: [] });
    expect(await core.listNamespacedPod({ namespace: 'istio-system', labelSelector: 'istio.io/rev in (canary, default),!job-name' })).toMatchObject({
      items: [{ metadata: { name: pod } }],
    });
    expect(await core.listNamespacedPod({ namespace: 'istio-system', fieldSelector: `metadata.name=${pod}` })).toMatchObject({ items: [{ metadata: { name: pod } }] });

    // The Service's monitoring port, the mesh config, and the namespace.
    const services = await core.listNamespacedService({ namespace: 'istio-system', labelSelector: 'app=istiod' });
    expect(services.items[0]?.spec?.ports?.find((p) => p.name === 'http-monitoring')?.port).toBe(15014);
    const mesh = await core.readNamespacedConfigMap({ name: 'istio', namespace: 'istio-system' });
    expect(mesh.data?.mesh).toMatch(/^rootNamespace: istio-system$/m);
    expect((await core.readNamespace({ name: 'istio-system' })).status?.phase).toBe('Active');

    // The kinds Kiali's cache watches on every cluster are there, and empty.
    expect(await apps.listReplicaSetForAllNamespaces()).toMatchObject({ items: [] });
    expect(await core.listNamespacedEndpoints({ namespace: 'istio-system' })).toMatchObject({ items: [] });
  });

  it('answers kubectl: get, api-resources with short names, and can-i with meshgate\'s own decision', async () => {
    const config = viewKubeconfig({ token: await kialiToken() });
    const { stdout } = await kubectl(config, ['get', 'deploy,po,svc,cm', '-n', 'istio-system', '-o', 'name']);
    expect(stdout.trim().split('\n').sort()).toEqual(['configmap/istio', 'deployment.apps/istiod', `pod/${podName()}`, 'service/istiod']);
    expect((await kubectl(config, ['api-resources', '-o', 'name'])).stdout).toMatch(/^virtualservices\.networking\.istio\.io$/m);

    const canI = async (...args: string[]): Promise<string> =>
      kubectl(config, ['auth', 'can-i', ...args]).then(
        ({ stdout: out }) => out.trim(),
        (err: unknown) => (err as { stdout: string }).stdout.trim(),
      );
    expect(await canI('list', 'deployments', '-A')).toBe('yes');
    expect(await canI('create', 'pods', '--subresource=portforward', '-n', 'istio-system')).toBe('yes');
    expect(await canI('delete', 'pods', '-n', 'istio-system')).toMatch(/^no/);
    // kiali-readonly never reads secrets; and the view holds none.
    expect(await canI('get', 'secrets', '-n', 'istio-system')).toMatch(/^no/);
  });

  it('is read-only: writes, exec and anything off the view are refused with a Kubernetes Status', async () => {
    const config = viewKubeconfig({ cert: true });
    expect(await kubectlFails(config, ['delete', 'pod', '-n', 'istio-system', podName()])).toMatch(
      /^Error from server \(MethodNotAllowed\): MG_ERR_KUBE_VIEW_READ_ONLY: the control-plane view is read-only/m,
    );
    expect(await kubectlFails(config, ['create', 'configmap', 'x', '-n', 'istio-system'])).toMatch(/MG_ERR_KUBE_VIEW_READ_ONLY/);
    // The Status names the code as its cause, for clients that read details.
    const client = new KubeConfig();
    client.loadFromFile(config);
    const refused = await client
      .makeApiClient(CoreV1Api)
      .deleteNamespacedPod({ name: podName(), namespace: 'istio-system' })
      .then(
        () => undefined,
        (err: unknown) => err as { code?: number; body?: string },
      );
    expect(refused?.code).toBe(405);
    expect((JSON.parse(refused?.body ?? '{}') as { reason: string; details: { causes: { reason: string }[] } }).details.causes[0]?.reason).toBe('MG_ERR_KUBE_VIEW_READ_ONLY');
    expect(await kubectlFails(config, ['exec', '-n', 'istio-system', podName(), '--', 'true'])).toMatch(/MG_ERR_REQUEST_UPGRADE/);
    expect(await kubectlFails(config, ['get', 'pod', '-n', 'istio-system', 'istiod-elsewhere'])).toMatch(/NotFound.*pods "istiod-elsewhere" not found/);
    expect(await kubectlFails(config, ['get', 'pods', '-n', 'istio-system', '-l', 'app in (istiod'])).toMatch(/MG_ERR_REQUEST_MALFORMED/);
    expect(await kubectlFails(config, ['get', 'pods', '-A', '--field-selector', 'status.phase=Running'])).toMatch(/MG_ERR_REQUEST_MALFORMED/);

    // SelfSubjectAccessReviews that are not one.
    const review = (body: string): Promise<{ status: number; code: string }> =>
      new Promise((resolve, reject) => {
        const req = httpsRequest(
          {
            host: '127.0.0.1',
            port: sandbox.info.listeners.api.port,
            servername: acme().host,
            ca: caPem(),
            cert: readFileSync(acme().clientCert),
            key: readFileSync(acme().clientKey),
            method: 'POST',
            path: '/clusters/acme-istiod/apis/authorization.k8s.io/v1/selfsubjectaccessreviews',
            headers: { host: acme().host, 'content-type': 'application/json' },
          },
          (res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(text) as { details?: { causes?: { reason: string }[] } }).details?.causes?.[0]?.reason ?? '' }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    for (const body of ['null', '{"spec": 3}', '{"spec": {"resourceAttributes": {"namespace": {"a": 1}, "verb": "get", "resource": "pods"}}}', 'not json']) {
      expect(await review(body), body).toEqual({ status: 400, code: 'MG_ERR_REQUEST_MALFORMED' });
    }
  });
});

describe('port-forwarding to istiod', () => {
  it.each([
    ['SPDY/3.1, as Kiali sends it', { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' }, 'spdy'],
    ['SPDY inside a WebSocket, as kubectl ≥ 1.31 sends it', {}, 'websocket'],
  ])('reaches the tenant\'s istiod debug port with meshgate\'s istiod token, over %s', async (_name, env, protocol) => {
    const config = viewKubeconfig({ token: await kialiToken() });
    const { local, child } = await portForward(config, [15014, 8080], env);
    drainIstiodRequests(sandbox);
    try {
      const [debug, ready] = local;
      // Kiali: one GET per forward, no credential of its own.
      const version = await fetch(`http://127.0.0.1:${debug}/version`);
      expect(version.status).toBe(200);
      const syncz = (await (await fetch(`http://127.0.0.1:${debug}/debug/syncz`)).json()) as { tenant: string; caller: string; clusterid: string; proxies: unknown[] };
      expect(syncz).toMatchObject({ tenant: 'acme', caller: 'system:serviceaccount:istio-system:meshgate', clusterid: 'acme-east' });
      expect(syncz.proxies.length).toBeGreaterThan(0);
      expect((await fetch(`http://127.0.0.1:${ready}/ready`)).status).toBe(200);

      const seen = drainIstiodRequests(sandbox);
      expect(seen.get('globex')).toEqual([]);
      expect(seen.get('acme')?.map((r) => `${r.method} ${r.url}`)).toEqual(['GET /version', 'GET /debug/syncz', 'GET /version']);
      // Never the caller's own token: it was for acme-east's API server, not istiod.
      const own = readFileSync(join(sandbox.info.dir, 'tokens', 'acme-meshgate-istiod.jwt'), 'utf8').trim();
      expect(seen.get('acme')?.every((r) => r.headers.authorization === `Bearer ${own}`)).toBe(true);

      const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
      expect(metrics).toMatch(/^meshgate_kube_view_forwards_total\{tenant="acme",port="15014",endpoint="\/debug\/syncz",code="200"\} [1-9]\d*$/m);
      expect(metrics).toMatch(/^meshgate_kube_view_forwards_total\{tenant="acme",port="8080",endpoint="\/ready",code="200"\} [1-9]\d*$/m);
      // kubectl falls back to SPDY when a WebSocket upgrade fails: which one carried it is asserted here.
      expect(metrics).toMatch(new RegExp(`^meshgate_kube_tunnels\\{tenant="acme",cluster="acme-istiod",protocol="${protocol}"\\} 1$`, 'm'));
    } finally {
      child.kill();
    }
  });

  it("shows a pod per istiod replica, and forwards each pod's port to its own replica", async () => {
    // A second replica's debug port: answers syncz with its own proxy, and records who asked.
    const asked: { url: string; authorization: string | undefined }[] = [];
    const replica = createHttpServer((req, res) => {
      asked.push({ url: req.url ?? '', authorization: req.headers.authorization });
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify([{ proxy: 'reviews-v2-0.bookinfo', cluster_id: 'acme-east' }]));
    });
    await new Promise<void>((resolve) => replica.listen(0, '127.0.0.1', resolve));
    const address = replica.address() as AddressInfo;
    const gateway = await startGatewayFrom(sandbox, (config) => {
      for (const tenant of config.tenants as Record<string, any>[]) {
        if (tenant.id === 'acme') tenant.istiod.debug.replicas = [acme().istiod.debug, `http://127.0.0.1:${address.port}`];
      }
    });
    try {
      const config = viewKubeconfig({ token: await kialiToken(), port: gateway.port('api') });
      const pods = (await kubectl(config, ['get', 'pods', '-n', 'istio-system', '-l', 'app=istiod', '-o', 'name'])).stdout.trim().split('\n');
      expect(pods).toHaveLength(2);
      const deployment = JSON.parse((await kubectl(config, ['get', 'deployment', 'istiod', '-n', 'istio-system', '-o', 'json'])).stdout) as { spec: { replicas: number } };
      expect(deployment.spec.replicas).toBe(2);
      const proxiesOf = async (pod: string): Promise<string[]> => {
        const forward = await new Promise<{ local: number; child: ChildProcess }>((resolve, reject) => {
          const child = spawn(KUBECTL, ['--kubeconfig', config, 'port-forward', '-n', 'istio-system', pod, ':15014'], { env: { ...process.env, KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' } });
          let output = '';
          child.stdout.on('data', (c: Buffer) => {
            output += c.toString();
            const match = /127\.0\.0\.1:(\d+)/.exec(output);
            if (match) resolve({ local: Number(match[1]), child });
          });
          child.on('exit', () => reject(new Error(output)));
        });
        try {
          const body = (await (await fetch(`http://127.0.0.1:${forward.local}/debug/syncz`)).json()) as { proxy: string }[] | { proxies: { proxy: string }[] };
          return (Array.isArray(body) ? body : body.proxies).map((p) => p.proxy);
        } finally {
          forward.child.kill();
        }
      };
      // Kiali asks every Running pod and merges: between them, every replica's proxies.
      expect(await proxiesOf(pods[0] ?? '')).toContain('productpage-v1-0.bookinfo');
      expect(await proxiesOf(pods[1] ?? '')).toEqual(['reviews-v2-0.bookinfo']);
      const own = readFileSync(join(sandbox.info.dir, 'tokens', 'acme-meshgate-istiod.jwt'), 'utf8').trim();
      expect(asked).toEqual([{ url: '/debug/syncz', authorization: `Bearer ${own}` }]);
    } finally {
      await gateway.close();
      replica.close();
    }
  });

  it('lets through nothing but GETs of allowlisted endpoints: no other port, method, endpoint or write parameter reaches istiod', async () => {
    const config = viewKubeconfig({ token: await kialiToken() });
    const { local, child } = await portForward(config, [15014, 8080], { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' });
    drainIstiodRequests(sandbox);
    try {
      const [debug, ready] = local;
      const answer = async (url: string, init?: RequestInit) => {
        const res = await fetch(url, init);
        return { status: res.status, code: ((await res.json()) as { code: string }).code };
      };
      expect(await answer(`http://127.0.0.1:${debug}/debug/syncz`, { method: 'POST', body: 'x' })).toEqual({ status: 405, code: 'MG_ERR_REQUEST_METHOD_NOT_ALLOWED' });
      expect(await answer(`http://127.0.0.1:${debug}/debug/force_disconnect`)).toEqual({ status: 403, code: 'MG_ERR_AUTHZ_DEBUG_ENDPOINT' });
      expect(await answer(`http://127.0.0.1:${debug}/debug/pprof/heap`)).toEqual({ status: 403, code: 'MG_ERR_AUTHZ_DEBUG_ENDPOINT' });
      expect(await answer(`http://127.0.0.1:${debug}/debug/adsz?push=true`)).toEqual({ status: 403, code: 'MG_ERR_AUTHZ_DEBUG_ENDPOINT' });
      expect(await answer(`http://127.0.0.1:${debug}/debug/%2e%2e/metrics`)).toEqual({ status: 403, code: 'MG_ERR_AUTHZ_DEBUG_ENDPOINT' });
      expect(await answer(`http://127.0.0.1:${ready}/debug/syncz`)).toEqual({ status: 403, code: 'MG_ERR_AUTHZ_DEBUG_ENDPOINT' });
      expect(drainIstiodRequests(sandbox).get('acme')).toEqual([]);

      // One request per forwarded connection, as Kiali sends: 500 pipelined GETs reach istiod once.
      const pipelined = await new Promise<string>((resolve, reject) => {
        const socket = connect(debug ?? 0, '127.0.0.1', () => socket.write('GET /version HTTP/1.1\r\nHost: istiod\r\n\r\n'.repeat(500)));
        let got = '';
        socket.on('data', (c: Buffer) => (got += c.toString()));
        socket.on('close', () => resolve(got));
        socket.on('error', reject);
      });
      expect(pipelined).toMatch(/^HTTP\/1\.1 200 /);
      expect(drainIstiodRequests(sandbox).get('acme')?.map((r) => r.url)).toEqual(['/version']);

      // A path is checked as sent: dot segments, encoded ones, backslashes and absolute URIs are refused, not cleaned up.
      for (const target of ['/debug/syncz/../config_dump', '/debug/%2e%2e/config_dump', '/debug\\syncz', 'http://istiod/debug/syncz']) {
        const raw = await new Promise<string>((resolve, reject) => {
          const socket = connect(debug ?? 0, '127.0.0.1', () => socket.write(`GET ${target} HTTP/1.1\r\nHost: istiod\r\n\r\n`));
          let got = '';
          socket.on('data', (c: Buffer) => (got += c.toString()));
          socket.on('close', () => resolve(got));
          socket.on('error', reject);
        });
        expect(raw, target).toMatch(/^HTTP\/1\.1 400 [\s\S]*"code":"MG_ERR_REQUEST_PATH_NOT_CANONICAL"/);
      }
      expect(drainIstiodRequests(sandbox).get('acme')).toEqual([]);
    } finally {
      child.kill();
    }

    // Any other port is refused on the forward's error stream, as the kubelet refuses a closed port.
    const other = await portForward(config, [15012], { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' });
    try {
      await fetch(`http://127.0.0.1:${other.local[0]}/`).catch(() => undefined);
      const code = 'MG_ERR_KUBE_VIEW_PORT';
      await eventually(() => expect(other.output()).toContain(`${code}: port 15012 of the istiod view is not forwarded`));
      const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
      expect(metrics).toMatch(/^meshgate_kube_view_forwards_total\{tenant="acme",port="0",endpoint="refused",code="0"\} [1-9]\d*$/m);
    } finally {
      other.child.kill();
    }
    expect(drainIstiodRequests(sandbox).get('acme')).toEqual([]);
  });

  it('refuses a port-forward it cannot serve before switching protocols', async () => {
    const token = await kialiToken();
    const upgrade = (path: string, headers: Record<string, string>) =>
      new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
        const req = httpsRequest({
          host: '127.0.0.1',
          port: sandbox.info.listeners.api.port,
          servername: acme().host,
          ca: caPem(),
          method: 'POST',
          path,
          headers: { host: acme().host, authorization: `Bearer ${token}`, connection: 'Upgrade', ...headers },
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' });
        });
        req.on('response', (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        });
        req.on('error', reject);
        req.end();
      });
    const forward = `/clusters/acme-istiod/api/v1/namespaces/istio-system/pods/${podName()}/portforward`;
    const noProtocol = await upgrade(forward, { upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'v4.channel.k8s.io' });
    expect(noProtocol.status).toBe(403);
    expect(noProtocol.headers['x-accepted-stream-protocol-versions']).toBe('portforward.k8s.io');
    expect(noProtocol.body).toMatch(/unable to negotiate protocol/);
    const otherPod = await upgrade('/clusters/acme-istiod/api/v1/namespaces/istio-system/pods/productpage-v1/portforward', {
      upgrade: 'SPDY/3.1',
      'x-stream-protocol-version': 'portforward.k8s.io',
    });
    expect(otherPod.status).toBe(404);
    const otherNamespace = await upgrade(`/clusters/acme-istiod/api/v1/namespaces/bookinfo/pods/${podName()}/portforward`, {
      upgrade: 'SPDY/3.1',
      'x-stream-protocol-version': 'portforward.k8s.io',
    });
    expect(otherNamespace.status).toBe(404);
    const websocket = await upgrade(forward, { upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-protocol': 'v4.channel.k8s.io' });
    expect(websocket.status).toBe(400);
    // Not an upgrade at all.
    const plain = await new Promise<number>((resolve, reject) => {
      const req = httpsRequest(
        { host: '127.0.0.1', port: sandbox.info.listeners.api.port, servername: acme().host, ca: caPem(), method: 'POST', path: forward, headers: { host: acme().host, authorization: `Bearer ${token}` } },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(plain).toBe(400);
  });

  it('ends a session that sends garbage after the switch, and keeps serving', async () => {
    const token = await kialiToken();
    const socket = tlsConnect({ host: '127.0.0.1', port: sandbox.info.listeners.api.port, servername: acme().host, ca: caPem() });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    socket.write(
      `POST /clusters/acme-istiod/api/v1/namespaces/istio-system/pods/${podName()}/portforward HTTP/1.1\r\nHost: ${acme().host}\r\n` +
        `Authorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n`,
    );
    let received = '';
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    await eventually(() => expect(received).toMatch(/^HTTP\/1\.1 101 /));
    socket.write(Buffer.from('this is not a SPDY frame, it is text'));
    await new Promise<void>((resolve) => socket.on('close', () => resolve()));
    // GOAWAY (type 7) before the end.
    expect(Buffer.from(received, 'latin1').includes(Buffer.from([0x80, 0x03, 0x00, 0x07]))).toBe(true);
    const config = viewKubeconfig({ token });
    expect((await kubectl(config, ['get', 'pods', '-n', 'istio-system', '-o', 'name'])).stdout.trim()).toBe(`pod/${podName()}`);
  });
});

describe('watching the view', () => {
  /** A watch with the tenant's certificate; its events as they come, and whether it ended cleanly. */
  function watch(port: number, query: string) {
    const events: { type: string; object: { metadata?: { name?: string }; code?: number; reason?: string } }[] = [];
    let ended = false;
    const req = httpsRequest({
      host: '127.0.0.1',
      port,
      servername: acme().host,
      ca: caPem(),
      cert: readFileSync(acme().clientCert),
      key: readFileSync(acme().clientKey),
      path: `/clusters/acme-istiod/api/v1/namespaces/istio-system/pods?watch=1&${query}`,
      headers: { host: acme().host },
      agent: false,
    });
    req.on('response', (res) => {
      let buffered = '';
      res.on('data', (c: Buffer) => {
        buffered += c.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop() ?? '';
        for (const line of lines) if (line !== '') events.push(JSON.parse(line) as (typeof events)[number]);
      });
      res.on('end', () => (ended = true));
    });
    req.end();
    return { events, ended: () => ended, close: () => req.destroy() };
  }

  it('starts with the objects, stays open from the list\'s version, and sends an old version back to list', async () => {
    const config = new KubeConfig();
    config.loadFromFile(viewKubeconfig({ cert: true }));
    const list = await config.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'istio-system' });
    const port = sandbox.info.listeners.api.port;
    const fromNothing = watch(port, '');
    const fromList = watch(port, `resourceVersion=${list.metadata?.resourceVersion ?? ''}`);
    const fromOld = watch(port, 'resourceVersion=1');
    try {
      await eventually(() => expect(fromNothing.events).toEqual([expect.objectContaining({ type: 'ADDED', object: expect.objectContaining({ metadata: expect.objectContaining({ name: podName() }) }) })]));
      await eventually(() => expect(fromOld.ended()).toBe(true));
      expect(fromOld.events).toEqual([{ type: 'ERROR', object: expect.objectContaining({ code: 410, reason: 'Expired' }) }]);
      const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
      expect(metrics).toMatch(/^meshgate_kube_requests_total\{tenant="acme",cluster="acme-istiod",verb="watch",code="200"\} [1-9]\d*$/m);
      expect(fromList.events).toEqual([]);
      expect(fromList.ended()).toBe(false);
    } finally {
      fromNothing.close();
      fromList.close();
    }
  });

  it('ends a watch cleanly when a reload changes the view, and keeps it through a reload that does not', async () => {
    const original = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    original.reload = { drainTimeout: '300ms', watch: false };
    const file = join(mkdtempSync(join(tmpdir(), 'meshgate-view-reload-')), 'meshgate.yaml');
    const write = (revision: string): void => {
      const config = structuredClone(original);
      for (const tenant of config.tenants as Record<string, any>[]) if (tenant.id === 'acme') tenant.controlPlaneView = { cluster: 'acme-istiod', revision };
      writeFileSync(file, stringify(config));
    };
    write('default');
    const gateway = buildGateway(loadConfig(file), { logger: silent() });
    const addresses = await gateway.listen();
    const port = addresses.listeners.api?.port ?? 0;
    try {
      const watching = watch(port, '');
      await eventually(() => expect(watching.events).toHaveLength(1));
      write('default');
      gateway.reload(() => loadConfig(file));
      // Unchanged: a later look still finds it open.
      const config = viewKubeconfig({ cert: true, port });
      await kubectl(config, ['get', 'pods', '-n', 'istio-system']);
      expect(watching.ended()).toBe(false);

      write('canary');
      gateway.reload(() => loadConfig(file));
      await eventually(() => expect(watching.ended()).toBe(true));
      const { stdout } = await kubectl(config, ['get', 'pods', '-n', 'istio-system', '-l', 'istio.io/rev=canary', '-o', 'name']);
      expect(stdout.trim()).toMatch(/^pod\/istiod-canary-/);
      expect((await kubectl(config, ['get', 'configmap', '-n', 'istio-system', '-o', 'name'])).stdout.trim()).toBe('configmap/istio-canary');
    } finally {
      await gateway.close(0);
    }
  });
});

describe('isolation', () => {
  it('shows a tenant only its own view, reached only with its own credentials', async () => {
    const port = sandbox.info.listeners.api.port;
    // globex's credentials on acme's view: refused before anything is answered.
    const globexToken = await sandbox.issuers.get('globex-main')?.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: sandbox.issuers.get('globex-main')?.issuer ?? '' });
    expect(await kubectlFails(viewKubeconfig({ token: globexToken ?? '' }), ['get', 'pods', '-n', 'istio-system'])).toMatch(/Unauthorized|MG_ERR_AUTHN/);
    // acme's own view named on globex's host: not a cluster there.
    expect(await kubectlFails(viewKubeconfig({ cert: true, tenant: 'globex', cluster: 'acme-istiod', host: globex().host }), ['get', 'pods', '-n', 'istio-system'])).toMatch(
      /MG_ERR_(ROUTE_UNKNOWN_CLUSTER|AUTHN)/,
    );
    // acme's certificate on globex's host, naming globex's view: not globex's caller.
    const crossed = await new Promise<{ status: number; body: string }>((resolve) => {
      const req = httpsRequest({
        host: '127.0.0.1',
        port,
        servername: globex().host,
        ca: caPem(),
        cert: readFileSync(acme().clientCert),
        key: readFileSync(acme().clientKey),
        path: '/clusters/globex-istiod/api/v1/namespaces/istio-system/pods',
        headers: { host: globex().host },
        agent: false,
      });
      req.on('response', (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      // A handshake refused for a certificate of another tenant's CA is a refusal too.
      req.on('error', (err) => resolve({ status: 0, body: err.message }));
      req.end();
    });
    expect(crossed.status === 0 || crossed.status === 401).toBe(true);
    expect(crossed.body).not.toMatch(/istiod/);

    // globex's own view forwards to globex's istiod, never acme's.
    const globexView = viewKubeconfig({ cert: true, tenant: 'globex', host: globex().host });
    const { stdout } = await kubectl(globexView, ['get', 'pods', '-n', 'istio-system', '-o', 'name']);
    pod = stdout.trim().replace(/^pod\//, '');
    const forward = await portForward(globexView, [15014], { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' });
    drainIstiodRequests(sandbox);
    try {
      const syncz = (await (await fetch(`http://127.0.0.1:${forward.local[0]}/debug/syncz`)).json()) as { tenant: string };
      expect(syncz.tenant).toBe('globex');
      const seen = drainIstiodRequests(sandbox);
      expect(seen.get('acme')).toEqual([]);
      expect(seen.get('globex')).toHaveLength(1);
    } finally {
      forward.child.kill();
      const acmePods = (await kubectl(viewKubeconfig({ cert: true }), ['get', 'pods', '-n', 'istio-system', '-o', 'name'])).stdout;
      pod = acmePods.trim().replace(/^pod\//, '');
    }
  });

  it("spends the tenant's debug request rate on each request a port-forward carries", async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      for (const tenant of config.tenants as Record<string, any>[]) {
        if (tenant.id === 'acme') tenant.limits = { ...tenant.limits, requestRate: { debug: { perSecond: 0.01, burst: 2 } } };
      }
    });
    const config = viewKubeconfig({ token: await kialiToken(), port: gateway.port('api') });
    const forward = await portForward(config, [15014], { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' });
    try {
      const answers: { status: number; code?: string; retryAfter: string | null }[] = [];
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`http://127.0.0.1:${forward.local[0]}/version`);
        const body = (await res.json()) as { code?: string };
        answers.push({ status: res.status, ...(res.status === 200 ? {} : { code: body.code }), retryAfter: res.headers.get('retry-after') });
      }
      expect(answers.slice(0, 2).map((a) => a.status)).toEqual([200, 200]);
      expect(answers[2]).toMatchObject({ status: 429, code: 'MG_ERR_LIMIT_RATE', retryAfter: expect.stringMatching(/^\d+$/) as string });
      const metrics = await gateway.gateway.metrics.registry.getSingleMetricAsString('meshgate_limits_hit_total');
      expect(metrics).toContain('meshgate_limits_hit_total{tenant="acme",plane="debug",limit="rate"} 1');
    } finally {
      forward.child.kill();
      await gateway.close();
    }
  });

  it("never port-forwards for kiali-readonly alone: the kube rules must grant the port-forward itself", async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      for (const tenant of config.tenants as Record<string, any>[]) {
        if (tenant.id === 'acme') tenant.access.kube = (tenant.access.kube as Record<string, any>[]).filter((rule) => rule.cluster !== 'acme-istiod');
      }
    });
    try {
      const config = viewKubeconfig({ token: await kialiToken(), port: gateway.port('api') });
      expect((await kubectl(config, ['get', 'pods', '-n', 'istio-system', '-o', 'name'])).stdout.trim()).toBe(`pod/${podName()}`);
      const asked = await kubectl(config, ['auth', 'can-i', 'create', 'pods', '--subresource=portforward', '-n', 'istio-system']).catch((e: unknown) => e as { stdout: string });
      expect(asked.stdout.trim()).toMatch(/^no/);
      const refused = await upgradeStatus(gateway.port('api'), await kialiToken());
      expect(refused).toEqual({ status: 403, code: 'MG_ERR_KUBE_FORBIDDEN' });
    } finally {
      await gateway.close();
    }
  });

  it('ends a port-forward when the credential that opened it expires', async () => {
    const issuer = sandbox.issuers.get('acme-east');
    if (!issuer) throw new Error('no acme-east issuer');
    const shortLived = await issuer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: issuer.issuer, lifetimeSeconds: 3 });
    const config = viewKubeconfig({ token: shortLived });
    const forward = await portForward(config, [15014], { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' });
    try {
      expect((await fetch(`http://127.0.0.1:${forward.local[0]}/version`)).status).toBe(200);
      // The tunnel is cut at the token's expiry: kubectl reports the lost connection and exits.
      await new Promise<void>((resolve) => forward.child.once('exit', () => resolve()));
      expect(forward.output()).toMatch(/lost connection to pod|an error occurred forwarding|EOF/i);
    } finally {
      forward.child.kill();
    }
  }, 30_000);

  it('port-forwards only for callers the debug rules admit, though the kube rules let them read', async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      for (const tenant of config.tenants as Record<string, any>[]) {
        if (tenant.id === 'acme') tenant.access.debug = [{ method: 'clientCertificate', uri: `spiffe://${acme().host}/ns/istio-system/*` }];
      }
    });
    try {
      const config = viewKubeconfig({ token: await kialiToken(), port: gateway.port('api') });
      expect((await kubectl(config, ['get', 'pods', '-n', 'istio-system', '-o', 'name'])).stdout.trim()).toBe(`pod/${podName()}`);
      expect((await kubectl(config, ['auth', 'can-i', 'create', 'pods', '--subresource=portforward', '-n', 'istio-system']).catch((e: unknown) => e as { stdout: string })).stdout.trim()).toMatch(/^no/);
      drainIstiodRequests(sandbox);
      const refused = await new Promise<string>((resolve) => {
        const child = spawn(KUBECTL, ['--kubeconfig', config, 'port-forward', '-n', 'istio-system', `pod/${podName()}`, ':15014'], {
          env: { ...process.env, KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' },
        });
        let output = '';
        child.stderr.on('data', (c: Buffer) => (output += c.toString()));
        child.stdout.on('data', (c: Buffer) => (output += c.toString()));
        child.on('exit', () => resolve(output));
        // kubectl connects only when a local connection comes.
        const poke = setInterval(() => {
          const match = /127\.0\.0\.1:(\d+)/.exec(output);
          if (match) {
            clearInterval(poke);
            void fetch(`http://127.0.0.1:${match[1]}/version`).catch(() => undefined);
          }
        }, 50);
        setTimeout(() => {
          clearInterval(poke);
          child.kill();
        }, 15_000).unref();
      });
      expect(refused).toMatch(/403 Forbidden|MG_ERR_AUTHZ_DENIED|forbidden/i);
      expect(drainIstiodRequests(sandbox).get('acme')).toEqual([]);
    } finally {
      await gateway.close();
    }
  });

  it(`refuses a view config that names one of the tenant's clusters, or has no istiod token to forward with`, () => {
    const original = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    const attempt = (edit: (tenant: Record<string, any>) => void): string => {
      const config = structuredClone(original);
      edit((config.tenants as Record<string, any>[])[0] ?? {});
      const file = join(mkdtempSync(join(tmpdir(), 'meshgate-view-config-')), 'meshgate.yaml');
      writeFileSync(file, stringify(config));
      try {
        loadConfig(file);
        return 'loaded';
      } catch (err) {
        return err instanceof Error ? err.message : String(err);
      }
    };
    expect(attempt((t) => (t.controlPlaneView = { cluster: 'acme-east' }))).toMatch(/controlPlaneView\.cluster.*is a cluster of this tenant/);
    expect(attempt((t) => (t.controlPlaneView = { cluster: 'acme istiod' }))).toMatch(/controlPlaneView\.cluster/);
    expect(
      attempt((t) => {
        delete (t.istiod as Record<string, any>).debug.token;
        t.debug = { authentication: ['token'] };
        (t.access as Record<string, any>).xds = [{ method: 'token' }];
        t.xds = { authentication: ['token'] };
      }),
    ).toMatch(/istiod\.debug\.token/);
  });
});
