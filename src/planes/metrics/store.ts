/**
 * One tenant's sidecar metrics, as the latest values each proxy sent, for its Prometheus endpoint.
 * Bounded: at most `maxProxies` proxies and `maxSeries` series (a histogram counts its buckets, a
 * summary its quantiles, plus a sum and a count); what does not fit is dropped and counted, never
 * stored. A proxy that has sent nothing for `staleAfter` is forgotten. Envoy sends every stat on
 * each flush, so a proxy's new message replaces what it sent before.
 */
import type { MetricFamily, PromMetric } from './protos.js';
import type { ProxyName } from './node-identity.js';

export interface MetricsStoreLimits {
  readonly maxProxies: number;
  readonly maxSeries: number;
  readonly staleAfter: number;
}

export type DropReason = 'max_proxies' | 'max_series' | 'invalid';

export interface MetricsStore {
  /** Replaces what the proxy sent before; returns the series dropped, by reason. */
  record(node: string, name: ProxyName, families: readonly MetricFamily[]): Partial<Record<DropReason, number>>;
  /** The Prometheus text exposition of every live proxy's latest values. */
  render(): string;
  stats(): { proxies: number; series: number };
}

interface Sample {
  /** The suffix of the family name (`_bucket`, `_sum`, `_count`, or nothing). */
  readonly suffix: string;
  /** Rendered labels, ours first, without braces. */
  readonly labels: string;
  readonly value: number;
}

interface Family {
  readonly help: string;
  readonly type: string;
  readonly samples: Sample[];
}

interface Proxy {
  seen: number;
  series: number;
  families: Map<string, Family>;
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES: Readonly<Record<string, string>> = { COUNTER: 'counter', GAUGE: 'gauge', SUMMARY: 'summary', HISTOGRAM: 'histogram', UNTYPED: 'untyped' };

const escapeValue = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const escapeHelp = (value: string): string => value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
const pair = (name: string, value: string): string => `${name}="${escapeValue(value)}"`;

/** The labels that say which proxy: its pod and namespace when the node id has them, else the node id. */
function proxyLabels(node: string, name: ProxyName): [string, string][] {
  return name.pod !== undefined && name.namespace !== undefined
    ? [['pod', name.pod], ['namespace', name.namespace]]
    : [['node', node]];
}

/** A metric's samples, or undefined when a label is not a valid Prometheus name. */
function samplesOf(type: string, metric: PromMetric, own: readonly [string, string][]): Sample[] | undefined {
  const ours = new Set(own.map(([n]) => n));
  const labels: string[] = own.map(([n, v]) => pair(n, v));
  for (const label of metric.label ?? []) {
    const labelName = label.name ?? '';
    if (!LABEL_NAME.test(labelName) || labelName.startsWith('__')) return undefined;
    // Envoy's labels never override which proxy this is.
    if (!ours.has(labelName)) labels.push(pair(labelName, label.value ?? ''));
  }
  const base = labels.join(',');
  const withLabel = (name: string, value: string): string => (base === '' ? pair(name, value) : `${base},${pair(name, value)}`);
  switch (type) {
    case 'counter':
      return [{ suffix: '', labels: base, value: metric.counter?.value ?? 0 }];
    case 'gauge':
      return [{ suffix: '', labels: base, value: metric.gauge?.value ?? 0 }];
    case 'untyped':
      return [{ suffix: '', labels: base, value: metric.untyped?.value ?? 0 }];
    case 'histogram': {
      const h = metric.histogram ?? {};
      return [
        ...(h.bucket ?? []).map((b) => ({ suffix: '_bucket', labels: withLabel('le', formatNumber(b.upper_bound ?? Infinity)), value: b.cumulative_count ?? 0 })),
        { suffix: '_sum', labels: base, value: h.sample_sum ?? 0 },
        { suffix: '_count', labels: base, value: h.sample_count ?? 0 },
      ];
    }
    case 'summary': {
      const s = metric.summary ?? {};
      return [
        ...(s.quantile ?? []).map((q) => ({ suffix: '', labels: withLabel('quantile', formatNumber(q.quantile ?? 0)), value: q.value ?? 0 })),
        { suffix: '_sum', labels: base, value: s.sample_sum ?? 0 },
        { suffix: '_count', labels: base, value: s.sample_count ?? 0 },
      ];
    }
    default:
      return undefined;
  }
}

function formatNumber(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

export function createMetricsStore(limits: MetricsStoreLimits, now: () => number = Date.now): MetricsStore {
  const proxies = new Map<string, Proxy>();
  let total = 0;

  const expire = (): void => {
    const before = now() - limits.staleAfter;
    for (const [node, proxy] of proxies) {
      if (proxy.seen >= before) continue;
      total -= proxy.series;
      proxies.delete(node);
    }
  };

  return {
    record(node, name, families) {
      expire();
      const dropped: Partial<Record<DropReason, number>> = {};
      const drop = (reason: DropReason, count: number): void => {
        if (count > 0) dropped[reason] = (dropped[reason] ?? 0) + count;
      };
      const previous = proxies.get(node);
      if (!previous && proxies.size >= limits.maxProxies) {
        drop('max_proxies', families.reduce((sum, f) => sum + (f.metric?.length ?? 0), 0));
        return dropped;
      }
      const own = proxyLabels(node, name);
      // What the proxy held is given back before its new values are counted.
      const budget = limits.maxSeries - (total - (previous?.series ?? 0));
      let series = 0;
      const next = new Map<string, Family>();
      for (const family of families) {
        const familyName = family.name ?? '';
        const type = TYPES[family.type ?? 'UNTYPED'];
        if (!METRIC_NAME.test(familyName) || type === undefined) {
          drop('invalid', family.metric?.length ?? 0);
          continue;
        }
        for (const metric of family.metric ?? []) {
          const samples = samplesOf(type, metric, own);
          if (!samples) {
            drop('invalid', 1);
            continue;
          }
          if (series + samples.length > budget) {
            drop('max_series', 1);
            continue;
          }
          series += samples.length;
          let kept = next.get(familyName);
          if (!kept) {
            kept = { help: family.help ?? '', type, samples: [] };
            next.set(familyName, kept);
          }
          kept.samples.push(...samples);
        }
      }
      total += series - (previous?.series ?? 0);
      proxies.set(node, { seen: now(), series, families: next });
      return dropped;
    },

    render() {
      expire();
      const byFamily = new Map<string, { help: string; type: string; lines: string[] }>();
      for (const proxy of proxies.values()) {
        for (const [name, family] of proxy.families) {
          let out = byFamily.get(name);
          if (!out) {
            out = { help: family.help, type: family.type, lines: [] };
            byFamily.set(name, out);
          }
          // One name, one type: a proxy that disagrees with the first is left out of this family.
          if (out.type !== family.type) continue;
          for (const s of family.samples) out.lines.push(`${name}${s.suffix}{${s.labels}} ${formatNumber(s.value)}`);
        }
      }
      const text: string[] = [];
      for (const [name, family] of [...byFamily].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        if (family.help !== '') text.push(`# HELP ${name} ${escapeHelp(family.help)}`);
        text.push(`# TYPE ${name} ${family.type}`, ...family.lines);
      }
      return text.length === 0 ? '' : `${text.join('\n')}\n`;
    },

    stats: () => {
      expire();
      return { proxies: proxies.size, series: total };
    },
  };
}
