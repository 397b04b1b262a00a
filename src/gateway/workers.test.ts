import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { defaultWorkers } from './workers.js';

describe('defaultWorkers', () => {
  const cores = availableParallelism();
  it('is the cores available when the cgroup sets no CPU quota', () => {
    expect(defaultWorkers('max 100000')).toBe(cores);
    expect(defaultWorkers(undefined)).toBe(cores);
    expect(defaultWorkers('garbage')).toBe(cores);
  });
  it('is the CPU quota, rounded up, when it is smaller', () => {
    expect(defaultWorkers('50000 100000')).toBe(1);
    expect(defaultWorkers('100000 100000')).toBe(1);
    expect(defaultWorkers('150000 100000')).toBe(Math.min(cores, 2));
    expect(defaultWorkers(`${cores * 400000} 100000`)).toBe(cores);
  });
});
