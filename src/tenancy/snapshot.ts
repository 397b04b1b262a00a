/**
 * One immutable view of every tenant, built from one validated config: routing data (hosts,
 * planes, authenticators, rules) and leases on the registry's resources. A request reads the
 * current snapshot once and uses it to the end; a reload builds a new one and swaps it in whole.
 * A snapshot owns no socket, so there is nothing to dispose of when it is replaced.
 */
import type { ConfigFiles } from '../config/files.js';
import type { LoadedConfig } from '../config/load.js';
import type { Config, PlaneName } from '../config/schema.js';
import type { Plane } from '../planes/plane.js';
import type { Generation } from './registry.js';
import { buildTenantCore, type TenantCore, type TenantEnvironment } from './tenant.js';

export interface Snapshot {
  readonly version: number;
  readonly loadedAt: Date;
  readonly config: Readonly<Config>;
  /** The files the config named, as read when it was loaded. */
  readonly files: ConfigFiles;
  readonly tenants: readonly TenantCore[];
  /** The tenant serving an SNI or host name: an exact host first, then a one-label wildcard. */
  tenantForHost(host: string): TenantCore | undefined;
  /** A plane's state for a tenant, as the plane built it. */
  planeState(tenant: TenantCore, plane: PlaneName): unknown;
}

export interface SnapshotOptions {
  readonly version: number;
  readonly planes: readonly Plane[];
  /** The registry generation the snapshot's resources come from; the caller commits or aborts it. */
  readonly generation: Generation;
  /** The listeners as started (a reload does not change them). */
  readonly listeners: Config['listeners'];
  readonly onTokenCacheLookup?: TenantEnvironment['onTokenCacheLookup'];
  readonly onJwksLoad?: TenantEnvironment['onJwksLoad'];
  readonly onTokenReview?: TenantEnvironment['onTokenReview'];
}

export function buildSnapshot(loaded: LoadedConfig, options: SnapshotOptions): Snapshot {
  const { config, files } = loaded;
  const tenants = config.tenants.map((t) =>
    buildTenantCore(t, {
      files,
      config,
      generation: options.generation,
      listeners: options.listeners,
      onTokenCacheLookup: options.onTokenCacheLookup,
      onJwksLoad: options.onJwksLoad,
      onTokenReview: options.onTokenReview,
    }),
  );

  const exact = new Map<string, TenantCore>();
  const wildcard = new Map<string, TenantCore>();
  for (const tenant of tenants) {
    for (const host of tenant.config.hosts) {
      if (host.startsWith('*.')) wildcard.set(host.slice(2), tenant);
      else exact.set(host, tenant);
    }
  }

  const states = new Map<TenantCore, Map<PlaneName, unknown>>();
  for (const tenant of tenants) {
    const byPlane = new Map<PlaneName, unknown>();
    for (const plane of options.planes) {
      const state = plane.build(tenant);
      if (state !== undefined) byPlane.set(plane.name, state);
    }
    states.set(tenant, byPlane);
  }

  return {
    version: options.version,
    loadedAt: new Date(),
    config,
    files,
    tenants,
    tenantForHost(host) {
      const name = host.toLowerCase().replace(/\.$/, '');
      const found = exact.get(name);
      if (found) return found;
      const dot = name.indexOf('.');
      return dot > 0 ? wildcard.get(name.slice(dot + 1)) : undefined;
    },
    planeState(tenant, plane) {
      return states.get(tenant)?.get(plane);
    },
  };
}
