/**
 * The kube plane's HTTP/2 upstream pool: a mesh cluster's watches and requests multiplex on a few
 * HTTP/2 sessions to its API server; HTTP/1.1 only when the server does not offer h2; upgrades on
 * a connection of their own; the server's SETTINGS_MAX_CONCURRENT_STREAMS respected; and a
 * session never carries two tenants' requests, even to the same API server.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { connect as http2Connect, constants as h2, createSecureServer, type Http2Session, type ServerHttp2Stream } from 'node:http2';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { configCluster, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
let caFile: string;
let serverCert: { cert: string; key: string };
beforeAll(async () => {
  sandbox = await startTestSandbox();
  const ca = await createCertificateAuthority('h2 api server CA');
  serverCert = await issueCertificate(ca, { commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server' });
  caFile = join(mkdtempSync(join(tmpdir(), 'meshgate-h2-')), 'ca.pem');
  writeFileSync(caFile, ca.cert);
});
afterAll(async () => {
  await sandbox.close();
});

/** What the API server saw of one request: the connection it came on, its protocol and who it claimed to be. */
interface Seen {
  readonly connection: number;
  readonly httpVersion: string;
  readonly path: string;
  /** Impersonate-User (acme's cluster: meshgate's credential) or the bearer token (globex's: passthrough). */
  readonly caller: string;
}

/**
 * An API server that records every request by connection. `h2` offers HTTP/2 and HTTP/1.1 (as
 * kube-apiserver does); otherwise HTTP/1.1 only. A watch gets its head and one event, then stays
 * open; anything else a small list. Upgrades are answered 101 and echo.
 */
async function startApiServer({ h2: offerH2, maxConcurrentStreams }: { h2: boolean; maxConcurrentStreams?: number }) {
  const seen: Seen[] = [];
  const connections = new WeakMap<object, number>();
  let nextConnection = 0;
  const idOf = (key: object): number => {
    let id = connections.get(key);
    if (id === undefined) connections.set(key, (id = ++nextConnection));
    return id;
  };
  const upgrades: number[] = [];
  const sockets = new Set<Socket>();
  const sessions = new Set<Http2Session>();
  let concurrent = 0;
  let maxConcurrentSeen = 0;

  const handle = (req: IncomingMessage, response: ServerResponse): void => {
    // One shape for both servers' responses (HTTP/1.1 and the HTTP/2 compatibility API).
    const res = response as unknown as { writeHead(status: number, headers: object): void; write(text: string): void; end(text: string): void; on(event: 'close', listener: () => void): void };
    const connectionKey: object = req.httpVersion === '2.0' ? (req as unknown as { stream: ServerHttp2Stream }).stream.session ?? req.socket : req.socket;
    const caller = String(req.headers['impersonate-user'] ?? req.headers.authorization ?? '');
    seen.push({ connection: idOf(connectionKey), httpVersion: req.httpVersion, path: req.url ?? '', caller });
    concurrent++;
    maxConcurrentSeen = Math.max(maxConcurrentSeen, concurrent);
    res.on('close', () => concurrent--);
    if ((req.url ?? '').includes('watch=1')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(`${JSON.stringify({ type: 'ADDED', object: { kind: 'Pod', metadata: { name: 'p' } } })}\n`);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'PodList', items: [] }));
  };
  const server = offerH2
    ? createSecureServer({ ...serverCert, allowHTTP1: true, ...(maxConcurrentStreams === undefined ? {} : { settings: { maxConcurrentStreams } }) }, handle as never)
    : createHttpsServer(serverCert, handle);
  server.on('session', (session: Http2Session) => sessions.add(session));
  server.on('secureConnection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    upgrades.push(idOf(socket));
    seen.push({ connection: idOf(socket), httpVersion: req.httpVersion, path: req.url ?? '', caller: String(req.headers['impersonate-user'] ?? '') });
    socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n');
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `https://127.0.0.1:${port}`,
    seen,
    upgrades,
    maxConcurrentSeen: () => maxConcurrentSeen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

type ApiServer = Awaited<ReturnType<typeof startApiServer>>;

/** A gateway whose acme-east and globex-main clusters are both served by `server`. */
function gatewayTo(server: ApiServer): Promise<ExtraGateway> {
  return startGatewayFrom(sandbox, (config) => {
    for (const [tenant, cluster] of [
      ['acme', 'acme-east'],
      ['globex', 'globex-main'],
    ] as const) {
      const { cluster: c } = configCluster(config, tenant, cluster);
      c.apiServer = { ...c.apiServer, url: server.url, ca: caFile };
    }
  });
}

/** Runs `body` against an API server as `startApiServer` makes it, behind a gateway to it; closes both. */
async function withApiServer(options: Parameters<typeof startApiServer>[0], body: (server: ApiServer, gateway: ExtraGateway) => Promise<void>): Promise<void> {
  const server = await startApiServer(options);
  const gateway = await gatewayTo(server);
  try {
    await body(server, gateway);
  } finally {
    await gateway.close();
    await server.close();
  }
}

function credentials(tenant: 'acme' | 'globex') {
  const info = tenantOf(sandbox, tenant);
  return { ca: readFileSync(sandbox.info.caFile, 'utf8'), cert: readFileSync(info.clientCert, 'utf8'), key: readFileSync(info.clientKey, 'utf8'), servername: info.host };
}

/** Opens `count` watches and one list per watch, as client-go does, on one HTTP/2 session of the caller's. */
async function watchesAndLists(port: number, tenant: 'acme' | 'globex', count: number) {
  const info = tenantOf(sandbox, tenant);
  const cluster = tenant === 'acme' ? 'acme-east' : 'globex-main';
  const session = http2Connect(`https://127.0.0.1:${port}`, credentials(tenant));
  session.on('error', () => undefined);
  const auth = tenant === 'globex' ? { authorization: `Bearer ${info.tokens.kube}` } : {};
  const firstEvents: Promise<string>[] = [];
  const lists: Promise<number>[] = [];
  for (let i = 0; i < count; i++) {
    const watch = session.request({ [h2.HTTP2_HEADER_PATH]: `/clusters/${cluster}/api/v1/namespaces/ns${i}/pods?watch=1`, [h2.HTTP2_HEADER_AUTHORITY]: info.host, ...auth });
    watch.on('error', () => undefined);
    firstEvents.push(new Promise((resolve) => watch.once('data', (chunk: Buffer) => resolve(chunk.toString()))));
    const list = session.request({ [h2.HTTP2_HEADER_PATH]: `/clusters/${cluster}/api/v1/namespaces/ns${i}/pods`, [h2.HTTP2_HEADER_AUTHORITY]: info.host, ...auth });
    list.on('error', () => undefined);
    lists.push(
      new Promise((resolve) => {
        let status = 0;
        list.on('response', (headers) => (status = Number(headers[h2.HTTP2_HEADER_STATUS])));
        list.on('close', () => resolve(status));
        list.resume();
      }),
    );
  }
  return { events: await Promise.all(firstEvents), lists: await Promise.all(lists), close: () => session.destroy() };
}

describe('the kube plane towards an API server that offers HTTP/2', () => {
  it('multiplexes a cluster\'s watches and requests on one HTTP/2 session', async () => {
    await withApiServer({ h2: true }, async (server, gateway) => {
      const calls = await watchesAndLists(gateway.port('api'), 'acme', 40);
      expect(calls.lists).toEqual(Array(40).fill(200));
      expect(calls.events.every((e) => e.includes('"ADDED"'))).toBe(true);
      expect(server.seen).toHaveLength(80);
      expect(new Set(server.seen.map((s) => s.httpVersion))).toEqual(new Set(['2.0']));
      expect(new Set(server.seen.map((s) => s.connection)).size).toBe(1);
      // 40 watches open at once, with the lists beside them, on that one session.
      expect(server.maxConcurrentSeen()).toBeGreaterThanOrEqual(40);
      calls.close();
    });
  }, 60_000);

  it("respects the server's SETTINGS_MAX_CONCURRENT_STREAMS, opening more sessions rather than queueing", async () => {
    await withApiServer({ h2: true, maxConcurrentStreams: 5 }, async (server, gateway) => {
      // 12 watches stay open: with at most 5 streams a session, they need 3 sessions, and every
      // one of them has its first event (none waits behind another).
      const calls = await watchesAndLists(gateway.port('api'), 'acme', 12);
      expect(calls.events).toHaveLength(12);
      expect(calls.lists).toEqual(Array(12).fill(200));
      const byConnection = new Map<number, number>();
      for (const s of server.seen.filter((r) => r.path.includes('watch=1'))) byConnection.set(s.connection, (byConnection.get(s.connection) ?? 0) + 1);
      expect(byConnection.size).toBeGreaterThanOrEqual(3);
      expect(Math.max(...byConnection.values())).toBeLessThanOrEqual(5);
      calls.close();
    });
  }, 60_000);

  it("never lets one tenant's session carry another tenant's request, to the same API server", async () => {
    await withApiServer({ h2: true }, async (server, gateway) => {
      const [acme, globex] = await Promise.all([watchesAndLists(gateway.port('api'), 'acme', 10), watchesAndLists(gateway.port('api'), 'globex', 10)]);
      expect([...acme.lists, ...globex.lists]).toEqual(Array(20).fill(200));
      const tenantsBySession = new Map<number, Set<string>>();
      for (const s of server.seen) {
        const tenant = s.caller.startsWith('Bearer ') ? 'globex' : 'acme';
        tenantsBySession.set(s.connection, (tenantsBySession.get(s.connection) ?? new Set()).add(tenant));
      }
      expect(tenantsBySession.size).toBe(2);
      for (const tenants of tenantsBySession.values()) expect(tenants.size).toBe(1);
      acme.close();
      globex.close();
    });
  }, 60_000);

  it('keeps an upgrade (exec, port-forward) on an HTTP/1.1 connection of its own', async () => {
    await withApiServer({ h2: true }, async (server, gateway) => {
      const calls = await watchesAndLists(gateway.port('api'), 'acme', 2);
      const info = tenantOf(sandbox, 'acme');
      const echoed = await new Promise<string>((resolve, reject) => {
        const req = httpsRequest({
          ...credentials('acme'),
          host: '127.0.0.1',
          port: gateway.port('api'),
          method: 'POST',
          path: '/clusters/acme-east/api/v1/namespaces/bookinfo/pods/p/exec?command=sh&stdin=true&stdout=true',
          headers: { host: info.host, connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'v4.channel.k8s.io' },
          agent: false,
        });
        req.on('error', reject);
        req.on('upgrade', (res, socket) => {
          expect(res.statusCode).toBe(101);
          socket.once('data', (chunk: Buffer) => {
            resolve(chunk.toString());
            socket.destroy();
          });
          socket.write('ping');
        });
        req.end();
      });
      expect(echoed).toBe('ping');
      const h2Connections = new Set(server.seen.filter((s) => s.httpVersion === '2.0').map((s) => s.connection));
      expect(server.upgrades).toHaveLength(1);
      expect(h2Connections.has(server.upgrades[0] ?? -1)).toBe(false);
      expect(server.seen.find((s) => s.connection === server.upgrades[0])?.httpVersion).toBe('1.1');
      calls.close();
    });
  }, 60_000);
});

describe('the kube plane towards an API server that speaks only HTTP/1.1', () => {
  it('falls back to HTTP/1.1, one connection per watch', async () => {
    await withApiServer({ h2: false }, async (server, gateway) => {
      const calls = await watchesAndLists(gateway.port('api'), 'acme', 5);
      expect(calls.lists).toEqual(Array(5).fill(200));
      expect(calls.events).toHaveLength(5);
      expect(new Set(server.seen.map((s) => s.httpVersion))).toEqual(new Set(['1.1']));
      const watchConnections = new Set(server.seen.filter((s) => s.path.includes('watch=1')).map((s) => s.connection));
      expect(watchConnections.size).toBe(5);
      calls.close();
    });
  }, 60_000);
});
