/**
 * `meshgate agent` end to end (docs/agent.md): a cluster `via: agent`, whose stand-in API server
 * meshgate has no address for, reached through the agent's tunnel by real clients (kubectl,
 * @kubernetes/client-node, raw HTTP/1.1 and HTTP/2): a GET, watches, exec and port-forward. The
 * agent runs in-process, and as the real CLI process for what needs a process to kill: an agent
 * restart during a watch (the watch ends cleanly, requests meanwhile get a 503 with a stable code,
 * the agent comes back and a new watch works) and a drain on SIGTERM.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { Exec, KubeConfig, Watch, type V1Pod, type V1Status } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startAgent, type Agent } from '../src/agent/agent.js';
import { kubeconfig } from '../src/cli/kubeconfig.js';
import { startSandbox, type Sandbox } from '../src/sandbox/sandbox.js';
import { start, type Running } from './helpers/cli.js';
import { silent, tenantOf } from './helpers/sandbox.js';
import { agentConfig, startAgentGateway, tenantCertificate, type AgentGateway } from './helpers/agent.js';

const KUBECTL = '/usr/bin/kubectl';

let sandbox: Sandbox;
let subject: AgentGateway;
let dir: string;
let agentFiles: { cert: string; key: string };
let kubeconfigFile: string;

beforeAll(async () => {
  // Pods change every 300 ms, so that watches see events quickly.
  sandbox = await startSandbox({ dir: mkdtempSync(join(tmpdir(), 'meshgate-agent-')), portBase: 0, logger: silent(), podChangeIntervalMs: 300 });
  dir = mkdtempSync(join(tmpdir(), 'meshgate-agent-files-'));
  subject = await startAgentGateway(sandbox, agentConfig(sandbox, dir));
  const acme = tenantOf(sandbox, 'acme');
  agentFiles = await tenantCertificate(sandbox, dir, 'acme', 'system:meshgate-agent:acme-east');
  kubeconfigFile = join(dir, 'acme-east.yaml');
  writeFileSync(
    kubeconfigFile,
    kubeconfig({
      tenant: 'acme',
      cluster: 'acme-east',
      host: acme.host,
      port: subject.port('api'),
      connectTo: '127.0.0.1',
      ca: readFileSync(sandbox.info.caFile, 'utf8'),
      clientCert: { cert: readFileSync(acme.clientCert, 'utf8'), key: readFileSync(acme.clientKey, 'utf8') },
    }),
  );
});
afterAll(async () => {
  await subject.close();
  await sandbox.close();
});

const apiServerPort = (cluster: string): number => Number(new URL(sandbox.kubeApiServers.get(cluster)?.url ?? '').port);

function inProcessAgent(): Agent {
  return startAgent({
    server: `wss://127.0.0.1:${subject.port('api')}`,
    serverName: tenantOf(sandbox, 'acme').host,
    ca: readFileSync(sandbox.info.caFile, 'utf8'),
    cert: readFileSync(agentFiles.cert, 'utf8'),
    key: readFileSync(agentFiles.key, 'utf8'),
    cluster: 'acme-east',
    apiServer: { host: '127.0.0.1', port: apiServerPort('acme-east') },
    logger: silent(),
    backoff: () => 100,
  });
}

function cliAgent(): Running {
  return start([
    'agent',
    '--server',
    `wss://127.0.0.1:${subject.port('api')}`,
    '--server-name',
    tenantOf(sandbox, 'acme').host,
    '--cluster',
    'acme-east',
    '--ca',
    sandbox.info.caFile,
    '--cert',
    agentFiles.cert,
    '--key',
    agentFiles.key,
    '--api-server',
    `127.0.0.1:${apiServerPort('acme-east')}`,
    '--drain-timeout',
    '2',
  ]);
}

function kubectl(args: readonly string[], env: Record<string, string> = {}) {
  return promisify(execFile)(KUBECTL, ['--kubeconfig', kubeconfigFile, ...args], { timeout: 20_000, env: { ...process.env, ...env } });
}

const tls = () => {
  const acme = tenantOf(sandbox, 'acme');
  return { ca: readFileSync(sandbox.info.caFile, 'utf8'), cert: readFileSync(acme.clientCert, 'utf8'), key: readFileSync(acme.clientKey, 'utf8'), servername: acme.host };
};

/** A GET on acme-east through meshgate, over HTTP/1.1: status and body. */
function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { ...tls(), host: '127.0.0.1', port: subject.port('api'), path: `/clusters/acme-east${path}`, headers: { host: tls().servername }, agent: false },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** A watch over HTTP/1.1: its events as they come, and how it ended. */
function h1Watch(path: string) {
  const events: string[] = [];
  const ended = new Promise<{ complete: boolean }>((resolve, reject) => {
    const req = httpsRequest(
      { ...tls(), host: '127.0.0.1', port: subject.port('api'), path: `/clusters/acme-east${path}`, headers: { host: tls().servername }, agent: false },
      (res) => {
        res.on('data', (c: Buffer) => events.push(...c.toString().split('\n').filter(Boolean)));
        res.on('error', () => undefined);
        res.on('close', () => resolve({ complete: res.complete }));
      },
    );
    req.on('error', reject);
    req.end();
  });
  return { events, ended };
}

/** A watch over HTTP/2: its events, and whether its stream ended with END_STREAM (not a reset). */
function h2Watch(path: string) {
  const events: string[] = [];
  const session = http2Connect(`https://127.0.0.1:${subject.port('api')}`, tls());
  session.on('error', () => undefined);
  const stream = session.request({ [h2.HTTP2_HEADER_PATH]: `/clusters/acme-east${path}`, [h2.HTTP2_HEADER_AUTHORITY]: tls().servername });
  let endedCleanly = false;
  stream.on('data', (c: Buffer) => events.push(...c.toString().split('\n').filter(Boolean)));
  stream.on('end', () => (endedCleanly = true));
  stream.on('error', () => undefined);
  const ended = new Promise<{ clean: boolean; rstCode: number }>((resolve) =>
    stream.on('close', () => {
      session.close();
      resolve({ clean: endedCleanly, rstCode: stream.rstCode });
    }),
  );
  return { events, ended };
}

const metrics = async (): Promise<string> => subject.gateway.metrics.registry.metrics();
const codeOf = (body: string): string => /^(MG_ERR_[A-Z_]+):/.exec((JSON.parse(body) as { message: string }).message)?.[1] ?? '';

describe('an agent cluster, through an in-process agent', () => {
  it('answers 503 with a stable code while no agent is connected', async () => {
    const res = await get('/api/v1/namespaces/bookinfo/pods');
    expect(res.status).toBe(503);
    expect(JSON.parse(res.body)).toMatchObject({ kind: 'Status', reason: 'ServiceUnavailable', code: 503 });
    expect(codeOf(res.body)).toBe('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE');
    expect(await metrics()).toMatch(/^meshgate_kube_requests_total\{tenant="acme",cluster="acme-east",verb="list",code="503"\} [1-9]/m);
  });

  it('carries kubectl and @kubernetes/client-node through the tunnel: get, watch, exec, port-forward', async () => {
    const agent = inProcessAgent();
    try {
      await agent.ready();
      await vi.waitFor(async () => expect(await metrics()).toMatch(/^meshgate_agent_tunnels\{tenant="acme",cluster="acme-east"\} 1$/m));
      const apiServer = sandbox.kubeApiServers.get('acme-east');
      apiServer?.requests.splice(0);

      // A GET (kubectl, over HTTP/2 to meshgate and from meshgate to the API server).
      const { stdout } = await kubectl(['get', 'pods', '-n', 'bookinfo', '-o', 'name']);
      const pod = stdout.trim().split('\n')[0]?.replace(/^pod\//, '') ?? '';
      expect(pod).toMatch(/^productpage-v1-/);
      // The API server saw meshgate's own credential and the caller as impersonated, as for a direct cluster.
      const seen = apiServer?.requests.find((r) => r.url.startsWith('/api/v1/namespaces/bookinfo/pods'));
      expect(seen?.user?.username).toBe('acme-mesh-client');

      // A watch (client-node).
      const config = new KubeConfig();
      config.loadFromFile(kubeconfigFile);
      const events: string[] = [];
      const controller = await new Watch(config).watch('/api/v1/namespaces/bookinfo/pods', {}, (phase: string, p: V1Pod) => events.push(`${phase} ${p.metadata?.name ?? ''}`), () => undefined);
      await vi.waitFor(() => expect(events.some((e) => e.startsWith('MODIFIED'))).toBe(true), { timeout: 10_000 });
      controller.abort();

      // exec over WebSocket (client-node), and over SPDY/3.1 and WebSocket (kubectl).
      const out = new PassThrough();
      let text = '';
      out.on('data', (c: Buffer) => (text += c.toString()));
      const status = await new Promise<V1Status>((resolve, reject) => {
        new Exec(config).exec('bookinfo', pod, 'productpage', ['echo', 'through', 'the', 'agent'], out, null, null, false, resolve).catch(reject);
      });
      expect(status.status).toBe('Success');
      expect(text).toBe('through the agent\n');
      for (const env of [{}, { KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' }] as Record<string, string>[]) {
        const exec = await kubectl(['exec', '-n', 'bookinfo', pod, '--', 'echo', 'hello', 'agent'], env);
        expect(exec.stdout).toBe('hello agent\n');
      }

      // port-forward (kubectl, SPDY over WebSocket).
      const forward = spawn(KUBECTL, ['--kubeconfig', kubeconfigFile, 'port-forward', '-n', 'bookinfo', `pod/${pod}`, ':9080']);
      try {
        const port = await new Promise<number>((resolve, reject) => {
          let output = '';
          forward.stdout.on('data', (c: Buffer) => {
            output += c.toString();
            const match = /Forwarding from 127\.0\.0\.1:(\d+)/.exec(output);
            if (match) resolve(Number(match[1]));
          });
          forward.on('exit', () => reject(new Error(`kubectl port-forward exited: ${output}`)));
        });
        const echoed = await new Promise<string>((resolve, reject) => {
          const socket = connect(port, '127.0.0.1', () => socket.write('ping through the agent\n'));
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
        expect(echoed).toBe('ping through the agent\n');
      } finally {
        forward.kill();
      }

      const text2 = await metrics();
      expect(text2).toMatch(/^meshgate_kube_requests_total\{tenant="acme",cluster="acme-east",verb="create",code="101"\} [1-9]/m);
      expect(text2).toMatch(/^meshgate_agent_registrations_total\{tenant="acme",outcome="OK"\} [1-9]/m);
      expect(text2).toMatch(/^meshgate_agent_streams\{tenant="acme",cluster="acme-east"\} \d+$/m);
    } finally {
      await agent.close(1_000);
    }
    await vi.waitFor(async () => expect(await metrics()).toMatch(/^meshgate_agent_tunnels\{tenant="acme",cluster="acme-east"\} 0$/m));
  }, 60_000);
});

describe('the agent as a process', () => {
  it('restarted during watches: the watches end cleanly, requests meanwhile get 503, and the agent comes back', async () => {
    const first = cliAgent();
    let second: Running | undefined;
    try {
      await first.waitFor(/"msg":"tunnel up"/);
      const path = '/api/v1/namespaces/bookinfo/pods?watch=1';
      const overH1 = h1Watch(path);
      const overH2 = h2Watch(path);
      const config = new KubeConfig();
      config.loadFromFile(kubeconfigFile);
      let doneWith: unknown = 'not yet';
      const clientEvents: string[] = [];
      await new Watch(config).watch('/api/v1/namespaces/bookinfo/pods', {}, (phase: string) => clientEvents.push(phase), (err: unknown) => (doneWith = err));
      const getWatch = spawn(KUBECTL, ['--kubeconfig', kubeconfigFile, 'get', 'pods', '-n', 'bookinfo', '--watch', '-o', 'name']);
      let getWatchOutput = '';
      getWatch.stdout.on('data', (c: Buffer) => (getWatchOutput += c.toString()));
      const getWatchExit = new Promise<number | null>((resolve) => getWatch.on('exit', (code) => resolve(code)));
      await vi.waitFor(
        () => {
          expect(overH1.events.length).toBeGreaterThan(0);
          expect(overH2.events.length).toBeGreaterThan(0);
          expect(clientEvents.length).toBeGreaterThan(0);
          expect(getWatchOutput).toMatch(/^pod\//m);
        },
        { timeout: 10_000 },
      );

      // The agent dies at once: no drain, no GOAWAY, its connections simply gone.
      expect(await first.stop('SIGKILL')).toBeNull();
      // Every watch ends, and ends as a watch does at the API server's own timeout: completely.
      expect(await overH1.ended).toEqual({ complete: true });
      expect(await overH2.ended).toEqual({ clean: true, rstCode: h2.NGHTTP2_NO_ERROR });
      await vi.waitFor(() => expect(doneWith).toBeNull());
      // kubectl get --watch ends too, with success, as when the API server ends a watch.
      expect(await getWatchExit).toBe(0);

      const meanwhile = await get('/api/v1/namespaces/bookinfo/pods');
      expect(meanwhile.status).toBe(503);
      expect(codeOf(meanwhile.body)).toBe('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE');
      await expect(kubectl(['get', 'pods', '-n', 'bookinfo'])).rejects.toThrow(/MG_ERR_UPSTREAM_AGENT_UNAVAILABLE/);
      const logged = subject.lines.filter((l) => l.msg === 'request' && l.plane === 'kube' && l.outcome === 'MG_ERR_UPSTREAM_AGENT_UNAVAILABLE');
      expect(logged.length).toBeGreaterThan(0);

      second = cliAgent();
      await second.waitFor(/"msg":"tunnel up"/);
      const again = h1Watch('/api/v1/namespaces/bookinfo/pods?watch=1&timeoutSeconds=2');
      expect(await again.ended).toEqual({ complete: true });
      expect(again.events.some((e) => e.includes('"MODIFIED"'))).toBe(true);
      expect((await get('/api/v1/namespaces/bookinfo/pods')).status).toBe(200);

      // SIGTERM drains: GOAWAY on the tunnel, then the process ends on its own.
      expect(await second.stop('SIGTERM')).toBe(0);
      expect(second.stdout()).toMatch(/"msg":"agent draining"/);
      expect(second.stdout()).toMatch(/"msg":"stopped"/);
      second = undefined;
    } finally {
      first.child.kill('SIGKILL');
      second?.child.kill('SIGKILL');
    }
  }, 60_000);
});
