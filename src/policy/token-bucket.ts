/**
 * A token bucket: up to `burst` at once, refilled at `rate` per second. `take()` spends one token,
 * or says no when none is left; it never waits.
 */
export interface TokenBucket {
  take(): boolean;
}

export function createTokenBucket(rate: number, burst: number, now: () => number = () => performance.now()): TokenBucket {
  let tokens = burst;
  let filledAt = now();
  return {
    take() {
      const t = now();
      tokens = Math.min(burst, tokens + ((t - filledAt) / 1000) * rate);
      filledAt = t;
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
  };
}
