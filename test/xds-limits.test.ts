/**
 * Limits and abuse on the xds plane: each tenant's connection and stream limits (RESOURCE_EXHAUSTED),
 * requests that are not gRPC, and HTTP/2 floods (rapid reset, PING, SETTINGS) that end the
 * offending connection while every other caller carries on.
 */
import { readFileSync } from 'node:fs';
import { connect as http2Connect, type ClientHttp2Session, type IncomingHttpHeaders } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { adsClient, adsOnce, bearer, metadata, startRawIstiod, status, TYPE_URL, type AdsCall, type AdsClient } from './helpers/grpc.js';
import { FLAG, FRAME, frame, headerBlock, onFrames, rawH2Client, type Frame } from './helpers/h2-frames.js';
import { startGatewayFrom, startTestSandbox, tenantOf } from './helpers/sandbox.js';

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

const closers: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
});

const ADS_PATH = '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources';

function client(port: number, tenant: 'acme' | 'globex' = 'acme'): AdsClient {
  const c = adsClient({ port, host: tenantOf(sandbox, tenant).host, ca: sandbox.info.caFile, channel: { 'grpc.use_local_subchannel_pool': 1 } });
  closers.push(() => c.close());
  return c;
}

/** An ADS stream that got its first response. */
async function openStream(c: AdsClient, node: string, tenant: 'acme' | 'globex' = 'acme'): Promise<AdsCall> {
  const stream = c.StreamAggregatedResources(metadata(bearer(tenantOf(sandbox, tenant).tokens.xds)));
  stream.on('error', () => undefined);
  await new Promise((resolve, reject) => {
    stream.once('data', resolve);
    stream.once('status', reject);
    stream.write({ node: { id: node }, type_url: TYPE_URL.cluster });
  });
  return stream;
}

const request = (node: string) => ({ node: { id: node }, type_url: TYPE_URL.cluster });

describe("each tenant's limits", () => {
  it('refuses a stream over the limit with RESOURCE_EXHAUSTED, leaves other tenants alone, and frees the slot', async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.tenants[0].limits = { streams: 3 };
    });
    closers.push(() => gateway.close());
    const c = client(gateway.port('xds'));
    const open = [await openStream(c, 'limit-1'), await openStream(c, 'limit-2'), await openStream(c, 'limit-3')];

    const over = await adsOnce(c, metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), request('limit-4'));
    expect(over.status.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(over.status.details).toMatch(/^MG_ERR_LIMIT_STREAMS: /);
    // globex has its own budget.
    const other = await adsOnce(client(gateway.port('xds'), 'globex'), metadata(bearer(tenantOf(sandbox, 'globex').tokens.xds)), request('limit-globex'));
    expect(other.response).toBeDefined();

    open[0]?.cancel();
    await new Promise((r) => setTimeout(r, 100));
    open.push(await openStream(c, 'limit-5'));
    for (const stream of open) stream.cancel();
  });

  it('refuses a connection over the limit with RESOURCE_EXHAUSTED and GOAWAY', async () => {
    const gateway = await startGatewayFrom(sandbox, (config) => {
      config.tenants[0].limits = { connections: 2 };
    });
    closers.push(() => gateway.close());
    const port = gateway.port('xds');
    const held = [await openStream(client(port), 'conn-1'), await openStream(client(port), 'conn-2')];

    const acme = tenantOf(sandbox, 'acme');
    const session: ClientHttp2Session = http2Connect(`https://127.0.0.1:${port}`, { servername: acme.host, ca: readFileSync(sandbox.info.caFile) });
    session.on('error', () => undefined);
    const goaway = new Promise<void>((resolve) => session.once('goaway', () => resolve()));
    const stream = session.request({
      ':method': 'POST',
      ':path': ADS_PATH,
      ':authority': acme.host,
      'content-type': 'application/grpc',
      te: 'trailers',
      authorization: `Bearer ${acme.tokens.xds}`,
    });
    stream.on('error', () => undefined);
    const headers = await new Promise<IncomingHttpHeaders>((resolve) => stream.once('response', resolve));
    stream.end();
    expect(headers['grpc-status']).toBe(String(status.RESOURCE_EXHAUSTED));
    expect(headers['grpc-message']).toMatch(/^MG_ERR_LIMIT_CONNECTIONS: /);
    await goaway;
    session.destroy();

    // globex's connections are counted apart.
    const other = await adsOnce(client(port, 'globex'), metadata(bearer(tenantOf(sandbox, 'globex').tokens.xds)), request('conn-globex'));
    expect(other.response).toBeDefined();
    for (const s of held) s.cancel();
  });
});

describe('requests that are not gRPC', () => {
  it.each(['h1', 'h2'] as const)('are told so over %s, with 415 and a JSON error, before any credential is looked at', async (protocol) => {
    const acme = tenantOf(sandbox, 'acme');
    const before = sandbox.xdsIstiods.get('acme')?.calls.length;
    const res = await call({
      port: sandbox.info.listeners.xds.port,
      servername: acme.host,
      ca: sandbox.info.caFile,
      protocol,
      method: 'POST',
      path: ADS_PATH,
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(res.status).toBe(415);
    expect(res.json().code).toBe('MG_ERR_REQUEST_NOT_GRPC');
    expect(sandbox.xdsIstiods.get('acme')?.calls.length).toBe(before);
  });
});

describe('HTTP/2 floods', () => {
  const goawaysSent = async (): Promise<number> => {
    const text = await sandbox.gateway.metrics.registry.getSingleMetricAsString('meshgate_http2_goaways_total');
    return [...text.matchAll(/direction="sent"[^}]*\} (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  };

  /** Sends `frames` on a fresh connection; resolves with how long meshgate took to cut it. */
  async function flood(frames: (i: number) => Buffer, count: number, { read }: { read: boolean }): Promise<number> {
    const acme = tenantOf(sandbox, 'acme');
    const socket: TLSSocket = await rawH2Client(sandbox.info.listeners.xds.port, acme.host, readFileSync(sandbox.info.caFile, 'utf8'));
    socket.on('error', () => undefined);
    if (read) socket.resume();
    else socket.pause();
    const started = performance.now();
    const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(performance.now() - started)));
    for (let i = 0; i < count; i += 1000) {
      socket.write(Buffer.concat(Array.from({ length: Math.min(1000, count - i) }, (_, j) => frames(i + j))));
    }
    const outcome = await Promise.race([closed, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 5_000))]);
    socket.destroy();
    return outcome ?? Number.POSITIVE_INFINITY;
  }

  const streamHeaders = (token?: string): Buffer =>
    headerBlock([
      [':method', 'POST'],
      [':scheme', 'https'],
      [':path', ADS_PATH],
      [':authority', tenantOf(sandbox, 'acme').host],
      ['content-type', 'application/grpc'],
      ['te', 'trailers'],
      ...(token === undefined ? [] : ([['authorization', `Bearer ${token}`]] as const)),
    ]);
  const cancel = Buffer.from([0, 0, 0, 8]);
  const rapidReset = (headers: Buffer) => (i: number) =>
    Buffer.concat([frame(FRAME.HEADERS, FLAG.END_HEADERS, 2 * i + 1, headers), frame(FRAME.RST_STREAM, 0, 2 * i + 1, cancel)]);

  const stillServes = async (): Promise<void> => {
    const outcome = await adsOnce(client(sandbox.info.listeners.xds.port), metadata(bearer(tenantOf(sandbox, 'acme').tokens.xds)), request('after-flood'));
    expect(outcome.response).toBeDefined();
  };

  it.each([
    ['refused streams (no credential)', undefined],
    ['streams on their way to istiod (a valid token)', 'token'],
  ])('ends a rapid-reset connection of %s; istiod sees at most the burst', async (_name, credential) => {
    const reached = sandbox.xdsIstiods.get('acme')?.calls.length ?? 0;
    const goaways = await goawaysSent();
    const headers = streamHeaders(credential === undefined ? undefined : tenantOf(sandbox, 'acme').tokens.xds);
    const cutAfterMs = await flood(rapidReset(headers), 5_000, { read: true });
    expect(cutAfterMs).toBeLessThan(3_000);
    expect(await goawaysSent()).toBeGreaterThan(goaways);
    expect((sandbox.xdsIstiods.get('acme')?.calls.length ?? 0) - reached).toBeLessThanOrEqual(200);
    await stillServes();
  });

  it('ends a connection that resets at once many streams istiod already holds, and lives on', async () => {
    // Ending that session from inside the handling of those RST_STREAMs once made Node 20 queue
    // frames without end, until the process died of std::bad_alloc.
    const istiod = await startRawIstiod(() => undefined); // holds every stream, never answers
    closers.push(() => istiod.close());
    const gateway = await startGatewayFrom(sandbox, (config) => {
      const current = config.tenants[0].istiod.xds;
      config.tenants[0].istiod.xds = { ...current, url: istiod.url, ca: istiod.caFile, serverName: istiod.serverName };
      config.listeners.xds.http2 = { maxConcurrentStreams: 1000 };
    });
    closers.push(() => gateway.close());
    const socket = await rawH2Client(gateway.port('xds'), tenantOf(sandbox, 'acme').host, readFileSync(sandbox.info.caFile, 'utf8'));
    socket.on('error', () => undefined);
    const received: Frame[] = [];
    onFrames(socket, (f) => received.push(f));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));

    const count = 400;
    const headers = streamHeaders(tenantOf(sandbox, 'acme').tokens.xds);
    socket.write(Buffer.concat(Array.from({ length: count }, (_, i) => frame(FRAME.HEADERS, FLAG.END_HEADERS, 2 * i + 1, headers))));
    for (let waited = 0; istiod.streams.length < count && waited < 10_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    expect(istiod.streams).toHaveLength(count);
    socket.write(Buffer.concat(Array.from({ length: count }, (_, i) => frame(FRAME.RST_STREAM, 0, 2 * i + 1, cancel))));

    await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    const goaway = received.find((f) => f.type === FRAME.GOAWAY);
    expect(goaway?.payload.readUInt32BE(4)).toBe(0xb); // ENHANCE_YOUR_CALM
    for (let waited = 0; istiod.streams.some((s) => s.rstCode === undefined) && waited < 5_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    expect(istiod.streams.filter((s) => s.rstCode === undefined)).toHaveLength(0);
    await stillServes();
  });

  it('ends a PING flood from a client that never reads the acknowledgements', async () => {
    const cutAfterMs = await flood((i) => frame(FRAME.PING, 0, 0, Buffer.alloc(8, i % 256)), 300_000, { read: false });
    expect(cutAfterMs).toBeLessThan(3_000);
    await stillServes();
  });

  it('ends a SETTINGS flood', async () => {
    const cutAfterMs = await flood(() => frame(FRAME.SETTINGS, 0, 0), 100_000, { read: true });
    expect(cutAfterMs).toBeLessThan(3_000);
    await stillServes();
  });
});
