/**
 * A bounded ring of counter readings (requests by tenant, denials by tenant and reason), taken at a
 * fixed interval, from which the status page derives rates and recent increases. Counters are
 * cumulative, so an increase over a span needs only its two ends; a counter that went down (a
 * worker was replaced and started from 0) is counted from 0 again, as Prometheus's increase() does.
 */

export interface CounterReading {
  /** Unix time in milliseconds. */
  readonly at: number;
  /** Requests by tenant. */
  readonly requests: ReadonlyMap<string, number>;
  /** Denials by tenant, then by reason. */
  readonly denials: ReadonlyMap<string, ReadonlyMap<string, number>>;
}

export interface History {
  push(reading: CounterReading): void;
  /** Oldest first. */
  readings(): readonly CounterReading[];
}

export function createHistory(capacity: number): History {
  const ring: CounterReading[] = [];
  return {
    push(reading) {
      ring.push(reading);
      if (ring.length > capacity) ring.splice(0, ring.length - capacity);
    },
    readings: () => ring,
  };
}

/** The increase of one counter over consecutive readings (a missing value is 0: not yet counted). */
export function increase(values: readonly (number | undefined)[]): number {
  let total = 0;
  for (let i = 1; i < values.length; i++) {
    const before = values[i - 1] ?? 0;
    const after = values[i] ?? 0;
    total += after >= before ? after - before : after;
  }
  return total;
}

/** Requests per second between each pair of consecutive readings, oldest first. */
export function requestRates(readings: readonly CounterReading[], tenant: string): number[] {
  const rates: number[] = [];
  for (let i = 1; i < readings.length; i++) {
    const a = readings[i - 1];
    const b = readings[i];
    if (a === undefined || b === undefined || b.at <= a.at) continue;
    rates.push(increase([a.requests.get(tenant), b.requests.get(tenant)]) / ((b.at - a.at) / 1000));
  }
  return rates;
}

/** Requests per second over the readings that cover the last `spanMs` (at least the last two readings). */
export function requestRate(readings: readonly CounterReading[], tenant: string, spanMs: number): number | undefined {
  const last = readings.at(-1);
  if (last === undefined) return undefined;
  let first = readings.length - 2;
  while (first > 0 && (readings[first - 1]?.at ?? 0) >= last.at - spanMs) first--;
  const span = readings.slice(Math.max(0, first));
  const start = span[0];
  if (start === undefined || span.length < 2 || last.at - start.at < 1) return undefined;
  return increase(span.map((r) => r.requests.get(tenant))) / ((last.at - start.at) / 1000);
}

/** Denials by reason over all the readings, largest first; reasons without any are left out. */
export function denialsByReason(readings: readonly CounterReading[], tenant: string): { reason: string; count: number }[] {
  const reasons = new Set<string>();
  for (const r of readings) for (const reason of r.denials.get(tenant)?.keys() ?? []) reasons.add(reason);
  return [...reasons]
    .map((reason) => ({ reason, count: increase(readings.map((r) => r.denials.get(tenant)?.get(reason))) }))
    .filter((d) => d.count > 0)
    .sort((a, b) => b.count - a.count || a.reason.localeCompare(b.reason));
}
