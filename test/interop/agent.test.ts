/**
 * `meshgate agent` against a real kube-apiserver (docs/agent.md): a cluster `via: agent`, of which
 * meshgate knows no address, only the API server's CA and a name in its serving certificate. The
 * real `meshgate agent` process dials out to meshgate and relays to the API server; the real
 * kubectl, with a real service-account token of the cluster (`credentials: passthrough`), lists,
 * creates, reads and watches through meshgate. The agent is killed during a watch and restarted,
 * and meshgate is restarted under a running agent. The API server's audit log says who came.
 */
import { execFile, spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { kubeconfig } from '../../src/cli/kubeconfig.js';
import { loadConfig } from '../../src/config/load.js';
import { buildGateway, type Gateway } from '../../src/gateway/build.js';
import { createLogger } from '../../src/observability/logger.js';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority } from '../../src/pki/certificates.js';
import { writeFile } from '../../src/sandbox/pki.js';
import { startEtcd, startKubeCluster, type KubeCluster } from './harness/kube.js';
import { binary, freePort, hasBinary, start, stopAll, waitFor, type Program } from './harness/processes.js';

const CLI = resolve(import.meta.dirname, '../../dist/cli/main.js');
const HOST = 'tunnel.meshgate.test';
const TENANT = 'tunnel';
const CLUSTER = 'tunnel-east';
/** A name in the API server's serving certificate (harness/kube.ts), and not the address the agent dials. */
const SERVER_NAME = 'kubernetes.default.svc';
const NAMESPACE = 'team';
const CALLER = `system:serviceaccount:${NAMESPACE}:dev`;

let dir: string;
let cluster: KubeCluster;
let meshgateCa: CertificateAuthority;
let configFile: string;
let callerToken: string;
let gateway: Gateway | undefined;
let port: number;
let kubeconfigFile: string;
let agentCert: { cert: string; key: string };
const meshgateLog: Record<string, unknown>[] = [];

beforeAll(async () => {
  for (const program of ['etcd', 'kube-apiserver', 'kubectl']) {
    if (!hasBinary(program)) throw new Error(`${binary(program)} is missing: run interop/build.sh (npm run test:interop does)`);
  }
  dir = mkdtempSync(join(tmpdir(), 'meshgate-interop-agent-'));
  const etcd = await startEtcd(dir);
  cluster = await startKubeCluster({ id: CLUSTER, dir, etcd });

  // The caller: a service account of the cluster, allowed by the cluster's RBAC to list
  // namespaces and to work with ConfigMaps in its namespace.
  await cluster.kubectl(['create', 'namespace', NAMESPACE]);
  await cluster.apply([
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'dev' },
      rules: [
        { apiGroups: [''], resources: ['namespaces'], verbs: ['get', 'list'] },
        { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list', 'watch', 'create'] },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'dev' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'dev' },
      subjects: [{ kind: 'ServiceAccount', name: 'dev', namespace: NAMESPACE }],
    },
  ]);
  callerToken = await cluster.token(NAMESPACE, 'dev', { duration: '1h' });

  meshgateCa = await createCertificateAuthority('meshgate interop CA');
  const clientCa = await createCertificateAuthority(`${TENANT} clients CA`);
  const home = mkdtempSync(join(dir, 'meshgate-'));
  const file = (name: string, content: string, secret = false): string => writeFile(join(home, name), content, secret);
  const server = await issueCertificate(meshgateCa, { commonName: HOST, dnsNames: [HOST], usage: 'server' });
  const agent = await issueCertificate(clientCa, { commonName: `system:meshgate-agent:${CLUSTER}`, organization: TENANT, usage: 'client' });
  agentCert = { cert: file('agent.pem', agent.cert), key: file('agent-key.pem', agent.key, true) };
  port = await freePort();
  const config = {
    admin: { host: '127.0.0.1', port: 0 },
    security: { allowLoopbackUpstreams: true },
    listeners: { api: { host: '127.0.0.1', port, planes: ['kube', 'agent'] } },
    tenants: [
      {
        id: TENANT,
        hosts: [HOST],
        tls: { cert: file('server.pem', server.cert), key: file('server-key.pem', server.key, true), clientCA: file('clients-ca.pem', clientCa.cert) },
        istiod: {},
        clusters: [
          {
            id: CLUSTER,
            issuer: cluster.issuer,
            // The keys from a file: their endpoint is the API server, which meshgate cannot reach.
            jwks: { file: file('jwks.json', await cluster.kubectl(['get', '--raw', '/openid/v1/jwks'])) },
            // No url: only the tunnel leads there. TLS inside it is meshgate's, to this name and CA.
            apiServer: { via: 'agent', serverName: SERVER_NAME, ca: cluster.caFile, credentials: 'passthrough' },
          },
        ],
        kube: { authentication: ['token'] },
        access: {
          kube: [
            {
              subject: CALLER,
              allow: [
                { verbs: ['get', 'list'], apiGroups: [''], resources: ['namespaces'] },
                { verbs: ['get', 'list', 'watch', 'create'], apiGroups: [''], resources: ['configmaps'], namespaces: [NAMESPACE] },
                { verbs: ['get'], nonResourceURLs: ['/api', '/api/*', '/apis', '/apis/*', '/version', '/openapi/*'] },
              ],
            },
          ],
          agent: [{ cluster: CLUSTER, subject: `system:meshgate-agent:${CLUSTER}` }],
        },
      },
    ],
  };
  configFile = join(home, 'meshgate.yaml');
  writeFileSync(configFile, stringify(config));
  kubeconfigFile = join(dir, 'caller.kubeconfig');
  writeFileSync(kubeconfigFile, kubeconfig({ tenant: TENANT, cluster: CLUSTER, host: HOST, port, connectTo: '127.0.0.1', ca: meshgateCa.cert, token: callerToken }), {
    mode: 0o600,
  });
  await startMeshgate();
}, 600_000);

afterAll(async () => {
  await gateway?.close(0);
  await stopAll();
});

/** meshgate in this process, on the same port each time; its log lines are kept, and written to meshgate.log. */
async function startMeshgate(): Promise<void> {
  const logFile = join(dir, 'meshgate.log');
  const logger = createLogger('info', {
    write(line: string) {
      appendFileSync(logFile, line);
      meshgateLog.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  gateway = buildGateway(loadConfig(configFile), { logger });
  await gateway.listen();
}

let agents = 0;
/** The real `meshgate agent` process: meshgate at 127.0.0.1 with the tenant's host as TLS name, the API server at its address. */
function startAgent(): Program {
  agents += 1;
  return start(`meshgate-agent-${agents}`, process.execPath, {
    cwd: dir,
    logDir: dir,
    args: [
      CLI,
      'agent',
      '--server', `wss://127.0.0.1:${port}`,
      '--server-name', HOST,
      '--cluster', CLUSTER,
      '--ca', writeFile(join(dir, 'meshgate-ca.pem'), meshgateCa.cert),
      '--cert', agentCert.cert,
      '--key', agentCert.key,
      '--api-server', `127.0.0.1:${cluster.port}`,
      '--drain-timeout', '2',
    ],
  });
}

const tunnelsUp = (agent: Program): number => agent.log().match(/"msg":"tunnel up"/g)?.length ?? 0;

interface Result {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * The real kubectl through meshgate, with the caller's token; its discovery cache in the run's
 * directory (empty at the first test, then warm), not in $HOME.
 */
const kubectlArgs = (args: readonly string[]): string[] => ['--kubeconfig', kubeconfigFile, '--cache-dir', join(dir, 'kube-cache'), ...args];
function kubectl(args: readonly string[]): Promise<Result> {
  return new Promise((done) => {
    execFile(binary('kubectl'), kubectlArgs(args), { timeout: 30_000 }, (err, stdout, stderr) =>
      done({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** `kubectl get -w` through meshgate: its output so far, and how it exited (undefined while it runs). */
function watch(args: readonly string[]): { output: () => string; exit: () => { code: number | null } | undefined; kill: () => void } {
  const child = spawn(binary('kubectl'), kubectlArgs([...args, '--watch', '-o', 'name']));
  let output = '';
  let exit: { code: number | null } | undefined;
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  child.on('exit', (code) => (exit = { code }));
  return { output: () => output, exit: () => exit, kill: () => child.kill('SIGKILL') };
}

/** One GET through meshgate with the caller's token, for the Status body that kubectl only summarizes. */
function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((done, fail) => {
    const req = request(
      { host: '127.0.0.1', port, path: `/clusters/${CLUSTER}${path}`, servername: HOST, ca: meshgateCa.cert, agent: false, headers: { host: HOST, authorization: `Bearer ${callerToken}` } },
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

const statusCode = (body: string): string => /^(MG_ERR_[A-Z_]+):/.exec((JSON.parse(body) as { message: string }).message)?.[1] ?? '';

/** The caller's requests the API server served, from its audit log (a watch is there from its ResponseStarted). */
const callerEvents = () => cluster.audit().filter((e) => e.user.username === CALLER);

/** The admin makes a ConfigMap straight on the API server, not through meshgate. */
const adminCreates = (name: string): Promise<string> => cluster.kubectl(['create', 'configmap', name, '-n', NAMESPACE, '--from-literal', `by=admin`]);

describe('a cluster via: agent, with the real kube-apiserver and kubectl', () => {
  it('answers 503 MG_ERR_UPSTREAM_AGENT_UNAVAILABLE before any agent connects', async () => {
    // kubectl's discovery (a fresh cache) gets the 503 first, and client-go's discovery client
    // prints only its reason, not the Status message: as for any API server answering 503.
    const result = await kubectl(['get', 'namespaces', '-o', 'name']);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('Error from server (ServiceUnavailable): the server is currently unable to handle the request');
    // A plain request prints the Status message, code first.
    const raw = await kubectl(['get', '--raw', '/api/v1/namespaces']);
    expect(raw.code).not.toBe(0);
    expect(raw.stderr).toContain('Error from server (ServiceUnavailable): MG_ERR_UPSTREAM_AGENT_UNAVAILABLE: ');
    const res = await get('/api/v1/namespaces');
    expect(res.status).toBe(503);
    expect(statusCode(res.body)).toBe('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE');
    // Nothing of the caller's reached the API server.
    expect(callerEvents()).toEqual([]);
  });

  it('through the real agent: kubectl lists, creates, reads and watches, as the caller, in the audit log', async () => {
    const agent = startAgent();
    try {
      await waitFor('the agent tunnel up', () => (tunnelsUp(agent) > 0 ? true : undefined), { program: agent });

      const namespaces = await kubectl(['get', 'namespaces', '-o', 'name']);
      expect(namespaces.stderr).toBe('');
      expect(namespaces.stdout.split('\n')).toEqual(expect.arrayContaining(['namespace/default', 'namespace/kube-system', `namespace/${NAMESPACE}`]));

      const created = await kubectl(['create', 'configmap', 'through-agent', '-n', NAMESPACE, '--from-literal', 'hello=tunnel']);
      expect(created.stderr).toBe('');
      expect(created.stdout.trim()).toBe('configmap/through-agent created');
      const read = await kubectl(['get', 'configmap', 'through-agent', '-n', NAMESPACE, '-o', 'jsonpath={.data.hello}']);
      expect(read.stdout).toBe('tunnel');
      // The admin, straight on the API server, sees what came through the tunnel.
      expect((await cluster.kubectl(['get', 'configmap', 'through-agent', '-n', NAMESPACE, '-o', 'jsonpath={.data.hello}'])).trim()).toBe('tunnel');

      // A watch through meshgate sees what the admin makes directly on the API server.
      const watching = watch(['get', 'configmaps', '-n', NAMESPACE]);
      try {
        await waitFor('the watch to list through-agent', () => (watching.output().includes('configmap/through-agent') ? true : undefined));
        await adminCreates('by-admin-1');
        await waitFor('the watch to see by-admin-1', () => (watching.output().includes('configmap/by-admin-1') ? true : undefined));
      } finally {
        watching.kill();
      }

      // The API server served each of them to the caller's own account (passthrough: its token,
      // carried inside meshgate's TLS through the tunnel), and refused none.
      const events = callerEvents();
      const did = (verb: string, resource: string, name?: string) =>
        events.some((e) => e.verb === verb && e.objectRef?.resource === resource && (name === undefined || e.objectRef.name === name) && e.responseStatus?.code === (verb === 'create' ? 201 : 200));
      expect(did('list', 'namespaces')).toBe(true);
      expect(did('create', 'configmaps', 'through-agent')).toBe(true);
      expect(did('get', 'configmaps', 'through-agent')).toBe(true);
      expect(did('watch', 'configmaps')).toBe(true);
      expect(events.every((e) => e.userAgent?.startsWith('kubectl/') === true)).toBe(true);
      expect(events.filter((e) => (e.responseStatus?.code ?? 0) >= 400)).toEqual([]);
      expect(events.some((e) => e.impersonatedUser !== undefined)).toBe(false);
    } finally {
      await agent.stop();
    }
  });

  it('SIGKILL of the agent during a watch: kubectl ends, requests get 503, a restarted agent serves a new watch', async () => {
    const first = startAgent();
    let second: Program | undefined;
    try {
      await waitFor('the first agent tunnel up', () => (tunnelsUp(first) > 0 ? true : undefined), { program: first });
      const before = watch(['get', 'configmaps', '-n', NAMESPACE]);
      await waitFor('the watch to list through-agent', () => (before.output().includes('configmap/through-agent') ? true : undefined));
      await adminCreates('by-admin-2');
      await waitFor('the watch to see by-admin-2', () => (before.output().includes('configmap/by-admin-2') ? true : undefined));

      // The agent dies at once: no drain, no GOAWAY.
      first.child.kill('SIGKILL');
      await first.exited;
      // kubectl's watch ends (it does not hang), as when the API server ends a watch.
      const exit = await waitFor("kubectl's watch to end", () => before.exit(), { timeoutMs: 20_000 });
      expect(exit, before.output()).toEqual({ code: 0 });

      const meanwhile = await get(`/api/v1/namespaces/${NAMESPACE}/configmaps`);
      expect(meanwhile.status).toBe(503);
      expect(statusCode(meanwhile.body)).toBe('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE');
      // kubectl, its discovery cached by now, prints the code.
      const refused = await kubectl(['get', 'configmaps', '-n', NAMESPACE, '-o', 'name']);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('Error from server (ServiceUnavailable): MG_ERR_UPSTREAM_AGENT_UNAVAILABLE: ');
      expect(meshgateLog.some((l) => l.plane === 'kube' && l.outcome === 'MG_ERR_UPSTREAM_AGENT_UNAVAILABLE')).toBe(true);

      const restarted = startAgent();
      second = restarted;
      await waitFor('the restarted agent tunnel up', () => (tunnelsUp(restarted) > 0 ? true : undefined), { program: restarted });
      const after = watch(['get', 'configmaps', '-n', NAMESPACE]);
      try {
        await waitFor('the new watch to list by-admin-2', () => (after.output().includes('configmap/by-admin-2') ? true : undefined));
        await adminCreates('by-admin-3');
        await waitFor('the new watch to see by-admin-3', () => (after.output().includes('configmap/by-admin-3') ? true : undefined));
      } finally {
        after.kill();
      }
      // Three watches reached the API server as the caller: the previous test's, and this test's two.
      expect(callerEvents().filter((e) => e.verb === 'watch' && e.objectRef?.resource === 'configmaps' && e.stage === 'ResponseStarted')).toHaveLength(3);

      // SIGTERM drains and the process ends on its own.
      await restarted.stop();
      expect(restarted.child.exitCode).toBe(0);
      expect(restarted.log()).toMatch(/"msg":"stopped"/);
    } finally {
      first.child.kill('SIGKILL');
      second?.child.kill('SIGKILL');
    }
  });

  it('meshgate restarted under a running agent: the agent redials with backoff, and requests work again', async () => {
    const agent = startAgent();
    try {
      await waitFor('the agent tunnel up', () => (tunnelsUp(agent) > 0 ? true : undefined), { program: agent });
      expect((await kubectl(['get', 'configmap', 'through-agent', '-n', NAMESPACE, '-o', 'name'])).stdout.trim()).toBe('configmap/through-agent');

      await gateway?.close(0);
      gateway = undefined;
      await waitFor('the agent to see its tunnel down', () => (/"msg":"tunnel down"/.test(agent.log()) ? true : undefined), { program: agent });
      // While meshgate is away, the agent keeps trying (each failure a log line with its next delay).
      await waitFor('the agent to retry', () => (/"msg":"could not open a tunnel"/.test(agent.log()) ? true : undefined), { program: agent });

      await startMeshgate();
      await waitFor('the agent tunnel up again', () => (tunnelsUp(agent) > 1 ? true : undefined), { program: agent, timeoutMs: 30_000 });
      const again = await kubectl(['get', 'configmap', 'through-agent', '-n', NAMESPACE, '-o', 'jsonpath={.data.hello}']);
      expect(again.stderr).toBe('');
      expect(again.stdout).toBe('tunnel');
    } finally {
      await agent.stop();
    }
  });
});
