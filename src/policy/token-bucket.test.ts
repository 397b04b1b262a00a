import { describe, expect, it } from 'vitest';
import { createTokenBucket } from './token-bucket.js';

describe('createTokenBucket', () => {
  it('gives the burst at once, then one token per 1/rate seconds, never more than the burst', () => {
    let clock = 0;
    const bucket = createTokenBucket(2, 3, () => clock);
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
    clock += 499;
    expect(bucket.take()).toBe(false);
    clock += 1;
    expect([bucket.take(), bucket.take()]).toEqual([true, false]);
    clock += 60_000;
    expect([bucket.take(), bucket.take(), bucket.take(), bucket.take()]).toEqual([true, true, true, false]);
  });
});

describe('TokenBucket.wait', () => {
  it('says how long until the next token, and 0 while one is there', () => {
    let clock = 0;
    const bucket = createTokenBucket(4, 1, () => clock);
    expect(bucket.wait()).toBe(0);
    bucket.take();
    expect(bucket.wait()).toBe(250);
    clock += 100;
    expect(bucket.wait()).toBeCloseTo(150);
    clock += 150;
    expect(bucket.wait()).toBe(0);
  });
});
