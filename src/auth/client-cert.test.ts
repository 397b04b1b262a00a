import { X509Certificate } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { beforeAll, describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate, type IssuedCertificate } from '../pki/certificates.js';
import { clientCertificateIdentity, uriSans } from './client-cert.js';

/** What a TLS socket reports after a handshake that OpenSSL accepted (or not). */
function socketWith(leaf: IssuedCertificate | undefined, issuer: IssuedCertificate | undefined, authorized = true): TLSSocket {
  const x509 = leaf ? new X509Certificate(leaf.cert) : undefined;
  const issuerNode = issuer ? ({ raw: new X509Certificate(issuer.cert).raw } as unknown as PeerCertificate) : undefined;
  return {
    authorized,
    authorizationError: authorized ? null : new Error('UNABLE_TO_VERIFY_LEAF_SIGNATURE'),
    getPeerX509Certificate: () => x509,
    getPeerCertificate: () => ({ raw: x509?.raw ?? Buffer.alloc(0), issuerCertificate: issuerNode }),
  } as unknown as TLSSocket;
}

let acmeCa: IssuedCertificate;
let globexCa: IssuedCertificate;
let acmeClient: IssuedCertificate;
let globexClient: IssuedCertificate;
beforeAll(async () => {
  [acmeCa, globexCa] = await Promise.all([createCertificateAuthority('acme clients'), createCertificateAuthority('globex clients')]);
  [acmeClient, globexClient] = await Promise.all([
    issueCertificate(acmeCa, { commonName: 'acme-apiserver', organization: 'acme', uris: ['spiffe://acme.example/ns/kube-system/sa/apiserver'], usage: 'client' }),
    issueCertificate(globexCa, { commonName: 'globex-apiserver', usage: 'client' }),
  ]);
});

const trust = (tenant: string, ca: IssuedCertificate) => ({ tenant, anchors: [new X509Certificate(ca.cert)] });

describe('clientCertificateIdentity', () => {
  it('returns the subject CN and SPIFFE URIs of a certificate that chains to the tenant CA', () => {
    expect(clientCertificateIdentity(socketWith(acmeClient, acmeCa), trust('acme', acmeCa))).toMatchObject({
      tenant: 'acme',
      method: 'clientCertificate',
      subject: 'acme-apiserver',
      uris: ['spiffe://acme.example/ns/kube-system/sa/apiserver'],
    });
  });

  it('is undefined when no certificate was presented', () => {
    expect(clientCertificateIdentity(socketWith(undefined, undefined), trust('acme', acmeCa))).toBeUndefined();
  });

  it('fails a certificate that OpenSSL did not verify', () => {
    expect(() => clientCertificateIdentity(socketWith(acmeClient, acmeCa, false), trust('acme', acmeCa))).toThrow(
      expect.objectContaining({ code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' }) as Error,
    );
  });

  it("fails a certificate OpenSSL accepted but that does not chain to this tenant's CA (a resumed session, say)", () => {
    expect(() => clientCertificateIdentity(socketWith(globexClient, globexCa, true), trust('acme', acmeCa))).toThrow(
      expect.objectContaining({ code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' }) as Error,
    );
  });

  it('fails a certificate that expires while its connection is still open', () => {
    const socket = socketWith(acmeClient, acmeCa);
    const acme = trust('acme', acmeCa);
    const identity = clientCertificateIdentity(socket, acme);
    expect(identity).toBeDefined();
    const afterExpiry = (identity?.expiresAt ?? 0) + 1;
    expect(() => clientCertificateIdentity(socket, acme, afterExpiry)).toThrow(
      expect.objectContaining({ code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' }) as Error,
    );
  });

  it('fails a certificate whose claimed issuer did not sign it', () => {
    expect(() => clientCertificateIdentity(socketWith(globexClient, acmeCa, true), trust('acme', acmeCa))).toThrow(
      expect.objectContaining({ code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' }) as Error,
    );
  });
});

describe('uriSans', () => {
  it('reads plain URI entries and never splits a quoted one', () => {
    expect(uriSans('URI:spiffe://td/ns/a/sa/b, DNS:a.example')).toEqual(['spiffe://td/ns/a/sa/b']);
    expect(uriSans('DNS:a.example, URI:spiffe://td/ns/a/sa/b, URI:spiffe://td/ns/c/sa/d')).toEqual(['spiffe://td/ns/a/sa/b', 'spiffe://td/ns/c/sa/d']);
    // Node quotes values with commas (CVE-2021-44532); such an entry is refused, not split.
    expect(uriSans('URI:"spiffe://td/ns/a\\u002cURI:spiffe://td/ns/admin"')).toEqual([]);
    expect(uriSans(undefined)).toEqual([]);
  });
});
