/**
 * Bad input, part 2: credentials and decisions. Every missing, invalid, expired, misdirected or
 * foreign credential is refused with its own code and reaches no istiod (DESIGN.md §5 invariants
 * 1 and 6).
 */
import { readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createIssuer } from '../src/sandbox/issuer.js';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call, rawTls, type CallOptions } from './helpers/client.js';
import { admissionReview, drainIstiodRequests, expectNothingReachedIstiod, startGatewayFrom, startTestSandbox, tenantOf } from './helpers/sandbox.js';
import { closedPort } from './helpers/upstream.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());
afterEach(() => expectNothingReachedIstiod(sandbox));

const tenant = (id: 'acme' | 'globex') => tenantOf(sandbox, id);

function debug(id: 'acme' | 'globex', change: Partial<CallOptions> = {}, port = sandbox.info.listeners.api.port) {
  return call({ port, servername: tenant(id).host, path: '/debug/syncz', ca: sandbox.info.caFile, ...change });
}

function webhook(id: 'acme' | 'globex', change: Partial<CallOptions> = {}, port = sandbox.info.listeners.webhook.port) {
  return call({
    port,
    servername: tenant(id).host,
    method: 'POST',
    path: `/inject/cluster/${id === 'acme' ? 'acme-east' : 'globex-main'}/net/network1`,
    headers: { 'content-type': 'application/json' },
    body: admissionReview('auth'),
    ca: sandbox.info.caFile,
    ...change,
  });
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const expectError = (res: { status: number; json(): { code?: string } }, status: number, code: string) =>
  expect([res.status, res.json().code]).toEqual([status, code]);

/** A throwaway file holding `text`. */
function tempFile(name: string, text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), 'meshgate-auth-')), name);
  writeFileSync(path, text);
  return path;
}

describe('missing and malformed credentials', () => {
  it('asks for a credential, naming what the plane accepts', async () => {
    const res = await webhook('acme');
    expectError(res, 401, 'MG_ERR_AUTHN_REQUIRED');
    expect(res.json().message).toBe('authentication required: present a client certificate or a bearer token');
    expectError(await debug('acme'), 401, 'MG_ERR_AUTHN_REQUIRED');
  });

  it.each(['Bearer not-a-jwt', 'Basic dXNlcjpwYXNz', 'Bearer a.b'])('refuses Authorization %j as malformed', async (authorization) => {
    expectError(await debug('acme', { headers: { authorization } }), 401, 'MG_ERR_AUTHN_TOKEN_MALFORMED');
  });
});

describe('invalid tokens', () => {
  it('refuses a token whose issuer is none of the tenant clusters', async () => {
    const stranger = await createIssuer('acme-east', 'https://oidc.evil.example', 'ES256');
    const token = await stranger.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: 'istio-ca' });
    expectError(await debug('acme', { headers: bearer(token) }), 401, 'MG_ERR_AUTHN_TOKEN_ISSUER');
  });

  it("refuses a token forged with the cluster's issuer and key id but another key", async () => {
    const forger = await createIssuer('acme-east', sandbox.info.issuer, 'ES256');
    const token = await forger.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: 'istio-ca' });
    expectError(await debug('acme', { headers: bearer(token) }), 401, 'MG_ERR_AUTHN_TOKEN_INVALID');
  });

  it("refuses globex's token on acme's host, though both clusters share an issuer string", async () => {
    expectError(await debug('acme', { headers: bearer(tenant('globex').tokens.debug) }), 401, 'MG_ERR_AUTHN_TOKEN_INVALID');
  });

  it('refuses an expired token', async () => {
    const issuer = sandbox.issuers.get('acme-east');
    if (!issuer) throw new Error('no issuer');
    const token = await issuer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: 'istio-ca', lifetimeSeconds: -3600 });
    expectError(await debug('acme', { headers: bearer(token) }), 401, 'MG_ERR_AUTHN_TOKEN_EXPIRED');
  });

  it('refuses a token for another plane (audience confusion)', async () => {
    expectError(await debug('acme', { headers: bearer(tenant('acme').tokens.webhook) }), 401, 'MG_ERR_AUTHN_TOKEN_AUDIENCE');
    expectError(await debug('acme', { headers: bearer(tenant('acme').tokens.kube) }), 401, 'MG_ERR_AUTHN_TOKEN_AUDIENCE');
    expectError(await webhook('acme', { headers: { ...bearer(tenant('acme').tokens.debug), 'content-type': 'application/json' } }), 401, 'MG_ERR_AUTHN_TOKEN_AUDIENCE');
  });

  it("refuses a cluster's token injecting into another cluster of the same tenant", async () => {
    const res = await webhook('acme', {
      path: '/inject/cluster/acme-west/net/network1',
      headers: { ...bearer(tenant('acme').tokens.webhook), 'content-type': 'application/json' },
    });
    expectError(res, 403, 'MG_ERR_AUTHZ_CLUSTER_MISMATCH');
  });

  it('does not let a token cached for one tenant answer for another', async () => {
    const token = tenant('acme').tokens.debug;
    expect((await debug('acme', { headers: bearer(token) })).status).toBe(200);
    drainIstiodRequests(sandbox);
    expectError(await debug('globex', { headers: bearer(token) }), 401, 'MG_ERR_AUTHN_TOKEN_INVALID');
  });
});

describe('client certificates', () => {
  it('fails a presented certificate that does not verify, even next to a valid token', async () => {
    const rogue = await createCertificateAuthority('rogue');
    const cert = await issueCertificate(rogue, { commonName: 'acme-mesh-client', organization: 'acme', usage: 'client' });
    const res = await debug('acme', {
      headers: bearer(tenant('acme').tokens.debug),
      cert: tempFile('rogue.pem', cert.cert),
      key: tempFile('rogue-key.pem', cert.key),
    });
    expectError(res, 401, 'MG_ERR_AUTHN_CLIENT_CERT_INVALID');
  });

  it("refuses another tenant's certificate", async () => {
    expectError(await debug('acme', { cert: tenant('globex').clientCert, key: tenant('globex').clientKey }), 401, 'MG_ERR_AUTHN_CLIENT_CERT_INVALID');
  });

  it("refuses a certificate from the tenant's own CA that is not for client authentication", async () => {
    const acme = tenant('acme');
    const ca = { cert: readFileSync(acme.clientCa, 'utf8'), key: readFileSync(acme.clientCaKey, 'utf8') };
    const server = await issueCertificate(ca, { commonName: 'not-a-client', usage: 'server' });
    const res = await debug('acme', { cert: tempFile('server.pem', server.cert), key: tempFile('server-key.pem', server.key) });
    expectError(res, 401, 'MG_ERR_AUTHN_CLIENT_CERT_INVALID');
  });
});

describe('path keys', () => {
  it('refuses a wrong key', async () => {
    const res = await webhook('globex', { path: `/k/${'x'.repeat(32)}/inject/cluster/globex-main/net/network1` });
    expectError(res, 401, 'MG_ERR_AUTHN_PATH_KEY_INVALID');
  });

  it("refuses globex's key on acme's host, where no path key is accepted", async () => {
    const path = new URL(tenant('globex').webhook.inject).pathname.replace('globex-main', 'acme-east');
    expectError(await webhook('acme', { path }), 401, 'MG_ERR_AUTHN_PATH_KEY_INVALID');
  });
});

describe('the debug allowlist', () => {
  it.each([
    '/debug/force_disconnect?proxyID=productpage-v1-0.bookinfo',
    '/debug/pprof/heap',
    '/debug/pprof/',
    '/debug/adsz?push=true',
    '/debug/cachez?clear=true',
    '/debug/adsz',
    '/debug/syncz/extra',
  ])('refuses %s', async (path) => {
    expectError(await debug('acme', { path, headers: bearer(tenant('acme').tokens.debug) }), 403, 'MG_ERR_AUTHZ_DEBUG_ENDPOINT');
  });

  it.each([
    ['Content-Length', (inner: string) => [`Content-Length: ${Buffer.byteLength(inner)}`, '', inner]],
    ['chunked', (inner: string) => ['Transfer-Encoding: chunked', '', `${Buffer.byteLength(inner).toString(16)}\r\n${inner}\r\n0\r\n`]],
  ] as const)('refuses a GET with a body (%s): the smuggling of a second request to istiod', async (_framing, framing) => {
    const acme = tenant('acme');
    const inner = 'GET /debug/force_disconnect?proxyID=x HTTP/1.1\r\nHost: istiod\r\nX-Pad: ';
    const { text } = await rawTls(
      { port: sandbox.info.listeners.api.port, servername: acme.host, ca: sandbox.info.caFile },
      [`GET /debug/syncz HTTP/1.1`, `Host: ${acme.host}`, `Authorization: Bearer ${acme.tokens.debug}`, ...framing(inner)].join('\r\n'),
    );
    expect(text).toMatch(/^HTTP\/1\.1 400/);
    expect(text).toContain('"code":"MG_ERR_REQUEST_BODY_UNEXPECTED"');
  });

  it('refuses an HTTP/2 GET with DATA', async () => {
    const res = await debug('acme', { protocol: 'h2', headers: bearer(tenant('acme').tokens.debug), body: 'GET /debug/pprof/ HTTP/1.1\r\n\r\n' });
    expectError(res, 400, 'MG_ERR_REQUEST_BODY_UNEXPECTED');
  });

  it('takes GET and HEAD only', async () => {
    const res = await debug('acme', { method: 'POST', headers: bearer(tenant('acme').tokens.debug) });
    expect([res.status, res.json().code, res.headers.allow]).toEqual([405, 'MG_ERR_REQUEST_METHOD_NOT_ALLOWED', 'GET, HEAD']);
  });
});

describe('tenant rules and limits', () => {
  it("applies the tenant's rules after authentication", async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.tenants[0].access = { ...config.tenants[0].access, debug: [{ method: 'token', subject: 'system:serviceaccount:istio-system:istiod' }] };
    });
    try {
      expectError(await debug('acme', { headers: bearer(tenant('acme').tokens.debug) }, gateway.port('api')), 403, 'MG_ERR_AUTHZ_DENIED');
    } finally {
      await gateway.close();
    }
  });

  it('refuses a source outside the allowed networks, even with a valid credential', async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.tenants[0].webhook.sourceCIDRs = ['10.0.0.0/8'];
    });
    try {
      const res = await webhook('acme', { cert: tenant('acme').clientCert, key: tenant('acme').clientKey }, gateway.port('webhook'));
      expectError(res, 403, 'MG_ERR_AUTHZ_SOURCE_ADDRESS');
    } finally {
      await gateway.close();
    }
  });

  it('refuses bodies beyond the shared buffer budget', async () => {
    const gateway = await startGatewayFrom(sandbox, () => undefined, { bodyBudgetBytes: 256 });
    try {
      const res = await webhook('acme', { cert: tenant('acme').clientCert, key: tenant('acme').clientKey }, gateway.port('webhook'));
      expectError(res, 503, 'MG_ERR_REQUEST_BUSY');
    } finally {
      await gateway.close();
    }
  });

  it("keeps each tenant's bodies within the tenant's own budget", async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.tenants[0].webhook.maxBufferedBytes = 256;
    });
    try {
      const acme = await webhook('acme', { cert: tenant('acme').clientCert, key: tenant('acme').clientKey }, gateway.port('webhook'));
      expectError(acme, 503, 'MG_ERR_REQUEST_BUSY');
      const globex = await webhook('globex', { path: new URL(tenant('globex').webhook.inject).pathname }, gateway.port('webhook'));
      expect(globex.status).toBe(200);
      drainIstiodRequests(sandbox);
    } finally {
      await gateway.close();
    }
  });

  it('fails closed when the signing keys cannot be had', async () => {
    const port = await closedPort();
    const gateway = await startGatewayFrom(sandbox, (config) => {
      // acme-west has no keys (TokenReview); every cluster that has some cannot reach them.
      for (const cluster of config.tenants[0].clusters) if (cluster.jwks) cluster.jwks.url = `https://127.0.0.1:${port}/openid/v1/jwks`;
    });
    try {
      expectError(await debug('acme', { headers: bearer(tenant('acme').tokens.debug) }, gateway.port('api')), 503, 'MG_ERR_AUTHN_JWKS_UNAVAILABLE');
    } finally {
      await gateway.close();
    }
  });
});
