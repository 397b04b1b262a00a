import type { AuthMethod } from '../config/schema.js';

/** Who is calling, as proved by one credential, always within one tenant. */
export interface Identity {
  readonly tenant: string;
  readonly method: AuthMethod;
  /** Certificate: the subject CN (or full subject). Token: `sub`. Path key: `path-key`. */
  readonly subject: string;
  /** URI SANs of a client certificate (spiffe://…). */
  readonly uris: readonly string[];
  /**
   * Kubernetes groups: a certificate's organizations (O), a service account's groups, or what a
   * TokenReview answered. Never `system:authenticated`, which the API server adds itself.
   */
  readonly groups?: readonly string[];
  /** Token: the cluster whose issuer verified it. */
  readonly cluster?: string;
  /** Epoch milliseconds after which the credential is no longer valid. */
  readonly expiresAt?: number;
}
