/**
 * What TLS meshgate's listeners speak: by default TLS 1.3, and TLS 1.2 with ECDHE key exchange and
 * AEAD ciphers only (AES-GCM, ChaCha20-Poly1305), the set of Istio's gateways and Mozilla's
 * "intermediate" profile. Each refused suite is tried in a real handshake, offered alone. Then a
 * listener's own profile (minimum version, suites, groups) is honoured for every tenant on it, and
 * ECDSA server certificates work beside RSA ones.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, getCiphers, type SecureVersion } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import { startGatewayFrom, startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

/** Handshakes with one cipher suite on offer; resolves with the suite agreed, or the error. */
function handshake(
  cipher: string,
  version: SecureVersion = 'TLSv1.2',
  { port = sandbox.info.listeners.xds.port, tenant = 'acme', ca = [readFileSync(sandbox.info.caFile, 'utf8')], curve }: { port?: number; tenant?: 'acme' | 'globex'; ca?: string[]; curve?: string } = {},
): Promise<{ agreed?: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = connect({
      host: '127.0.0.1',
      port,
      servername: tenantOf(sandbox, tenant).host,
      ca,
      minVersion: version,
      maxVersion: version,
      ...(version === 'TLSv1.3' ? {} : { ciphers: cipher }),
      ...(curve === undefined ? {} : { ecdhCurve: curve }),
    });
    socket.once('secureConnect', () => {
      resolve({ agreed: socket.getCipher().standardName });
      socket.destroy();
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
  });
}

// Every TLS 1.2 suite this Node can offer with an RSA certificate that is not ECDHE with AEAD:
// static-RSA key exchange (no forward secrecy), CBC (LUCKY13), and finite-field DHE.
const REFUSED = ['AES128-GCM-SHA256', 'AES256-GCM-SHA384', 'AES128-SHA', 'AES256-SHA', 'AES128-SHA256', 'AES256-SHA256', 'ECDHE-RSA-AES128-SHA', 'ECDHE-RSA-AES256-SHA', 'DHE-RSA-AES128-SHA', 'DHE-RSA-AES256-SHA'].filter(
  (c) => getCiphers().includes(c.toLowerCase()),
);

describe('TLS 1.2 suites', () => {
  it.each(REFUSED)('refuses %s', async (cipher) => {
    const result = await handshake(cipher);
    expect(result.agreed).toBeUndefined();
    expect(result.error).toMatch(/HANDSHAKE_FAILURE|NO_SHARED_CIPHER|ECONNRESET/);
  });

  it.each(['ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-RSA-CHACHA20-POLY1305'])('accepts %s', async (cipher) => {
    expect((await handshake(cipher)).agreed).toMatch(/^TLS_ECDHE_RSA_WITH_/);
  });

  it('speaks TLS 1.3', async () => {
    expect((await handshake('', 'TLSv1.3')).agreed).toMatch(/^TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)$/);
  });
});

describe("a listener's own TLS profile", () => {
  it('honours a minimum version, a list of suites and a list of groups, for every tenant on the listener', async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.listeners.xds.tls = { minVersion: 'TLSv1.3' };
      config.listeners.api.tls = { ciphers: ['ECDHE-RSA-AES256-GCM-SHA384'], curves: ['P-384'] };
    });
    try {
      const xds = gateway.port('xds');
      const api = gateway.port('api');
      for (const tenant of ['acme', 'globex'] as const) {
        expect((await handshake('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port: xds, tenant })).agreed).toBeUndefined();
        expect((await handshake('', 'TLSv1.3', { port: xds, tenant })).agreed).toMatch(/^TLS_/);
        expect((await handshake('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port: api, tenant })).agreed).toBeUndefined();
        expect((await handshake('ECDHE-RSA-AES256-GCM-SHA384', 'TLSv1.2', { port: api, tenant })).agreed).toBe('TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384');
        expect((await handshake('ECDHE-RSA-AES256-GCM-SHA384', 'TLSv1.2', { port: api, tenant, curve: 'X25519' })).agreed).toBeUndefined();
      }
      // The default profile on the listener that did not set one.
      expect((await handshake('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port: gateway.port('webhook') })).agreed).toBe('TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256');
    } finally {
      await gateway.close();
    }
  });
});

describe('ECDSA server certificates', () => {
  it('serves an ECDSA tenant beside an RSA one on the same listener, each with its own suite', async () => {
    const ca = await createCertificateAuthority('ecdsa server CA', 30, 'ecdsa');
    const host = tenantOf(sandbox, 'acme').host;
    const issued = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server', keyType: 'ecdsa' });
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-ecdsa-'));
    writeFileSync(join(dir, 'acme.pem'), issued.cert);
    writeFileSync(join(dir, 'acme-key.pem'), issued.key);
    const gateway = await startGatewayFrom(sandbox, (config) => {
      const acme = (config.tenants as Record<string, any>[]).find((t) => t.id === 'acme');
      if (acme) acme.tls = { ...acme.tls, cert: join(dir, 'acme.pem'), key: join(dir, 'acme-key.pem') };
    });
    try {
      const port = gateway.port('xds');
      const trust = [readFileSync(sandbox.info.caFile, 'utf8'), ca.cert];
      expect((await handshake('ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port, ca: trust })).agreed).toBe('TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256');
      expect((await handshake('ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port, tenant: 'globex', ca: trust })).agreed).toBe('TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256');
      // An RSA-only client cannot talk to the ECDSA tenant: the suite follows the certificate.
      expect((await handshake('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2', { port, ca: trust })).agreed).toBeUndefined();
      expect((await handshake('', 'TLSv1.3', { port, ca: trust })).agreed).toMatch(/^TLS_/);
    } finally {
      await gateway.close();
    }
  });
});
