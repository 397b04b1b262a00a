/**
 * `meshgate serve` with `logging.audit`: the file is opened at start (a bad path stops it there,
 * saying why), written until the drain is over, and with `--workers N` each worker has its own.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

/** The sandbox's config with every port 0 and an audit file, in a directory of its own. */
function configWithAudit(audit: Record<string, unknown>): { file: string; dir: string } {
  const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
  config.admin = { host: '127.0.0.1', port: 0 };
  for (const listener of Object.values(config.listeners as Record<string, { port: number }>)) listener.port = 0;
  config.logging = { level: 'info', audit };
  const dir = mkdtempSync(join(tmpdir(), 'meshgate-audit-serve-'));
  const file = join(dir, 'meshgate.yaml');
  writeFileSync(file, stringify(config));
  return { file, dir };
}

const requestLines = (path: string): Record<string, unknown>[] =>
  existsSync(path)
    ? readFileSync(path, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.msg === 'request')
    : [];

async function syncz(port: number, times: number): Promise<void> {
  const acme = tenantOf(sandbox, 'acme');
  for (let i = 0; i < times; i++) {
    const res = await call({ port, servername: acme.host, path: '/debug/syncz', headers: { authorization: `Bearer ${acme.tokens.debug}` }, ca: sandbox.info.caFile });
    expect(res.status).toBe(200);
  }
}

describe('meshgate serve with an audit file', () => {
  it('refuses to start when the file cannot be opened, naming it and the reason', async () => {
    const { file, dir } = configWithAudit({ file: 'no-such-dir/audit.log' });
    for (const workers of ['1', '2']) {
      const { code, stderr } = await run(['serve', '--config', file, '--workers', workers]);
      expect(code).toBe(1);
      expect(stderr).toContain(`logging.audit.file: cannot open ${join(dir, 'no-such-dir', 'audit')}`);
      expect(stderr).toContain('ENOENT');
    }
  });

  it('writes every request line, relative to the config file, until the drain is over', async () => {
    const { file, dir } = configWithAudit({ file: 'audit.log', maxSize: '64KiB', maxFiles: 2 });
    const server = start(['serve', '--config', file, '--workers', '1', '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/, 30_000);
      const { listeners } = JSON.parse(line) as { listeners: Record<string, { port: number }> };
      await syncz(listeners.api?.port ?? 0, 5);
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
    const lines = requestLines(join(dir, 'audit.log'));
    expect(lines).toHaveLength(5);
    expect(lines[0]).toMatchObject({ tenant: 'acme', plane: 'debug', outcome: 'OK', rule: 'access.debug[0]' });
  });

  it('gives each worker a file of its own', async () => {
    const { file, dir } = configWithAudit({ file: 'audit.log' });
    const server = start(['serve', '--config', file, '--workers', '2', '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/, 30_000);
      const { listeners } = JSON.parse(line) as { listeners: Record<string, { port: number }> };
      // Each request on a connection of its own: connections go to the workers in turn.
      await syncz(listeners.api?.port ?? 0, 20);
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
    expect(existsSync(join(dir, 'audit.log'))).toBe(false);
    const first = requestLines(join(dir, 'audit-worker-1.log'));
    const second = requestLines(join(dir, 'audit-worker-2.log'));
    expect(first.length).toBeGreaterThan(0);
    expect(second.length).toBeGreaterThan(0);
    expect(first.length + second.length).toBe(20);
    expect(new Set(first.map((l) => l.pid)).size).toBe(1);
    expect(first[0]?.pid).not.toBe(second[0]?.pid);
  });
});
