// What the benchmarks share: child processes that must not die early (and those driven over IPC),
// /proc readings, medians, work files.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const processes = [];
let stopping = false;

/** Starts a command (prefix it with taskset to pin it); the whole run fails if it exits early. */
export function start(name, [command, ...args], { log, ipc = false } = {}) {
  // A log goes straight to its file: piped through this process, which blocks in execFileSync
  // while h2load runs, it would fill the pipe and stall the target's logging.
  const out = log ? openSync(log, 'a') : 'ignore';
  const child = spawn(command, args, { stdio: ['ignore', out, 'inherit', ...(ipc ? ['ipc'] : [])] });
  if (typeof out === 'number') closeSync(out);
  child.on('exit', (code, signal) => {
    if (!stopping && !child.stopping) {
      console.error(`${name} exited early (${code ?? signal})`);
      process.exit(1);
    }
  });
  processes.push(child);
  return child;
}

/** Stops one child started with start(), and waits for it to exit. */
export function stop(child, signal = 'SIGTERM') {
  child.stopping = true;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

export function stopAll() {
  stopping = true;
  for (const child of processes) if (child.exitCode === null) child.kill('SIGTERM');
}

export function workerPids(master) {
  const children = readFileSync(`/proc/${master.pid}/task/${master.pid}/children`, 'utf8').trim();
  return children === '' ? [] : children.split(/\s+/).map(Number);
}

export function cpuTicks(pids) {
  let total = 0;
  for (const pid of pids) {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    total += Number(fields[11]) + Number(fields[12]);
  }
  return total;
}

export function rssMiB(pid) {
  const kb = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
  return kb / 1024;
}

export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** The top of an nginx config whose files all live in `dir`, through the opening of `http {`. */
export function nginxPreamble(dir, { workers = 1, workerConnections = 8192, openFiles } = {}) {
  return `worker_processes ${workers};
${openFiles ? `worker_rlimit_nofile ${openFiles};\n` : ''}user root;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections ${workerConnections}; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
`;
}

/**
 * A CA, meshgate's certificate for `host`, istiod's for `istiod` (and 127.0.0.1), and an ES256 key
 * whose JWKS a tenant cluster publishes, with `mint(claims)` for its tokens.
 */
export async function benchIdentities(host, istiod) {
  const { createCertificateAuthority, issueCertificate } = await import('../dist/pki/certificates.js');
  const { SignJWT, exportJWK, generateKeyPair } = await import('jose');
  const ca = await createCertificateAuthority('bench CA');
  const server = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server' });
  const upstream = await issueCertificate(ca, { commonName: istiod, dnsNames: [istiod], ipAddresses: ['127.0.0.1'], usage: 'server' });
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' }] };
  const issuer = 'https://kubernetes.default.svc.cluster.local';
  const mint = ({ subject, audience }) =>
    new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid: 'bench' }).setIssuer(issuer).setSubject(subject).setAudience(audience).setExpirationTime('4h').sign(privateKey);
  return { ca, server, istiod: upstream, jwks, issuer, mint };
}

/** A child driven over IPC: `ask` sends a message and resolves with its answer (answers come in order; one with `error` rejects); `ready` resolves on `{ready: true}`. */
export function peer(child) {
  const queue = [];
  let ready;
  const readyPromise = new Promise((resolve) => (ready = resolve));
  child.on('message', (message) => {
    if (message.ready) return ready();
    const waiter = queue.shift();
    if (message.error) waiter?.reject(new Error(message.error));
    else waiter?.resolve(message);
  });
  return {
    ready: readyPromise,
    ask: (message) =>
      new Promise((resolve, reject) => {
        queue.push({ resolve, reject });
        child.send(message);
      }),
  };
}

/** Writes files into `dir`: `write(name, text, mode)` returns the path. */
export function writer(dir) {
  return (name, text, mode = 0o644) => {
    const path = join(dir, name);
    writeFileSync(path, text, { mode });
    return path;
  };
}

/** Runs a benchmark: its children are stopped however it ends, then `cleanup` runs. */
export function runBenchmark(main, cleanup = () => undefined) {
  process.on('exit', stopAll);
  process.on('SIGINT', () => process.exit(130));
  process.on('SIGTERM', () => process.exit(143));
  main()
    .catch((err) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(async () => {
      stopAll();
      await new Promise((resolve) => setTimeout(resolve, 500));
      cleanup();
    });
}
