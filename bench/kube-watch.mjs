// Benchmark of the kube plane's watches beside nginx, haproxy and a direct connection, in one run.
//
// istiod and Kiali spend their lives in watches: client-go lists, then holds a WATCH per resource
// type, multiplexed over HTTP/2. Here N watches on bookinfo pods (bench/kube/watchers.mjs: 100
// HTTP/2 streams per connection) go through each proxy to the sandbox's stand-in API server
// (bench/kube/origin.mjs), which changes one pod every INTERVAL_MS, so that every watch receives a
// MODIFIED event each time. The proxy under test is pinned to CPU 0; the watchers and the API
// server to CPU 1. Every proxy is started afresh for each measurement; repetitions are
// interleaved, with the starting target rotating, and every figure is the median over them.
//
// Figures, per target:
//   KiB per watch     the proxy's resident memory with N watches open, less its memory before them
//   CPU µs per event  the proxy's CPU time over MEASURE_SECONDS, per event delivered to a watcher
//   delay p50 / p99   from the API server's change (its timestamp in the event) to the watcher
//
// All three proxies forward each watch on an HTTP/1.1 connection of its own to the API server,
// which speaks only HTTP/1.1 here; "direct" opens one HTTP/1.1 connection per watch itself.
//
//   WATCHES=1000 INTERVAL_MS=100 MEASURE_SECONDS=10 REPS=3 node bench/kube-watch.mjs

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { benchIdentities, cpuTicks, median, nginxPreamble, peer, rssMiB, runBenchmark, start, stop, workerPids, writer } from './lib.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const WORK = join(ROOT, 'bench', '.work-kube');
const write = writer(WORK);
const RESULTS = join(ROOT, 'bench', 'results');
const REPS = Number(process.env.REPS ?? 3);
const WATCHES = Number(process.env.WATCHES ?? 1000);
const INTERVAL_MS = Number(process.env.INTERVAL_MS ?? 100);
const MEASURE_SECONDS = Number(process.env.MEASURE_SECONDS ?? 10);
const HOST = 'bench.meshgate.test';
const PREFIX = '/clusters/bench-main';
const PODS = '/api/v1/namespaces/bookinfo/pods?watch=1';
const PORTS = { nginx: 19713, haproxy: 19714, meshgate: 19715, admin: 19710 };
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

async function main() {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(WORK, { recursive: true });
  mkdirSync(RESULTS, { recursive: true });
  const { ca, server, istiod } = await benchIdentities(HOST, '127.0.0.1');
  const files = {
    ca: write('ca.pem', ca.cert),
    caText: ca.cert,
    cert: write('server.pem', server.cert),
    key: write('server-key.pem', server.key, 0o600),
    certAndKey: write('server-bundle.pem', server.cert + server.key, 0o600),
    originCert: write('origin.pem', istiod.cert),
    originKey: write('origin-key.pem', istiod.key, 0o600),
  };
  const originProcess = start('origin', ['taskset', '-c', '1', process.execPath, join(ROOT, 'bench/kube/origin.mjs'), files.originCert, files.originKey, files.ca, String(INTERVAL_MS)], { ipc: true });
  const origin = await new Promise((resolve) => originProcess.once('message', resolve));
  files.jwks = write('jwks.json', JSON.stringify(origin.jwks));
  const originPort = Number(new URL(origin.url).port);
  const watchers = peer(start('watchers', ['taskset', '-c', '1', process.execPath, '--max-old-space-size=4096', join(ROOT, 'bench/kube/watchers.mjs')], { ipc: true }));

  const targets = [
    { name: 'direct', port: originPort, servername: '127.0.0.1', path: PODS, h2: false, start: async () => ({ pids: () => [] }) },
    { name: 'nginx', port: PORTS.nginx, servername: HOST, path: `${PREFIX}${PODS}`, h2: true, start: () => startNginx(files, originPort) },
    { name: 'haproxy', port: PORTS.haproxy, servername: HOST, path: `${PREFIX}${PODS}`, h2: true, start: () => startHaproxy(files, originPort) },
    { name: 'meshgate', port: PORTS.meshgate, servername: HOST, path: `${PREFIX}${PODS}`, h2: true, start: () => startMeshgate(files, origin) },
  ];

  const runs = [];
  for (let rep = 0; rep < REPS; rep++) {
    for (const target of targets.map((_, i) => targets[(i + rep) % targets.length])) {
      const proxy = await target.start();
      await sleep(1500);
      const pids = proxy.pids();
      const before = pids.length ? pids.reduce((sum, pid) => sum + rssMiB(pid), 0) : 0;
      const opened = await watchers.ask({ cmd: 'open', n: WATCHES, port: target.port, servername: target.servername, ca: files.caText, token: origin.token, path: target.path, h2: target.h2 });
      if (opened.opened !== WATCHES) throw new Error(`${target.name}: ${opened.opened}/${WATCHES} watches opened`);
      await sleep(2000);
      const after = pids.length ? pids.reduce((sum, pid) => sum + rssMiB(pid), 0) : 0;
      const ticks = pids.length ? cpuTicks(pids) : 0;
      const measured = await watchers.ask({ cmd: 'measure', seconds: MEASURE_SECONDS });
      const cpuSeconds = pids.length ? (cpuTicks(pids) - ticks) / CLK_TCK : 0;
      await watchers.ask({ cmd: 'close' });
      await proxy.stop?.();
      const run = {
        rep,
        target: target.name,
        kibPerWatch: pids.length ? ((after - before) * 1024) / WATCHES : undefined,
        events: measured.events,
        eventsPerSecond: measured.events / MEASURE_SECONDS,
        cpuMicrosPerEvent: pids.length ? (cpuSeconds * 1e6) / measured.events : undefined,
        p50: measured.p50,
        p99: measured.p99,
      };
      runs.push(run);
      const f = (n, d = 0) => (n === undefined ? '–' : n.toFixed(d));
      process.stderr.write(
        `rep ${rep + 1}/${REPS} ${target.name.padEnd(9)} ${f(run.kibPerWatch, 1)} KiB/watch  ${f(run.eventsPerSecond)} events/s  ${f(run.cpuMicrosPerEvent, 1)} µs CPU/event  delay p50 ${run.p50} ms p99 ${run.p99} ms\n`,
      );
    }
  }
  const summary = targets.map((target) => {
    const of = (key) => runs.filter((r) => r.target === target.name && r[key] !== undefined).map((r) => r[key]);
    const m = (key) => (of(key).length ? median(of(key)) : undefined);
    return { target: target.name, kibPerWatch: m('kibPerWatch'), eventsPerSecond: m('eventsPerSecond'), cpuMicrosPerEvent: m('cpuMicrosPerEvent'), p50: m('p50'), p99: m('p99') };
  });
  const nginx = summary.find((s) => s.target === 'nginx');
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const machine = { node: process.version, reps: REPS, watches: WATCHES, intervalMs: INTERVAL_MS, measureSeconds: MEASURE_SECONDS };
  writeFileSync(join(RESULTS, `kube-watch-${stamp}.json`), JSON.stringify({ machine, runs, summary }, null, 2));
  const f = (n, d = 0) => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(d));
  console.log(
    [
      `node ${machine.node}; ${WATCHES} watches, a change every ${INTERVAL_MS} ms, ${MEASURE_SECONDS} s measured; ${REPS} reps, medians`,
      '',
      '| target | KiB per watch | events/s delivered | CPU µs per event | CPU vs nginx | delay p50 ms | delay p99 ms |',
      '|---|---|---|---|---|---|---|',
      ...summary.map(
        (s) =>
          `| ${s.target} | ${f(s.kibPerWatch, 1)} | ${f(s.eventsPerSecond)} | ${f(s.cpuMicrosPerEvent, 1)} | ${s.cpuMicrosPerEvent === undefined ? '–' : `${f(s.cpuMicrosPerEvent / nginx.cpuMicrosPerEvent, 1)}×`} | ${f(s.p50)} | ${f(s.p99)} |`,
      ),
    ].join('\n'),
  );
}

async function startNginx(files, originPort) {
  const dir = join(WORK, 'nginx');
  mkdirSync(dir, { recursive: true });
  const config = `${nginxPreamble(dir, { workerConnections: 16384, openFiles: 19000 })}  upstream apiserver { server 127.0.0.1:${originPort}; keepalive 256; }
  server {
    listen 127.0.0.1:${PORTS.nginx} ssl http2;
    ssl_certificate ${files.cert};
    ssl_certificate_key ${files.key};
    http2_max_concurrent_streams 1000;
    location ${PREFIX}/ {
      proxy_pass https://apiserver/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1h;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${files.ca};
      proxy_ssl_name 127.0.0.1;
      proxy_ssl_session_reuse on;
    }
  }
}
`;
  const child = start('nginx', ['taskset', '-c', '0', 'nginx', '-c', write('nginx.conf', config), '-e', '/dev/null']);
  await sleep(500);
  return { pids: () => [child.pid, ...workerPids(child)], stop: () => stop(child, 'SIGQUIT') };
}

async function startHaproxy(files, originPort) {
  const config = `global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend bench
  bind 127.0.0.1:${PORTS.haproxy} ssl crt ${files.certAndKey} alpn h2,http/1.1
  http-request replace-path ${PREFIX}(/.*) \\1
  default_backend apiserver
backend apiserver
  server origin 127.0.0.1:${originPort} ssl verify required ca-file ${files.ca} verifyhost 127.0.0.1
`;
  const child = start('haproxy', ['taskset', '-c', '0', 'haproxy', '-db', '-f', write('haproxy.cfg', config)]);
  return { pids: () => [child.pid], stop: () => stop(child) };
}

async function startMeshgate(files, origin) {
  const config = write(
    'meshgate.yaml',
    `admin: { host: 127.0.0.1, port: ${PORTS.admin} }
logging: { level: warn }
security: { allowLoopbackUpstreams: true }
listeners:
  api:
    host: 127.0.0.1
    port: ${PORTS.meshgate}
    planes: [kube]
    maxConnections: 20000
    http2: { maxConcurrentStreams: 1000 }
tenants:
  - id: bench
    hosts: [${HOST}]
    tls: { cert: ${files.cert}, key: ${files.key} }
    istiod: {}
    clusters:
      - id: bench-main
        issuer: '${origin.issuer}'
        jwks: { file: ${files.jwks} }
        apiServer: { url: '${origin.url}', ca: ${files.ca}, credentials: passthrough }
    kube: { authentication: [token] }
    limits: { connections: 20000, streams: 20000 }
    access:
      kube: [{ method: token, allow: [{ verbs: [watch, list], apiGroups: [''], resources: [pods] }] }]
`,
  );
  const child = start('meshgate', ['taskset', '-c', '0', process.execPath, join(ROOT, 'dist/cli/main.js'), 'serve', '--config', config, '--workers', '1'], { log: join(WORK, 'meshgate.log') });
  await sleep(1000);
  return { pids: () => [child.pid], stop: () => stop(child) };
}

runBenchmark(main);
