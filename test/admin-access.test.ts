/**
 * The admin listener's access control: /healthz and /readyz answer anyone; /metrics, /status,
 * /status.json and unknown paths answer only a caller from admin.access.sourceCIDRs or one with
 * the bearer token; anyone else gets the same 403, which says nothing about what would pass.
 * A test cannot call from a non-loopback address, so "outside" is a list that leaves loopback out.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { adminAccessSettings } from '../src/admin/access.js';
import type { ConfigError } from '../src/config/issues.js';
import { loadConfig } from '../src/config/load.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { start } from './helpers/cli.js';
import { capturingLogger, startGatewayFrom, startTestSandbox, type ExtraGateway } from './helpers/sandbox.js';

const TOKEN = 'adm1n-t0ken-for-tests-only-3f9c2a';
const PROTECTED = ['/metrics', '/status', '/status.json', '/nope', '/status/../metrics'];

let sandbox: Sandbox;
let tokenFile: string;
beforeAll(async () => {
  sandbox = await startTestSandbox();
  tokenFile = join(mkdtempSync(join(tmpdir(), 'meshgate-admin-')), 'admin-token');
  // A trailing newline, as `echo > file` and mounted Secrets often leave: the token is trimmed.
  writeFileSync(tokenFile, `${TOKEN}\n`);
});
afterAll(() => sandbox.close());

interface Answer {
  readonly status: number;
  readonly text: string;
}

async function get(base: string, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Answer> {
  const res = await fetch(`${base}${path}`, { headers, method });
  return { status: res.status, text: await res.text() };
}

const adminUrl = (g: ExtraGateway, host = '127.0.0.1'): string => `http://${host.includes(':') ? `[${host}]` : host}:${g.addresses.admin.port}`;

describe('admin access: sources outside the list, with and without the token', () => {
  const capture = capturingLogger();
  let gateway: ExtraGateway;
  beforeAll(async () => {
    gateway = await startGatewayFrom(
      sandbox,
      (config) => {
        config.admin = { host: '127.0.0.1', port: 0, access: { sourceCIDRs: ['10.0.0.0/8', 'fd00::/8'], bearerTokenFile: tokenFile } };
      },
      { logger: capture.logger },
    );
  });
  afterAll(() => gateway.close());

  it('answers /healthz and /readyz to anyone', async () => {
    expect(await get(adminUrl(gateway), '/healthz')).toMatchObject({ status: 200 });
    expect(await get(adminUrl(gateway), '/readyz')).toMatchObject({ status: 200 });
  });

  it('refuses everything else from outside the list, unknown paths and other methods too, with one answer that names nothing', async () => {
    const answers = await Promise.all([...PROTECTED.map((p) => get(adminUrl(gateway), p)), get(adminUrl(gateway), '/metrics', {}, 'POST')]);
    for (const answer of answers) {
      expect(answer.status).toBe(403);
      expect(JSON.parse(answer.text)).toEqual({ status: 'forbidden' });
    }
  });

  it('serves everything to the bearer token, and only to the exact token', async () => {
    const withToken = { authorization: `Bearer ${TOKEN}` };
    const metrics = await get(adminUrl(gateway), '/metrics', withToken);
    expect(metrics.status).toBe(200);
    expect(metrics.text).toMatch(/^meshgate_config_snapshot_version \d+$/m);
    expect((await get(adminUrl(gateway), '/status', withToken)).status).toBe(200);
    expect((await get(adminUrl(gateway), '/status.json', withToken)).status).toBe(200);
    expect(await get(adminUrl(gateway), '/nope', withToken)).toMatchObject({ status: 404 });
    expect((await get(adminUrl(gateway), '/metrics', { authorization: `bearer  ${TOKEN}` })).status).toBe(200);

    const refused: Record<string, string>[] = [
      { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      { authorization: `Bearer ${TOKEN}x` },
      { authorization: `Bearer ${TOKEN.toUpperCase()}` },
      { authorization: `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}` },
      { authorization: TOKEN },
      { authorization: 'Bearer ' },
      { authorization: `Bearer ${TOKEN} extra` },
      { 'x-bearer': TOKEN },
    ];
    for (const headers of refused) {
      const answer = await get(adminUrl(gateway), '/metrics', headers);
      expect(answer.status, JSON.stringify(headers)).toBe(403);
      expect(answer.text).not.toContain(TOKEN.slice(0, 8));
    }
  });

  it('never writes the token to the log', async () => {
    await get(adminUrl(gateway), '/metrics', { authorization: `Bearer ${TOKEN}` });
    await get(adminUrl(gateway), '/metrics', { authorization: `Bearer wrong-${TOKEN}` });
    expect(capture.raw.join('')).not.toContain(TOKEN);
  });
});

/** A GET with a Host header of our choosing (fetch sets its own). */
function getWithHost(g: ExtraGateway, path: string, host: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: g.addresses.admin.port, path, headers: { ...headers, host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('admin access: the Host a caller admitted by its address uses (DNS rebinding)', () => {
  let gateway: ExtraGateway;
  beforeAll(async () => {
    gateway = await startGatewayFrom(sandbox, (config) => {
      config.admin = { host: '127.0.0.1', port: 0, access: { hostNames: ['meshgate-admin.meshgate.svc'], bearerTokenFile: tokenFile } };
    });
  });
  afterAll(() => gateway.close());

  it('serves an IP, localhost and a configured name, with or without a port', async () => {
    const port = gateway.addresses.admin.port;
    for (const host of [`127.0.0.1:${port}`, '127.0.0.1', `[::1]:${port}`, `localhost:${port}`, 'LOCALHOST', `meshgate-admin.meshgate.svc:${port}`]) {
      expect(await getWithHost(gateway, '/status.json', host), host).toBe(200);
    }
  });

  it("refuses any other name: a rebound page's own", async () => {
    const port = gateway.addresses.admin.port;
    for (const host of [`attacker.example:${port}`, 'attacker.example', `localhost.attacker.example:${port}`, `127.0.0.1:${port}:1`]) {
      expect(await getWithHost(gateway, '/metrics', host), host).toBe(403);
    }
    // Probes do not depend on it, and the token holder is served under any name.
    expect(await getWithHost(gateway, '/healthz', 'attacker.example')).toBe(200);
    expect(await getWithHost(gateway, '/metrics', 'attacker.example', { authorization: `Bearer ${TOKEN}` })).toBe(200);
  });
});

describe('admin access: source addresses', () => {
  const gateways: ExtraGateway[] = [];
  const gatewayWith = async (host: string, sourceCIDRs: string[]): Promise<ExtraGateway> => {
    const g = await startGatewayFrom(sandbox, (config) => {
      config.admin = { host, port: 0, access: { sourceCIDRs } };
    });
    gateways.push(g);
    return g;
  };
  afterAll(() => Promise.all(gateways.map((g) => g.close())));

  it('serves a caller inside the list (the default: loopback)', async () => {
    const g = await startGatewayFrom(sandbox, (config) => {
      config.admin = { host: '127.0.0.1', port: 0 };
    });
    gateways.push(g);
    for (const path of ['/metrics', '/status', '/status.json']) expect((await get(adminUrl(g), path)).status).toBe(200);
  });

  it('checks an IPv4 caller on a dual-stack socket (::ffff:127.0.0.1) as 127.0.0.1', async () => {
    const inside = await gatewayWith('::', ['127.0.0.0/8']);
    expect((await get(adminUrl(inside), '/metrics')).status).toBe(200);
    const outside = await gatewayWith('::', ['10.0.0.0/8']);
    expect((await get(adminUrl(outside), '/metrics')).status).toBe(403);
  });

  it('checks IPv6 callers against IPv6 networks', async () => {
    const inside = await gatewayWith('::1', ['::1/128']);
    expect((await get(adminUrl(inside, '::1'), '/metrics')).status).toBe(200);
    const outside = await gatewayWith('::1', ['127.0.0.0/8']);
    expect((await get(adminUrl(outside, '::1'), '/metrics')).status).toBe(403);
    expect((await get(adminUrl(outside, '::1'), '/healthz')).status).toBe(200);
  });

  it('refuses everyone but the token holder when the list is empty', async () => {
    const g = await gatewayWith('127.0.0.1', []);
    expect((await get(adminUrl(g), '/status')).status).toBe(403);
    expect((await get(adminUrl(g), '/readyz')).status).toBe(200);
  });
});

describe('admin access: the token file', () => {
  const configWith = (access: object, extra: Record<string, string> = {}): string => {
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    config.admin = { host: '127.0.0.1', port: 0, access };
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-admin-config-'));
    for (const [name, text] of Object.entries(extra)) writeFileSync(join(dir, name), text);
    const file = join(dir, 'meshgate.yaml');
    writeFileSync(file, stringify(config));
    return file;
  };

  it('is read relative to the config file, and trimmed', () => {
    const settings = adminAccessSettings(loadConfig(configWith({ bearerTokenFile: 'token' }, { token: `  ${TOKEN}\n` })));
    expect(settings.bearerToken).toBe(TOKEN);
    expect(settings.sourceCIDRs).toEqual(['127.0.0.0/8', '::1/128']);
  });

  it('refuses to start when it is empty or missing, rather than run without a token', () => {
    // The loader checks the file with every other file the config names: `meshgate check` says so too.
    const problems = (load: () => unknown): string => {
      try {
        load();
      } catch (err) {
        return (err as ConfigError).issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n');
      }
      return 'loaded';
    };
    expect(problems(() => loadConfig(configWith({ bearerTokenFile: 'token' }, { token: ' \n' })))).toMatch(/^admin\.access\.bearerTokenFile: .*token: is empty$/);
    expect(problems(() => loadConfig(configWith({ bearerTokenFile: 'absent' })))).toMatch(/^admin\.access\.bearerTokenFile: cannot read .*absent: ENOENT$/);
  });
});

describe('admin access with serve --workers 2', () => {
  it('the primary enforces it too', async () => {
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    config.admin = { host: '127.0.0.1', port: 0, access: { sourceCIDRs: ['10.0.0.0/8'], bearerTokenFile: tokenFile } };
    for (const listener of Object.values(config.listeners as Record<string, { port: number }>)) listener.port = 0;
    const file = join(mkdtempSync(join(tmpdir(), 'meshgate-workers-admin-')), 'meshgate.yaml');
    writeFileSync(file, stringify(config));
    const server = start(['serve', '--config', file, '--workers', '2', '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/, 30_000);
      const admin = `http://127.0.0.1:${(JSON.parse(line) as { admin: { port: number } }).admin.port}`;
      expect((await get(admin, '/readyz')).status).toBe(200);
      for (const path of PROTECTED) expect((await get(admin, path)).status).toBe(403);
      expect((await get(admin, '/metrics', { authorization: 'Bearer nope' })).status).toBe(403);
      const metrics = await get(admin, '/metrics', { authorization: `Bearer ${TOKEN}` });
      expect(metrics.status).toBe(200);
      expect(metrics.text).toMatch(/^meshgate_config_snapshot_version \d+$/m);
      const status = await get(admin, '/status.json', { authorization: `Bearer ${TOKEN}` });
      expect(status.status).toBe(200);
      const report = JSON.parse(status.text) as { mode: string; tenants: { id: string; hosts: string[] }[] };
      expect(report.mode).toBe('2 workers');
      expect(report.tenants.map((t) => t.id)).toEqual(expect.arrayContaining(['acme', 'globex']));
      expect(server.stdout()).not.toContain(TOKEN);
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
  });
});

