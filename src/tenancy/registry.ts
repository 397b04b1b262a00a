/**
 * The registry of what lives longer than a snapshot: each tenant's upstream pools, JWKS sources,
 * TokenReview clients, token cache and TLS contexts.
 *
 * A resource has a key (`acme/xds/pool`) and a fingerprint: a digest of exactly the config and
 * file contents it was built from. Each snapshot is built in a generation:
 *  - a key whose fingerprint did not change gets the same resource back, with its sessions, its
 *    cache and the streams running on it;
 *  - a key whose fingerprint changed gets a new resource; the old one is *replaced*: it takes no
 *    new work, and closes when the last piece of work holding it ends (a reference count), or at
 *    the drain bound, whichever comes first;
 *  - a key the new generation does not use at all (a tenant, a plane or a cluster was removed) is
 *    *removed*: closed at once, so that its streams end with a status that says why.
 * A snapshot never owns a socket; a failed build leaves the registry as it was.
 */
import { hash } from 'node:crypto';
import { ERROR_CODES, MeshgateError, type ErrorCode } from '../errors.js';

/** Why a resource is closed; its owner tells the work still on it. */
export type CloseReason = 'replaced' | 'removed' | 'shutdown';

/** The code a stream still running on a resource is ended with, by why the resource closed. */
const CLOSE_CODES: Readonly<Record<CloseReason, ErrorCode>> = {
  removed: 'MG_ERR_TENANT_REMOVED',
  replaced: 'MG_ERR_UPSTREAM_REPLACED',
  shutdown: 'MG_ERR_SHUTTING_DOWN',
};

/** What such a stream is told (a grpc-message): the code, then its message. */
export function closeMessage(reason: CloseReason): string {
  const code = CLOSE_CODES[reason];
  return `${code}: ${ERROR_CODES[code].message}`;
}

export interface Owned<T> {
  readonly value: T;
  /** Ends what still runs on the resource (telling it `reason`) and releases what it holds. */
  close(reason: CloseReason): void;
}

export interface Lease<T> {
  readonly value: T;
  /**
   * Marks a piece of work (a request, a stream, a watch) as running on the resource: it stays
   * open until the returned release is called, even after it is replaced.
   */
  hold(): () => void;
}

export interface Generation {
  /** The resource for `key` built from `inputs`: the one in use if its fingerprint matches, else a new one. */
  use<T>(key: string, inputs: unknown, create: () => Owned<T>): Lease<T>;
  /** Makes this generation current: replaced resources drain, removed ones close. */
  commit(): void;
  /** Forgets this generation: what it created closes, what was current stays. */
  abort(): void;
}

export interface RegistryStats {
  readonly current: number;
  readonly draining: number;
  readonly holds: number;
}

export interface ResourceRegistry {
  begin(): Generation;
  stats(): RegistryStats;
  /** Closes every resource, current and draining (the process is stopping). */
  close(): void;
}

export interface RegistryOptions {
  /** How long a replaced resource may keep running the work it holds. */
  readonly drainMs: () => number;
  readonly onClose?: (key: string, reason: CloseReason | 'drained') => void;
  /** A resource threw while closing: reported, never thrown (closes run from timers and commits). */
  readonly onError?: (key: string, error: unknown) => void;
}

interface Entry {
  readonly key: string;
  readonly fingerprint: string;
  readonly owned: Owned<unknown>;
  holds: number;
  state: 'pending' | 'current' | 'draining' | 'closed';
  timer?: NodeJS.Timeout;
  readonly lease: Lease<unknown>;
}

export function createResourceRegistry(options: RegistryOptions): ResourceRegistry {
  let current = new Map<string, Entry>();
  const draining = new Set<Entry>();

  const close = (entry: Entry, reason: CloseReason, drained = false): void => {
    if (entry.state === 'closed') return;
    entry.state = 'closed';
    if (entry.timer) clearTimeout(entry.timer);
    draining.delete(entry);
    try {
      entry.owned.close(reason);
    } catch (err) {
      options.onError?.(entry.key, err);
    }
    options.onClose?.(entry.key, drained ? 'drained' : reason);
  };

  const makeEntry = (key: string, fingerprint: string, owned: Owned<unknown>): Entry => {
    const entry: Entry = {
      key,
      fingerprint,
      owned,
      holds: 0,
      state: 'pending',
      lease: {
        value: owned.value,
        hold() {
          // Work starts on a resource only while a snapshot leases it; a closed one takes none.
          if (entry.state === 'closed') throw new MeshgateError('MG_ERR_UPSTREAM_REPLACED', { detail: `${key} is closed` });
          entry.holds++;
          let released = false;
          return () => {
            if (released) return;
            released = true;
            entry.holds--;
            if (entry.holds === 0 && entry.state === 'draining') close(entry, 'replaced');
          };
        },
      },
    };
    return entry;
  };

  const retire = (entry: Entry): void => {
    if (entry.holds === 0) {
      close(entry, 'replaced');
      return;
    }
    entry.state = 'draining';
    draining.add(entry);
    entry.timer = setTimeout(() => close(entry, 'replaced', true), options.drainMs());
    entry.timer.unref();
  };

  return {
    begin() {
      const used = new Map<string, Entry>();
      let finished = false;
      return {
        use<T>(key: string, inputs: unknown, create: () => Owned<T>): Lease<T> {
          if (finished) throw new Error('this generation is over');
          const fingerprint = fingerprintOf(inputs);
          const taken = used.get(key);
          if (taken) {
            if (taken.fingerprint !== fingerprint) throw new Error(`resource ${key} is used twice with different inputs`);
            return taken.lease as Lease<T>;
          }
          const existing = current.get(key);
          const entry = existing?.fingerprint === fingerprint ? existing : makeEntry(key, fingerprint, create());
          used.set(key, entry);
          return entry.lease as Lease<T>;
        },
        commit() {
          if (finished) return;
          finished = true;
          for (const [key, entry] of current) {
            const next = used.get(key);
            if (next === entry) continue;
            if (next === undefined) close(entry, 'removed');
            else retire(entry);
          }
          for (const entry of used.values()) entry.state = 'current';
          current = used;
        },
        abort() {
          if (finished) return;
          finished = true;
          for (const entry of used.values()) if (entry.state === 'pending') close(entry, 'shutdown');
        },
      };
    },
    stats() {
      let holds = 0;
      for (const entry of current.values()) holds += entry.holds;
      for (const entry of draining) holds += entry.holds;
      return { current: current.size, draining: draining.size, holds };
    },
    close() {
      for (const entry of [...draining]) close(entry, 'shutdown');
      for (const entry of current.values()) close(entry, 'shutdown');
      current = new Map();
    },
  };
}

/**
 * A digest of a JSON-like value, the same whatever the order of its object keys. Inputs hold file
 * contents (certificates, keys, tokens), so only the digest is kept.
 */
export function fingerprintOf(value: unknown): string {
  return hash('sha256', stableJson(value), 'base64url');
}

function stableJson(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return typeof value === 'function' || typeof value === 'symbol' ? 'null' : JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(stableJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(',')}}`;
}
