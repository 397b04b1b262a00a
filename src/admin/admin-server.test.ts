import { afterEach, describe, expect, it } from 'vitest';
import { createAdminAccess } from './access.js';
import { createAdminServer, type AdminServer } from './admin-server.js';

const failing = {
  start: () => undefined,
  stop: () => undefined,
  report: () => Promise.reject(new Error('a worker did not answer')),
};

describe('admin server', () => {
  let server: AdminServer | undefined;
  afterEach(() => server?.close());

  const start = async (): Promise<string> => {
    server = createAdminServer({
      host: '127.0.0.1',
      port: 0,
      metrics: { contentType: 'text/plain', text: () => Promise.reject(new Error('no registry')) },
      readiness: () => ({ ready: false, detail: { why: 'starting' } }),
      access: createAdminAccess({ sourceCIDRs: ['127.0.0.0/8'] }),
      status: failing,
    });
    const { port } = await server.listen();
    return `http://127.0.0.1:${port}`;
  };

  it('answers 500 with no detail when the metrics or the status cannot be read', async () => {
    const base = await start();
    for (const path of ['/metrics', '/status', '/status.json']) {
      const res = await fetch(`${base}${path}`);
      expect(res.status, path).toBe(500);
      expect(JSON.stringify(await res.json())).not.toMatch(/worker|registry/);
    }
  });

  it('refuses other methods than GET and HEAD to an admitted caller', async () => {
    const base = await start();
    for (const path of ['/status', '/status.json', '/healthz']) {
      const res = await fetch(`${base}${path}`, { method: 'POST' });
      expect(res.status, path).toBe(405);
      expect(res.headers.get('allow')).toBe('GET, HEAD');
    }
  });

  it('answers 503 on /readyz until it is ready', async () => {
    const base = await start();
    const res = await fetch(`${base}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'not ready', why: 'starting' });
  });
});
