/**
 * Streams and upgrades on the kube plane: watches flow unbuffered over HTTP/1.1 and HTTP/2 and
 * are never cut by a request deadline; protobuf passes byte for byte; an upgrade that the API
 * server refuses is relayed and both connections close; upgrades over HTTP/2 and h2c are refused.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { rawTls } from './helpers/client.js';
import { capturingLogger, configCluster, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(async () => {
  await sandbox.close();
});

const acme = () => tenantOf(sandbox, 'acme');
const tls = () => ({
  ca: readFileSync(sandbox.info.caFile, 'utf8'),
  cert: readFileSync(acme().clientCert, 'utf8'),
  key: readFileSync(acme().clientKey, 'utf8'),
  servername: acme().host,
});

/** A request over HTTP/1.1 with the acme operator's certificate; the body kept as bytes. */
function h1(port: number, method: string, path: string, headers: Record<string, string> = {}, body?: Buffer) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer; complete: boolean }>((resolve, reject) => {
    const req = httpsRequest({ ...tls(), host: '127.0.0.1', port, method, path, headers: { host: acme().host, ...headers }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('close', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete: res.complete }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('watches', () => {
  it('delivers each event as it happens, over HTTP/1.1 and HTTP/2 (client-go multiplexes its watches)', async () => {
    const port = sandbox.info.listeners.api.port;
    const path = '/clusters/acme-east/api/v1/namespaces/bookinfo/pods?watch=1&allowWatchBookmarks=true';
    // HTTP/2: one session, the watch a stream on it, beside a list on the same session.
    const session = http2Connect(`https://127.0.0.1:${port}`, tls());
    const watch = session.request({ [h2.HTTP2_HEADER_PATH]: path, [h2.HTTP2_HEADER_AUTHORITY]: acme().host });
    const h2Events: string[] = [];
    watch.on('data', (chunk: Buffer) => h2Events.push(...chunk.toString().split('\n').filter(Boolean)));
    // HTTP/1.1, at the same time.
    const h1Events: string[] = [];
    const h1Watch = httpsRequest({ ...tls(), host: '127.0.0.1', port, path, headers: { host: acme().host }, agent: false });
    h1Watch.on('response', (res) => res.on('data', (chunk: Buffer) => h1Events.push(...chunk.toString().split('\n').filter(Boolean))));
    h1Watch.end();

    const modified = (events: string[]) => events.map((e) => (JSON.parse(e) as { type: string }).type).filter((t) => t === 'MODIFIED').length;
    for (let i = 0; i < 150 && (modified(h2Events) < 1 || modified(h1Events) < 1); i++) await new Promise((r) => setTimeout(r, 100));
    expect(modified(h2Events)).toBeGreaterThanOrEqual(1);
    expect(modified(h1Events)).toBeGreaterThanOrEqual(1);

    const metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
    expect(metrics).toMatch(/^meshgate_kube_watches\{tenant="acme",cluster="acme-east"\} 2$/m);
    watch.close();
    session.close();
    h1Watch.destroy();
  }, 30_000);

  it('keeps a watch open through 2 minutes without events, past a 1 s request timeout', async () => {
    const gateway: ExtraGateway = await startGatewayFrom(sandbox, (config) => {
      for (const tenant of config.tenants as { kube: object }[]) tenant.kube = { ...tenant.kube, requestTimeout: '1s' };
    });
    try {
      // istio-system's pod never changes: after ADDED, nothing, until the API server's own timeoutSeconds.
      const started = performance.now();
      const res = await h1(gateway.port('api'), 'GET', '/clusters/acme-east/api/v1/namespaces/istio-system/pods?watch=1&timeoutSeconds=125');
      const seconds = (performance.now() - started) / 1000;
      expect(res.status).toBe(200);
      expect(res.complete).toBe(true);
      expect(seconds).toBeGreaterThan(120);
      const events = res.body.toString().split('\n').filter(Boolean).map((e) => (JSON.parse(e) as { type: string }).type);
      expect(events).toEqual(['ADDED']);
    } finally {
      await gateway.close();
    }
  }, 150_000);

  it("refuses an API server whose certificate does not chain to the cluster's CA (502), never falling back", async () => {
    const upstream = await startRawApiServer((socket) => socket.on('data', () => undefined));
    // The sandbox's cluster CA, which did not sign this server's certificate.
    const gateway = await startGatewayFrom(sandbox, (config) => {
      configCluster(config, 'acme', 'acme-east').cluster.apiServer.url = upstream.url;
    });
    try {
      const res = await h1(gateway.port('api'), 'GET', '/clusters/acme-east/api/v1/namespaces');
      expect(res.status).toBe(502);
      expect(JSON.parse(res.body.toString())).toMatchObject({ kind: 'Status', reason: 'ServiceUnavailable', message: expect.stringMatching(/^MG_ERR_UPSTREAM_TLS: /) });
    } finally {
      await gateway.close();
      await upstream.close();
    }
  });

  it('cuts a watch off when the token that opened it expires, never ending it cleanly', async () => {
    const issuer = sandbox.issuers.get('acme-east');
    if (!issuer) throw new Error('no acme-east issuer');
    const token = await issuer.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: issuer.issuer, lifetimeSeconds: 3 });
    const started = performance.now();
    const res = await new Promise<{ complete: boolean; events: number }>((resolve, reject) => {
      const req = httpsRequest(
        {
          ca: tls().ca,
          servername: acme().host,
          host: '127.0.0.1',
          port: sandbox.info.listeners.api.port,
          path: '/clusters/acme-east/api/v1/namespaces/istio-system/pods?watch=1',
          headers: { host: acme().host, authorization: `Bearer ${token}` },
          agent: false,
        },
        (response) => {
          let events = 0;
          response.on('data', () => events++);
          response.on('error', () => undefined);
          response.on('close', () => resolve({ complete: response.complete, events }));
        },
      );
      req.on('error', reject);
      req.end();
    });
    const seconds = (performance.now() - started) / 1000;
    expect(res.events).toBeGreaterThanOrEqual(1);
    expect(res.complete).toBe(false);
    // Cut at the token's expiry, not at once; the bound above is loose on purpose.
    expect(seconds).toBeGreaterThan(1.5);
    expect(seconds).toBeLessThan(20);
    const recorded = /^meshgate_http_requests_total\{tenant="acme",plane="kube",outcome="MG_ERR_AUTHN_TOKEN_EXPIRED"\} 1$/m;
    let metrics = '';
    for (let i = 0; i < 50 && !recorded.test(metrics); i++) {
      metrics = await (await fetch(`${sandbox.info.admin}/metrics`)).text();
      if (!recorded.test(metrics)) await new Promise((r) => setTimeout(r, 20));
    }
    expect(metrics).toMatch(recorded);
  });

  it('records the start of a watch when it starts (audit), and its end in the access log', async () => {
    const capture = capturingLogger();
    const gateway = await startGatewayFrom(sandbox, () => undefined, { logger: capture.logger });
    try {
      const res = await h1(gateway.port('api'), 'GET', '/clusters/acme-east/api/v1/namespaces/istio-system/pods?watch=1&timeoutSeconds=1');
      expect(res.status).toBe(200);
      for (let i = 0; i < 50 && !capture.lines.some((l) => l.msg === 'request' && l.plane === 'kube'); i++) await new Promise((r) => setTimeout(r, 20));
      const start = capture.lines.findIndex((l) => l.msg === 'kube long-running request started');
      const end = capture.lines.findIndex((l) => l.msg === 'request' && l.plane === 'kube');
      expect(capture.lines[start]).toMatchObject({
        tenant: 'acme',
        cluster: 'acme-east',
        subject: 'acme-mesh-client',
        auth: 'clientCertificate',
        verb: 'watch',
        resource: 'pods',
        namespace: 'istio-system',
      });
      expect(end).toBeGreaterThan(start);
      expect(capture.lines[end]?.requestId).toBe(capture.lines[start]?.requestId);
    } finally {
      await gateway.close();
    }
  });

  it('still gives requests that are not long-running a deadline', async () => {
    const upstream = await startRawApiServer((socket) => socket.on('data', () => undefined));
    const gateway = await gatewayTo(upstream.url, '300ms');
    try {
      const res = await h1(gateway.port('api'), 'GET', '/clusters/acme-east/api/v1/namespaces');
      expect(res.status).toBe(504);
      expect(JSON.parse(res.body.toString())).toMatchObject({ kind: 'Status', reason: 'Timeout', code: 504 });
    } finally {
      await gateway.close();
      await upstream.close();
    }
  });
});

describe('protobuf', () => {
  it('passes a protobuf answer and a protobuf body through byte for byte, over HTTP/1.1 and HTTP/2', async () => {
    const port = sandbox.info.listeners.api.port;
    const blob = sandbox.kubeApiServers.get('acme-east')?.protobufBlob ?? Buffer.alloc(0);
    expect(blob.length).toBeGreaterThan(1024);
    const accept = 'application/vnd.kubernetes.protobuf,application/json';
    const got = await h1(port, 'GET', '/clusters/acme-east/api/v1/namespaces/bookinfo/configmaps/blob', { accept });
    expect(got.headers['content-type']).toBe('application/vnd.kubernetes.protobuf');
    expect(got.body.equals(blob)).toBe(true);

    const body = Buffer.concat([Buffer.from('k8s\0'), createHash('sha512').update('meshgate').digest(), Buffer.from([0, 255, 13, 10, 0])]);
    const echoed = await h1(port, 'POST', '/clusters/acme-east/api/v1/namespaces/bookinfo/configmaps', {
      'content-type': 'application/vnd.kubernetes.protobuf',
      accept,
      'content-length': String(body.length),
    }, body);
    expect(echoed.body.equals(body)).toBe(true);

    const session = http2Connect(`https://127.0.0.1:${port}`, tls());
    const stream = session.request({
      [h2.HTTP2_HEADER_PATH]: '/clusters/acme-east/api/v1/namespaces/bookinfo/configmaps/blob',
      [h2.HTTP2_HEADER_AUTHORITY]: acme().host,
      accept,
    });
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    await new Promise((r) => stream.on('end', r));
    session.close();
    expect(Buffer.concat(chunks).equals(blob)).toBe(true);
  });
});

describe('upgrades', () => {
  const upgradeRequest = (path: string, upgrade: string, extra = '') =>
    `GET ${path} HTTP/1.1\r\nHost: ${acme().host}\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\n` +
    `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n${extra}\r\n`;
  const execPath = '/clusters/acme-east/api/v1/namespaces/bookinfo/pods/p/exec?command=ls&stdout=true';

  it.each([
    [200, 'OK'],
    [302, 'Found'],
    [403, 'Forbidden'],
  ])('relays an upstream %i instead of 101 with its body, and closes both connections', async (status, reason) => {
    const body = `{"kind":"Status","code":${status},"message":"upstream says no"}`;
    // Keep-alive, and a second response queued: a proxy that reused this connection would relay it.
    const second = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nSECOND RESPONSE';
    const { text, closedByServer, upstreamClosed } = await upgradeAnsweredWith(
      `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}${second}`,
    );
    expect(text).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    expect(text).toContain('upstream says no');
    expect(text).not.toContain('SECOND RESPONSE');
    expect(text.toLowerCase()).toContain('connection: close');
    expect(closedByServer).toBe(true);
    expect(upstreamClosed).toBe(true);
  });

  it('refuses a 101 whose Sec-WebSocket-Accept does not answer the key, and closes both connections', async () => {
    const { text, closedByServer, upstreamClosed } = await upgradeAnsweredWith(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBhbnN3ZXI=\r\n\r\n',
    );
    expect(text).toMatch(/^HTTP\/1\.1 502 /);
    expect(text).toContain('MG_ERR_UPSTREAM_UPGRADE_INVALID');
    expect(closedByServer).toBe(true);
    expect(upstreamClosed).toBe(true);
  });

  /** An exec upgrade through a meshgate whose API server answers with `answer`: what the client got, and whether both ends closed. */
  async function upgradeAnsweredWith(answer: string) {
    const upstreamSocket = { closed: false };
    const upstream = await startRawApiServer((socket) => {
      socket.once('data', () => socket.write(answer));
      socket.on('close', () => (upstreamSocket.closed = true));
    });
    const gateway = await gatewayTo(upstream.url);
    try {
      const { text, closedByServer } = await rawTls({ port: gateway.port('api'), ...files() }, upgradeRequest(execPath, 'websocket'), { waitForCloseMs: 5_000 });
      for (let i = 0; i < 50 && !upstreamSocket.closed; i++) await new Promise((r) => setTimeout(r, 20));
      return { text, closedByServer, upstreamClosed: upstreamSocket.closed };
    } finally {
      await gateway.close();
      await upstream.close();
    }
  }

  it.each([
    ['h2c', execPath],
    ['TLS/1.0', execPath],
    ['websocket', '/clusters/acme-east/api/v1/namespaces/bookinfo/pods'],
  ])('refuses Upgrade: %s on %s with a Status, before reaching the API server', async (upgrade, path) => {
    const before = apiRequests();
    const { text, closedByServer } = await rawTls({ port: sandbox.info.listeners.api.port, ...files() }, upgradeRequest(path, upgrade), { waitForCloseMs: 5_000 });
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain('"kind":"Status"');
    expect(text).toContain('MG_ERR_REQUEST_UPGRADE');
    expect(closedByServer).toBe(true);
    expect(apiRequests()).toBe(before);
  });

  it('refuses an upgrade over HTTP/2 (extended CONNECT) with a clear error', async () => {
    const session = http2Connect(`https://127.0.0.1:${sandbox.info.listeners.api.port}`, tls());
    const stream = session.request({ [h2.HTTP2_HEADER_METHOD]: 'CONNECT', [h2.HTTP2_HEADER_AUTHORITY]: acme().host });
    const status = await new Promise<number>((resolve) => stream.on('response', (h) => resolve(Number(h[h2.HTTP2_HEADER_STATUS]))));
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    await new Promise((r) => stream.on('close', r));
    session.close();
    expect(status).toBe(400);
    expect(JSON.parse(Buffer.concat(chunks).toString())).toMatchObject({ code: "MG_ERR_REQUEST_UPGRADE", message: expect.stringMatching(/^exec, attach and port-forward need HTTP\/1\.1/) });
  });

  it('never sends an HTTP/2 request that carries Upgrade to the API server', () => {
    const before = apiRequests();
    // Node's own client refuses to send it; nghttp2 on meshgate's side would reset it as malformed.
    const session = http2Connect(`https://127.0.0.1:${sandbox.info.listeners.api.port}`, tls());
    expect(() =>
      session.request({ [h2.HTTP2_HEADER_PATH]: execPath, [h2.HTTP2_HEADER_AUTHORITY]: acme().host, upgrade: 'websocket' }),
    ).toThrow(/Connection specific headers are forbidden/);
    session.close();
    expect(apiRequests()).toBe(before);
  });
});

/** Requests the acme-east stand-in received for its API (its OIDC keys are fetched at any time). */
const apiRequests = (): number => sandbox.kubeApiServers.get('acme-east')?.requests.filter((r) => r.url.startsWith('/api')).length ?? 0;

const files = () => ({ servername: acme().host, ca: sandbox.info.caFile, cert: acme().clientCert, key: acme().clientKey });

/** A meshgate whose acme-east API server is `url`, trusting the test CA, with an optional request timeout. */
async function gatewayTo(url: string, requestTimeout?: string): Promise<ExtraGateway> {
  return startGatewayFrom(sandbox, (config) => {
    const { tenant, cluster } = configCluster(config, 'acme', 'acme-east');
    cluster.apiServer = { ...cluster.apiServer, url, ca: rawCaFile };
    if (requestTimeout !== undefined) tenant.kube = { ...tenant.kube, requestTimeout };
  });
}

let rawCaFile = '';

/** A TLS server that hands each connection to `onSocket`: an API server that misbehaves on purpose. */
async function startRawApiServer(onSocket: (socket: TLSSocket) => void): Promise<{ url: string; close: () => Promise<void> }> {
  const ca = await createCertificateAuthority('raw api server CA');
  const server = await issueCertificate(ca, { commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server' });
  rawCaFile = join(mkdtempSync(join(tmpdir(), 'meshgate-raw-')), 'ca.pem');
  writeFileSync(rawCaFile, ca.cert);
  const sockets = new Set<Socket>();
  const tlsServer = createTlsServer({ cert: server.cert, key: server.key }, (socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    onSocket(socket);
  });
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  const address = tlsServer.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `https://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        tlsServer.close(() => resolve());
      }),
  };
}
