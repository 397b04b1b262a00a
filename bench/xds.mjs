// Benchmark of meshgate's xds plane beside nginx (grpc_pass) and a direct connection, in one run.
//
// The proxy under test is pinned to CPU 0; the sidecars (bench/xds/clients.mjs: node:http2, one
// TLS connection and one ADS stream each, as istio-agent holds them) and the istiod stand-in
// (bench/xds/upstream.mjs) to CPU 1. Each sidecar has a token of its own, so meshgate verifies
// every one of them (its token cache holds them afterwards). Every proxy and upstream is started
// afresh for each measurement; repetitions are interleaved with the starting target rotating, and
// every figure is the median over them.
//
// Scenarios:
//   idle    N sidecars connected, each with its stream answered, then 3 s of quiet: the proxy's
//           resident memory, less what it used before the first connection, per connection
//   storm   the same N sidecars drop their connections at once and reconnect at once: the time
//           until every stream has its first answer again (refused connections retry, with backoff)
//   push    1,000 sidecars; istiod writes one 4 MiB message to every stream at once: the time
//           until every sidecar has all of it, and the proxy's peak memory meanwhile
//
// nginx opens one upstream connection per client stream (grpc_pass does not multiplex), so it
// holds twice the sockets: it runs two workers, each under the machine's 20,000 open-file limit,
// and its figure is the sum over its processes. "direct" has no proxy; its memory figure is the
// istiod stand-in's own (a Node HTTP/2 server holding the connections), for scale.

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { benchIdentities, median, nginxPreamble, peer, rssMiB, runBenchmark, start, stop, workerPids, writer } from './lib.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const WORK = join(ROOT, 'bench', '.work-xds');
const write = writer(WORK);
const RESULTS = join(ROOT, 'bench', 'results');
const REPS = Number(process.env.REPS ?? 3);
const SIZES = (process.env.SIZES ?? '1000,5000,10000').split(',').map(Number);
const PUSH_STREAMS = Number(process.env.PUSH_STREAMS ?? 1000);
const PUSH_BYTES = 4 * 1024 * 1024;
// TARGETS=meshgate,direct measures only those (the ratios then lack what is left out).
const ONLY = process.env.TARGETS?.split(',');
const HOST = 'bench.meshgate.test';
const ISTIOD = 'istiod.bench-cp.svc';
const PORTS = { upstream: 19612, nginx: 19613, meshgate: 19614, admin: 19610 };

async function main() {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  mkdirSync(RESULTS, { recursive: true });
  const files = await prepare(Math.max(...SIZES, PUSH_STREAMS));
  const clients = peer(start('clients', ['taskset', '-c', '1', process.execPath, '--max-old-space-size=8192', join(ROOT, 'bench/xds/clients.mjs')], { ipc: true }));

  const targets = [
    { name: 'direct', port: PORTS.upstream, servername: ISTIOD, start: async () => ({ pids: () => [] }) },
    { name: 'nginx', port: PORTS.nginx, servername: HOST, start: () => startNginx(files) },
    { name: 'meshgate', port: PORTS.meshgate, servername: HOST, start: () => startMeshgate(files) },
  ].filter((t) => ONLY === undefined || ONLY.includes(t.name));

  const runs = [];
  const log = (line) => process.stderr.write(`${line}\n`);
  for (let rep = 0; rep < REPS; rep++) {
    const order = targets.map((_, i) => targets[(i + rep) % targets.length]);
    for (const target of order) {
      for (const n of SIZES) {
        const run = await measure(target, files, clients, n, async ({ pids }) => {
          const before = sum(pids().map(rssMiB));
          const opened = await clients.ask({ cmd: 'open', n, port: target.port, servername: target.servername, authority: target.servername, ca: files.caPem, tokens: files.tokens.slice(0, n) });
          await sleep(3000);
          const after = sum(pids().map(rssMiB));
          const storm = await clients.ask({ cmd: 'storm' });
          await clients.ask({ cmd: 'close' });
          return { rssBeforeMiB: before, rssMiB: after, kibPerConnection: ((after - before) * 1024) / n, openSeconds: opened.seconds, stormSeconds: storm.seconds, stormRetried: storm.retried, stormFailures: storm.failures };
        });
        runs.push({ rep, scenario: 'idle+storm', target: target.name, n, ...run });
        log(`rep ${rep + 1}/${REPS} ${target.name.padEnd(8)} ${String(n).padStart(5)} sidecars: ${run.rssMiB.toFixed(0)} MiB (${run.kibPerConnection.toFixed(1)} KiB/conn), storm back in ${run.stormSeconds.toFixed(2)} s (${run.stormRetried} retried${run.stormRetried ? `: ${JSON.stringify(run.stormFailures)}` : ''})`);
      }
      const push = await measure(target, files, clients, PUSH_STREAMS, async ({ pids, upstream }) => {
        await clients.ask({ cmd: 'open', n: PUSH_STREAMS, port: target.port, servername: target.servername, authority: target.servername, ca: files.caPem, tokens: files.tokens.slice(0, PUSH_STREAMS) });
        await sleep(1000);
        await clients.ask({ cmd: 'arm', bytes: PUSH_BYTES + 5 });
        let peak = 0;
        const sampler = setInterval(() => (peak = Math.max(peak, sum(pids().map(rssMiB)))), 50);
        const started = performance.now();
        await upstream.ask({ cmd: 'push', bytes: PUSH_BYTES });
        await clients.ask({ cmd: 'wait' });
        const seconds = (performance.now() - started) / 1000;
        clearInterval(sampler);
        await clients.ask({ cmd: 'close' });
        return { pushSeconds: seconds, peakRssMiB: peak, gibPerSecond: (PUSH_STREAMS * PUSH_BYTES) / seconds / 2 ** 30 };
      });
      runs.push({ rep, scenario: 'push', target: target.name, n: PUSH_STREAMS, ...push });
      log(`rep ${rep + 1}/${REPS} ${target.name.padEnd(8)} push 4 MiB to ${PUSH_STREAMS}: ${push.pushSeconds.toFixed(2)} s (${push.gibPerSecond.toFixed(2)} GiB/s), peak ${push.peakRssMiB.toFixed(0)} MiB`);
    }
  }

  const summary = summarize(runs, targets);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const machine = { node: process.version, reps: REPS, sizes: SIZES, pushStreams: PUSH_STREAMS, pushBytes: PUSH_BYTES };
  writeFileSync(join(RESULTS, `xds-${stamp}.json`), JSON.stringify({ machine, runs, summary }, null, 2));
  console.log(table(summary, machine));
}

/** Starts a fresh istiod stand-in and the target, runs `body`, and stops both. */
async function measure(target, files, clients, n, body) {
  const upstreamChild = start('upstream', ['taskset', '-c', '1', process.execPath, join(ROOT, 'bench/xds/upstream.mjs'), String(PORTS.upstream), files.istiodCert, files.istiodKey], { ipc: true });
  const upstream = peer(upstreamChild);
  await upstream.ready;
  const proxy = await target.start();
  const pids = target.name === 'direct' ? () => [upstreamChild.pid] : proxy.pids;
  try {
    return await body({ pids, upstream });
  } finally {
    await clients.ask({ cmd: 'close' });
    // nginx's master must take its workers down with it (SIGTERM); meshgate need not drain here.
    if (proxy.child) await stop(proxy.child, target.name === 'nginx' ? 'SIGTERM' : 'SIGKILL');
    await stop(upstreamChild, 'SIGKILL');
  }
}

function summarize(runs, targets) {
  const rows = [];
  const of = (scenario, target, n, key) => runs.filter((r) => r.scenario === scenario && r.target === target && r.n === n).map((r) => r[key]);
  for (const n of SIZES) {
    for (const target of targets) {
      const m = (key) => median(of('idle+storm', target.name, n, key));
      rows.push({
        scenario: 'idle+storm',
        target: target.name,
        n,
        rssMiB: m('rssMiB'),
        kibPerConnection: m('kibPerConnection'),
        kibVsNginx: m('kibPerConnection') / median(of('idle+storm', 'nginx', n, 'kibPerConnection')),
        stormSeconds: m('stormSeconds'),
        stormMin: Math.min(...of('idle+storm', target.name, n, 'stormSeconds')),
        stormMax: Math.max(...of('idle+storm', target.name, n, 'stormSeconds')),
        stormVsDirect: m('stormSeconds') / median(of('idle+storm', 'direct', n, 'stormSeconds')),
        stormVsNginx: m('stormSeconds') / median(of('idle+storm', 'nginx', n, 'stormSeconds')),
        stormRetried: m('stormRetried'),
      });
    }
  }
  for (const target of targets) {
    const m = (key) => median(of('push', target.name, PUSH_STREAMS, key));
    const seconds = of('push', target.name, PUSH_STREAMS, 'pushSeconds');
    rows.push({
      scenario: 'push',
      target: target.name,
      n: PUSH_STREAMS,
      pushSeconds: m('pushSeconds'),
      pushMin: Math.min(...seconds),
      pushMax: Math.max(...seconds),
      pushVsDirect: m('pushSeconds') / median(of('push', 'direct', PUSH_STREAMS, 'pushSeconds')),
      pushVsNginx: m('pushSeconds') / median(of('push', 'nginx', PUSH_STREAMS, 'pushSeconds')),
      peakRssMiB: m('peakRssMiB'),
    });
  }
  return rows;
}

function table(rows, machine) {
  const f = (x, d = 0) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(d));
  return [
    `node ${machine.node}; ${machine.reps} reps; medians (min–max)`,
    '',
    '| sidecars | target | RSS MiB | KiB/conn | vs nginx | storm s | vs direct | vs nginx | retried |',
    '|---|---|---|---|---|---|---|---|---|',
    ...rows
      .filter((r) => r.scenario === 'idle+storm')
      .map(
        (r) =>
          `| ${r.n} | ${r.target} | ${f(r.rssMiB)} | ${f(r.kibPerConnection, 1)} | ${f(r.kibVsNginx, 2)} | ${f(r.stormSeconds, 2)} (${f(r.stormMin, 2)}–${f(r.stormMax, 2)}) | ${f(r.stormVsDirect, 2)} | ${f(r.stormVsNginx, 2)} | ${f(r.stormRetried)} |`,
      ),
    '',
    `| push of ${machine.pushBytes / 2 ** 20} MiB to ${machine.pushStreams} streams | delivery s | vs direct | vs nginx | peak RSS MiB |`,
    '|---|---|---|---|---|',
    ...rows
      .filter((r) => r.scenario === 'push')
      .map((r) => `| ${r.target} | ${f(r.pushSeconds, 2)} (${f(r.pushMin, 2)}–${f(r.pushMax, 2)}) | ${f(r.pushVsDirect, 2)} | ${f(r.pushVsNginx, 2)} | ${f(r.peakRssMiB)} |`),
  ].join('\n');
}

const sum = (values) => values.reduce((a, b) => a + b, 0);

/** A child process spoken to over IPC: ask() sends a message and resolves with the next reply. */
// ---- targets ------------------------------------------------------------------------------------

async function startMeshgate(files) {
  const child = start('meshgate', ['taskset', '-c', '0', process.execPath, join(ROOT, 'dist/cli/main.js'), 'serve', '--config', files.config], {
    log: join(WORK, 'meshgate.log'),
  });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${PORTS.admin}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  return { child, pids: () => [child.pid] };
}

async function startNginx(files) {
  const dir = join(WORK, 'nginx');
  mkdirSync(dir, { recursive: true });
  const config = write(
    'nginx.conf',
    `${nginxPreamble(dir, { workers: 2, workerConnections: 18000, openFiles: 19000 })}  http2_max_concurrent_streams 16;
  keepalive_timeout 1h;
  client_body_timeout 1h;
  server {
    listen 127.0.0.1:${PORTS.nginx} ssl http2 reuseport backlog=4096;
    ssl_certificate ${files.cert};
    ssl_certificate_key ${files.key};
    location / {
      grpc_pass grpcs://127.0.0.1:${PORTS.upstream};
      grpc_ssl_verify on;
      grpc_ssl_trusted_certificate ${files.ca};
      grpc_ssl_name ${ISTIOD};
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
      grpc_read_timeout 1h;
      grpc_send_timeout 1h;
    }
  }
}
`,
  );
  const child = start('nginx', ['taskset', '-c', '0', 'nginx', '-c', config, '-e', '/dev/null']);
  await sleep(500);
  return { child, pids: () => [child.pid, ...workerPids(child)] };
}

// ---- setup --------------------------------------------------------------------------------------

async function prepare(sidecars) {
  const { ca, server, istiod, jwks, issuer, mint } = await benchIdentities(HOST, ISTIOD);
  // One token per sidecar, as each pod has its own service-account token.
  const tokens = [];
  for (let i = 0; i < sidecars; i++) tokens.push(await mint({ subject: `system:serviceaccount:bookinfo:sidecar-${i}`, audience: 'istio-ca' }));
  const paths = {
    caPem: ca.cert,
    tokens,
    ca: write('ca.pem', ca.cert),
    cert: write('server.pem', server.cert),
    key: write('server-key.pem', server.key, 0o600),
    istiodCert: write('istiod.pem', istiod.cert),
    istiodKey: write('istiod-key.pem', istiod.key, 0o600),
    jwks: write('jwks.json', JSON.stringify(jwks)),
  };
  paths.config = write(
    'meshgate.yaml',
    `admin: { host: 127.0.0.1, port: ${PORTS.admin} }
logging: { level: warn }
security: { allowLoopbackUpstreams: true }
auth: { tokenCache: { maxEntries: ${Math.max(10_000, sidecars)} } }
listeners:
  xds: { host: 127.0.0.1, port: ${PORTS.meshgate}, planes: [xds], maxConnections: 50000, http2: { maxConcurrentStreams: 16 } }
tenants:
  - id: bench
    hosts: [${HOST}]
    tls: { cert: ${paths.cert}, key: ${paths.key} }
    istiod:
      xds: { url: 'https://127.0.0.1:${PORTS.upstream}', ca: ${paths.ca}, serverName: ${ISTIOD} }
    clusters:
      - { id: bench-main, issuer: '${issuer}', jwks: { file: ${paths.jwks} } }
    limits: { connections: 50000, streams: 50000 }
`,
  );
  return paths;
}

runBenchmark(main, () => rmSync(join(WORK, 'nginx', 'body'), { recursive: true, force: true }));
