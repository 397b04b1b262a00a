import { describe, expect, it } from 'vitest';
import { parseDuration, parseGoDuration, parseSize } from './units.js';

describe('units', () => {
  it.each([
    ['500ms', 500],
    ['10s', 10_000],
    ['1.5s', 1_500],
    ['5m', 300_000],
    ['1h', 3_600_000],
  ])('duration %s = %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', '10', 's', '-1s', '1d', '10 s'])('duration %j is refused', (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });

  it.each([
    [1024, 1024],
    ['64KiB', 65_536],
    ['6MiB', 6 * 1024 * 1024],
    ['1GiB', 1024 ** 3],
    ['100', 100],
  ] as const)('size %j = %d bytes', (value, bytes) => {
    expect(parseSize(value)).toBe(bytes);
  });

  it.each(['6MB', '-1', 1.5, -1, 'lots'])('size %j is refused', (value) => {
    expect(parseSize(value)).toBeUndefined();
  });

  it.each([
    ['10s', 10_000],
    ['1m30s', 90_000],
    ['500ms', 500],
    ['1h0m0s', 3_600_000],
  ])("Go duration %s (a webhook's ?timeout=) = %d ms", (text, ms) => {
    expect(parseGoDuration(text)).toBe(ms);
  });

  it.each(['', '10', 'ten', '10s garbage', '1x', `${'9'.repeat(40)}s`])('Go duration %j is refused', (text) => {
    expect(parseGoDuration(text)).toBeUndefined();
  });
});
