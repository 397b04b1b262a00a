/**
 * The admin listener (metrics, health, readiness), one access-log line per request, credentials
 * never logged, and config reloads: a good one swaps the snapshot, a bad one keeps the last good
 * one and says so.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parse, stringify } from 'yaml';
import { ConfigError } from '../src/config/issues.js';
import { loadConfig } from '../src/config/load.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { admissionReview, capturingLogger, startTestSandbox, tenantOf } from './helpers/sandbox.js';

const capture = capturingLogger();
let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox(capture.logger);
});
afterAll(() => sandbox.close());

const admin = async (path: string, method = 'GET') => {
  const res = await fetch(`${sandbox.info.admin}${path}`, { method });
  return { status: res.status, text: await res.text(), type: res.headers.get('content-type') };
};

const tenant = (id: 'acme' | 'globex') => tenantOf(sandbox, id);

const debugCall = (id: 'acme' | 'globex', token: string) =>
  call({
    port: sandbox.info.listeners.api.port,
    servername: tenant(id).host,
    path: '/debug/syncz',
    headers: { authorization: `Bearer ${token}` },
    ca: sandbox.info.caFile,
  });

describe('admin listener', () => {
  it('listens on loopback and answers health and readiness', async () => {
    expect(new URL(sandbox.info.admin).hostname).toBe('127.0.0.1');
    expect(await admin('/healthz')).toMatchObject({ status: 200, text: '{"status":"ok"}\n' });
    const ready = await admin('/readyz');
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toMatchObject({ status: 'ready', tenants: 2 });
    expect((await admin('/nope')).status).toBe(404);
    expect((await admin('/metrics', 'POST')).status).toBe(405);
  });

  it('exports requests by tenant, plane and outcome, latency, denials by reason and upstream errors', async () => {
    const globex = tenant('globex');
    await call({
      port: sandbox.info.listeners.webhook.port,
      servername: globex.host,
      method: 'POST',
      path: new URL(globex.webhook.inject).pathname,
      headers: { 'content-type': 'application/json' },
      body: admissionReview('metrics'),
      ca: sandbox.info.caFile,
    });
    await debugCall('acme', 'not.a-token');
    const { text, type } = await admin('/metrics');
    expect(type).toContain('text/plain');
    expect(text).toMatch(/^meshgate_http_requests_total\{tenant="globex",plane="webhook",outcome="OK"\} \d+$/m);
    expect(text).toMatch(/^meshgate_http_requests_total\{tenant="acme",plane="debug",outcome="MG_ERR_AUTHN_TOKEN_MALFORMED"\} \d+$/m);
    expect(text).toMatch(/^meshgate_denials_total\{tenant="acme",plane="debug",reason="MG_ERR_AUTHN_TOKEN_MALFORMED"\} \d+$/m);
    expect(text).toMatch(/^meshgate_http_request_duration_seconds_bucket\{le="[\d.]+",tenant="globex",plane="webhook"\} \d+$/m);
    expect(text).toMatch(/^# TYPE meshgate_upstream_errors_total counter$/m);
    expect(text).toMatch(/^meshgate_jwks_loads_total\{tenant="acme",cluster="acme-east",result="success"\} \d+$/m);
    expect(text).toMatch(/^meshgate_listener_connections\{listener="webhook"\} \d+$/m);
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m);
    // Labels stay bounded: no path, token or identity ever becomes one.
    expect(text).not.toContain('/inject');
    expect(text).not.toContain('system:serviceaccount');
  });

  it('counts verified-token cache hits', async () => {
    const token = tenant('acme').tokens.debug;
    await debugCall('acme', token);
    await debugCall('acme', token);
    expect((await admin('/metrics')).text).toMatch(/^meshgate_token_cache_lookups_total\{result="hit"\} [1-9]\d*$/m);
  });
});

describe('access log', () => {
  it('writes one line per request: tenant, plane, subject, outcome code, duration', async () => {
    const before = capture.lines.length;
    await debugCall('acme', tenant('acme').tokens.debug);
    await debugCall('globex', tenant('acme').tokens.debug);
    await new Promise((r) => setTimeout(r, 50));
    const lines = capture.lines.slice(before).filter((l) => l.msg === 'request');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({
      tenant: 'acme',
      plane: 'debug',
      subject: 'system:serviceaccount:istio-system:kiali',
      auth: 'token',
      cluster: 'acme-east',
      outcome: 'OK',
      status: 200,
      upstreamStatus: 200,
    });
    expect(lines[0]?.durationMs).toEqual(expect.any(Number));
    expect(lines[1]).toMatchObject({ tenant: 'globex', plane: 'debug', outcome: 'MG_ERR_AUTHN_TOKEN_INVALID', status: 401 });
  });

  it('never writes a credential: tokens, path keys and keys stay out of every line', async () => {
    const globex = tenant('globex');
    await call({
      port: sandbox.info.listeners.webhook.port,
      servername: globex.host,
      method: 'POST',
      path: `${new URL(globex.webhook.inject).pathname}?timeout=10s`,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${globex.tokens.webhook}` },
      body: admissionReview('log'),
      ca: sandbox.info.caFile,
    });
    await new Promise((r) => setTimeout(r, 50));
    const all = capture.raw.join('');
    const pathKey = /\/k\/([^/]+)\//.exec(globex.webhook.inject)?.[1] ?? '';
    expect(pathKey.length).toBeGreaterThan(20);
    for (const secret of [pathKey, globex.tokens.webhook, globex.tokens.debug, tenant('acme').tokens.debug]) {
      expect(all).not.toContain(secret);
    }
    expect(all).toContain('/k/[redacted]/inject/cluster/globex-main/net/network1');
  });

  it('never writes a path key or a token that a refused request carries, in any spelling or position', async () => {
    const globex = tenant('globex');
    const acme = tenant('acme');
    const key = /\/k\/([^/]+)\//.exec(globex.webhook.inject)?.[1] ?? '';
    const token = acme.tokens.debug;
    const webhook = (path: string) =>
      call({
        port: sandbox.info.listeners.webhook.port,
        servername: globex.host,
        method: 'POST',
        path,
        headers: { 'content-type': 'application/json' },
        body: admissionReview('spelling'),
        ca: sandbox.info.caFile,
      });
    const api = (host: string, path: string) => call({ port: sandbox.info.listeners.api.port, servername: host, path, ca: sandbox.info.caFile });
    const requestLines = () => capture.lines.filter((l) => l.msg === 'request').length;
    const before = requestLines();
    const refused = [
      await webhook(`//k/${key}/inject/cluster/globex-main/net/network1`),
      await webhook(`/./k/${key}/inject/cluster/globex-main/net/network1`),
      await webhook(`/k/${key}/k/${key}/inject/cluster/globex-main/net/network1`),
      await webhook(`/%6B/${key}/inject/cluster/globex-main/net/network1`),
      await webhook(`/k%2F${key}%2Finject`),
      await webhook(`/inject/cluster/globex-main/net/network1?key=${key}`),
      await api(acme.host, `/debug/syncz?access_token=${token}`),
      await api(acme.host, `/debug/syncz?token=${token}&x=1`),
      await api(acme.host, `/clusters/acme-east/api/v1/namespaces?access_token=${token}`),
      await api(acme.host, `/clusters/${token}/api/v1/namespaces`),
    ];
    for (const response of refused) expect(response.status).toBeGreaterThanOrEqual(400);
    // Every line those requests produced, wherever it came from.
    await vi.waitFor(() => expect(requestLines()).toBeGreaterThanOrEqual(before + refused.length));
    const all = capture.raw.join('');
    expect(all).not.toContain(key);
    expect(all).not.toContain(token);
    expect(all).not.toContain(token.split('.')[2]);
  });
});

describe('config reload', () => {
  it('swaps in a good config, and keeps the last good one when a reload fails', async () => {
    const { gateway } = sandbox;
    const original = readFileSync(sandbox.info.config, 'utf8');
    const version = gateway.current().version;
    const metric = async (result: string) =>
      Number(new RegExp(`^meshgate_config_reloads_total\\{result="${result}"\\} (\\d+)$`, 'm').exec((await admin('/metrics')).text)?.[1] ?? 0);

    // A good reload: debug access for acme narrowed to istiod's token.
    const narrowed = parse(original) as Record<string, any>;
    narrowed.tenants[0].access = { ...narrowed.tenants[0].access, debug: [{ subject: 'system:serviceaccount:istio-system:istiod' }] };
    writeFileSync(sandbox.info.config, stringify(narrowed));
    gateway.reload(() => loadConfig(sandbox.info.config));
    expect(gateway.current().version).toBe(version + 1);
    expect((await debugCall('acme', tenant('acme').tokens.debug)).json().code).toBe('MG_ERR_AUTHZ_DENIED');
    expect(await metric('success')).toBe(1);
    const lastReloadSuccessful = async () => Number(/^meshgate_config_last_reload_successful (\d+)$/m.exec((await admin('/metrics')).text)?.[1]);
    expect(await lastReloadSuccessful()).toBe(1);

    // A bad reload: the error is thrown, counted, and the narrowed snapshot stays in use.
    writeFileSync(sandbox.info.config, original.replace('tenants:', 'tenantz:'));
    expect(() => gateway.reload(() => loadConfig(sandbox.info.config))).toThrow(ConfigError);
    expect(gateway.current().version).toBe(version + 1);
    expect((await debugCall('acme', tenant('acme').tokens.debug)).json().code).toBe('MG_ERR_AUTHZ_DENIED');
    expect(await metric('failure')).toBe(1);
    expect(await lastReloadSuccessful()).toBe(0);

    writeFileSync(sandbox.info.config, original);
    gateway.reload(() => loadConfig(sandbox.info.config));
    expect((await debugCall('acme', tenant('acme').tokens.debug)).status).toBe(200);
    expect(await lastReloadSuccessful()).toBe(1);
  });
});
