import { describe, expect, it } from 'vitest';
import { createHistory, denialsByReason, increase, requestRate, requestRates, type CounterReading } from './history.js';
import { parseExposition } from './metric-reader.js';

const reading = (at: number, requests: Record<string, number>, denials: Record<string, Record<string, number>> = {}): CounterReading => ({
  at,
  requests: new Map(Object.entries(requests)),
  denials: new Map(Object.entries(denials).map(([tenant, reasons]) => [tenant, new Map(Object.entries(reasons))])),
});

describe('status history', () => {
  it('keeps at most its capacity, dropping the oldest', () => {
    const history = createHistory(3);
    for (let i = 0; i < 10; i++) history.push(reading(i * 1000, {}));
    expect(history.readings().map((r) => r.at)).toEqual([7000, 8000, 9000]);
  });

  it.each([
    { values: [5, 5, 5], expected: 0 },
    { values: [5, 8, 10], expected: 5 },
    { values: [undefined, 4], expected: 4 }, // a series that appeared: counted from 0
    { values: [10, 3, 6], expected: 6 }, // a counter that restarted (a replaced worker) counts from 0 again
    { values: [7], expected: 0 },
  ])('increase($values) is $expected', ({ values, expected }) => {
    expect(increase(values)).toBe(expected);
  });

  it('derives the rate over the last span, and per interval', () => {
    const readings = [reading(0, { a: 0 }), reading(5_000, { a: 10 }), reading(10_000, { a: 10 }), reading(40_000, { a: 70 })];
    expect(requestRates(readings, 'a')).toEqual([2, 0, 2]);
    // 30 s span back from 40 s: the reading at 10 s is the oldest inside it.
    expect(requestRate(readings, 'a', 30_000)).toBe(2);
    // Never fewer than the last two readings, however short the span.
    expect(requestRate(readings, 'a', 1)).toBe(2);
    expect(requestRate(readings.slice(0, 1), 'a', 30_000)).toBeUndefined();
    expect(requestRate(readings, 'unknown', 30_000)).toBe(0);
  });

  it('sums denials by reason over the window, largest first, leaving out reasons without any', () => {
    const readings = [
      reading(0, {}, { a: { X: 4, Y: 1 } }),
      reading(5_000, {}, { a: { X: 6, Y: 1, Z: 1 } }),
      reading(10_000, {}, { a: { X: 9, Y: 1, Z: 4 } }),
    ];
    expect(denialsByReason(readings, 'a')).toEqual([
      { reason: 'X', count: 5 },
      { reason: 'Z', count: 4 },
    ]);
  });
});

describe('Prometheus text for the status page', () => {
  it('reads the named metrics, labels unescaped, and skips everything else', () => {
    const text = [
      '# HELP meshgate_xds_streams Open xDS streams.',
      '# TYPE meshgate_xds_streams gauge',
      'meshgate_xds_streams{tenant="acme"} 3',
      'meshgate_xds_streams{tenant="we\\"ird\\\\one\\n"} 1',
      'meshgate_config_snapshot_version 7',
      'meshgate_other{tenant="acme"} 9',
      'meshgate_xds_streams{tenant="acme"} not-a-number',
      'garbage line',
      '',
    ].join('\n');
    expect(parseExposition(text, new Set(['meshgate_xds_streams', 'meshgate_config_snapshot_version']))).toEqual([
      { name: 'meshgate_xds_streams', labels: { tenant: 'acme' }, value: 3 },
      { name: 'meshgate_xds_streams', labels: { tenant: 'we"ird\\one\n' }, value: 1 },
      { name: 'meshgate_config_snapshot_version', labels: {}, value: 7 },
    ]);
  });
});
