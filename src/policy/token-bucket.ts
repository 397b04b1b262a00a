/**
 * A token bucket: up to `burst` at once, refilled at `rate` per second. `take()` spends one token,
 * or says no when none is left; it never waits. `wait()` says how long until the next token.
 */
export interface TokenBucket {
  take(): boolean;
  /** Milliseconds until `take()` would succeed: 0 when a token is there now. */
  wait(): number;
}

export function createTokenBucket(rate: number, burst: number, now: () => number = () => performance.now()): TokenBucket {
  let tokens = burst;
  let filledAt = now();
  const refill = (): void => {
    const t = now();
    tokens = Math.min(burst, tokens + ((t - filledAt) / 1000) * rate);
    filledAt = t;
  };
  return {
    take() {
      refill();
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
    wait() {
      refill();
      return tokens >= 1 ? 0 : ((1 - tokens) / rate) * 1000;
    },
  };
}
