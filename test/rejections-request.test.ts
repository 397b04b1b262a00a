/**
 * Bad input, part 1: routing and request shape. Each rejection has its status and stable code,
 * reaches no istiod, and leaves meshgate serving (DESIGN.md §5 invariants 2 and 5).
 */
import { readFileSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, rawTls, type CallOptions, type Protocol } from './helpers/client.js';
import {
  admissionReview,
  drainIstiodRequests,
  expectNothingReachedIstiod,
  startGatewayFrom,
  startTestSandbox,
  tenantOf,
  type ExtraGateway,
} from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());
// No rejected request may reach any istiod.
afterEach(() => expectNothingReachedIstiod(sandbox));

const acme = () => tenantOf(sandbox, 'acme');

/** An injection call as acme's kube-apiserver makes it, with changes. */
function inject(change: Partial<CallOptions> = {}) {
  const tenant = acme();
  return call({
    port: sandbox.info.listeners.webhook.port,
    servername: tenant.host,
    method: 'POST',
    path: '/inject/cluster/acme-east/net/network1?timeout=10s',
    headers: { 'content-type': 'application/json' },
    body: admissionReview('rejections'),
    ca: sandbox.info.caFile,
    cert: tenant.clientCert,
    key: tenant.clientKey,
    ...change,
  });
}

function raw(lines: string[], body = '') {
  const tenant = acme();
  return rawTls(
    { port: sandbox.info.listeners.webhook.port, servername: tenant.host, ca: sandbox.info.caFile, cert: tenant.clientCert, key: tenant.clientKey },
    `${lines.join('\r\n')}\r\n\r\n${body}`,
  );
}

const codeOf = (text: string): string | undefined => /"code":"(MG_ERR_[A-Z_]+)"/.exec(text)?.[1];

describe.each(['h1', 'h2'] as Protocol[])('routing over %s', (protocol) => {
  it('refuses a connection without SNI: no tenant is reached', async () => {
    const res = await inject({ protocol, servername: false, insecure: true, authority: acme().host });
    expect([res.status, res.json().code]).toEqual([421, 'MG_ERR_ROUTE_NO_SNI']);
  });

  it('refuses an SNI that names no tenant', async () => {
    const res = await inject({ protocol, servername: 'initech.meshgate.test', insecure: true });
    expect([res.status, res.json().code]).toEqual([421, 'MG_ERR_ROUTE_UNKNOWN_HOST']);
  });

  it('closes a connection that reaches no tenant after its answer, without SNI or with an unknown one', async () => {
    for (const servername of [false, 'initech.meshgate.test'] as const) {
      if (protocol === 'h1') {
        // A keep-alive request: the answer says Connection: close, and the server ends the connection.
        const answer = await rawTls(
          { port: sandbox.info.listeners.webhook.port, servername, insecure: true, ca: sandbox.info.caFile },
          `GET /validate HTTP/1.1\r\nHost: ${acme().host}\r\nConnection: keep-alive\r\n\r\n`,
          { waitForCloseMs: 5_000 },
        );
        expect(answer.text).toMatch(/^HTTP\/1\.1 421 /);
        expect(answer.text).toMatch(/\r\nconnection: close\r\n/i);
        expect(answer.closedByServer).toBe(true);
      } else {
        const session = http2Connect(`https://127.0.0.1:${sandbox.info.listeners.webhook.port}`, {
          ...(servername === false ? {} : { servername }),
          rejectUnauthorized: false,
        });
        const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
        const closed = new Promise<void>((resolve) => session.once('close', () => resolve()));
        session.on('error', () => undefined);
        const stream = session.request({ ':path': '/validate', ':authority': acme().host });
        const status = await new Promise<number>((resolve) => stream.once('response', (h) => resolve(Number(h[':status']))));
        stream.resume();
        expect(status).toBe(421);
        expect(await goaway).toBe(0);
        await closed;
      }
    }
  });

  it("refuses a Host/:authority naming another tenant's host (421)", async () => {
    const res = await inject({ protocol, authority: sandbox.info.tenants.globex?.host ?? '' });
    expect([res.status, res.json().code]).toEqual([421, 'MG_ERR_ROUTE_HOST_MISMATCH']);
  });

  it('allows an IP-literal Host (clients that set tls-server-name send one); routing is by SNI', async () => {
    const res = await inject({ protocol, authority: `127.0.0.1:${sandbox.info.listeners.webhook.port}` });
    expect(res.status).toBe(200);
    expect(res.headers['x-sandbox-istiod']).toBe('istiod-acme');
    drainIstiodRequests(sandbox);
  });

  it.each([
    ['/inject/../validate', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject/%2E%2E/validate', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject/%2e%2e/validate', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject%2Fcluster%2Fglobex-main', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['//inject/cluster/acme-east', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject\\cluster\\acme-east', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject/cluster/acme-east%00', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject/cluster/globex-main/net/n1', 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ['/inject/istio_meta_cluster_id/globex-main', 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ['/inject/:ENV:cluster=globex-main:ENV:net=n1', 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ['/inject/%C4%B1stio_meta_cluster_id/globex-main', 'MG_ERR_REQUEST_PATH_NOT_CANONICAL'],
    ['/inject/cluster/acme-east--slash--x', 'MG_ERR_ROUTE_UNKNOWN_CLUSTER'],
    ['/inject/cluster/acme-east/cluster/globex-main', 'MG_ERR_ROUTE_NOT_FOUND'],
    ['/admin', 'MG_ERR_ROUTE_NOT_FOUND'],
  ])('rejects %s with %s', async (path, code) => {
    const res = await inject({ protocol, path });
    expect(res.json().code).toBe(code);
  });
});

describe('HTTP/2 connection reuse', () => {
  it("refuses a second stream on acme's connection that names globex's authority (coalescing)", async () => {
    const tenant = acme();
    const session = http2Connect(`https://127.0.0.1:${sandbox.info.listeners.webhook.port}`, {
      servername: tenant.host,
      ca: readFileSync(sandbox.info.caFile),
      cert: readFileSync(tenant.clientCert),
      key: readFileSync(tenant.clientKey),
    });
    const post = (authority: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const stream = session.request({
          ':method': 'POST',
          ':path': '/inject/cluster/acme-east/net/network1',
          ':authority': authority,
          'content-type': 'application/json',
        });
        let status = 0;
        let body = '';
        stream.on('response', (h) => (status = Number(h[':status'])));
        stream.on('data', (c: Buffer) => (body += c.toString()));
        stream.on('end', () => resolve({ status, body }));
        stream.on('error', reject);
        stream.end(admissionReview('coalesce'));
      });
    try {
      expect((await post(tenant.host)).status).toBe(200);
      const crossed = await post(sandbox.info.tenants.globex?.host ?? '');
      expect([crossed.status, codeOf(crossed.body)]).toEqual([421, 'MG_ERR_ROUTE_HOST_MISMATCH']);
    } finally {
      session.close();
    }
    const reached = drainIstiodRequests(sandbox);
    expect([reached.get('acme')?.length, reached.get('globex')?.length]).toEqual([1, 0]);
  });
});

describe('request shape', () => {
  it('takes POST only, and says so', async () => {
    const res = await inject({ method: 'GET', body: undefined });
    expect([res.status, res.json().code, res.headers.allow]).toEqual([405, 'MG_ERR_REQUEST_METHOD_NOT_ALLOWED', 'POST']);
  });

  it.each([['text/plain'], ['application/json; charset=utf-8'], ['Application/JSON'], ['application/yaml']])('refuses Content-Type %s', async (type) => {
    const res = await inject({ headers: { 'content-type': type } });
    expect([res.status, res.json().code]).toEqual([415, 'MG_ERR_REQUEST_CONTENT_TYPE']);
  });

  it('refuses a missing Content-Type', async () => {
    const res = await inject({ headers: {} });
    expect([res.status, res.json().code]).toEqual([415, 'MG_ERR_REQUEST_CONTENT_TYPE']);
  });

  it('refuses a declared body over 6 MiB before reading it', async () => {
    const { text } = await raw([
      'POST /inject/cluster/acme-east/net/network1 HTTP/1.1',
      `Host: ${acme().host}`,
      'Content-Type: application/json',
      `Content-Length: ${6 * 1024 * 1024 + 1}`,
    ]);
    expect(text).toMatch(/^HTTP\/1\.1 413/);
    expect(text).toMatch(/\r\nconnection: close\r\n/i);
    expect(codeOf(text)).toBe('MG_ERR_REQUEST_BODY_TOO_LARGE');
  });

  it.each(['h1', 'h2'] as Protocol[])('stops reading a streamed body at 6 MiB (%s)', async (protocol) => {
    const body = Buffer.alloc(7 * 1024 * 1024, 0x20);
    const res = await inject({ protocol, body, headers: { 'content-type': 'application/json', 'transfer-encoding': protocol === 'h1' ? 'chunked' : [] } }).catch(
      (err: unknown) => ({ status: -1, json: () => ({ code: String(err) }) }),
    );
    // The client may see the 413, or a reset while still sending: never a forwarded request.
    if (res.status !== -1) expect([res.status, res.json().code]).toEqual([413, 'MG_ERR_REQUEST_BODY_TOO_LARGE']);
  });

  it('forwards a body just under the cap', async () => {
    const review = admissionReview('big');
    const padded = review.replace('"dryRun":false', `"dryRun":false,"padding":"${'x'.repeat(5 * 1024 * 1024)}"`);
    const res = await inject({ body: padded });
    expect(res.status).toBe(200);
    expect(sandbox.istiods.get('acme')?.requests.at(-1)?.bodyBytes).toBe(Buffer.byteLength(padded));
    drainIstiodRequests(sandbox);
  });

  it.each(['soon', '-1s', '0s', '10'])('refuses ?timeout=%s', async (timeout) => {
    const res = await inject({ path: `/inject/cluster/acme-east/net/network1?timeout=${timeout}` });
    expect([res.status, res.json().code]).toEqual([400, 'MG_ERR_REQUEST_BAD_TIMEOUT']);
  });

  it('refuses protocol upgrades on these planes', async () => {
    const { text } = await raw(['GET /inject HTTP/1.1', `Host: ${acme().host}`, 'Connection: Upgrade', 'Upgrade: h2c']);
    expect(text).toMatch(/^HTTP\/1\.1 400/);
    expect(codeOf(text)).toBe('MG_ERR_REQUEST_UPGRADE');
  });
});

describe('malformed HTTP', () => {
  it.each([
    ['a garbage request line', ['GARBAGE'], 'MG_ERR_REQUEST_MALFORMED', 400],
    ['a header without a colon', ['POST /validate HTTP/1.1', 'Host: acme.meshgate.test', 'Bad Header'], 'MG_ERR_REQUEST_MALFORMED', 400],
    ['a space before the colon', ['POST /validate HTTP/1.1', 'Host : acme.meshgate.test'], 'MG_ERR_REQUEST_MALFORMED', 400],
    [
      'Content-Length with Transfer-Encoding (smuggling)',
      ['POST /validate HTTP/1.1', 'Host: acme.meshgate.test', 'Content-Length: 4', 'Transfer-Encoding: chunked'],
      'MG_ERR_REQUEST_MALFORMED',
      400,
    ],
    [
      'two different Content-Lengths',
      ['POST /validate HTTP/1.1', 'Host: acme.meshgate.test', 'Content-Length: 4', 'Content-Length: 5'],
      'MG_ERR_REQUEST_MALFORMED',
      400,
    ],
    ['no Host header', ['POST /validate HTTP/1.1', 'Content-Type: application/json', 'Content-Length: 2', '', '{}'], 'MG_ERR_REQUEST_MALFORMED', 400],
    ['headers over the size limit', ['POST /validate HTTP/1.1', 'Host: acme.meshgate.test', `X-Big: ${'a'.repeat(20_000)}`], 'MG_ERR_REQUEST_HEADERS_TOO_LARGE', 431],
  ] as const)('answers %s with a JSON error', async (_name, lines, code, status) => {
    const { text } = await raw([...lines]);
    expect(text.split('\r\n')[0]).toBe(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : 'Bad Request'}`);
    expect(codeOf(text)).toBe(code);
  });

  it('keeps serving after all of that', async () => {
    const res = await inject();
    expect(res.status).toBe(200);
    drainIstiodRequests(sandbox);
  });
});

describe('timeouts that still apply', () => {
  let gateway: ExtraGateway;
  beforeAll(async () => {
    gateway = await startGatewayFrom(sandbox, (config) => {
      Object.assign(config.listeners.webhook, { headersTimeout: '300ms', requestTimeout: '1s', handshakeTimeout: '500ms', idleTimeout: '1s' });
    });
  });
  afterAll(() => gateway.close());

  const h2Session = (port = gateway.port('webhook')) => {
    const tenant = acme();
    const session = http2Connect(`https://127.0.0.1:${port}`, {
      servername: tenant.host,
      ca: readFileSync(sandbox.info.caFile),
      cert: readFileSync(tenant.clientCert),
      key: readFileSync(tenant.clientKey),
    });
    session.on('error', () => undefined);
    return session;
  };

  it('answers a stalled HTTP/2 body with a 408 at the deadline, then resets the stream', async () => {
    // On the sandbox's listener, whose idle timeout (5 min) would not end the stream: only the reset does.
    const session = h2Session(sandbox.info.listeners.webhook.port);
    const outcome = await new Promise<{ status: number; body: string; rstCode: number | undefined }>((resolve) => {
      const stream = session.request(
        { ':method': 'POST', ':path': '/inject/cluster/acme-east/net/network1?timeout=1s', ':authority': acme().host, 'content-type': 'application/json' },
        { endStream: false },
      );
      stream.write('{"apiVersion":'); // and never the rest
      let status = 0;
      let body = '';
      stream.on('response', (h) => (status = Number(h[':status'])));
      stream.on('data', (c: Buffer) => (body += c.toString()));
      stream.on('close', () => resolve({ status, body, rstCode: stream.rstCode }));
      stream.on('error', () => undefined);
    });
    session.destroy();
    expect([outcome.status, codeOf(outcome.body), outcome.rstCode]).toEqual([408, 'MG_ERR_REQUEST_TIMEOUT', 0]);
  });

  it('closes an HTTP/2 stream it refused before reading it, so it cannot be held open', async () => {
    const session = h2Session(sandbox.info.listeners.webhook.port);
    const outcome = await new Promise<{ status: number; rstCode: number | undefined }>((resolve) => {
      const stream = session.request(
        { ':method': 'GET', ':path': '/inject/cluster/acme-east/net/network1', ':authority': acme().host },
        { endStream: false },
      );
      stream.write('x');
      let status = 0;
      stream.on('response', (h) => (status = Number(h[':status'])));
      stream.resume();
      stream.on('close', () => resolve({ status, rstCode: stream.rstCode }));
      stream.on('error', () => undefined);
    });
    session.destroy();
    expect(outcome).toEqual({ status: 405, rstCode: 0 });
  });

  it('ends an idle HTTP/2 session', async () => {
    const session = h2Session();
    const ended = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 15_000);
      session.on('goaway', () => undefined);
      session.on('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    expect(ended).toBe(true);
  });

  it('closes a connection whose headers never finish (slowloris) with a 408', async () => {
    const tenant = acme();
    const { text, closedByServer } = await rawTls(
      { port: gateway.port('webhook'), servername: tenant.host, ca: sandbox.info.caFile },
      `POST /validate HTTP/1.1\r\nHost: ${tenant.host}\r\nX-Slow: `,
    );
    expect(closedByServer).toBe(true);
    expect(text).toMatch(/^HTTP\/1\.1 408/);
    expect(codeOf(text)).toBe('MG_ERR_REQUEST_TIMEOUT');
  });

  it('closes a connection that never completes the TLS handshake', async () => {
    const closed = await new Promise<boolean>((resolve) => {
      const socket = netConnect(gateway.port('webhook'), '127.0.0.1');
      const timer = setTimeout(() => {
        socket.destroy();
        resolve(false);
      }, 10_000);
      socket.on('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
      socket.on('error', () => undefined);
    });
    expect(closed).toBe(true);
  });
});
