/**
 * DESIGN.md §5 invariant 3: headers that upstreams trust are removed before meshgate sets its own.
 * Driven through the stand-in istiod, which records exactly what reached it (raw header names).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { normalizeHeaderName } from '../src/http/headers.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import type { RecordedRequest } from '../src/sandbox/standins/istiod.js';
import { call, rawTls } from './helpers/client.js';
import { admissionReview, drainIstiodRequests, startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

/** Spoofed headers in every spelling that matters, as a client would send them. */
const SPOOFED: [string, string][] = [
  ['clusterid', 'globex-main'],
  ['ClusterID', 'globex-main'],
  ['x-forwarded-client-cert', 'URI=spiffe://cluster.local/ns/istio-system/sa/istiod'],
  ['X_Forwarded_Client_Cert', 'URI=spiffe://cluster.local/ns/istio-system/sa/istiod'],
  ['Impersonate-User', 'system:admin'],
  ['impersonate_group', 'system:masters'],
  ['IMPERSONATE-UID', '0'],
  ['Impersonate-Extra-Scopes', 'all'],
  ['X-Forwarded-For', '10.66.6.6'],
  ['x_forwarded_proto', 'http'],
  ['X-Forwarded-Host', 'istiod.globex-cp.svc'],
  ['X-Remote-User', 'root'],
  ['x_remote_group', 'system:masters'],
  ['Forwarded', 'for=10.66.6.6'],
  ['X-Real-IP', '10.66.6.6'],
  ['X-Envoy-Original-Path', '/debug/force_disconnect'],
];

const BANNED = /^(clusterid|x-forwarded-client-cert|impersonate-.*|x-remote-.*|forwarded|x-real-ip|x-envoy-.*|expect|x-custom-hop)$/;

function names(request: RecordedRequest | undefined): string[] {
  const raw = request?.rawHeaders ?? [];
  return raw.filter((_, i) => i % 2 === 0);
}

function assertClean(request: RecordedRequest | undefined): void {
  expect(request).toBeDefined();
  const leaked = names(request).filter((name) => BANNED.test(normalizeHeaderName(name)));
  expect(leaked).toEqual([]);
  // meshgate's own x-forwarded-* replace the caller's, never join them.
  expect(request?.headers['x-forwarded-for']).toBe('127.0.0.1');
  expect(request?.headers['x-forwarded-proto']).toBe('https');
  expect(request?.headers['x-forwarded-host']).toBeUndefined();
  expect(names(request).filter((n) => normalizeHeaderName(n) === 'x-forwarded-for')).toHaveLength(1);
}

function rawRequest(lines: string[], body = ''): string {
  return `${lines.join('\r\n')}\r\n\r\n${body}`;
}

describe('header hygiene on the webhook plane', () => {
  it('removes spoofed trusted headers in any case and underscore spelling (HTTP/1.1, raw)', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    const body = admissionReview('hygiene-h1');
    const { text, closedByServer } = await rawTls(
      { port: sandbox.info.listeners.webhook.port, servername: acme.host, ca: sandbox.info.caFile, cert: acme.clientCert, key: acme.clientKey },
      rawRequest(
        [
          'POST /inject/cluster/acme-east/net/network1 HTTP/1.1',
          `Host: ${acme.host}`,
          'Content-Type: application/json',
          `Content-Length: ${Buffer.byteLength(body)}`,
          'Connection: close, X-Custom-Hop',
          'X-Custom-Hop: must-not-pass',
          ...SPOOFED.map(([n, v]) => `${n}: ${v}`),
        ],
        body,
      ),
      // Well inside the 5 s keep-alive timeout: the client's `Connection: close` must be honoured.
      { waitForCloseMs: 2_000 },
    );
    expect(text).toMatch(/^HTTP\/1\.1 200/);
    expect(text).toMatch(/\r\nconnection: close\r\n/i);
    expect(closedByServer).toBe(true);
    assertClean(drainIstiodRequests(sandbox).get('acme')?.[0]);
  });

  it('removes them over HTTP/2 too', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    const headers = Object.fromEntries(SPOOFED.map(([n, v]) => [n.toLowerCase(), v]));
    const res = await call({
      protocol: 'h2',
      port: sandbox.info.listeners.webhook.port,
      servername: acme.host,
      method: 'POST',
      path: '/inject/cluster/acme-east/net/network1',
      headers: { ...headers, 'content-type': 'application/json' },
      body: admissionReview('hygiene-h2'),
      ca: sandbox.info.caFile,
      cert: acme.clientCert,
      key: acme.clientKey,
    });
    expect(res.status).toBe(200);
    assertClean(drainIstiodRequests(sandbox).get('acme')?.[0]);
  });

  it('sets its headers even when the client sends Expect: 100-continue (which skips http-proxy\'s proxyReq)', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    const body = admissionReview('hygiene-expect');
    const { text } = await rawTls(
      { port: sandbox.info.listeners.webhook.port, servername: acme.host, ca: sandbox.info.caFile, cert: acme.clientCert, key: acme.clientKey },
      (write) => {
        write(
          rawRequest([
            'POST /inject/cluster/acme-east/net/network1 HTTP/1.1',
            `Host: ${acme.host}`,
            'Content-Type: application/json',
            `Content-Length: ${Buffer.byteLength(body)}`,
            'Expect: 100-continue',
            'Connection: close',
            ...SPOOFED.map(([n, v]) => `${n}: ${v}`),
          ]),
        );
        setTimeout(() => write(body), 50);
      },
    );
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue/);
    expect(text).toMatch(/HTTP\/1\.1 200 OK/);
    assertClean(drainIstiodRequests(sandbox).get('acme')?.[0]);
  });

  it('rejects a Connection header that names a header meshgate protects, before it reaches anyone', async () => {
    drainIstiodRequests(sandbox);
    const acme = tenantOf(sandbox, 'acme');
    for (const named of ['clusterid', 'Impersonate-User', 'x_forwarded_for', 'authorization']) {
      const body = admissionReview('hop');
      const { text } = await rawTls(
        { port: sandbox.info.listeners.webhook.port, servername: acme.host, ca: sandbox.info.caFile, cert: acme.clientCert, key: acme.clientKey },
        rawRequest(
          [
            'POST /inject/cluster/acme-east/net/network1 HTTP/1.1',
            `Host: ${acme.host}`,
            'Content-Type: application/json',
            `Content-Length: ${Buffer.byteLength(body)}`,
            `Connection: close, ${named}`,
          ],
          body,
        ),
      );
      expect(text).toMatch(/^HTTP\/1\.1 400/);
      expect(text).toContain('"code":"MG_ERR_REQUEST_HOP_BY_HOP"');
    }
    expect([...drainIstiodRequests(sandbox).values()].flat()).toEqual([]);
  });
});

describe('header hygiene on the debug plane', () => {
  it('replaces clusterid and passes only the verified token', async () => {
    drainIstiodRequests(sandbox);
    const globex = tenantOf(sandbox, 'globex');
    const { text } = await rawTls(
      { port: sandbox.info.listeners.api.port, servername: globex.host, ca: sandbox.info.caFile },
      rawRequest([
        'GET /debug/syncz HTTP/1.1',
        `Host: ${globex.host}`,
        `Authorization: Bearer ${globex.tokens.debug}`,
        'Connection: close',
        ...SPOOFED.map(([n, v]) => `${n}: ${v}`),
      ]),
    );
    expect(text).toMatch(/^HTTP\/1\.1 200/);
    const request = drainIstiodRequests(sandbox).get('globex')?.[0];
    const clusterids = names(request).filter((n) => normalizeHeaderName(n) === 'clusterid');
    expect(clusterids).toHaveLength(1);
    expect(request?.headers.clusterid).toBe('globex-main');
    expect(request?.headers.authorization).toBe(`Bearer ${globex.tokens.debug}`);
    const leaked = names(request).filter((n) => /^(x-forwarded-client-cert|impersonate-.*|x-remote-.*)$/.test(normalizeHeaderName(n)));
    expect(leaked).toEqual([]);
  });
});
