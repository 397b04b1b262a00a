/**
 * TLS-level tenant isolation. Node/OpenSSL will resume a session made under one SNI on a connection
 * with another SNI, and report the old client certificate as authorized without checking it
 * against the second tenant's CA. meshgate turns session resumption off, and checks the chain
 * against the routed tenant's CA itself; this file guards both.
 */
import { readFileSync } from 'node:fs';
import { connect, type SecureVersion, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

interface Exchange {
  readonly reused: boolean;
  readonly session: Buffer | undefined;
  readonly response: string;
}

/** One TLS connection: an HTTP/1.1 GET /version with a debug token, optionally resuming `session`. */
function exchange(servername: string, version: SecureVersion, session?: Buffer): Promise<Exchange> {
  const acme = tenantOf(sandbox, 'acme');
  return new Promise((resolve, reject) => {
    let captured: Buffer | undefined;
    let reused = false;
    const chunks: Buffer[] = [];
    const socket: TLSSocket = connect({
      host: '127.0.0.1',
      port: sandbox.info.listeners.api.port,
      servername,
      ca: readFileSync(sandbox.info.caFile),
      cert: readFileSync(acme.clientCert),
      key: readFileSync(acme.clientKey),
      minVersion: version,
      maxVersion: version,
      ALPNProtocols: ['http/1.1'],
      ...(session ? { session } : {}),
    });
    socket.on('session', (s: Buffer) => {
      captured = s;
    });
    socket.on('secureConnect', () => {
      reused = socket.isSessionReused();
      socket.write(`GET /version HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => resolve({ reused, session: captured, response: Buffer.concat(chunks).toString('utf8') }));
  });
}

describe.each(['TLSv1.2', 'TLSv1.3'] as const)('session resumption over %s', (version) => {
  it("never resumes a session, so acme's certificate cannot ride into globex's tenant", async () => {
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');
    const first = await exchange(acme.host, version);
    expect(first.response).toMatch(/^HTTP\/1\.1 200/);

    // Whatever session material the client kept, offering it again resumes nothing.
    const again = await exchange(acme.host, version, first.session);
    expect(again.reused).toBe(false);

    const crossed = await exchange(globex.host, version, first.session);
    expect(crossed.reused).toBe(false);
    expect(crossed.response).toMatch(/^HTTP\/1\.1 401/);
    expect(crossed.response).toContain('"code":"MG_ERR_AUTHN_CLIENT_CERT_INVALID"');
  });
});
