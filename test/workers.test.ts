/**
 * `meshgate serve --workers N`: connections spread across the workers, one /metrics for the whole
 * instance, SIGHUP reaches every worker, a worker that dies is replaced, and SIGTERM drains them all.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parse, stringify } from 'yaml';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { run, start } from './helpers/cli.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(async () => {
  await sandbox.close();
});

/** The sandbox's config with every port 0, in a file of its own. */
function configFile(): string {
  const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
  config.admin = { host: '127.0.0.1', port: 0 };
  for (const listener of Object.values(config.listeners as Record<string, { port: number }>)) listener.port = 0;
  const file = join(mkdtempSync(join(tmpdir(), 'meshgate-workers-')), 'meshgate.yaml');
  writeFileSync(file, stringify(config));
  return file;
}

const lines = (text: string): Record<string, unknown>[] =>
  text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe('meshgate serve --workers 2', () => {
  it('spreads connections, merges metrics, reloads and replaces workers, and drains them all', async () => {
    const server = start(['serve', '--config', configFile(), '--workers', '2', '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/, 30_000);
      const serving = JSON.parse(line) as { admin: { port: number }; workers: number; listeners: Record<string, { port: number }> };
      expect(serving.workers).toBe(2);
      const workerPids = () => new Set(lines(server.stdout()).filter((l) => l.msg === 'worker is serving').map((l) => l.pid));
      // Each worker's log is flushed on a timer of its own.
      await vi.waitFor(() => expect(workerPids().size).toBe(2), { timeout: 5_000 });
      const admin = `http://127.0.0.1:${serving.admin.port}`;
      expect(await (await fetch(`${admin}/readyz`)).json()).toMatchObject({ status: 'ready', workers: 2, serving: 2 });

      // 40 requests, each on a connection of its own: both workers take some.
      const acme = tenantOf(sandbox, 'acme');
      const port = serving.listeners.api?.port ?? 0;
      const syncz = () => call({ port, servername: acme.host, path: '/debug/syncz', headers: { authorization: `Bearer ${acme.tokens.debug}` }, ca: sandbox.info.caFile });
      for (let i = 0; i < 40; i++) expect((await syncz()).status).toBe(200);
      const metrics = await (await fetch(`${admin}/metrics`)).text();
      // One figure for the instance: the sum of both workers' counts.
      expect(metrics).toMatch(/^meshgate_http_requests_total\{tenant="acme",plane="debug",outcome="OK"\} 40$/m);
      // Each worker's access log is flushed on its own timer.
      const served = () => lines(server.stdout()).filter((l) => l.msg === 'request' && l.outcome === 'OK');
      await vi.waitFor(() => expect(served()).toHaveLength(40), { timeout: 10_000 });
      expect(new Set(served().map((l) => l.pid)).size).toBe(2);

      // SIGHUP to the primary reloads every worker.
      server.child.kill('SIGHUP');
      await server.waitFor(/(?:"msg":"config reloaded"[\s\S]*){2}/, 10_000);

      // A worker killed outright is replaced, and the instance keeps serving.
      const [victim] = [...workerPids()];
      process.kill(Number(victim), 'SIGKILL');
      await server.waitFor(/"msg":"worker exited; replacing it"/, 10_000);
      await server.waitFor(/(?:"msg":"worker is serving"[\s\S]*){3}/, 20_000);
      for (let i = 0; i < 4; i++) expect((await syncz()).status).toBe(200);
      expect((await fetch(`${admin}/readyz`)).status).toBe(200);
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
    // The primary and the two live workers each drain once (a worker's own disconnect on its way out is no second drain).
    expect(lines(server.stdout()).filter((l) => l.msg === 'draining')).toHaveLength(3);
    expect(server.stdout()).toMatch(/"role":"primary"[^\n]*"msg":"stopped"/);
    expect(server.stderr()).not.toMatch(/Uncaught|TypeError|RangeError/);
  }, 90_000);

  it('refuses a --workers that is not a whole number from 1 to 256', async () => {
    for (const bad of ['0', '1.5', 'many', '1000']) {
      const { code, stderr } = await run(['serve', '--config', configFile(), '--workers', bad]);
      expect(code).toBe(2);
      expect(stderr).toContain('--workers: a whole number from 1 to 256');
    }
  });
});
