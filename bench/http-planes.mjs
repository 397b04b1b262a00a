// Benchmark of meshgate's HTTP planes beside nginx, haproxy and a direct connection, in one run.
//
// Method (after ../shared/research/perf-anchors.md): the proxy under test is pinned to CPU 0; the
// load generator (h2load) and the origin are pinned to CPU 1. Every target proxies to the same
// origin (an nginx with TLS standing in for istiod :15017, and plain HTTP for :15014). Repetitions
// are interleaved, with the starting target rotating, and every figure is the median over them.
// CPU time per request is read from /proc for the proxy's processes: on a shared 2-core box it is
// the steadiest figure.
//
// Scenarios:
//   webhook-max   POST of a 2 KiB AdmissionReview, 8 KiB answer; 50 keep-alive connections, flat out
//   webhook-1k    the same at a fixed 1,000 req/s, a rate every target sustains: the latency a
//                 kube-apiserver sees, and the steadiest CPU-per-request figure
//   debug-max     GET of a 2 KiB debug document, 50 connections, flat out
//   kube-list-h2  the kube plane as client-go uses it: HTTP/2 GET of a 10-pod PodList (~9 KiB) at
//                 /clusters/bench-main/api/v1/namespaces/bookinfo/pods, 50 connections, flat out.
//                 meshgate verifies the token, parses the request as the API server would, checks
//                 the tenant's kube rules and passes the token through; nginx and haproxy strip the
//                 prefix and proxy. The node reference proxy has no kube route and sits it out.
//
// SCENARIOS=kube-list-h2 runs only the scenarios named (comma-separated); TARGETS=nginx,meshgate
// only the targets named; WORKERS=1,2 adds meshgate with 2 workers on both cores.
//
// meshgate authenticates every request (a bearer JWT, verified once then cached), checks it, logs
// it, and verifies istiod's certificate; nginx and haproxy only terminate TLS and proxy. The
// `node` target (bench/reference/node-proxy.mjs) is the same Node stack as meshgate with none of
// that work: the difference between it and meshgate is what meshgate's own stages cost.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { benchIdentities, cpuTicks, median, nginxPreamble, rssMiB, runBenchmark, start, workerPids, writer } from './lib.mjs';

const ROOT = resolve(import.meta.dirname, '..');
const WORK = join(ROOT, 'bench', '.work');
const write = writer(WORK);
const RESULTS = join(ROOT, 'bench', 'results');
const REPS = Number(process.env.REPS ?? 3);
const DURATION = Number(process.env.DURATION ?? 10);
const CONNECTIONS = 50;
const HOST = 'bench.meshgate.test';
const ISTIOD = 'istiod.bench-cp.svc';
const PORTS = { origin: 19443, originHttp: 19080, direct: 19443, nginx: 19444, haproxy: 19445, meshgate: 19446, node: 19447, admin: 19400 };
const KUBE_PREFIX = '/clusters/bench-main';
const PODS_PATH = '/api/v1/namespaces/bookinfo/pods';
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

async function main() {
  rmSync(WORK, { recursive: true, force: true });
  mkdirSync(join(WORK, 'www'), { recursive: true });
  mkdirSync(RESULTS, { recursive: true });
  const files = await prepare();

  const origin = startNginx('origin', originConfig(files), 1);
  const nginx = startNginx('proxy', nginxConfig(files), 0);
  const haproxy = start('haproxy', ['taskset', '-c', '0', 'haproxy', '-db', '-f', write('haproxy.cfg', haproxyConfig(files))]);
  // MESHGATE_NODE_ARGS passes flags to meshgate's node, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
  const nodeArgs = (process.env.MESHGATE_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const bare = start('node', [
    'taskset', '-c', '0', process.execPath, join(ROOT, 'bench/reference/node-proxy.mjs'), String(PORTS.node), files.cert, files.key,
    `https://127.0.0.1:${PORTS.origin}`, `http://127.0.0.1:${PORTS.originHttp}`, files.ca, ISTIOD,
  ]);
  const meshgate = start('meshgate', ['taskset', '-c', '0', process.execPath, ...nodeArgs, join(ROOT, 'dist/cli/main.js'), 'serve', '--config', files.config, '--workers', '1'], {
    log: join(WORK, 'meshgate.log'),
  });
  // WORKERS=1,2 also runs meshgate with 2 workers, free to use both cores (shared with h2load and
  // the origin): the scaling from 1 to 2 workers, on a machine with 2 cores in all.
  const workers = (process.env.WORKERS ?? '1').split(',').map(Number).filter((n) => n > 1);
  const multi = workers.map((n, i) => ({
    n,
    port: PORTS.meshgate + 10 + i,
    process: start(`meshgate-${n}w`, [process.execPath, ...nodeArgs, join(ROOT, 'dist/cli/main.js'), 'serve', '--config', files.configFor(PORTS.meshgate + 10 + i, PORTS.admin + 10 + i), '--workers', String(n)], {
      log: join(WORK, `meshgate-${n}w.log`),
    }),
  }));
  await sleep(1000);
  // Every meshgate answers /readyz before anything is measured.
  for (const admin of [PORTS.admin, ...multi.map((_, i) => PORTS.admin + 10 + i)]) await ready(`http://127.0.0.1:${admin}/readyz`);

  const targets = [
    { name: 'direct', port: PORTS.direct, debugPort: PORTS.originHttp, pids: () => workerPids(origin) },
    { name: 'nginx', port: PORTS.nginx, pids: () => [nginx.pid, ...workerPids(nginx)] },
    { name: 'haproxy', port: PORTS.haproxy, pids: () => [haproxy.pid] },
    { name: 'node', port: PORTS.node, pids: () => [bare.pid] },
    { name: 'meshgate', port: PORTS.meshgate, pids: () => [meshgate.pid] },
    ...multi.map((m) => ({ name: `meshgate-${m.n}w`, port: m.port, pids: () => [m.process.pid, ...workerPids(m.process)] })),
  ];
  // TARGETS=nginx,meshgate runs only the targets named.
  const onlyTargets = process.env.TARGETS?.split(',');
  if (onlyTargets) targets.splice(0, targets.length, ...targets.filter((t) => onlyTargets.includes(t.name)));
  const only = process.env.SCENARIOS?.split(',');
  const scenarios = [
    { name: 'webhook-max', method: 'POST', path: '/inject/cluster/bench-main/net/network1?timeout=10s', rps: undefined },
    { name: 'webhook-1k', method: 'POST', path: '/inject/cluster/bench-main/net/network1?timeout=10s', rps: 1000 / CONNECTIONS },
    { name: 'debug-max', method: 'GET', path: '/debug/config_dump', rps: undefined, debug: true },
    { name: 'kube-list-h2', method: 'GET', path: `${KUBE_PREFIX}${PODS_PATH}`, directPath: PODS_PATH, rps: undefined, h2: true, skip: ['node'] },
  ].filter((s) => only === undefined || only.includes(s.name));

  // Sanity: every target answers every scenario with 2xx before anything is timed. (With no
  // warm-up and --log-file, h2load 1.52 can keep a run going forever.)
  const runsOn = (scenario) => targets.filter((t) => !(scenario.skip ?? []).includes(t.name));
  for (const scenario of scenarios) for (const target of runsOn(scenario)) h2load(target, scenario, files, { seconds: 1, warmup: 1 });

  const runs = [];
  for (let rep = 0; rep < REPS; rep++) {
    for (const scenario of scenarios) {
      const eligible = runsOn(scenario);
      const order = eligible.map((_, i) => eligible[(i + rep) % eligible.length]);
      for (const target of order) {
        const before = cpuTicks(target.pids());
        const result = h2load(target, scenario, files, { seconds: DURATION, warmup: 1 });
        const cpuSeconds = (cpuTicks(target.pids()) - before) / CLK_TCK;
        const run = { rep, scenario: scenario.name, target: target.name, ...result, cpuSeconds, cpuMicrosPerRequest: (cpuSeconds * 1e6) / result.requests };
        if (target.name === 'meshgate') run.rssMiB = rssMiB(meshgate.pid);
        runs.push(run);
        process.stderr.write(`rep ${rep + 1}/${REPS} ${scenario.name.padEnd(12)} ${target.name.padEnd(9)} ${Math.round(result.rps)} req/s  p50 ${result.p50.toFixed(2)} ms  p99 ${result.p99.toFixed(2)} ms  ${run.cpuMicrosPerRequest.toFixed(0)} µs CPU/req\n`);
      }
    }
  }

  const summary = summarize(runs, scenarios, targets).filter((row) => runs.some((r) => r.scenario === row.scenario && r.target === row.target));
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const machine = { node: process.version, cpus: readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m)?.[1], reps: REPS, durationSeconds: DURATION, connections: CONNECTIONS };
  writeFileSync(join(RESULTS, `http-planes-${stamp}.json`), JSON.stringify({ machine, runs, summary }, null, 2));
  console.log(table(summary, machine));
}

async function ready(url) {
  for (let i = 0; i < 300; i++) {
    const ok = await fetch(url).then((r) => r.ok, () => false);
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`${url} never answered ready`);
}

function h2load(target, scenario, files, { seconds, warmup }) {
  const log = join(WORK, 'h2load.log');
  rmSync(log, { force: true });
  const port = scenario.debug && target.debugPort ? target.debugPort : target.port;
  const scheme = scenario.debug && target.debugPort ? 'http' : 'https';
  const path = target.name === 'direct' && scenario.directPath ? scenario.directPath : scenario.path;
  const args = [
    '-c', '1', 'h2load', ...(scenario.h2 ? [] : ['--h1']), '-t', '1', '-c', String(CONNECTIONS), '-D', String(seconds),
    ...(warmup > 0 ? ['--warm-up-time', String(warmup)] : []),
    ...(scenario.rps ? ['--rps', String(scenario.rps)] : []),
    '--log-file', log,
    '--connect-to', `127.0.0.1:${port}`,
    '-H', `authorization: Bearer ${files.token}`,
    ...(scenario.method === 'POST' ? ['-d', files.body, '-H', 'content-type: application/json'] : []),
    `${scheme}://${HOST}:${port}${path}`,
  ];
  const out = execFileSync('taskset', args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const done = Number(/requests: \d+ total, \d+ started, (\d+) done/.exec(out)?.[1] ?? 0);
  const ok = Number(/status codes: (\d+) 2xx/.exec(out)?.[1] ?? 0);
  // h2load counts a few streams still in flight when it stops as failed: up to 0.1% is that.
  if (done === 0 || ok < done * 0.999) throw new Error(`${target.name} ${scenario.name}: ${ok}/${done} succeeded\n${out}`);
  const latencies = readFileSync(log, 'utf8').trim().split('\n').map((line) => Number(line.split('\t')[2]) / 1000).sort((a, b) => a - b);
  const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { requests: done, rps: Number(/finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(out)?.[1]), p50: pick(0.5), p99: pick(0.99), p999: pick(0.999) };
}

function summarize(runs, scenarios, targets) {
  const rows = [];
  for (const scenario of scenarios) {
    const of = (target, key) => runs.filter((r) => r.scenario === scenario.name && r.target === target).map((r) => r[key]);
    const base = (key, target) => median(of(target, key));
    for (const target of targets) {
      const rps = of(target.name, 'rps');
      rows.push({
        scenario: scenario.name,
        target: target.name,
        rps: median(rps),
        rpsMin: Math.min(...rps),
        rpsMax: Math.max(...rps),
        vsDirect: median(rps) / base('rps', 'direct'),
        vsNginx: median(rps) / base('rps', 'nginx'),
        cpuMicros: median(of(target.name, 'cpuMicrosPerRequest')),
        cpuVsNginx: median(of(target.name, 'cpuMicrosPerRequest')) / base('cpuMicrosPerRequest', 'nginx'),
        p50: median(of(target.name, 'p50')),
        p99: median(of(target.name, 'p99')),
        p999: median(of(target.name, 'p999')),
        rssMiB: target.name === 'meshgate' ? median(of(target.name, 'rssMiB')) : undefined,
      });
    }
  }
  return rows;
}

function table(rows, machine) {
  const f = (n, d = 0) => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(d));
  const lines = [
    `node ${machine.node}, ${machine.cpus}; ${machine.reps} reps × ${machine.durationSeconds} s, ${machine.connections} connections; medians (req/s min–max)`,
    '',
    '| scenario | target | req/s | vs direct | vs nginx | CPU µs/req | CPU vs nginx | p50 ms | p99 ms | p99.9 ms |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.target} | ${f(r.rps)} (${f(r.rpsMin)}–${f(r.rpsMax)}) | ${f(r.vsDirect, 2)} | ${f(r.vsNginx, 2)} | ${f(r.cpuMicros)} | ${f(r.cpuVsNginx, 1)}× | ${f(r.p50, 2)} | ${f(r.p99, 2)} | ${f(r.p999, 2)} |`,
    ),
  ];
  const rss = rows.find((r) => r.target === 'meshgate' && r.rssMiB !== undefined)?.rssMiB;
  if (rss !== undefined) lines.push('', `meshgate RSS after the runs: ${f(rss)} MiB`);
  return lines.join('\n');
}

// ---- setup ------------------------------------------------------------------------------------

async function prepare() {
  const { ca, server, istiod, jwks, issuer, mint } = await benchIdentities(HOST, ISTIOD);
  const token = await mint({ subject: 'system:serviceaccount:kube-system:kube-apiserver', audience: ['meshgate-webhook', 'istio-ca'] });

  const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'productpage-v1', namespace: 'bookinfo', labels: { app: 'productpage' } }, spec: { containers: [{ name: 'productpage', image: 'docker.io/istio/examples-bookinfo-productpage-v1:1.20.2' }] } };
  const review = { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: '7d1a6c3e-5b5e-4f0a-9a51-3c2f0e6b9a10', operation: 'CREATE', namespace: 'bookinfo', object: pod } };
  review.request.padding = 'x'.repeat(2048 - JSON.stringify(review).length - 14);
  const answer = { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: review.request.uid, allowed: true, patchType: 'JSONPatch', patch: Buffer.alloc(6000, 'p').toString('base64') } };
  writeFileSync(join(WORK, 'www', 'config_dump'), JSON.stringify({ configs: [{ data: 'd'.repeat(2000) }] }));
  writeFileSync(join(WORK, 'www', 'answer.json'), JSON.stringify(answer));
  const pods = Array.from({ length: 10 }, (_, i) => ({ ...pod, metadata: { ...pod.metadata, name: `productpage-v1-${i}`, resourceVersion: String(1000 + i) } }));
  writeFileSync(join(WORK, 'www', 'pods.json'), JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '1010' }, items: pods }));

  const paths = {
    ca: write('ca.pem', ca.cert),
    cert: write('server.pem', server.cert),
    key: write('server-key.pem', server.key, 0o600),
    certAndKey: write('server-bundle.pem', server.cert + server.key, 0o600),
    istiodCert: write('istiod.pem', istiod.cert),
    istiodKey: write('istiod-key.pem', istiod.key, 0o600),
    jwks: write('jwks.json', JSON.stringify(jwks)),
    body: write('admission-review.json', JSON.stringify(review)),
    token: readFileSync(write('token', token, 0o600), 'utf8'),
  };
  paths.configFor = (port, admin) => write(
    `meshgate-${port}.yaml`,
    `admin: { host: 127.0.0.1, port: ${admin} }
logging: { level: info }
security: { allowLoopbackUpstreams: true }
listeners:
  bench: { host: 127.0.0.1, port: ${port}, planes: [webhook, debug, kube], maxConnections: 10000 }
tenants:
  - id: bench
    hosts: [${HOST}]
    tls: { cert: ${paths.cert}, key: ${paths.key} }
    istiod:
      webhook: { url: 'https://127.0.0.1:${PORTS.origin}', ca: ${paths.ca}, serverName: ${ISTIOD} }
      debug: { url: 'http://127.0.0.1:${PORTS.originHttp}' }
    clusters:
      - id: bench-main
        issuer: '${issuer}'
        jwks: { file: ${paths.jwks} }
        apiServer: { url: 'https://127.0.0.1:${PORTS.origin}', ca: ${paths.ca}, serverName: ${ISTIOD}, credentials: passthrough }
    webhook: { authentication: [token] }
    kube: { authentication: [token], audiences: [istio-ca] }
    access:
      kube: [{ method: token, allow: [{ verbs: [list], apiGroups: [''], resources: [pods] }] }]
`,
  );
  paths.config = paths.configFor(PORTS.meshgate, PORTS.admin);
  return paths;
}

function nginxCommon(name) {
  const dir = join(WORK, `nginx-${name}`);
  mkdirSync(dir, { recursive: true });
  return `${nginxPreamble(dir)}  keepalive_requests 1000000;
`;
}

function originConfig(files) {
  return `${nginxCommon('origin')}
  server {
    listen 127.0.0.1:${PORTS.origin} ssl http2;
    ssl_certificate ${files.istiodCert};
    ssl_certificate_key ${files.istiodKey};
    location = ${PODS_PATH} { alias ${WORK}/www/pods.json; default_type application/json; }
    # nginx answers POST with a file by turning the request into a GET on an internal redirect.
    location = /answer.json { root ${WORK}/www; default_type application/json; }
    location / { return 405; error_page 405 =200 /answer.json; }
  }
  server {
    listen 127.0.0.1:${PORTS.originHttp};
    location /debug/ { alias ${WORK}/www/; default_type application/json; }
  }
}
`;
}

function nginxConfig(files) {
  return `${nginxCommon('proxy')}
  upstream webhook { server 127.0.0.1:${PORTS.origin}; keepalive 256; }
  upstream debug { server 127.0.0.1:${PORTS.originHttp}; keepalive 256; }
  server {
    listen 127.0.0.1:${PORTS.nginx} ssl http2;
    ssl_certificate ${files.cert};
    ssl_certificate_key ${files.key};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /debug/ { proxy_pass http://debug; }
    location ${KUBE_PREFIX}/ {
      proxy_pass https://webhook/;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${files.ca};
      proxy_ssl_name ${ISTIOD};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
    location / {
      proxy_pass https://webhook;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${files.ca};
      proxy_ssl_name ${ISTIOD};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
`;
}

function haproxyConfig(files) {
  return `global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend bench
  bind 127.0.0.1:${PORTS.haproxy} ssl crt ${files.certAndKey} alpn h2,http/1.1
  use_backend debug if { path_beg /debug/ }
  use_backend kube if { path_beg ${KUBE_PREFIX}/ }
  default_backend webhook
backend kube
  http-request replace-path ${KUBE_PREFIX}(/.*) \\1
  server origin 127.0.0.1:${PORTS.origin} ssl verify required ca-file ${files.ca} sni str(${ISTIOD}) verifyhost ${ISTIOD}
backend webhook
  server origin 127.0.0.1:${PORTS.origin} ssl verify required ca-file ${files.ca} sni str(${ISTIOD}) verifyhost ${ISTIOD}
backend debug
  server origin 127.0.0.1:${PORTS.originHttp}
`;
}

// ---- processes --------------------------------------------------------------------------------

function startNginx(name, config, cpu) {
  return start(`nginx ${name}`, ['taskset', '-c', String(cpu), 'nginx', '-c', write(`nginx-${name}.conf`, config), '-e', '/dev/null']);
}

runBenchmark(main, () => {
  for (const entry of readdirSync(WORK, { withFileTypes: true })) {
    if (entry.isDirectory() && entry.name.startsWith('nginx-')) rmSync(join(WORK, entry.name, 'body'), { recursive: true, force: true });
  }
});
