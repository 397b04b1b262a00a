/**
 * When a tenant's certificates stop being valid: the serving chain it presents, the client
 * CAs it trusts, and the CAs its istiod upstreams are verified with. A bundle expires with its
 * first certificate to expire. For the certificate-expiry metric, the alert and the status page.
 */
import type { TenantCore } from './tenant.js';

export const CERTIFICATE_KINDS = ['serving', 'client-ca', 'istiod-ca'] as const;
export type CertificateKind = (typeof CERTIFICATE_KINDS)[number];

export function certificateExpiries(tenant: TenantCore): Map<CertificateKind, Date> {
  const { config, files } = tenant;
  const expiries = new Map<CertificateKind, Date>();
  const note = (kind: CertificateKind, path: string | undefined): void => {
    if (path === undefined) return;
    for (const certificate of files.certificates(path)) {
      const notAfter = new Date(certificate.validTo);
      const known = expiries.get(kind);
      if (known === undefined || notAfter < known) expiries.set(kind, notAfter);
    }
  };
  note('serving', config.tls.cert);
  note('client-ca', config.tls.clientCA);
  const { webhook, debug, xds } = config.istiod;
  for (const upstream of [webhook, debug, xds]) note('istiod-ca', upstream?.ca);
  return expiries;
}
