/**
 * `meshgate serve --workers N`: one process per core, with node:cluster.
 *
 *  - The primary forks N workers. Each runs the whole gateway (its listeners, tenant sources,
 *    pools and limits) except the admin listener. Listening sockets are the primary's; it hands
 *    each new connection to the next worker in turn, so connections spread across workers.
 *  - The primary serves the admin listener: /metrics merges every worker's registry (counters and
 *    gauges summed, except where a metric says otherwise), /readyz is ready when every worker is.
 *  - SIGHUP reaches every worker; SIGTERM drains every worker and exits once all have; a worker
 *    that dies otherwise is replaced, after a backoff.
 * A worker's state (limits, token caches, pools) is its own: see docs/operations.md.
 */
import cluster, { type Worker } from 'node:cluster';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { AddressInfo } from 'node:net';
import { AggregatorRegistry, type Registry } from 'prom-client';
import { createAdminServer, type AdminServer } from '../admin/admin-server.js';
import { adminAccessSettings, createAdminAccess } from '../admin/access.js';
import { backoffMs } from '../backoff.js';
import type { LoadedConfig } from '../config/load.js';
import type { Logger } from '../observability/logger.js';
import { expositionReader } from '../status/metric-reader.js';
import { createStatusSource, topologyOf } from '../status/status-source.js';

/**
 * Which of the N places a worker fills, 1 to N, in its environment. A worker replacing one that
 * died takes its slot, so that per-worker files (the audit log's) stay N and never have two writers.
 */
export const WORKER_SLOT_ENV = 'MESHGATE_WORKER_SLOT';

/** What a worker tells the primary. */
export interface WorkerMessage {
  readonly type: 'meshgate:serving';
  readonly listeners: Record<string, AddressInfo>;
}

/**
 * The default worker count: the cores this process may run on, bounded by its cgroup's CPU quota
 * (a container limited to 2 CPUs on a 64-core node gets 2, not 64).
 */
export function defaultWorkers(cpuMax = readCpuMax()): number {
  const cores = availableParallelism();
  const [quota, period] = (cpuMax ?? '').trim().split(/\s+/);
  const limit = Number(quota) / Number(period);
  return Number.isFinite(limit) && limit > 0 ? Math.max(1, Math.min(cores, Math.ceil(limit))) : cores;
}

function readCpuMax(): string | undefined {
  try {
    return readFileSync('/sys/fs/cgroup/cpu.max', 'utf8');
  } catch {
    return undefined;
  }
}

export function isWorker(): boolean {
  return cluster.isWorker;
}

/** In a worker: tells the primary it serves, and lets it read the worker's metrics. */
export function reportServing(registry: Registry, listeners: Record<string, AddressInfo>): void {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing one is what makes a worker answer the primary's requests for its metrics.
  new AggregatorRegistry();
  const message: WorkerMessage = { type: 'meshgate:serving', listeners };
  process.send?.(message);
}

export interface PrimaryOptions {
  readonly workers: number;
  readonly base: LoadedConfig;
  readonly logger: Logger;
  readonly drainMs: number;
}

/** Runs the primary until SIGTERM or SIGINT; resolves with the exit code. */
export async function runPrimary(options: PrimaryOptions): Promise<number> {
  const { workers: count, logger, base } = options;
  const aggregator = new AggregatorRegistry();
  const serving = new Map<number, Record<string, AddressInfo>>();
  let stopping = false;
  let restarts = 0;

  // From the first moment: a signal during the start must still stop the workers.
  const stopSignal = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  let allServing: (() => void) | undefined;
  const slots = new Map<number, number>();
  const fork = (slot: number): Worker => {
    const worker = cluster.fork({ [WORKER_SLOT_ENV]: String(slot) });
    slots.set(worker.id, slot);
    // The channel also carries prom-client's metrics answers.
    worker.on('message', (message: { readonly type?: unknown }) => {
      if (message.type !== 'meshgate:serving') return;
      serving.set(worker.id, (message as WorkerMessage).listeners);
      restarts = 0;
      if (serving.size === count) allServing?.();
    });
    return worker;
  };

  const admin: AdminServer = createAdminServer({
    host: base.config.admin.host,
    port: base.config.admin.port,
    metrics: { contentType: aggregator.contentType, text: () => aggregator.clusterMetrics() },
    readiness: () => ({
      ready: !stopping && serving.size === count,
      detail: { workers: count, serving: serving.size },
    }),
    access: createAdminAccess(adminAccessSettings(base)),
    // Tenants from the config file; the numbers are every worker's, merged.
    status: createStatusSource({
      topology: () => topologyOf(base.config.tenants, `${count} workers`),
      read: expositionReader(() => aggregator.clusterMetrics()),
    }),
  });

  // A worker that fails to start (a bad config, a port taken) takes the instance down with it:
  // the first start is all or nothing, as with one process.
  const first = await new Promise<Record<string, AddressInfo> | 'stopped' | undefined>((resolve) => {
    void stopSignal.then(() => resolve('stopped'));
    const onExit = (): void => {
      cluster.off('exit', onExit);
      resolve(undefined);
    };
    cluster.on('exit', onExit);
    allServing = () => {
      allServing = undefined;
      cluster.off('exit', onExit);
      resolve(serving.values().next().value);
    };
    for (let slot = 1; slot <= count; slot++) fork(slot);
  });
  if (first === undefined || first === 'stopped') {
    stopping = true;
    await stopWorkers();
    if (first === undefined) logger.error('a worker failed to start');
    logger.flush();
    return first === undefined ? 1 : 0;
  }

  cluster.on('exit', (worker, code, signal) => {
    serving.delete(worker.id);
    const slot = slots.get(worker.id) ?? 1;
    slots.delete(worker.id);
    if (stopping) return;
    const delay = backoffMs(restarts++);
    logger.error({ pid: worker.process.pid, code, signal, restartInMs: delay }, 'worker exited; replacing it');
    setTimeout(() => {
      if (!stopping) fork(slot);
    }, delay).unref();
  });

  const adminAddress = await admin.listen();
  logger.info({ admin: adminAddress, listeners: first, workers: count, tenants: base.config.tenants.map((t) => t.id) }, 'meshgate is serving');

  const onHangup = (): void => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGHUP');
  };
  process.on('SIGHUP', onHangup);

  const signal = await stopSignal;
  stopping = true;
  process.off('SIGHUP', onHangup);
  logger.info({ signal, drainMs: options.drainMs, workers: count }, 'draining');
  const codes = await stopWorkers();
  await admin.close();
  logger.info('stopped');
  logger.flush();
  return codes.every((code) => code === 0) ? 0 : 1;
}

/** SIGTERM to every worker (each drains); resolves with their exit codes. */
function stopWorkers(): Promise<number[]> {
  const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
  const exits = alive.map((worker) => new Promise<number>((resolve) => worker.once('exit', (code: number | null) => resolve(code ?? 1))));
  for (const worker of alive) worker.process.kill('SIGTERM');
  return Promise.all(exits);
}
