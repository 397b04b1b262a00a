/**
 * The certificate a listener presents when the SNI names no tenant (or there is no SNI), so that
 * the client can be told why over HTTP instead of getting a bare handshake failure. It names no
 * tenant and chains to nothing a client trusts. Made once per process unless configured.
 */
import { createCertificateAuthoritySync, type IssuedCertificate } from './certificates.js';

let cached: IssuedCertificate | undefined;

export function defaultCertificate(): IssuedCertificate {
  cached ??= createCertificateAuthoritySync('meshgate (no tenant for this server name)', 3650);
  return cached;
}
