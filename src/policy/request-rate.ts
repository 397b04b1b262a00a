/**
 * Each tenant's request rate, per plane: a token bucket of `limits.requestRate.<plane>` per tenant
 * and plane, in this process. A request takes a token once it has authenticated, so anonymous
 * callers never spend what the tenant's own callers need. Over the rate, MG_ERR_LIMIT_RATE says
 * when to come back (Retry-After, in whole seconds).
 *
 * Buckets outlive snapshots: a reload keeps a tenant's bucket as it is unless that tenant's rate
 * for the plane changed, so a reload neither refills anyone's budget nor touches another tenant's.
 */
import type { PlaneName } from '../config/schema.js';
import { MeshgateError } from '../errors.js';
import type { TenantCore } from '../tenancy/tenant.js';
import { createTokenBucket, type TokenBucket } from './token-bucket.js';

export interface RequestRates {
  /** Spends one of the tenant's tokens for the plane, or throws MG_ERR_LIMIT_RATE. */
  take(tenant: TenantCore, plane: PlaneName): void;
  /** Forgets the buckets of tenants not in `ids` (after a reload removed them). */
  retain(ids: ReadonlySet<string>): void;
}

interface Entry {
  readonly perSecond: number;
  readonly burst: number;
  readonly bucket: TokenBucket;
}

export function createRequestRates(now?: () => number): RequestRates {
  /** By tenant id, then plane. */
  const buckets = new Map<string, Map<PlaneName, Entry>>();
  return {
    take(tenant, plane) {
      const rate = tenant.config.limits.requestRate[plane];
      if (rate === undefined) return;
      let planes = buckets.get(tenant.id);
      if (!planes) buckets.set(tenant.id, (planes = new Map<PlaneName, Entry>()));
      let entry = planes.get(plane);
      if (entry?.perSecond !== rate.perSecond || entry.burst !== rate.burst) {
        entry = { ...rate, bucket: createTokenBucket(rate.perSecond, rate.burst, now) };
        planes.set(plane, entry);
      }
      if (entry.bucket.take()) return;
      const seconds = Math.max(1, Math.ceil(entry.bucket.wait() / 1000));
      throw new MeshgateError('MG_ERR_LIMIT_RATE', {
        detail: `over ${rate.perSecond}/s (burst ${rate.burst}) on the ${plane} plane`,
        headers: { 'retry-after': String(seconds) },
      });
    },
    retain(ids) {
      for (const id of buckets.keys()) if (!ids.has(id)) buckets.delete(id);
    },
  };
}
