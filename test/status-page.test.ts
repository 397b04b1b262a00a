/**
 * The live status page, in headless Chromium (Debian's chromium, driven by playwright-core): it
 * loads with the sandbox's tenants, their hosts, clusters and certificates, then updates by
 * itself while traffic goes through the sandbox: a request rate, denials by reason, an open xDS
 * stream with its istiod replica up, a kube watch. Values are rendered as text, never as markup,
 * and the page runs under a Content-Security-Policy that admits only its own script and style.
 * Screenshots are kept in test-results/ (docs/images/status-page.png is one of them).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { STATUS_PAGE_HEADERS, renderStatusPage } from '../src/status/page.js';
import type { StatusReport } from '../src/status/status-source.js';
import { sandboxGuide } from '../src/sandbox/guide.js';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { ROOT } from './helpers/cli.js';
import { adsClient, bearer, holdAdsStream, metadata, type HeldStream } from './helpers/grpc.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

const CHROMIUM = process.env.MESHGATE_CHROMIUM ?? '/usr/bin/chromium';
const RESULTS = join(ROOT, 'test-results');

let browser: Browser | undefined;
beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `headless Chromium is needed at ${CHROMIUM} for the status page test: install Debian's chromium ` +
        '(apt-get install -y --no-install-recommends chromium, as .ci/run does), or set MESHGATE_CHROMIUM to a Chromium binary',
    );
  }
  mkdirSync(RESULTS, { recursive: true });
  // As root (CI containers), Chromium's own sandbox cannot start.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
afterAll(() => browser?.close());

/** A page whose script errors and CSP violations are collected, to be checked empty. */
async function openPage(url: string): Promise<{ page: Page; problems: string[] }> {
  if (browser === undefined) throw new Error('no browser');
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(message.text());
  });
  page.on('pageerror', (err) => problems.push(err.message));
  page.on('dialog', (dialog) => {
    problems.push(`a dialog opened: ${dialog.message()}`);
    void dialog.dismiss();
  });
  const response = await page.goto(url);
  expect(response?.status()).toBe(200);
  return { page, problems };
}

describe('the status page with the sandbox', () => {
  let sandbox: Sandbox;
  beforeAll(async () => {
    sandbox = await startTestSandbox();
  });
  afterAll(() => sandbox.close());

  const figure = (page: Page, tenant: string, name: string) => page.locator(`section[data-tenant="${tenant}"] [data-figure="${name}"] b`);

  it('shows each tenant and updates by itself as traffic goes through', async () => {
    const { page, problems } = await openPage(`${sandbox.info.admin}/status`);
    const acme = tenantOf(sandbox, 'acme');
    const globex = tenantOf(sandbox, 'globex');

    // What the server rendered: topology, the config generation, certificates.
    await expect(page.title()).resolves.toBe('meshgate status');
    const acmeSection = page.locator('section[data-tenant="acme"]');
    await expect(acmeSection.textContent()).resolves.toContain(acme.host);
    for (const cluster of acme.clusters) await expect(acmeSection.textContent()).resolves.toContain(cluster);
    await expect(page.locator('section[data-tenant="globex"]').textContent()).resolves.toContain(globex.host);
    await expect(page.locator('#generation').textContent()).resolves.toBe('1');
    await expect(page.locator('#mode').textContent()).resolves.toBe('one process');
    for (const certificate of ['serving', 'client-ca', 'istiod-ca']) {
      await expect(acmeSection.locator(`tr[data-certificate="${certificate}"] td`).nth(1).textContent()).resolves.toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
    }
    await expect(figure(page, 'acme', 'xdsStreams').textContent()).resolves.toBe('0');
    await expect(figure(page, 'acme', 'denials').textContent()).resolves.toBe('0');
    await page.screenshot({ path: join(RESULTS, 'status-before.png'), fullPage: true });
    // A mark on the document: still there at the end means the page changed without a reload.
    await page.evaluate('window.loadedOnce = true');

    // Traffic: allowed debug reads, denied ones for two reasons, an xDS stream, a kube watch.
    const api = sandbox.info.listeners.api.port;
    const debugCall = (headers: Record<string, string>, host = acme.host) =>
      call({ port: api, servername: host, path: '/debug/syncz', headers, ca: sandbox.info.caFile });
    for (let i = 0; i < 12; i++) expect((await debugCall(bearer(acme.tokens.debug))).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await debugCall(bearer('not.a-token'))).status).toBe(401);
    for (let i = 0; i < 2; i++) expect((await debugCall(bearer(globex.tokens.debug))).status).toBe(401);

    const client = adsClient({ port: sandbox.info.listeners.xds.port, host: acme.host, ca: sandbox.info.caFile });
    const stream: HeldStream = holdAdsStream(client, metadata(bearer(acme.tokens.xds)));
    const watch = openWatch(sandbox, 'acme-east');
    try {
      await stream.ask('sidecar~10.0.0.1~status-page.bookinfo~bookinfo.svc.cluster.local');
      await watch.started;

      // The page polls on its own: wait for its numbers to move.
      await vi.waitFor(
        async () => {
          expect(Number(await figure(page, 'acme', 'requestRate').textContent())).toBeGreaterThan(0);
          expect(await figure(page, 'acme', 'xdsStreams').textContent()).toBe('1');
          expect(await figure(page, 'acme', 'watches').textContent()).toBe('1');
          expect(await figure(page, 'acme', 'denials').textContent()).toBe('5');
        },
        { timeout: 20_000, interval: 250 },
      );
      const reasons = acmeSection.locator('table.denials tbody tr');
      await expect(reasons.count()).resolves.toBe(2);
      for (const [row, reason, count] of [[0, 'MG_ERR_AUTHN_TOKEN_MALFORMED', '3'], [1, 'MG_ERR_AUTHN_TOKEN_INVALID', '2']] as const) {
        await expect(reasons.nth(row).getAttribute('data-reason')).resolves.toBe(reason);
        await expect(reasons.nth(row).locator('td').nth(1).textContent()).resolves.toBe(count);
      }
      const replica = acmeSection.locator('table.replicas tbody tr[data-replica]');
      await expect(replica.count()).resolves.toBe(1);
      await expect(replica.locator('td').nth(1).textContent()).resolves.toBe('up');
      await expect(replica.locator('td').nth(2).textContent()).resolves.toBe('1');
      // globex saw none of acme's traffic.
      await expect(figure(page, 'globex', 'denials').textContent()).resolves.toBe('0');
      await expect(figure(page, 'globex', 'xdsStreams').textContent()).resolves.toBe('0');
      await expect(page.evaluate('window.loadedOnce')).resolves.toBe(true);
      await page.screenshot({ path: join(RESULTS, 'status-page.png'), fullPage: true });
    } finally {
      stream.cancel();
      client.close();
      watch.close();
    }

    // The stream and the watch end, and the page says so.
    await vi.waitFor(
      async () => {
        expect(await figure(page, 'acme', 'xdsStreams').textContent()).toBe('0');
        expect(await figure(page, 'acme', 'watches').textContent()).toBe('0');
      },
      { timeout: 20_000, interval: 250 },
    );
    expect(problems).toEqual([]);
    await page.close();
  });

  it("is the address the sandbox's guide prints", async () => {
    const printed = /^ {2}status: +(\S+)/m.exec(sandboxGuide(sandbox.info))?.[1];
    expect(printed).toBe(`${sandbox.info.admin}/status`);
    const res = await fetch(printed ?? '');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/html; charset=utf-8');
  });

  it('is served under a strict Content-Security-Policy, and its data as JSON', async () => {
    const res = await fetch(`${sandbox.info.admin}/status`);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toMatch(/^default-src 'none'; script-src 'sha256-[A-Za-z0-9+/=]+'; style-src 'sha256-[A-Za-z0-9+/=]+'; connect-src 'self'/);
    expect(csp).not.toContain('unsafe');
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await res.text();
    // No resource from anywhere: no src, no href, no remote URL.
    expect(html).not.toMatch(/\s(?:src|href)=/);
    expect(html.replaceAll('http://www.w3.org/2000/svg', '')).not.toMatch(/https?:\/\//);

    const report = (await (await fetch(`${sandbox.info.admin}/status.json`)).json()) as StatusReport;
    expect(report.mode).toBe('one process');
    expect(report.tenants.map((t) => t.id).slice(0, 2)).toEqual(['acme', 'globex']);
    expect(report.tenants[0]).toMatchObject({ inTopology: true, clusters: ['acme-east', 'acme-west'] });
  });
});

describe('the status page with hostile text', () => {
  const hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script>"\'&';
  const report = (id: string): StatusReport => ({
    generatedAt: Date.now(),
    mode: hostile,
    config: { generation: 3, loadedAt: Date.now() / 1000, reloads: { success: 1, failure: 0 } },
    windowSeconds: 300,
    intervalSeconds: 5,
    rateSeconds: 30,
    tenants: [
      {
        id,
        inTopology: false,
        hosts: [hostile],
        clusters: [hostile],
        istiod: [hostile],
        replicas: [{ replica: hostile, up: false, sessions: 0 }],
        xdsStreams: 0,
        watches: 0,
        tunnels: 0,
        requestRate: 0,
        requestRates: [0, 1, 2],
        denials: [{ reason: hostile, count: 1 }],
        certificates: [{ certificate: hostile, notAfter: Date.now() / 1000 - 86_400 }],
      },
    ],
  });
  let server: Server;
  let base: string;
  beforeAll(async () => {
    // The page as the admin listener serves it, with data that tries to become markup.
    server = createServer((req, res) => {
      if (req.url === '/status.json') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(report(`${hostile}-from-json`)));
        return;
      }
      const html = renderStatusPage(report(hostile));
      res.writeHead(200, STATUS_PAGE_HEADERS);
      res.end(html);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('renders it as text, on the server and in the page script', async () => {
    const { page, problems } = await openPage(`${base}/status`);
    const injected = () => page.evaluate<number>("document.querySelectorAll('img, main script, header script').length");
    await expect(injected()).resolves.toBe(0);
    await expect(page.locator('section h2').textContent()).resolves.toContain(hostile);
    await expect(page.locator('#mode').textContent()).resolves.toBe(hostile);
    // The script's own rendering, from /status.json.
    await vi.waitFor(async () => expect(await page.locator('section h2').textContent()).toContain(`${hostile}-from-json`), { timeout: 15_000, interval: 250 });
    await expect(injected()).resolves.toBe(0);
    await expect(page.locator('table.denials td').first().textContent()).resolves.toBe(hostile);
    await expect(page.locator('table.certificates td').nth(2).getAttribute('class')).resolves.toBe('expired');
    await page.screenshot({ path: join(RESULTS, 'status-hostile.png'), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });
});

/** A kube WATCH through meshgate with the tenant's client certificate, held open. */
function openWatch(sandbox: Sandbox, cluster: string): { started: Promise<void>; close(): void } {
  const acme = tenantOf(sandbox, 'acme');
  const req = httpsRequest({
    host: '127.0.0.1',
    port: sandbox.info.listeners.api.port,
    servername: acme.host,
    path: `/clusters/${cluster}/api/v1/namespaces/bookinfo/pods?watch=true`,
    headers: { host: acme.host },
    ca: readFileSync(sandbox.info.caFile),
    cert: readFileSync(acme.clientCert),
    key: readFileSync(acme.clientKey),
  });
  const started = new Promise<void>((resolve, reject) => {
    req.on('response', (res) => {
      if (res.statusCode === 200) resolve();
      else reject(new Error(`the watch was answered ${res.statusCode}`));
      res.resume();
    });
    req.on('error', reject);
  });
  req.end();
  return { started, close: () => req.destroy() };
}
