/**
 * When the tenant's istiod is down, distrusted, slow or broken, the caller gets a quick, clear
 * answer (never a hang), and a response cut short never looks complete. TLS to istiod is always
 * verified (DESIGN.md §5 invariant 6), and long responses outlive request timeouts while those
 * timeouts still bound slow clients (invariant 4).
 */
import { readFileSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { refuseLoopback } from '../src/forward/refuse-loopback.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, type CallOptions } from './helpers/client.js';
import { admissionReview, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';
import { closedPort, startHttpUpstream, type TestUpstream } from './helpers/upstream.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const acme = () => tenantOf(sandbox, 'acme');

const inject = (gateway: ExtraGateway, change: Partial<CallOptions> = {}) =>
  call({
    port: gateway.port('webhook'),
    servername: acme().host,
    method: 'POST',
    path: '/inject/cluster/acme-east/net/network1?timeout=10s',
    headers: { 'content-type': 'application/json' },
    body: admissionReview('upstream'),
    ca: sandbox.info.caFile,
    cert: acme().clientCert,
    key: acme().clientKey,
    ...change,
  });

const debug = (gateway: ExtraGateway, change: Partial<CallOptions> = {}) =>
  call({
    port: gateway.port('api'),
    servername: acme().host,
    path: '/debug/config_dump?proxyID=productpage-v1-0.bookinfo',
    headers: { authorization: `Bearer ${acme().tokens.debug}` },
    ca: sandbox.info.caFile,
    ...change,
  });

async function withGateway(edit: (acmeConfig: Record<string, any>) => void, run: (gateway: ExtraGateway) => Promise<void>): Promise<void> {
  const gateway = await startGatewayFrom(sandbox, (config) => edit(config.tenants[0]));
  try {
    await run(gateway);
  } finally {
    await gateway.close();
  }
}

describe('upstream unreachable or untrusted', () => {
  it('answers 503 when istiod is down', async () => {
    const port = await closedPort();
    await withGateway(
      (t) => {
        t.istiod.webhook.url = `https://127.0.0.1:${port}`;
        t.istiod.debug.url = `http://127.0.0.1:${port}`;
      },
      async (gateway) => {
        const res = await inject(gateway);
        expect([res.status, res.json().code]).toEqual([503, 'MG_ERR_UPSTREAM_UNAVAILABLE']);
        const dbg = await debug(gateway);
        expect([dbg.status, dbg.json().code]).toEqual([503, 'MG_ERR_UPSTREAM_UNAVAILABLE']);
      },
    );
  });

  it("answers 502 when istiod's certificate does not verify against the configured CA", async () => {
    await withGateway(
      (t) => {
        t.istiod.webhook.ca = sandbox.info.caFile;
      },
      async (gateway) => {
        const res = await inject(gateway);
        expect([res.status, res.json().code]).toEqual([502, 'MG_ERR_UPSTREAM_TLS']);
      },
    );
  });

  it("answers 502 when istiod's certificate is for another name", async () => {
    await withGateway(
      (t) => {
        t.istiod.webhook.serverName = 'istiod.globex-cp.svc';
      },
      async (gateway) => {
        const res = await inject(gateway);
        expect([res.status, res.json().code]).toEqual([502, 'MG_ERR_UPSTREAM_TLS']);
      },
    );
  });

  it('refuses upstream names that resolve to loopback', async () => {
    const error = await new Promise<unknown>((resolve) => refuseLoopback('localhost', {}, (err) => resolve(err)));
    expect(error).toMatchObject({ code: 'MG_ERR_UPSTREAM_LOOPBACK' });
  });
});

describe('upstream slow or broken', () => {
  let upstream: TestUpstream;
  const slowBodyMs = 1_500;
  /** Slow responses the upstream saw cut off by meshgate (its client went away). */
  let abandoned = 0;
  beforeAll(async () => {
    upstream = await startHttpUpstream((req, res) => {
      res.on('close', () => {
        if (!res.writableFinished) abandoned++;
      });
      const path = req.url ?? '';
      if (path.startsWith('/debug/syncz')) return; // never answers
      if (path.startsWith('/debug/configz')) {
        req.socket.destroy(); // drops the connection
        return;
      }
      if (path.startsWith('/debug/registryz')) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
        res.write('{"partial":');
        setTimeout(() => res.socket?.destroy(), 50); // a response cut short
        return;
      }
      if (path.startsWith('/debug/config_dump')) {
        // A long response: chunks over longer than the listener's request timeout.
        res.writeHead(200, { 'content-type': 'application/json' });
        let n = 0;
        const timer = setInterval(() => {
          res.write(`{"chunk":${n}}\n`);
          if (++n === 6) {
            clearInterval(timer);
            res.end();
          }
        }, slowBodyMs / 6);
        return;
      }
      res.writeHead(404).end();
    });
  });
  afterAll(() => upstream.close());

  const slowGateway = (run: (gateway: ExtraGateway) => Promise<void>, deadline = '1s') =>
    (async () => {
      const gateway = await startGatewayFrom(sandbox, (config) => {
        Object.assign(config.listeners.api, { requestTimeout: '500ms', headersTimeout: '400ms' });
        config.tenants[0].istiod.debug.url = upstream.url;
        config.tenants[0].debug = { authentication: ['token', 'clientCertificate'], timeout: deadline };
      });
      try {
        await run(gateway);
      } finally {
        await gateway.close();
      }
    })();

  it('answers 504 when istiod does not answer within the deadline', async () => {
    await slowGateway(async (gateway) => {
      const res = await debug(gateway, { path: '/debug/syncz' });
      expect([res.status, res.json().code]).toEqual([504, 'MG_ERR_UPSTREAM_TIMEOUT']);
    });
  });

  it("honours the kube-apiserver's ?timeout= on the webhook plane", async () => {
    const hanging = await startHttpUpstream(() => undefined);
    try {
      await withGateway(
        (t) => {
          t.istiod.webhook = { url: hanging.url };
        },
        async (gateway) => {
          const res = await inject(gateway, { path: '/inject/cluster/acme-east/net/network1?timeout=1s' });
          expect([res.status, res.json().code]).toEqual([504, 'MG_ERR_UPSTREAM_TIMEOUT']);
        },
      );
    } finally {
      await hanging.close();
    }
  });

  it('answers 502 when istiod drops the connection', async () => {
    await slowGateway(async (gateway) => {
      const res = await debug(gateway, { path: '/debug/configz' });
      expect([res.status, res.json().code]).toEqual([502, 'MG_ERR_UPSTREAM_RESET']);
    });
  });

  it('never lets a truncated response look complete (HTTP/1.1: the connection is cut)', async () => {
    await slowGateway(async (gateway) => {
      const outcome = await new Promise<string>((resolve) => {
        const req = httpsRequest(
          {
            host: '127.0.0.1',
            port: gateway.port('api'),
            servername: acme().host,
            ca: readFileSync(sandbox.info.caFile),
            path: '/debug/registryz',
            headers: { host: acme().host, authorization: `Bearer ${acme().tokens.debug}` },
            agent: false,
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.complete ? 'complete' : 'incomplete'));
            res.on('error', () => resolve('error'));
            res.on('aborted', () => resolve('aborted'));
          },
        );
        req.on('error', () => resolve('error'));
        req.end();
      });
      expect(outcome).not.toBe('complete');
    });
  });

  it('never lets a truncated response look complete (HTTP/2: the stream is reset)', async () => {
    await slowGateway(async (gateway) => {
      const session = http2Connect(`https://127.0.0.1:${gateway.port('api')}`, { ca: readFileSync(sandbox.info.caFile), servername: acme().host });
      session.on('error', () => undefined);
      const outcome = await new Promise<{ how: string; rstCode: number | undefined }>((resolve) => {
        const stream = session.request({ ':path': '/debug/registryz', ':authority': acme().host, authorization: `Bearer ${acme().tokens.debug}` });
        stream.resume();
        stream.on('end', () => resolve({ how: 'end', rstCode: stream.rstCode }));
        stream.on('error', () => resolve({ how: 'error', rstCode: stream.rstCode }));
        stream.on('close', () => resolve({ how: 'close', rstCode: stream.rstCode }));
      });
      session.destroy();
      expect(outcome.how).not.toBe('end');
      expect(outcome.rstCode).not.toBe(0);
    });
  });

  it.each(['h1', 'h2'] as const)('drops the upstream request when a %s client resets mid-response', async (protocol) => {
    await slowGateway(async (gateway) => {
      const before = abandoned;
      if (protocol === 'h2') {
        const session = http2Connect(`https://127.0.0.1:${gateway.port('api')}`, { ca: readFileSync(sandbox.info.caFile), servername: acme().host });
        session.on('error', () => undefined);
        const stream = session.request({ ':path': '/debug/config_dump', ':authority': acme().host, authorization: `Bearer ${acme().tokens.debug}` });
        stream.on('error', () => undefined);
        await new Promise((resolve) => stream.once('data', resolve));
        stream.close(8); // RST_STREAM(CANCEL)
        await new Promise((r) => setTimeout(r, 50));
        session.destroy();
      } else {
        await new Promise<void>((resolve) => {
          const req = httpsRequest(
            {
              host: '127.0.0.1',
              port: gateway.port('api'),
              servername: acme().host,
              ca: readFileSync(sandbox.info.caFile),
              path: '/debug/config_dump',
              headers: { host: acme().host, authorization: `Bearer ${acme().tokens.debug}` },
              agent: false,
            },
            (res) => res.once('data', () => {
              req.destroy();
              resolve();
            }),
          );
          req.on('error', () => undefined);
          req.end();
        });
      }
      for (let i = 0; i < 100 && abandoned === before; i++) await new Promise((r) => setTimeout(r, 20));
      expect(abandoned).toBe(before + 1);
    }, '10s');
  });

  it('lets a long response outlive the request and header timeouts (they bound receiving a request, not answering it)', async () => {
    await slowGateway(async (gateway) => {
      for (const protocol of ['h1', 'h2'] as const) {
        const res = await call({
          protocol,
          port: gateway.port('api'),
          servername: acme().host,
          path: '/debug/config_dump',
          headers: { authorization: `Bearer ${acme().tokens.debug}` },
          ca: sandbox.info.caFile,
        });
        expect(res.status).toBe(200);
        expect(res.body.trim().split('\n')).toHaveLength(6);
      }
    }, '10s');
  });
});
