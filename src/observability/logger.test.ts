import { describe, expect, it } from 'vitest';
import { redactPath } from './logger.js';

describe('redactPath', () => {
  it.each([
    ['/k/s3cr3t/inject/cluster/c', '/k/[redacted]/inject/cluster/c'],
    ['/k/s3cr3t', '/k/[redacted]'],
    ['/k/s3cr3t?timeout=10s', '/k/[redacted]?timeout=10s'],
    ['https://acme.example.com/k/s3cr3t/inject', 'https://acme.example.com/k/[redacted]/inject'],
    ['/inject/cluster/c', '/inject/cluster/c'],
    ['/debug/k/x', '/debug/k/x'],
  ])('%s → %s', (target, logged) => {
    expect(redactPath(target)).toBe(logged);
  });
});
