/**
 * What TLS meshgate's listeners speak: TLS 1.3, and TLS 1.2 with ECDHE key exchange and AEAD
 * ciphers only (AES-GCM, ChaCha20-Poly1305), the set of Istio's gateways and Mozilla's
 * "intermediate" profile. Each refused suite is tried in a real handshake, offered alone.
 */
import { readFileSync } from 'node:fs';
import { connect, getCiphers, type SecureVersion } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

/** Handshakes with one cipher suite on offer; resolves with the suite agreed, or the error. */
function handshake(cipher: string, version: SecureVersion = 'TLSv1.2'): Promise<{ agreed?: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = connect({
      host: '127.0.0.1',
      port: sandbox.info.listeners.xds.port,
      servername: tenantOf(sandbox, 'acme').host,
      ca: readFileSync(sandbox.info.caFile),
      minVersion: version,
      maxVersion: version,
      ...(version === 'TLSv1.3' ? {} : { ciphers: cipher }),
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
