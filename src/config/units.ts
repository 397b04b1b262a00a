/** Durations ("500ms", "10s", "5m", "1h") and sizes ("64KiB", "6MiB", or a byte count) in config. */

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds, or undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  const match = DURATION.exec(text.trim());
  if (!match) return undefined;
  const [, amount, unit] = match;
  return Math.round(Number(amount) * (DURATION_MS[unit ?? 's'] ?? 1000));
}

const SIZE = /^(\d+)(B|KiB|MiB|GiB)?$/;
const SIZE_BYTES: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** Bytes, or undefined when the value is not a size. */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  const match = SIZE.exec(value.trim());
  if (!match) return undefined;
  const [, amount, unit] = match;
  return Number(amount) * (SIZE_BYTES[unit ?? 'B'] ?? 1);
}

/**
 * Go's time.Duration text as the kube-apiserver writes it in a webhook's `?timeout=` ("10s",
 * "1m30s", "500ms"). Returns milliseconds, or undefined when the text is not a duration.
 */
export function parseGoDuration(text: string): number | undefined {
  const part = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  const unitMs: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  if (text.length === 0 || text.length > 32) return undefined;
  let total = 0;
  let consumed = 0;
  for (let match = part.exec(text); match; match = part.exec(text)) {
    total += Number(match[1]) * (unitMs[match[2] ?? 's'] ?? 0);
    consumed = part.lastIndex;
  }
  return consumed === text.length ? Math.round(total) : undefined;
}
