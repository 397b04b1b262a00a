/** How long to wait after the `attempt`-th failure in a row: 250 ms, doubling, at most 30 s. */
export function backoffMs(attempt: number): number {
  return Math.min(30_000, 250 * 2 ** Math.min(attempt, 8));
}
