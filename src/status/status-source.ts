/**
 * What the status page shows, from two sources that exist in both ways meshgate runs:
 *  - the topology (tenants, their hosts, clusters and istiod upstreams): the snapshot in use in a
 *    single process; in `serve --workers N` the primary's config file (tenants from a
 *    tenantSource live only in the workers, and appear by their metrics alone);
 *  - the numbers: meshgate's metrics, from this process's registry or the workers' merged ones.
 * Request rates and recent denials come from a bounded ring of counter readings taken every
 * `intervalMs` while the admin listener is open.
 *
 * A report costs one pass over the samples, whatever the number of tenants: they are grouped by
 * tenant and metric once, and each tenant reads its own group. The admin listener shares the event
 * loop with the data plane, so callers within `reuseMs` of a report (several open pages, each
 * polling) share it rather than each computing one.
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
  /** Callers while a report is computed, or within this long of it, are given that report. */
  readonly reuseMs?: number;
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
  const reuseMs = options.reuseMs ?? 1_000;
  const now = options.now ?? Date.now;
  const history = createHistory(Math.ceil(windowMs / intervalMs) + 1);
  let timer: NodeJS.Timeout | undefined;
  let reading: Promise<void> | undefined;
  let shared: SharedReport | undefined;

  /** One pass over the samples groups them; each tenant then reads only its own. */
  const build = async (): Promise<StatusReport> => {
    const samples = await options.read(ALL);
    const at = now();
    const readings = [...history.readings(), countersOf(samples, at)];
    const topology = options.topology();
    const { byName, byTenant } = group(samples);
    const known = new Map<string, TenantTopology>();
    for (const t of topology.tenants) if (!known.has(t.id)) known.set(t.id, t);
    const reloads = byName.get(M.reloads) ?? [];
    return {
      generatedAt: at,
      mode: topology.mode,
      config: {
        generation: byName.get(M.generation)?.[0]?.value ?? null,
        loadedAt: byName.get(M.loadedAt)?.[0]?.value ?? null,
        reloads: { success: total(reloads.filter((s) => s.labels.result === 'success')), failure: total(reloads.filter((s) => s.labels.result === 'failure')) },
      },
      windowSeconds: Math.round(((readings.at(-1)?.at ?? at) - (readings[0]?.at ?? at)) / 1000),
      intervalSeconds: intervalMs / 1000,
      rateSeconds: rateWindowMs / 1000,
      tenants: tenantIds(topology, byTenant.keys())
        .map((id) => tenantStatus(id, known.get(id), byTenant.get(id) ?? NO_SAMPLES, readings, rateWindowMs))
        .filter(isWorthShowing),
    };
  };

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
    report() {
      if (shared !== undefined && (shared.freshUntil === undefined || now() < shared.freshUntil)) return shared.report;
      const entry: SharedReport = { report: build() };
      shared = entry;
      entry.report.then(
        (report) => (entry.freshUntil = report.generatedAt + reuseMs),
        () => {
          if (shared === entry) shared = undefined; // the next caller tries again
        },
      );
      return entry.report;
    },
  };
}

/** A report in the making, or made, and until when it is given to callers. */
interface SharedReport {
  readonly report: Promise<StatusReport>;
  freshUntil?: number;
}

/** One tenant's samples, by metric name. */
type TenantSamples = ReadonlyMap<string, readonly MetricSample[]>;
const NO_SAMPLES: TenantSamples = new Map();

function tenantStatus(
  id: string,
  known: TenantTopology | undefined,
  samples: TenantSamples,
  readings: readonly CounterReading[],
  rateWindowMs: number,
): TenantStatus {
  const of = (name: string): readonly MetricSample[] => samples.get(name) ?? [];
  const up = firstByReplica(of(M.replicaUp));
  const sessions = firstByReplica(of(M.sessions));
  const replicas = new Set([...of(M.replicaUp), ...of(M.sessions)].map((s) => s.labels.replica ?? ''));
  return {
    id,
    inTopology: known !== undefined,
    hosts: known?.hosts ?? [],
    clusters: known?.clusters ?? [],
    istiod: known?.istiod ?? [],
    replicas: [...replicas].sort().map((replica) => ({
      replica,
      up: upOf(up.get(replica)),
      sessions: sessions.get(replica)?.value ?? null,
    })),
    xdsStreams: total(of(M.streams)),
    watches: total(of(M.watches)),
    tunnels: total(of(M.tunnels)),
    requestRate: requestRate(readings, id, rateWindowMs) ?? null,
    requestRates: requestRates(readings, id),
    denials: denialsByReason(readings, id),
    certificates: of(M.expiry)
      .map((s) => ({ certificate: s.labels.certificate ?? '', notAfter: s.value }))
      .sort((a, b) => a.notAfter - b.notAfter),
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
function tenantIds(topology: StatusTopology, named: Iterable<string>): string[] {
  const ids = topology.tenants.map((t) => t.id);
  const seen = new Set(ids);
  const others = new Set<string>();
  for (const tenant of named) {
    if (!seen.has(tenant) && tenant !== '') others.add(tenant);
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

/** The samples by metric name, and those with a tenant label by tenant, then by name; each in the order read. */
function group(samples: readonly MetricSample[]): {
  byName: Map<string, MetricSample[]>;
  byTenant: Map<string, Map<string, MetricSample[]>>;
} {
  const byName = new Map<string, MetricSample[]>();
  const byTenant = new Map<string, Map<string, MetricSample[]>>();
  const add = (into: Map<string, MetricSample[]>, s: MetricSample): void => {
    const list = into.get(s.name);
    if (list === undefined) into.set(s.name, [s]);
    else list.push(s);
  };
  for (const s of samples) {
    add(byName, s);
    const tenant = s.labels.tenant;
    if (tenant === undefined) continue;
    let names = byTenant.get(tenant);
    if (names === undefined) byTenant.set(tenant, (names = new Map<string, MetricSample[]>()));
    add(names, s);
  }
  return { byName, byTenant };
}

/** The first sample of each replica label (a sample without one has none). */
function firstByReplica(samples: readonly MetricSample[]): Map<string, MetricSample> {
  const first = new Map<string, MetricSample>();
  for (const s of samples) {
    const replica = s.labels.replica;
    if (replica !== undefined && !first.has(replica)) first.set(replica, s);
  }
  return first;
}

function total(samples: readonly MetricSample[]): number {
  let sum = 0;
  for (const s of samples) sum += s.value;
  return sum;
}

function upOf(sample: MetricSample | undefined): boolean | null {
  return sample === undefined ? null : sample.value >= 1;
}
