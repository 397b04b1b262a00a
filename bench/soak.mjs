// The soak: `npm run soak -- --minutes N` (a script, not CI).
//
// `meshgate serve` runs as its own process over the sandbox's stand-ins, under mixed load with
// connection churn on every plane, while its config is reloaded all the time:
//   - xds: 20 ADS streams at once, each on a connection of its own, living 5 to 20 s, asking every second;
//   - webhook: injection requests, each on a new connection;
//   - debug: syncz over a keep-alive pool that is dropped every 5 s;
//   - kube: lists, and watches restarted every 10 s, over HTTP/1.1 and HTTP/2;
//   - refusals: unknown SNI, bad tokens, non-canonical paths;
//   - reloads: every 15 s a change (acme's istiod pool replaced, or globex's rules), every minute an
//     unchanged SIGHUP.
// Every 10 s it reads meshgate's own /metrics: RSS, V8 heap, active handles, open file descriptors
// and connections. At the end it prints the curve, writes it to soak-results/, and fails if any of
// them kept growing: after a warm-up (the first fifth), the median of the last third must not
// exceed the median of the first third by more than the tolerance, or the run fails.
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import { connect as http2Connect } from 'node:http2';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { credentials, Metadata } from '@grpc/grpc-js';
import { parse, stringify } from 'yaml';
import { start, stop, stopAll } from './lib.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const { values } = parseArgs({ options: { minutes: { type: 'string', default: '30' }, out: { type: 'string', default: join(ROOT, 'soak-results') } } });
const minutes = Number(values.minutes);
if (!(minutes > 0)) throw new Error('--minutes N, N > 0');
const SAMPLE_MS = 10_000;
const TOLERANCE = { rss: 0.25, heap: 0.25, handles: 0.25, fds: 0.25 };

const { startSandbox, sampleAdmissionReview } = await import(join(ROOT, 'dist/sandbox/sandbox.js'));
const { xdsProtos, TYPE_URL } = await import(join(ROOT, 'dist/sandbox/xds-protos.js'));
const { createLogger } = await import(join(ROOT, 'dist/observability/logger.js'));

const work = mkdtempSync(join(tmpdir(), 'meshgate-soak-'));
const sandbox = await startSandbox({ dir: work, portBase: 0, logger: createLogger('silent'), podChangeIntervalMs: 1_000 });
// Only the stand-ins are used: the meshgate under test is a process of its own.
await sandbox.gateway.close(0);

const original = parse(readFileSync(sandbox.info.config, 'utf8'));
original.admin = { host: '127.0.0.1', port: 0 };
for (const listener of Object.values(original.listeners)) listener.port = 0;
original.logging = { level: 'info' };
original.reload = { pollInterval: '2s', drainTimeout: '20s' };
const configFile = join(work, 'soak.yaml');
let generation = 0;
const writeConfig = (change) => {
  const config = JSON.parse(JSON.stringify(original));
  change(config);
  writeFileSync(configFile, stringify(config));
};
writeConfig(() => undefined);

const server = start('meshgate', [process.execPath, join(ROOT, 'dist/cli/main.js'), 'serve', '--config', configFile], { log: join(work, 'meshgate.log') });
const serving = await waitForServing(server);
const ports = Object.fromEntries(Object.entries(serving.listeners).map(([name, a]) => [name, a.port]));
const adminPort = serving.admin.port;
const ca = readFileSync(sandbox.info.caFile);
const tenants = sandbox.info.tenants;
const counts = { ok: 0, refused: 0, failed: 0 };
/** Failures by what they were: a gRPC status, or a connection that failed. */
const failures = new Map();
const count = (outcome, reason = 'connection failed or timed out') => {
  counts[outcome]++;
  if (outcome === 'failed') failures.set(reason, (failures.get(reason) ?? 0) + 1);
};
const deadline = Date.now() + minutes * 60_000;
const running = () => Date.now() < deadline;
console.log(`soak: ${minutes} min; meshgate pid ${server.pid}; work dir ${work}`);

// --- load -----------------------------------------------------------------------------------------

async function xdsLoop(id) {
  const tenant = id % 2 === 0 ? 'acme' : 'globex';
  const info = tenants[tenant];
  const { AggregatedDiscoveryService } = xdsProtos();
  while (running()) {
    const client = new AggregatedDiscoveryService(`127.0.0.1:${ports.xds}`, credentials.createSsl(ca), {
      'grpc.ssl_target_name_override': info.host,
      'grpc.default_authority': info.host,
      'grpc.use_local_subchannel_pool': 1,
    });
    const md = new Metadata();
    md.set('authorization', `Bearer ${info.tokens.xds}`);
    const call = client.StreamAggregatedResources(md);
    call.on('data', () => count('ok'));
    call.on('error', (err) => (err.code === 1 ? undefined : count('failed', `xds: ${err.code} ${String(err.details).split(':')[0]}`)));
    const life = Date.now() + 5_000 + Math.random() * 15_000;
    while (running() && Date.now() < life && !call.closed) {
      call.write({ node: { id: `sidecar~soak-${id}` }, type_url: TYPE_URL.cluster });
      await sleep(1_000);
    }
    call.cancel();
    client.close();
  }
}

function https(port, host, { method = 'GET', path, headers = {}, body, cert, key, agent = false }) {
  return new Promise((resolveRequest) => {
    const req = httpsRequest({ host: '127.0.0.1', port, servername: host, ca, cert, key, method, path, headers: { host, ...headers }, agent, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolveRequest(res.statusCode));
      res.on('error', () => resolveRequest(0));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolveRequest(0));
    req.end(body);
  });
}

const outcome = (status) => (status >= 200 && status < 300 ? 'ok' : status === 0 ? 'failed' : 'refused');

async function webhookLoop() {
  const review = JSON.stringify(sampleAdmissionReview());
  while (running()) {
    for (const id of ['acme', 'globex']) {
      const info = tenants[id];
      const url = new URL(info.webhook.inject);
      const byCert = info.webhookAuthentication.includes('clientCertificate');
      const status = await https(ports.webhook, info.host, {
        method: 'POST',
        path: `${url.pathname}${url.search}`,
        headers: { 'content-type': 'application/json', ...(byCert ? {} : { authorization: `Bearer ${info.tokens.webhook}` }) },
        body: review,
        ...(byCert ? { cert: readFileSync(info.clientCert), key: readFileSync(info.clientKey) } : {}),
      });
      count(outcome(status));
    }
    await sleep(50);
  }
}

async function debugLoop() {
  let agent = new HttpsAgent({ keepAlive: true, maxSockets: 4 });
  let dropped = Date.now();
  while (running()) {
    for (const id of ['acme', 'globex']) {
      const info = tenants[id];
      count(outcome(await https(ports.api, info.host, { path: '/debug/syncz', headers: { authorization: `Bearer ${info.tokens.debug}` }, agent })));
    }
    if (Date.now() - dropped > 5_000) {
      agent.destroy();
      agent = new HttpsAgent({ keepAlive: true, maxSockets: 4 });
      dropped = Date.now();
    }
    await sleep(50);
  }
  agent.destroy();
}

async function kubeLoop() {
  const info = tenants.acme;
  const cert = readFileSync(info.clientCert);
  const key = readFileSync(info.clientKey);
  while (running()) {
    count(outcome(await https(ports.api, info.host, { path: '/clusters/acme-east/api/v1/namespaces/bookinfo/pods', cert, key })));
    await sleep(100);
  }
}

async function watchLoop(protocol) {
  const info = tenants.acme;
  const cert = readFileSync(info.clientCert);
  const key = readFileSync(info.clientKey);
  const path = '/clusters/acme-east/api/v1/namespaces/bookinfo/pods?watch=1';
  while (running()) {
    if (protocol === 'h2') {
      const session = http2Connect(`https://127.0.0.1:${ports.api}`, { ca, cert, key, servername: info.host });
      session.on('error', () => count('failed'));
      const stream = session.request({ ':path': path, ':authority': info.host });
      stream.on('data', () => count('ok'));
      stream.on('error', () => undefined);
      await sleep(10_000);
      stream.close();
      session.close();
    } else {
      const req = httpsRequest({ host: '127.0.0.1', port: ports.api, servername: info.host, ca, cert, key, path, headers: { host: info.host }, agent: false });
      req.on('response', (res) => res.on('data', () => count('ok')).on('error', () => undefined));
      req.on('error', () => undefined);
      req.end();
      await sleep(10_000);
      req.destroy();
    }
  }
}

async function refusalLoop() {
  while (running()) {
    // No tenant has this name: the handshake gets the default certificate, which the client refuses.
    const unknown = await https(ports.api, 'nobody.example', { path: '/debug/syncz' });
    count(unknown === 0 ? 'refused' : 'failed', `a handshake for an unknown name completed (${unknown})`);
    count(outcome(await https(ports.api, tenants.acme.host, { path: '/debug/syncz', headers: { authorization: 'Bearer not.a.token' } })));
    count(outcome(await https(ports.api, tenants.globex.host, { path: '/debug/../debug/syncz' })));
    await sleep(200);
  }
}

async function reloadLoop() {
  let tick = 0;
  while (running()) {
    await sleep(15_000);
    tick++;
    if (tick % 4 === 0) {
      server.kill('SIGHUP');
      continue;
    }
    generation++;
    writeConfig((config) => {
      const acme = config.tenants.find((t) => t.id === 'acme');
      const globex = config.tenants.find((t) => t.id === 'globex');
      if (generation % 2 === 0) acme.istiod.xds.maxStreamsPerSession = 500 + generation;
      else globex.kube = { ...globex.kube, requestTimeout: `${30 + generation}s` };
    });
  }
}

// --- samples --------------------------------------------------------------------------------------

const samples = [];
async function sampleLoop() {
  const began = Date.now();
  while (running()) {
    await sleep(SAMPLE_MS);
    const text = await fetch(`http://127.0.0.1:${adminPort}/metrics`).then((r) => r.text()).catch(() => '');
    const gauge = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    const sum = (name) => [...text.matchAll(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'gm'))].reduce((s, m) => s + Number(m[1]), 0);
    samples.push({
      minute: (Date.now() - began) / 60_000,
      rss: gauge('process_resident_memory_bytes') / 2 ** 20,
      heap: gauge('nodejs_heap_size_used_bytes') / 2 ** 20,
      handles: gauge('nodejs_active_handles_total'),
      fds: gauge('process_open_fds'),
      connections: sum('meshgate_listener_connections'),
      draining: Number(/^meshgate_tenant_resources\{state="draining"\} (\S+)$/m.exec(text)?.[1] ?? 0),
      ...counts,
    });
  }
}

const loops = [
  ...Array.from({ length: 20 }, (_, i) => xdsLoop(i)),
  webhookLoop(),
  debugLoop(),
  kubeLoop(),
  watchLoop('h1'),
  watchLoop('h2'),
  refusalLoop(),
  reloadLoop(),
  sampleLoop(),
];
await Promise.all(loops);

await stop(server);
await sandbox.close();
stopAll();

// --- verdict --------------------------------------------------------------------------------------

const median = (xs) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
};
const settled = samples.slice(Math.floor(samples.length / 5));
const third = Math.max(1, Math.floor(settled.length / 3));
const verdicts = Object.entries(TOLERANCE).map(([field, tolerance]) => {
  const first = median(settled.slice(0, third).map((s) => s[field]));
  const last = median(settled.slice(-third).map((s) => s[field]));
  // Handle and descriptor counts are small numbers: a few more is noise, not a leak.
  const allowed = field === 'handles' || field === 'fds' ? Math.max(first * (1 + tolerance), first + 10) : first * (1 + tolerance);
  return { field, first, last, allowed, grew: last > allowed };
});

const lines = [
  `# meshgate soak: ${minutes} minutes, ${new Date().toISOString()}`,
  '',
  `requests and stream messages: ${counts.ok} ok, ${counts.refused} refused (on purpose), ${counts.failed} failed; ${generation} config changes`,
  ...[...failures].map(([reason, n]) => `- failed: ${n} × ${reason}`),
  '',
  '| minute | RSS MiB | heap MiB | handles | fds | connections | draining |',
  '|---|---|---|---|---|---|---|',
  ...samples
    .filter((_, i) => i % 6 === 5 || i === samples.length - 1)
    .map((s) => `| ${s.minute.toFixed(0)} | ${s.rss.toFixed(1)} | ${s.heap.toFixed(1)} | ${s.handles} | ${s.fds} | ${s.connections} | ${s.draining} |`),
  '',
  '| measure | median, first third | median, last third | limit | verdict |',
  '|---|---|---|---|---|',
  ...verdicts.map((v) => `| ${v.field} | ${v.first.toFixed(1)} | ${v.last.toFixed(1)} | ${v.allowed.toFixed(1)} | ${v.grew ? 'GREW' : 'flat'} |`),
];
mkdirSync(values.out, { recursive: true });
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
writeFileSync(join(values.out, `soak-${stamp}.md`), `${lines.join('\n')}\n`);
writeFileSync(join(values.out, `soak-${stamp}.json`), JSON.stringify({ minutes, counts, generation, samples, verdicts }, null, 1));
console.log(lines.join('\n'));
const failed = verdicts.filter((v) => v.grew);
if (failed.length > 0) {
  console.error(`soak FAILED: ${failed.map((v) => v.field).join(', ')} kept growing`);
  process.exit(1);
}
console.log('soak passed: nothing kept growing');

/** The addresses meshgate logs once it listens: read from its stdout as it arrives. */
function waitForServing(child) {
  return new Promise((resolveServing, reject) => {
    let seen = '';
    const onData = (chunk) => {
      seen += chunk.toString();
      const line = seen.split('\n').find((l) => l.includes('"meshgate is serving"'));
      if (line) {
        child.stdout.off('data', onData);
        resolveServing(JSON.parse(line));
      } else if (seen.length > 1 << 20) reject(new Error('meshgate did not start'));
    };
    child.stdout.on('data', onData);
  });
}
