/**
 * What the status page shows, from two sources that exist in both ways meshgate runs:
 *  - the topology (tenants, their hosts, clusters and istiod upstreams): the snapshot in use in a
 *    single process; in `serve --workers N` the primary's config file (tenants from a
 *    tenantSource live only in the workers, and appear by their metrics alone);
 *  - the numbers: meshgate's metrics, from this process's registry or the workers' merged ones.
 * Request rates and recent denials come from a bounded ring of counter readings taken every
 * `intervalMs` while the admin listener is open.
 */
import type { TenantConfig } from '../config/schema.js';
import { createHistory, denialsByReason, requestRate, requestRates, type CounterReading } from './history.js';
import type { MetricReader, MetricSample } from './metric-reader.js';

export interface TenantTopology {
  readonly id: string;
  readonly hosts: readonly string[];
  readonly clusters: readonly string[];
  /** The xDS upstream as configured: host:port of each replica, or the name resolved to them. */
  readonly istiod: readonly string[];
}

export interface StatusTopology {
  readonly tenants: readonly TenantTopology[];
  /** How this process runs, and so where its tenants and numbers come from. */
  readonly mode: string;
}

export interface TenantStatus {
  readonly id: string;
  /** False for a tenant known from metrics only (a workers-mode tenantSource tenant, or requests with no tenant). */
  readonly inTopology: boolean;
  readonly hosts: readonly string[];
  readonly clusters: readonly string[];
  readonly istiod: readonly string[];
  readonly replicas: readonly { replica: string; up: boolean | null; sessions: number | null }[];
  readonly xdsStreams: number;
  readonly watches: number;
  readonly tunnels: number;
  /** Requests per second over the last `rateSeconds`; null until two readings exist. */
  readonly requestRate: number | null;
  /** Requests per second in each interval of the window, oldest first. */
  readonly requestRates: readonly number[];
  readonly denials: readonly { reason: string; count: number }[];
  /** Unix seconds. */
  readonly certificates: readonly { certificate: string; notAfter: number }[];
}

export interface StatusReport {
  /** Unix milliseconds. */
  readonly generatedAt: number;
  readonly mode: string;
  readonly config: {
    readonly generation: number | null;
    /** Unix seconds. */
    readonly loadedAt: number | null;
    readonly reloads: { readonly success: number; readonly failure: number };
  };
  /** The span the denials and the rate history cover, and the interval between readings. */
  readonly windowSeconds: number;
  readonly intervalSeconds: number;
  readonly rateSeconds: number;
  readonly tenants: readonly TenantStatus[];
}

export interface StatusSource {
  /** Starts the readings (idempotent); the admin listener calls it when it listens. */
  start(): void;
  stop(): void;
  report(): Promise<StatusReport>;
}

export interface StatusSourceOptions {
  readonly topology: () => StatusTopology;
  readonly read: MetricReader;
  readonly intervalMs?: number;
  readonly windowMs?: number;
  readonly rateWindowMs?: number;
  readonly now?: () => number;
}

/** The label meshgate uses for requests that reached no tenant. */
const NO_TENANT = '-';

const M = {
  requests: 'meshgate_http_requests_total',
  denials: 'meshgate_denials_total',
  replicaUp: 'meshgate_upstream_replica_up',
  sessions: 'meshgate_xds_upstream_sessions',
  streams: 'meshgate_xds_streams',
  watches: 'meshgate_kube_watches',
  tunnels: 'meshgate_kube_tunnels',
  generation: 'meshgate_config_snapshot_version',
  loadedAt: 'meshgate_config_loaded_timestamp_seconds',
  reloads: 'meshgate_config_reloads_total',
  expiry: 'meshgate_certificate_expiry_timestamp_seconds',
} as const;
const COUNTERS: ReadonlySet<string> = new Set([M.requests, M.denials]);
const ALL: ReadonlySet<string> = new Set(Object.values(M));

export function createStatusSource(options: StatusSourceOptions): StatusSource {
  const intervalMs = options.intervalMs ?? 5_000;
  const windowMs = options.windowMs ?? 300_000;
  const rateWindowMs = options.rateWindowMs ?? 30_000;
  const now = options.now ?? Date.now;
  const history = createHistory(Math.ceil(windowMs / intervalMs) + 1);
  let timer: NodeJS.Timeout | undefined;
  let reading: Promise<void> | undefined;

  const take = (): void => {
    // One reading at a time: a slow worker never piles readings up.
    reading ??= options
      .read(COUNTERS)
      .then((samples) => history.push(countersOf(samples, now())))
      .catch(() => undefined)
      .finally(() => (reading = undefined));
  };

  return {
    start() {
      if (timer !== undefined) return;
      take();
      timer = setInterval(take, intervalMs);
      timer.unref();
    },
    stop() {
      clearInterval(timer);
      timer = undefined;
    },
    async report() {
      const samples = await options.read(ALL);
      const at = now();
      const readings = [...history.readings(), countersOf(samples, at)];
      const topology = options.topology();
      return {
        generatedAt: at,
        mode: topology.mode,
        config: {
          generation: single(samples, M.generation),
          loadedAt: single(samples, M.loadedAt),
          reloads: { success: sum(samples, M.reloads, { result: 'success' }), failure: sum(samples, M.reloads, { result: 'failure' }) },
        },
        windowSeconds: Math.round(((readings.at(-1)?.at ?? at) - (readings[0]?.at ?? at)) / 1000),
        intervalSeconds: intervalMs / 1000,
        rateSeconds: rateWindowMs / 1000,
        tenants: tenantIds(topology, samples).map((id): TenantStatus => {
          const known = topology.tenants.find((t) => t.id === id);
          const replicas = new Set(samples.filter((s) => (s.name === M.replicaUp || s.name === M.sessions) && s.labels.tenant === id).map((s) => s.labels.replica ?? ''));
          return {
            id,
            inTopology: known !== undefined,
            hosts: known?.hosts ?? [],
            clusters: known?.clusters ?? [],
            istiod: known?.istiod ?? [],
            replicas: [...replicas].sort().map((replica) => ({
              replica,
              up: upOf(samples.find((s) => s.name === M.replicaUp && s.labels.tenant === id && s.labels.replica === replica)),
              sessions: samples.find((s) => s.name === M.sessions && s.labels.tenant === id && s.labels.replica === replica)?.value ?? null,
            })),
            xdsStreams: sum(samples, M.streams, { tenant: id }),
            watches: sum(samples, M.watches, { tenant: id }),
            tunnels: sum(samples, M.tunnels, { tenant: id }),
            requestRate: requestRate(readings, id, rateWindowMs) ?? null,
            requestRates: requestRates(readings, id),
            denials: denialsByReason(readings, id),
            certificates: samples
              .filter((s) => s.name === M.expiry && s.labels.tenant === id)
              .map((s) => ({ certificate: s.labels.certificate ?? '', notAfter: s.value }))
              .sort((a, b) => a.notAfter - b.notAfter),
          };
        }).filter(isWorthShowing),
      };
    },
  };
}

/**
 * A tenant of the topology always; another (one that only metrics name: a tenantSource tenant in
 * workers mode, a removed tenant's leftover series, requests with no tenant) while it has anything
 * to show.
 */
function isWorthShowing(t: TenantStatus): boolean {
  return (
    t.inTopology ||
    t.replicas.length > 0 ||
    t.certificates.length > 0 ||
    t.xdsStreams + t.watches + t.tunnels > 0 ||
    t.denials.length > 0 ||
    t.requestRates.some((r) => r > 0)
  );
}

/** The topology of tenant configs (a snapshot's, or the config file's). */
export function topologyOf(tenants: readonly TenantConfig[], mode: string): StatusTopology {
  return {
    mode,
    tenants: tenants.map((t) => {
      const xds = t.istiod.xds;
      const urls = xds === undefined ? [] : (xds.replicas ?? (xds.url === undefined ? [] : [xds.url]));
      return {
        id: t.id,
        hosts: [...t.hosts],
        clusters: t.clusters.map((c) => c.id),
        istiod: urls.map((url) => `${new URL(url).host}${xds?.discovery === 'dns' ? ' (every address of the name)' : ''}`),
      };
    }),
  };
}

/** The configured tenants in order, then any others the metrics name, then requests with no tenant. */
function tenantIds(topology: StatusTopology, samples: readonly MetricSample[]): string[] {
  const ids = topology.tenants.map((t) => t.id);
  const seen = new Set(ids);
  const others = new Set<string>();
  for (const s of samples) {
    const tenant = s.labels.tenant;
    if (tenant !== undefined && !seen.has(tenant) && tenant !== '') others.add(tenant);
  }
  const noTenant = others.delete(NO_TENANT);
  return [...ids, ...[...others].sort(), ...(noTenant ? [NO_TENANT] : [])];
}

function countersOf(samples: readonly MetricSample[], at: number): CounterReading {
  const requests = new Map<string, number>();
  const denials = new Map<string, Map<string, number>>();
  for (const s of samples) {
    const tenant = s.labels.tenant ?? NO_TENANT;
    if (s.name === M.requests) requests.set(tenant, (requests.get(tenant) ?? 0) + s.value);
    if (s.name === M.denials) {
      const reasons = denials.get(tenant) ?? new Map<string, number>();
      const reason = s.labels.reason ?? '';
      reasons.set(reason, (reasons.get(reason) ?? 0) + s.value);
      denials.set(tenant, reasons);
    }
  }
  return { at, requests, denials };
}

function sum(samples: readonly MetricSample[], name: string, labels: Readonly<Record<string, string>>): number {
  let total = 0;
  for (const s of samples) {
    if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) total += s.value;
  }
  return total;
}

function single(samples: readonly MetricSample[], name: string): number | null {
  return samples.find((s) => s.name === name)?.value ?? null;
}

function upOf(sample: MetricSample | undefined): boolean | null {
  return sample === undefined ? null : sample.value >= 1;
}
