/**
 * Where tenants come from. A source watches its own kind of input and, whenever it changes, asks
 * for the complete config to be loaded again (the file's settings with every source's tenants).
 * The gateway builds a snapshot from it in a new registry generation, so that only what changed is
 * replaced; a change that does not load keeps the last good config, logged and counted.
 */

export interface TenantSourceEvents {
  /** The input changed: load the config again and swap it in. Never throws. */
  readonly onChange: (reason: string) => void;
}

export interface TenantSource {
  /** `file` or `kubernetes`: the label of its metrics and log lines. */
  readonly name: 'file' | 'kubernetes';
  /** Starts watching; resolves once the source has its first view (for Kubernetes, a synced cache). */
  start(events: TenantSourceEvents): Promise<void>;
  /** Stops watching; nothing is reloaded after it. */
  close(): void;
}
