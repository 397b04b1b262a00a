/**
 * Client certificates. The TLS handshake verifies the chain against the client CA of the tenant the
 * SNI named (each tenant's TLS context holds its own bundle). This module reads the result, and
 * checks again, against the routed tenant's anchors, that the certificate chains to them: the
 * certificate counts for that tenant only. A certificate that was presented but did not verify
 * fails the request; it is never ignored.
 */
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { MeshgateError } from '../errors.js';
import type { Identity } from './identity.js';

const CLIENT_AUTH_EKU = '1.3.6.1.5.5.7.3.2';
const MAX_CHAIN_DEPTH = 8;

export interface ClientCertificateTrust {
  readonly tenant: string;
  readonly anchors: readonly X509Certificate[];
}

/** Identities are per connection and per trust (a reload builds new trust objects). */
const memo = new WeakMap<TLSSocket, { trust: ClientCertificateTrust; identity: Identity | undefined }>();

/**
 * The identity proved by the connection's client certificate, undefined when none was presented.
 * Throws MG_ERR_AUTHN_CLIENT_CERT_INVALID when one was presented and does not hold for this tenant.
 */
export function clientCertificateIdentity(socket: TLSSocket, trust: ClientCertificateTrust, now = Date.now()): Identity | undefined {
  const remembered = memo.get(socket);
  const identity = remembered?.trust === trust ? remembered.identity : verifyPeer(socket, trust);
  if (remembered?.trust !== trust) memo.set(socket, { trust, identity });
  // A connection can outlive its certificate (HTTP/2 keeps one open for hours): check every time.
  if (identity?.expiresAt !== undefined && identity.expiresAt <= now) {
    throw new MeshgateError('MG_ERR_AUTHN_CLIENT_CERT_INVALID', { detail: 'certificate expired during the connection' });
  }
  return identity;
}

function verifyPeer(socket: TLSSocket, trust: ClientCertificateTrust): Identity | undefined {
  const leaf = socket.getPeerX509Certificate();
  if (!leaf) return undefined;
  if (!socket.authorized) {
    throw new MeshgateError('MG_ERR_AUTHN_CLIENT_CERT_INVALID', { detail: String(socket.authorizationError) });
  }
  if (!chainsTo(leaf, socket.getPeerCertificate(true), trust.anchors)) {
    throw new MeshgateError('MG_ERR_AUTHN_CLIENT_CERT_INVALID', { detail: `does not chain to tenant ${trust.tenant}'s client CA` });
  }
  const eku = leaf.keyUsage as string[] | undefined;
  if (eku !== undefined && !eku.includes(CLIENT_AUTH_EKU)) {
    throw new MeshgateError('MG_ERR_AUTHN_CLIENT_CERT_INVALID', { detail: 'extended key usage lacks clientAuth' });
  }
  return {
    tenant: trust.tenant,
    method: 'clientCertificate',
    subject: commonName(leaf.subject) ?? leaf.subject.replaceAll('\n', ','),
    uris: uriSans(leaf.subjectAltName),
    groups: organizations(leaf.subject),
    expiresAt: Date.parse(leaf.validTo),
  };
}

/** Walks leaf → issuers (as OpenSSL built the chain), checking each signature, until an anchor. */
function chainsTo(leaf: X509Certificate, peer: PeerCertificate, anchors: readonly X509Certificate[]): boolean {
  let cert = leaf;
  let node: PeerCertificate & { issuerCertificate?: PeerCertificate } = peer;
  for (let depth = 0; depth < MAX_CHAIN_DEPTH; depth++) {
    for (const anchor of anchors) {
      if (cert.fingerprint256 === anchor.fingerprint256) return true;
      if (cert.checkIssued(anchor) && cert.verify(anchor.publicKey)) return true;
    }
    const next: (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined = node.issuerCertificate;
    if (next === undefined || next === node || next.raw.length === 0) return false;
    const issuer = new X509Certificate(next.raw);
    if (!cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) return false;
    cert = issuer;
    node = next;
  }
  return false;
}

function organizations(subject: string): string[] {
  return subject
    .split('\n')
    .filter((line) => line.startsWith('O='))
    .map((line) => line.slice(2));
}

function commonName(subject: string): string | undefined {
  for (const line of subject.split('\n')) {
    if (line.startsWith('CN=')) return line.slice(3);
  }
  return undefined;
}

/**
 * URI SANs from Node's subjectAltName text. Node quotes and escapes values that contain commas
 * (CVE-2021-44532), so only plain, unquoted entries are accepted: a quoted one is never split
 * into something it is not.
 */
export function uriSans(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return [];
  const uris: string[] = [];
  for (const match of subjectAltName.matchAll(/(?:^|, )URI:([^,\s"]+)(?=, |$)/g)) {
    if (match[1]) uris.push(match[1]);
  }
  return uris;
}
