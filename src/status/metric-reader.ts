/**
 * The status page reads a handful of meshgate's metrics, from whichever registry the admin
 * process has: its own (one process), or the Prometheus text merged from every worker
 * (`serve --workers N`, where the primary has no registry of its own to read).
 */
import type { Registry } from 'prom-client';

export interface MetricSample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Reads the current values of the named metrics. */
export type MetricReader = (names: ReadonlySet<string>) => Promise<MetricSample[]>;

/** This process's registry: only the named metrics are collected. */
export function registryReader(registry: Registry): MetricReader {
  return async (names) => {
    const samples: MetricSample[] = [];
    for (const name of names) {
      const metric = registry.getSingleMetric(name);
      if (metric === undefined) continue;
      const { values } = await metric.get();
      for (const { labels, value } of values) {
        samples.push({ name, labels: Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, String(v)])), value });
      }
    }
    return samples;
  };
}

/** Prometheus text (the workers' merged metrics): the named metrics' lines are parsed. */
export function expositionReader(text: () => Promise<string>): MetricReader {
  return async (names) => parseExposition(await text(), names);
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** The samples of the named metrics in Prometheus text; lines it does not understand are skipped. */
export function parseExposition(text: string, names: ReadonlySet<string>): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = LINE.exec(line);
    if (!match || !names.has(match[1] ?? '')) continue;
    const labels: Record<string, string> = {};
    for (const [, key = '', raw = ''] of (match[2] ?? '').matchAll(LABEL)) labels[key] = unescapeLabel(raw);
    const value = Number(match[3]);
    if (!Number.isNaN(value)) samples.push({ name: match[1] ?? '', labels, value });
  }
  return samples;
}

function unescapeLabel(raw: string): string {
  return raw.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}
