/**
 * Agents and tenant isolation (DESIGN.md §5, invariants 1, 5 and 7; docs/agent.md): who may
 * register which cluster, refused with stable codes before any tunnel opens; what tenant A's
 * callers can reach of tenant B's tunnels (nothing); bad input on the agent endpoint; reloads that
 * add and remove agent clusters, disturbing nothing else and closing what they remove.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { connect as http2Connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { WebSocket, type ClientOptions } from 'ws';
import { startAgent, type Agent } from '../src/agent/agent.js';
import { startSandbox, type Sandbox } from '../src/sandbox/sandbox.js';
import { agentConfig, startAgentGateway, tenantCertificate, type AgentGateway } from './helpers/agent.js';
import { call, rawTls, type CallResult } from './helpers/client.js';
import { configCluster, silent, tenantOf } from './helpers/sandbox.js';

type TenantId = 'acme' | 'globex';

let sandbox: Sandbox;
let subject: AgentGateway;
let dir: string;
const certs: Record<string, { cert: string; key: string }> = {};

beforeAll(async () => {
  sandbox = await startSandbox({ dir: mkdtempSync(join(tmpdir(), 'meshgate-agent-iso-')), portBase: 0, logger: silent(), podChangeIntervalMs: 200 });
  dir = mkdtempSync(join(tmpdir(), 'meshgate-agent-iso-files-'));
  subject = await startAgentGateway(sandbox, agentConfig(sandbox, dir), { handshakeTimeoutMs: 500 });
  for (const [tenant, cluster] of [
    ['acme', 'acme-east'],
    ['acme', 'acme-west'],
    ['globex', 'globex-main'],
  ] as const) {
    certs[cluster] = await tenantCertificate(sandbox, dir, tenant, `system:meshgate-agent:${cluster}`);
  }
});
afterAll(async () => {
  await subject.close();
  await sandbox.close();
});

const host = (tenant: TenantId): string => tenantOf(sandbox, tenant).host;
const pem = (path: string): string => readFileSync(path, 'utf8');
const apiServerPort = (cluster: string): number => Number(new URL(sandbox.kubeApiServers.get(cluster)?.url ?? '').port);
const metrics = (): Promise<string> => subject.gateway.metrics.registry.metrics();

function agentFor(tenant: TenantId, cluster: string): Agent {
  const files = certs[cluster];
  if (!files) throw new Error(`no certificate for ${cluster}`);
  return startAgent({
    server: `wss://127.0.0.1:${subject.port('api')}`,
    serverName: host(tenant),
    ca: pem(sandbox.info.caFile),
    cert: pem(files.cert),
    key: pem(files.key),
    cluster,
    apiServer: { host: '127.0.0.1', port: apiServerPort(cluster) },
    logger: silent(),
    backoff: () => 100,
  });
}

interface Attempt {
  readonly status: number;
  readonly code: string;
}

/** One registration, as an agent would make it, with any credential, host and path: its refusal, or 101. */
function register(options: { tenant: TenantId; path: string; cert?: string; key?: string; token?: string; protocols?: string[] }): Promise<Attempt> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://127.0.0.1:${subject.port('api')}${options.path}`, options.protocols ?? ['meshgate-agent.v1'], {
      ...({ servername: host(options.tenant) } as ClientOptions),
      ca: pem(sandbox.info.caFile),
      ...(options.cert === undefined ? {} : { cert: pem(options.cert), key: pem(options.key ?? '') }),
      ...(options.token === undefined ? {} : { headers: { authorization: `Bearer ${options.token}` } }),
    });
    ws.once('unexpected-response', (_req, res: IncomingMessage) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        ws.terminate();
        resolve({ status: res.statusCode ?? 0, code: (JSON.parse(body) as { code: string }).code });
      });
    });
    ws.once('open', () => {
      ws.terminate();
      resolve({ status: 101, code: '' });
    });
    ws.once('error', reject);
  });
}

/** A kube request through meshgate with a tenant's operator certificate (or a token instead). */
function kube(tenant: TenantId, path: string, token?: string): Promise<CallResult> {
  const info = tenantOf(sandbox, tenant);
  return call({
    port: subject.port('api'),
    servername: info.host,
    path,
    ca: sandbox.info.caFile,
    ...(token === undefined ? { cert: info.clientCert, key: info.clientKey } : { headers: { authorization: `Bearer ${token}` } }),
  });
}
const statusCode = (res: CallResult): string => /^(MG_ERR_[A-Z_]+):/.exec(res.json<{ message: string }>().message)?.[1] ?? '';

describe('who may register which cluster', () => {
  it.each([
    ["acme's agent, on globex's host, for globex's cluster", { tenant: 'globex', path: '/agent/v1/clusters/globex-main', as: 'acme-east' }, 401, 'MG_ERR_AUTHN_CLIENT_CERT_INVALID'],
    ["acme's agent, on acme's host, naming globex's cluster", { tenant: 'acme', path: '/agent/v1/clusters/globex-main', as: 'acme-east' }, 403, 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ["globex's agent, on acme's host, for its own cluster", { tenant: 'acme', path: '/agent/v1/clusters/globex-main', as: 'globex-main' }, 403, 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ["globex's agent, on acme's host, naming acme's cluster", { tenant: 'acme', path: '/agent/v1/clusters/acme-east', as: 'globex-main' }, 401, 'MG_ERR_AUTHN_CLIENT_CERT_INVALID'],
    ["one cluster's agent registering another of the tenant's", { tenant: 'acme', path: '/agent/v1/clusters/acme-east', as: 'acme-west' }, 403, 'MG_ERR_AGENT_IDENTITY_MISMATCH'],
    ['an agent for a cluster meshgate dials itself (not via: agent)', { tenant: 'acme', path: '/agent/v1/clusters/acme-west', as: 'acme-west' }, 403, 'MG_ERR_AGENT_NOT_VIA_AGENT'],
    ["an operator's certificate of the tenant", { tenant: 'acme', path: '/agent/v1/clusters/acme-east', as: 'operator' }, 403, 'MG_ERR_AGENT_IDENTITY_MISMATCH'],
    ['no certificate at all', { tenant: 'acme', path: '/agent/v1/clusters/acme-east', as: 'nobody' }, 401, 'MG_ERR_AUTHN_REQUIRED'],
  ] as const)('refuses %s', async (_name, attempt, status, code) => {
    const operator = { cert: tenantOf(sandbox, 'acme').clientCert, key: tenantOf(sandbox, 'acme').clientKey };
    const files = attempt.as === 'operator' ? operator : attempt.as === 'nobody' ? {} : certs[attempt.as];
    expect(await register({ tenant: attempt.tenant, path: attempt.path, ...files })).toEqual({ status, code });
    expect(await metrics()).not.toMatch(/^meshgate_agent_tunnels\{[^}]*\} [1-9]/m);
  });

  it("refuses a service-account token, even the cluster's own: agents authenticate with a certificate only", async () => {
    // A kube token of acme-east (its issuer verifies it on the kube plane).
    expect(await register({ tenant: 'acme', path: '/agent/v1/clusters/acme-east', token: tenantOf(sandbox, 'acme').tokens.kube })).toEqual({ status: 401, code: 'MG_ERR_AUTHN_REQUIRED' });
  });

  it('counts refusals by code, and keeps serving', async () => {
    const text = await metrics();
    expect(text).toMatch(/^meshgate_agent_registrations_total\{tenant="acme",outcome="MG_ERR_AGENT_IDENTITY_MISMATCH"\} 2$/m);
    expect(text).toMatch(/^meshgate_agent_registrations_total\{tenant="acme",outcome="MG_ERR_AGENT_NOT_VIA_AGENT"\} 1$/m);
    expect((await kube('acme', '/clusters/acme-west/api/v1/namespaces')).status).toBe(200);
  });
});

describe("tenant A's callers and tenant B's tunnel", () => {
  it('reach only their own tenant: B\'s tunnel carries B\'s traffic, and A is told its own cluster has no agent', async () => {
    const globex = agentFor('globex', 'globex-main');
    try {
      await globex.ready();
      for (const server of sandbox.kubeApiServers.values()) server.requests.splice(0);
      // globex's own caller, with its own token (passthrough), through globex's tunnel.
      const own = await kube('globex', '/clusters/globex-main/api/v1/namespaces/bookinfo/pods', tenantOf(sandbox, 'globex').tokens.kube);
      expect(own.status).toBe(200);
      // acme's callers: globex's cluster does not exist for them, and acme-east has no agent.
      const foreign = await kube('acme', '/clusters/globex-main/api/v1/namespaces/bookinfo/pods');
      expect([foreign.status, statusCode(foreign)]).toEqual([403, 'MG_ERR_ROUTE_UNKNOWN_CLUSTER']);
      const ownCluster = await kube('acme', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods');
      expect([ownCluster.status, statusCode(ownCluster)]).toEqual([503, 'MG_ERR_UPSTREAM_AGENT_UNAVAILABLE']);
      // globex's token on acme's host, for globex's cluster: no tenant crossing either.
      const crossed = await kube('acme', '/clusters/globex-main/api/v1/namespaces', tenantOf(sandbox, 'globex').tokens.kube);
      expect([crossed.status, statusCode(crossed)]).toEqual([403, 'MG_ERR_ROUTE_UNKNOWN_CLUSTER']);
      const reached = [...sandbox.kubeApiServers].map(([cluster, server]) => [cluster, server.requests.filter((r) => !r.url.startsWith('/openid/')).length]);
      expect(Object.fromEntries(reached)).toEqual({ 'acme-east': 0, 'acme-west': 0, 'globex-main': 1 });
    } finally {
      await globex.close(500);
    }
  });
});

describe('bad input on the agent endpoint', () => {
  const acme = () => ({ port: subject.port('api'), servername: host('acme'), ca: sandbox.info.caFile, ...certs['acme-east'] });
  const key = randomBytes(16).toString('base64');

  it.each([
    ['a plain GET', { method: 'GET', headers: {} }],
    ['a SPDY/3.1 upgrade', { method: 'POST', headers: { connection: 'Upgrade', upgrade: 'SPDY/3.1' } }],
    ['a WebSocket upgrade without the agent subprotocol', { method: 'GET', headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-key': key, 'sec-websocket-version': '13' } }],
    [
      'a WebSocket upgrade with a bad key',
      { method: 'GET', headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-key': 'short', 'sec-websocket-version': '13', 'sec-websocket-protocol': 'meshgate-agent.v1' } },
    ],
  ])('answers %s with 426 and a stable code', async (_name, request) => {
    const head = Object.entries({ host: host('acme'), ...request.headers }).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    const { text, closedByServer } = await rawTls(acme(), `${request.method} /agent/v1/clusters/acme-east HTTP/1.1\r\n${head}\r\n`);
    expect(text).toMatch(/^HTTP\/1\.1 426 /);
    expect(text).toContain('"code":"MG_ERR_AGENT_UPGRADE_REQUIRED"');
    expect(closedByServer).toBe(true);
  });

  it('answers HTTP/2 with 426, and a path without a cluster with 404', async () => {
    const overH2 = await call({ ...acme(), path: '/agent/v1/clusters/acme-east', protocol: 'h2' });
    expect([overH2.status, overH2.json().code]).toEqual([426, 'MG_ERR_AGENT_UPGRADE_REQUIRED']);
    expect(await register({ tenant: 'acme', path: '/agent/v1/clusters/', ...certs['acme-east'] })).toEqual({ status: 404, code: 'MG_ERR_ROUTE_NOT_FOUND' });
    expect(await register({ tenant: 'acme', path: '/agent/v1/clusters/acme-east', protocols: ['something-else'], ...certs['acme-east'] })).toEqual({
      status: 426,
      code: 'MG_ERR_AGENT_UPGRADE_REQUIRED',
    });
  });

  it.each([
    ['bytes that are not WebSocket frames', 'garbage'],
    ['WebSocket frames that are not HTTP/2', 'frames'],
    ['nothing at all, past the handshake timeout', 'silence'],
  ] as const)('closes a tunnel that carries %s, and counts it', async (_name, kind) => {
    const code = 'MG_ERR_AGENT_HANDSHAKE';
    const counted = (n: number | string): RegExp => new RegExp(`^meshgate_agent_registrations_total\\{tenant="acme",outcome="${code}"\\} ${String(n)}$`, 'm');
    const before = counted('(\\d+)').exec(await metrics())?.[1] ?? '0';
    const wsKey = randomBytes(16).toString('base64');
    const upgrade =
      `GET /agent/v1/clusters/acme-east HTTP/1.1\r\nhost: ${host('acme')}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n` +
      `sec-websocket-key: ${wsKey}\r\nsec-websocket-version: 13\r\nsec-websocket-protocol: meshgate-agent.v1\r\n\r\n`;
    // A masked binary frame (client to server) of 24 bytes that are not an HTTP/2 preface.
    const frame = Buffer.concat([Buffer.from([0x82, 0x80 | 24, 0, 0, 0, 0]), Buffer.from('this is not HTTP/2 at all')]).subarray(0, 30);
    const { text, closedByServer } = await rawTls(acme(), (write) => {
      write(upgrade);
      if (kind === 'garbage') setTimeout(() => write('\x00\xff\xfenot a frame\r\n'), 100);
      if (kind === 'frames') setTimeout(() => write(frame), 100);
    });
    expect(text).toMatch(/^HTTP\/1\.1 101 /);
    expect(text.toLowerCase()).toContain('meshgate-instance: ');
    expect(closedByServer).toBe(true);
    await vi.waitFor(async () => expect(await metrics()).toMatch(counted(Number(before) + 1)));
    expect(await metrics()).not.toMatch(/^meshgate_agent_tunnels\{tenant="acme",cluster="acme-east"\} [1-9]/m);
  });
});

describe('reloads', () => {
  /** acme-west reached through an agent too: keys from a file (TokenReview would need a direct connection). */
  const westViaAgent = (config: Record<string, any>): void => {
    const { cluster } = configCluster(config, 'acme', 'acme-west');
    const file = join(dir, 'acme-west-jwks.json');
    writeFileSync(file, JSON.stringify(sandbox.issuers.get('acme-west')?.jwks()));
    delete cluster.tokenReview;
    cluster.jwks = { file };
    cluster.apiServer = { via: 'agent', serverName: 'kubernetes.default.svc', ca: cluster.apiServer.ca, credentials: cluster.apiServer.credentials };
  };

  it("adding and removing an agent cluster disturbs no other cluster's tunnel or watch; removing it closes its tunnel", async () => {
    const east = agentFor('acme', 'acme-east');
    let west: Agent | undefined;
    try {
      await east.ready();
      // The agent is up once meshgate's SETTINGS came; meshgate counts it once the agent's did.
      await vi.waitFor(async () => expect(await metrics()).toMatch(/^meshgate_agent_tunnels\{tenant="acme",cluster="acme-east"\} 1$/m));
      const registered = async (): Promise<number> => Number(/^meshgate_agent_registrations_total\{tenant="acme",outcome="OK"\} (\d+)$/m.exec(await metrics())?.[1] ?? 0);
      const okBefore = await registered();
      // A watch on acme-east, through its tunnel, held open through every reload below.
      const session = http2Connect(`https://127.0.0.1:${subject.port('api')}`, {
        ca: pem(sandbox.info.caFile),
        cert: pem(tenantOf(sandbox, 'acme').clientCert),
        key: pem(tenantOf(sandbox, 'acme').clientKey),
        servername: host('acme'),
      });
      const watch = session.request({ ':path': '/clusters/acme-east/api/v1/namespaces/bookinfo/pods?watch=1', ':authority': host('acme') });
      let events = 0;
      watch.on('data', () => events++);
      let watchClosed = false;
      watch.on('close', () => (watchClosed = true));
      const stillFlowing = async (): Promise<void> => {
        const seen = events;
        await vi.waitFor(() => expect(events).toBeGreaterThan(seen), { timeout: 5_000 });
      };
      await stillFlowing();

      // An unchanged reload, then one that adds acme-west as an agent cluster.
      subject.reload();
      subject.reload(westViaAgent);
      west = agentFor('acme', 'acme-west');
      await west.ready();
      const throughWest = await kube('acme', '/clusters/acme-west/api/v1/namespaces');
      expect(throughWest.status).toBe(200);
      await stillFlowing();

      // acme-west reached directly again: its agent's tunnel is closed, and it is refused from then on.
      subject.reload();
      await vi.waitFor(() => expect(west?.connected()).toBe(0));
      expect(await metrics()).toMatch(/^meshgate_agent_tunnels\{tenant="acme",cluster="acme-west"\} 0$/m);
      expect((await kube('acme', '/clusters/acme-west/api/v1/namespaces')).status).toBe(200);
      await vi.waitFor(async () => expect(await metrics()).toMatch(/^meshgate_agent_registrations_total\{tenant="acme",outcome="MG_ERR_AGENT_NOT_VIA_AGENT"\} [1-9]/m), { timeout: 5_000 });
      await stillFlowing();

      // Through all of it, acme-east's agent kept its one tunnel (registered once), and its watch ran on.
      expect(east.connected()).toBe(1);
      expect(await registered()).toBe(okBefore + 1);
      expect(watchClosed).toBe(false);
      watch.close();
      session.close();
    } finally {
      await west?.close(500);
      await east.close(500);
    }
  }, 30_000);

  it('a change to who may register closes the tunnels admitted before it, and the access.agent rules decide', async () => {
    const east = agentFor('acme', 'acme-east');
    try {
      await east.ready();
      subject.reload((config) => {
        configCluster(config, 'acme', 'acme-east').tenant.access.agent = [{ cluster: 'acme-east', subject: 'someone-else' }];
      });
      await vi.waitFor(() => expect(east.connected()).toBe(0));
      await vi.waitFor(async () => expect(await metrics()).toMatch(/^meshgate_agent_registrations_total\{tenant="acme",outcome="MG_ERR_AUTHZ_DENIED"\} [1-9]/m), { timeout: 5_000 });
      subject.reload((config) => {
        configCluster(config, 'acme', 'acme-east').tenant.access.agent = [{ cluster: 'acme-east', subject: 'system:meshgate-agent:*' }];
      });
      await east.ready();
      expect((await kube('acme', '/clusters/acme-east/api/v1/namespaces')).status).toBe(200);
    } finally {
      await east.close(500);
      subject.reload();
    }
  }, 30_000);
});
