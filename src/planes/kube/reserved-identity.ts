import type { Identity } from '../../auth/identity.js';
import { MeshgateError } from '../../errors.js';

/**
 * A client certificate may not name a reserved Kubernetes user or group (`system:masters`,
 * `system:admin`, …): meshgate would impersonate it, or lend it its own istiod token.
 */
export function refuseReservedIdentity(identity: Identity): void {
  if (identity.method !== 'clientCertificate') return;
  const reserved = [identity.subject, ...(identity.groups ?? [])].find((name) => name.startsWith('system:'));
  if (reserved !== undefined) throw new MeshgateError('MG_ERR_KUBE_IDENTITY_RESERVED', { detail: `certificate claims ${reserved}` });
}
