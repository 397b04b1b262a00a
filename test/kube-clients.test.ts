/**
 * Real Kubernetes clients through meshgate to the stand-in API servers, with the kubeconfigs the
 * sandbox writes (`meshgate kubeconfig`): @kubernetes/client-node (list, watch, exec over
 * WebSocket) and the real kubectl (get, get --watch, exec and port-forward over WebSocket and
 * SPDY, auth whoami, --as).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { CoreV1Api, Exec, KubeConfig, Watch, type V1Pod, type V1Status } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { startSandbox } from '../src/sandbox/sandbox.js';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { kubeconfig } from '../src/cli/kubeconfig.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silent, tenantOf } from './helpers/sandbox.js';

const KUBECTL = '/usr/bin/kubectl';

let sandbox: Sandbox;
beforeAll(async () => {
  // Pods change every 300 ms, so that watches see events quickly.
  sandbox = await startSandbox({ dir: mkdtempSync(join(tmpdir(), 'meshgate-kube-')), portBase: 0, logger: silent(), podChangeIntervalMs: 300 });
});
afterAll(async () => {
  await sandbox.close();
});

const kubeconfigOf = (tenant: 'acme' | 'globex', cluster: string): string => {
  const path = tenantOf(sandbox, tenant).kubeconfigs[cluster];
  if (path === undefined) throw new Error(`no kubeconfig for ${tenant}/${cluster}`);
  return path;
};

function kubectl(kubeconfig: string, args: readonly string[], env: Record<string, string> = {}) {
  return promisify(execFile)(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { timeout: 20_000, env: { ...process.env, ...env } });
}

async function firstPod(kubeconfig: string): Promise<string> {
  const { stdout } = await kubectl(kubeconfig, ['get', 'pods', '-n', 'bookinfo', '-o', 'name']);
  const [pod] = stdout.trim().split('\n');
  if (!pod) throw new Error('no pods');
  return pod.replace(/^pod\//, '');
}

/** Runs a long-lived kubectl until its output matches, then returns the output and the process. */
function kubectlUntil(kubeconfig: string, args: readonly string[], pattern: RegExp, env: Record<string, string> = {}) {
  return new Promise<{ output: string; child: ChildProcess }>((resolve, reject) => {
    const child = spawn(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { env: { ...process.env, ...env } });
    let output = '';
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`kubectl ${args.join(' ')} printed no ${String(pattern)}:\n${output}`));
    }, 20_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (pattern.test(output)) {
        clearTimeout(timer);
        resolve({ output, child });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
  });
}

describe('@kubernetes/client-node through meshgate', () => {
  const client = (tenant: 'acme' | 'globex', cluster: string): KubeConfig => {
    const config = new KubeConfig();
    config.loadFromFile(kubeconfigOf(tenant, cluster));
    return config;
  };

  it('lists pods on each cluster with the tenant kubeconfig', async () => {
    for (const [tenant, cluster] of [
      ['acme', 'acme-east'],
      ['acme', 'acme-west'],
      ['globex', 'globex-main'],
    ] as const) {
      const pods = await client(tenant, cluster).makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'bookinfo' });
      expect(pods.items.length, cluster).toBeGreaterThan(0);
      expect(pods.items.every((p) => p.metadata?.namespace === 'bookinfo')).toBe(true);
    }
  });

  it('watches pods and receives MODIFIED events', async () => {
    const events: string[] = [];
    const controller = await new Watch(client('acme', 'acme-east')).watch(
      '/api/v1/namespaces/bookinfo/pods',
      {},
      (phase: string, pod: V1Pod) => events.push(`${phase} ${pod.metadata?.name ?? ''}`),
      () => undefined,
    );
    for (let i = 0; i < 100 && !events.some((e) => e.startsWith('MODIFIED')); i++) await new Promise((r) => setTimeout(r, 100));
    controller.abort();
    expect(events.filter((e) => e.startsWith('ADDED')).length).toBeGreaterThanOrEqual(3);
    expect(events.some((e) => e.startsWith('MODIFIED'))).toBe(true);
  });

  // Found by the real API server: client-node's watch() resolves when the response head arrives,
  // and a watch with nothing to report has no body for HTTP/1.1 to carry the head with.
  it('passes on the head of a watch with no events at once, over HTTP/1.1', async () => {
    let settled = false;
    const opened = new Watch(client('acme', 'acme-east')).watch('/api/v1/namespaces/no-such-namespace/pods', {}, () => undefined, () => undefined);
    void opened.then(
      () => (settled = true),
      () => (settled = true),
    );
    await vi.waitFor(() => expect(settled).toBe(true), { timeout: 10_000 });
    const controller = await opened;
    const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
    expect(metrics).toMatch(/^meshgate_kube_watches\{tenant="acme",cluster="acme-east"\} [1-9]/m);
    controller.abort();
  });

  // istiod's informers (client-go's WatchListClient) open every watch this way.
  it('carries a watch-list through: the initial events, then the initial-events-end bookmark', async () => {
    const events: { phase: string; annotations: Record<string, string> }[] = [];
    const controller = await new Watch(client('acme', 'acme-east')).watch(
      '/api/v1/namespaces/bookinfo/pods',
      { sendInitialEvents: true, allowWatchBookmarks: true, resourceVersionMatch: 'NotOlderThan' },
      (phase: string, pod: V1Pod) => events.push({ phase, annotations: pod.metadata?.annotations ?? {} }),
      () => undefined,
    );
    await vi.waitFor(() => expect(events.map((e) => e.phase)).toContain('BOOKMARK'), { timeout: 10_000 });
    controller.abort();
    const bookmark = events.findIndex((e) => e.phase === 'BOOKMARK');
    expect(events.slice(0, bookmark).map((e) => e.phase)).toEqual(['ADDED', 'ADDED', 'ADDED']);
    expect(events[bookmark]?.annotations['k8s.io/initial-events-end']).toBe('true');
  });

  it('runs exec over WebSocket', async () => {
    const config = client('acme', 'acme-east');
    const pod = await firstPod(kubeconfigOf('acme', 'acme-east'));
    const stdout = new PassThrough();
    let out = '';
    stdout.on('data', (c: Buffer) => (out += c.toString()));
    const status = await new Promise<V1Status>((resolve, reject) => {
      new Exec(config).exec('bookinfo', pod, 'productpage', ['echo', 'hello', 'from', 'client-node'], stdout, null, null, false, resolve).catch(reject);
    });
    expect(status.status).toBe('Success');
    expect(out).toBe('hello from client-node\n');
  });
});

describe('kubectl through meshgate', () => {
  it('gets pods, as a table and by name, over HTTP/2', async () => {
    const config = kubeconfigOf('acme', 'acme-east');
    const table = await kubectl(config, ['get', 'pods', '-n', 'bookinfo']);
    expect(table.stdout).toMatch(/^NAME\s+/);
    expect(table.stdout).toMatch(/^productpage-v1-\S+/m);
    const named = await kubectl(config, ['get', 'pods', '-n', 'bookinfo', '-o', 'name', '-v=6']);
    expect(named.stdout.trim().split('\n').every((l) => l.startsWith('pod/'))).toBe(true);
    expect(named.stderr).toMatch(/GET https:\/\/127\.0\.0\.1:\d+\/clusters\/acme-east\/api\/v1\/namespaces\/bookinfo\/pods\?limit=500 200 OK/);
    const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
    expect(metrics).toMatch(/^meshgate_kube_requests_total\{tenant="acme",cluster="acme-east",verb="list",code="200"\} [1-9]\d*$/m);
    expect(metrics).toMatch(/^meshgate_kube_upstream_latency_seconds_count\{tenant="acme",cluster="acme-east"\} [1-9]\d*$/m);
    // Every one of them was a kube plane request, recorded as such.
    expect(metrics).toMatch(/^meshgate_http_requests_total\{tenant="acme",plane="kube",outcome="OK"\} [1-9]\d*$/m);
  });

  it('follows a watch (get --watch) until the pod changes', async () => {
    const { output, child } = await kubectlUntil(
      kubeconfigOf('globex', 'globex-main'),
      ['get', 'pods', '-n', 'bookinfo', '--watch', '--output-watch-events', '-o', 'json'],
      /"type":\s*"MODIFIED"/,
    );
    child.kill();
    expect(output).toMatch(/^\{"type":"ADDED","object":\{"apiVersion":"v1","kind":"Pod"/m);
    expect(output).toMatch(/^\{"type":"MODIFIED","object":\{"apiVersion":"v1","kind":"Pod"/m);
  });

  it.each([
    ['WebSocket', {}],
    ['SPDY/3.1', { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' }],
  ])('runs exec over %s', async (_name, env) => {
    const config = kubeconfigOf('acme', 'acme-west');
    const pod = await firstPod(config);
    const { stdout } = await kubectl(config, ['exec', '-n', 'bookinfo', pod, '--', 'echo', 'hello', 'world'], env);
    expect(stdout).toBe('hello world\n');
    const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
    expect(metrics).toMatch(/^meshgate_kube_requests_total\{tenant="acme",cluster="acme-west",verb="create",code="101"\} \d+$/m);
  });

  it.each([
    ['SPDY over WebSocket', {}, 'websocket'],
    ['SPDY/3.1', { KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' }, 'spdy'],
  ])('forwards a port over %s', async (_name, env, protocol) => {
    const config = kubeconfigOf('acme', 'acme-east');
    const pod = await firstPod(config);
    const { output, child } = await kubectlUntil(config, ['port-forward', '-n', 'bookinfo', `pod/${pod}`, ':9080'], /Forwarding from 127\.0\.0\.1:(\d+)/, env);
    try {
      const port = Number(/Forwarding from 127\.0\.0\.1:(\d+)/.exec(output)?.[1]);
      const echoed = await new Promise<string>((resolve, reject) => {
        const socket = connect(port, '127.0.0.1', () => socket.write('ping through meshgate\n'));
        let got = '';
        socket.on('data', (c: Buffer) => {
          got += c.toString();
          if (got.includes('\n')) {
            socket.end();
            resolve(got);
          }
        });
        socket.on('error', reject);
      });
      expect(echoed).toBe('ping through meshgate\n');
      const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
      // kubectl falls back to SPDY when a WebSocket upgrade fails: the one that carried it is asserted.
      expect(metrics).toMatch(new RegExp(`^meshgate_kube_tunnels\\{tenant="acme",cluster="acme-east",protocol="${protocol}"\\} 1$`, 'm'));
    } finally {
      child.kill();
    }
  });

  it('shows who the API server sees (auth whoami): the caller, as meshgate impersonates it', async () => {
    const acme = JSON.parse((await kubectl(kubeconfigOf('acme', 'acme-east'), ['auth', 'whoami', '-o', 'json'])).stdout) as Whoami;
    expect(acme.status.userInfo).toMatchObject({ username: 'acme-mesh-client', groups: ['acme', 'system:authenticated'] });
    const globex = JSON.parse((await kubectl(kubeconfigOf('globex', 'globex-main'), ['auth', 'whoami', '-o', 'json'])).stdout) as Whoami;
    expect(globex.status.userInfo.username).toBe('system:serviceaccount:istio-system:istiod');
  });

  it('never lets --as system:admin --as-group system:masters reach the API server as that user', async () => {
    for (const [tenant, cluster, expected] of [
      ['acme', 'acme-east', 'acme-mesh-client'],
      ['acme', 'acme-west', 'acme-mesh-client'],
      ['globex', 'globex-main', 'system:serviceaccount:istio-system:istiod'],
    ] as const) {
      const before = sandbox.kubeApiServers.get(cluster)?.requests.length ?? 0;
      const { stdout } = await kubectl(kubeconfigOf(tenant, cluster), ['auth', 'whoami', '-o', 'json', '--as', 'system:admin', '--as-group', 'system:masters']);
      const seen = JSON.parse(stdout) as Whoami;
      expect(seen.status.userInfo.username, cluster).toBe(expected);
      expect(seen.status.userInfo.groups, cluster).not.toContain('system:masters');
      const requests = sandbox.kubeApiServers.get(cluster)?.requests.slice(before) ?? [];
      expect(requests.length).toBeGreaterThan(0);
      for (const request of requests) {
        expect(request.user?.username).not.toBe('system:admin');
        expect(request.user?.groups ?? []).not.toContain('system:masters');
      }
    }
  });

  it('prints a tenant rule denial as the API server would', async () => {
    // The kiali profile may read pods but not delete them.
    const acme = tenantOf(sandbox, 'acme');
    const file = join(sandbox.info.dir, 'kubeconfigs', 'kiali-acme-east.yaml');
    writeFileSync(
      file,
      kubeconfig({
        tenant: 'acme',
        cluster: 'acme-east',
        host: acme.host,
        port: sandbox.info.listeners.api.port,
        connectTo: '127.0.0.1',
        ca: readFileSync(sandbox.info.caFile, 'utf8'),
        token: await kialiToken(),
      }),
    );
    expect((await kubectl(file, ['get', 'pods', '-n', 'bookinfo', '-o', 'name'])).stdout).toMatch(/^pod\//);
    const denied = await kubectl(file, ['delete', 'pod', '-n', 'bookinfo', 'x']).then(
      () => ({ stderr: 'kubectl delete succeeded' }),
      (err: unknown) => err as { stderr: string },
    );
    expect(denied.stderr).toMatch(
      /^Error from server \(Forbidden\): MG_ERR_KUBE_FORBIDDEN: pods "x" is forbidden: User "system:serviceaccount:istio-system:kiali" cannot delete resource "pods"/m,
    );
  });
});

/** Kiali's service-account token on acme-east, with the API server's audience. */
async function kialiToken(): Promise<string> {
  const issuer = sandbox.issuers.get('acme-east');
  if (!issuer) throw new Error('no acme-east issuer');
  return issuer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: issuer.issuer });
}

interface Whoami {
  status: { userInfo: { username: string; groups: string[] } };
}
