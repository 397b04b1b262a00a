/**
 * One immutable view of every tenant, built from one validated config. A request reads the current
 * snapshot once and uses it to the end; a reload builds a new one and swaps it in whole.
 */
import type { Identity } from '../auth/identity.js';
import { createTokenCache } from '../auth/token-cache.js';
import type { LoadedConfig } from '../config/load.js';
import type { Config, PlaneName } from '../config/schema.js';
import type { Plane } from '../planes/plane.js';
import { buildTenantCore, type TenantCore, type TenantEnvironment } from './tenant.js';

export interface Snapshot {
  readonly version: number;
  readonly config: Readonly<Config>;
  readonly tenants: readonly TenantCore[];
  /** The tenant serving an SNI or host name: an exact host first, then a one-label wildcard. */
  tenantForHost(host: string): TenantCore | undefined;
  /** A plane's state for a tenant, as the plane built it. */
  planeState(tenant: TenantCore, plane: PlaneName): unknown;
  /** Releases the planes' resources. Requests still using the snapshot may fail. */
  dispose(): void;
}

export interface SnapshotOptions {
  readonly version: number;
  readonly planes: readonly Plane[];
  readonly onTokenCacheLookup?: (hit: boolean) => void;
  readonly onJwksLoad?: TenantEnvironment['onJwksLoad'];
  readonly onTokenReview?: TenantEnvironment['onTokenReview'];
}

export function buildSnapshot(loaded: LoadedConfig, options: SnapshotOptions): Snapshot {
  const { config, files } = loaded;
  const tokenCache = createTokenCache<Identity>({
    maxEntries: config.auth.tokenCache.maxEntries,
    maxTtlMs: config.auth.tokenCache.maxTtl,
    onLookup: options.onTokenCacheLookup,
  });
  const tenants = config.tenants.map((t) =>
    buildTenantCore(t, { files, config, tokenCache, onJwksLoad: options.onJwksLoad, onTokenReview: options.onTokenReview }),
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
    config,
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
    dispose() {
      for (const byPlane of states.values()) {
        for (const plane of options.planes) {
          const state = byPlane.get(plane.name);
          if (state !== undefined) plane.dispose?.(state);
        }
      }
    },
  };
}
