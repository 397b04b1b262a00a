/**
 * The audit log: each request's line, with the rule that allowed it, on every plane, and each kube
 * long-running start, in a file as well as in the log; no credential in the file in any spelling.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createAuditFile, type AuditFile } from '../src/observability/audit-file.js';
import { createLogger } from '../src/observability/logger.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { adsClient, adsOnce, bearer, metadata, TYPE_URL } from './helpers/grpc.js';
import { admissionReview, startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from './helpers/sandbox.js';

let sandbox: Sandbox;
let gateway: ExtraGateway;
let audit: AuditFile;
const stdout: Record<string, unknown>[] = [];

beforeAll(async () => {
  sandbox = await startTestSandbox();
  audit = createAuditFile({ file: join(mkdtempSync(join(tmpdir(), 'meshgate-audit-')), 'audit.log'), maxSize: 1024 * 1024, maxFiles: 2 });
  const logger = createLogger('info', { write: (line: string) => stdout.push(JSON.parse(line) as Record<string, unknown>) }, undefined, audit);
  gateway = await startGatewayFrom(
    sandbox,
    (config) => {
      // A debug rule in front that matches nobody here: the one that allows is second.
      for (const tenant of config.tenants as { access: { debug: unknown[] } }[]) tenant.access.debug.unshift({ subject: 'nobody' });
    },
    { logger },
  );
});
afterAll(async () => {
  await gateway.close();
  await audit.close();
  await sandbox.close();
});

const fileText = (): string => readFileSync(audit.file, 'utf8');
const fileLines = (): Record<string, unknown>[] =>
  fileText()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
const flushed = (): Promise<void> => new Promise((resolve) => audit.flush(() => resolve()));
/** The file's line for the request to `path` (its path as logged), once it is there. */
async function lineFor(path: string | RegExp): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await vi.waitFor(async () => {
    await flushed();
    found = fileLines().find((l) => l.msg === 'request' && (typeof path === 'string' ? l.path === path : path.test(String(l.path))));
    expect(found).toBeDefined();
  });
  return found ?? {};
}

describe('the audit file', () => {
  const acme = () => tenantOf(sandbox, 'acme');
  const globex = () => tenantOf(sandbox, 'globex');

  it('names the rule that allowed a debug request (by its place in access.debug)', async () => {
    const res = await call({ port: gateway.port('api'), servername: acme().host, path: '/debug/syncz', headers: bearer(acme().tokens.debug), ca: sandbox.info.caFile });
    expect(res.status).toBe(200);
    expect(await lineFor('/debug/syncz')).toMatchObject({ tenant: 'acme', plane: 'debug', outcome: 'OK', rule: 'access.debug[1]', auth: 'token' });
    const byCert = await call({ port: gateway.port('api'), servername: acme().host, path: '/debug/configz', cert: acme().clientCert, key: acme().clientKey, ca: sandbox.info.caFile });
    expect(byCert.status).toBe(200);
    expect(await lineFor('/debug/configz')).toMatchObject({ plane: 'debug', rule: 'access.debug[2]', auth: 'clientCertificate' });
  });

  it('says default for a webhook call, where the tenant has no rules', async () => {
    const path = new URL(acme().webhook.inject).pathname;
    const res = await call({
      port: gateway.port('webhook'),
      servername: acme().host,
      method: 'POST',
      path,
      headers: { 'content-type': 'application/json', ...bearer(acme().tokens.webhook) },
      body: admissionReview('audit'),
      ca: sandbox.info.caFile,
    });
    expect(res.status).toBe(200);
    expect(await lineFor(path)).toMatchObject({ plane: 'webhook', outcome: 'OK', rule: 'default' });
  });

  it('names the xds rule that granted the method', async () => {
    const client = adsClient({ port: gateway.port('xds'), host: acme().host, ca: sandbox.info.caFile });
    try {
      const outcome = await adsOnce(client, metadata(bearer(acme().tokens.xds)), { node: { id: 'sidecar~10.0.0.1~p.bookinfo~bookinfo.svc.cluster.local' }, type_url: TYPE_URL.cluster });
      expect(outcome.response).toBeDefined();
    } finally {
      client.close();
    }
    expect(await lineFor(/StreamAggregatedResources$/)).toMatchObject({ plane: 'xds', rule: 'access.xds[0]' });
  });

  it('records a kube watch when it starts, and names its kube rule when it ends', async () => {
    let events = 0;
    const req = httpsRequest({
      host: '127.0.0.1',
      port: gateway.port('api'),
      path: '/clusters/acme-east/api/v1/namespaces/bookinfo/pods?watch=1',
      servername: acme().host,
      ca: readFileSync(sandbox.info.caFile),
      headers: { host: acme().host, ...bearer(acme().tokens.kube) },
      agent: false,
    });
    req.on('response', (res) => {
      res.on('data', () => events++);
      res.on('error', () => undefined);
    });
    req.on('error', () => undefined);
    req.end();
    await vi.waitFor(async () => {
      await flushed();
      expect(fileLines().find((l) => l.msg === 'kube long-running request started')).toMatchObject({ tenant: 'acme', cluster: 'acme-east', verb: 'watch', resource: 'pods' });
    });
    await vi.waitFor(() => expect(events).toBeGreaterThan(0));
    req.destroy();
    expect(await lineFor('/clusters/acme-east/api/v1/namespaces/bookinfo/pods?watch=1')).toMatchObject({ plane: 'kube', rule: 'access.kube[0]' });
  });

  it('has no rule on a refused request, and no credential in any spelling', async () => {
    const token = globex().tokens.debug;
    // Another tenant's token, in the header and in the query.
    const res = await call({ port: gateway.port('api'), servername: acme().host, path: `/debug/syncz?access_token=${token}`, headers: bearer(token), ca: sandbox.info.caFile });
    expect(res.status).toBeGreaterThanOrEqual(400);
    const refused = await lineFor(/^\/debug\/syncz\?access_token=/);
    expect(refused).toMatchObject({ plane: 'debug', path: '/debug/syncz?access_token=[redacted]' });
    expect(refused.rule).toBeUndefined();

    await flushed();
    const text = fileText();
    for (const tenant of [acme(), globex()]) for (const credential of Object.values(tenant.tokens)) expect(text).not.toContain(credential);
    expect(text).not.toMatch(/ey[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\./);
  });

  it('writes the same lines to the log, and nothing else to the file', async () => {
    await flushed();
    const requestIds = (lines: Record<string, unknown>[]) => lines.filter((l) => l.msg === 'request').map((l) => l.requestId);
    expect(requestIds(fileLines())).toEqual(requestIds(stdout));
    expect(new Set(fileLines().map((l) => l.msg))).toEqual(new Set(['request', 'kube long-running request started']));
  });
});
