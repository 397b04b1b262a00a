/**
 * TLS handshake failures are logged at info with the listener, the SNI, the remote address and
 * OpenSSL's reason, and a flood of them costs a bounded number of lines plus a count of the rest.
 */
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { HANDSHAKE_LOG_BURST, HANDSHAKE_LOG_RATE } from '../src/observability/handshake-log.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { capturingLogger, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

const capture = capturingLogger();
let sandbox: Sandbox;
let gateway: ExtraGateway;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  gateway = await startGatewayFrom(sandbox, () => undefined, { logger: capture.logger });
});
afterAll(async () => {
  await gateway.close();
  await sandbox.close();
});

/** One handshake that fails on the server's side: resolves when the client has seen it fail. */
function failedHandshake(port: number, servername: string, options: { ciphers?: string; maxVersion?: 'TLSv1.2' } = {}): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, servername, ca: readFileSync(sandbox.info.caFile), ...options });
    socket.on('secureConnect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

const failures = (listener: string) => capture.lines.filter((l) => l.msg === 'TLS handshake failed' && l.listener === listener);

describe('TLS handshake failures', () => {
  it('are logged at info with the listener, the SNI, the remote address and the reason', async () => {
    const host = tenantOf(sandbox, 'acme').host;
    // Only a static-RSA CBC suite, which meshgate does not offer: OpenSSL has no shared cipher.
    expect(await failedHandshake(gateway.port('api'), host, { ciphers: 'AES128-SHA', maxVersion: 'TLSv1.2' })).toMatch(/HANDSHAKE_FAILURE/);
    await vi.waitFor(() => expect(failures('api')).toHaveLength(1));
    expect(failures('api')[0]).toMatchObject({
      level: 'info',
      listener: 'api',
      sni: host,
      remote: expect.stringMatching(/127\.0\.0\.1$/) as unknown,
      reason: 'no shared cipher',
      code: 'ERR_SSL_NO_SHARED_CIPHER',
    });

    // Plain HTTP to a TLS port: no SNI at all, and OpenSSL says what it saw instead.
    await new Promise<void>((resolve) => {
      const socket = netConnect({ host: '127.0.0.1', port: gateway.port('api') }, () => socket.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n'));
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
    });
    await vi.waitFor(() => expect(failures('api')).toHaveLength(2));
    expect(failures('api')[1]).toMatchObject({ listener: 'api', reason: 'http request', code: 'ERR_SSL_HTTP_REQUEST' });
    expect(failures('api')[1]?.sni).toBeUndefined();
  });

  it('are logged at most at the rate, the rest counted in a line of their own', async () => {
    const host = tenantOf(sandbox, 'globex').host;
    const flood = 60;
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: flood }, () => failedHandshake(gateway.port('webhook'), host, { ciphers: 'AES128-SHA', maxVersion: 'TLSv1.2' })));
    const seconds = (performance.now() - started) / 1000;
    expect(results.filter((r) => r === 'connected')).toEqual([]);

    const suppressed = () =>
      capture.lines.filter((l) => l.msg === 'TLS handshake failures not logged' && l.listener === 'webhook').reduce((n, l) => n + Number(l.suppressed), 0);
    await vi.waitFor(() => expect(failures('webhook').length + suppressed()).toBe(flood), { timeout: 5_000 });
    expect(failures('webhook').length).toBeGreaterThanOrEqual(HANDSHAKE_LOG_BURST);
    expect(failures('webhook').length).toBeLessThanOrEqual(HANDSHAKE_LOG_BURST + Math.ceil(HANDSHAKE_LOG_RATE * seconds));
    expect(suppressed()).toBeGreaterThan(0);
    // Every failure is counted in the metric, logged or not.
    expect(await gateway.gateway.metrics.registry.metrics()).toMatch(new RegExp(`^meshgate_tls_handshake_errors_total\\{listener="webhook"\\} ${flood}$`, 'm'));
  });
});
