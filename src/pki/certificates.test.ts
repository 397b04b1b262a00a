import { createHash, createPublicKey, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createCertificateAuthority, issueCertificate, subjectKeyIdentifier, type KeyType } from './certificates.js';

/** A DER element's header at `at`: where its content starts and how long it is. */
function header(der: Buffer, at: number): { start: number; length: number } {
  const first = der[at + 1] ?? 0;
  if ((first & 0x80) === 0) return { start: at + 2, length: first };
  const count = first & 0x7f;
  return { start: at + 2 + count, length: der.readUIntBE(at + 2, count) };
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits, read from Node's own DER. */
function expectedKeyId(pem: string): string {
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'der' });
  // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
  const outer = header(spki, 0);
  const algorithm = header(spki, outer.start);
  const bits = header(spki, algorithm.start + algorithm.length);
  // The first content byte counts the unused bits; the key is what follows.
  return createHash('sha1').update(spki.subarray(bits.start + 1, bits.start + bits.length)).digest('hex');
}

describe('issued certificates', () => {
  it.each([
    ['rsa', 'rsa'],
    ['rsa', 'ecdsa'],
    ['ecdsa', 'rsa'],
    ['ecdsa', 'ecdsa'],
  ] as [KeyType, KeyType][])('a %s CA signs %s leaves that verify, each with its own key identifier', async (caType, leafType) => {
    const ca = await createCertificateAuthority('test CA', 10, caType);
    const leaves = await Promise.all(
      ['a.example', 'b.example'].map((host) => issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server', keyType: leafType })),
    );
    const issuer = new X509Certificate(ca.cert);
    const ids = new Set<string>();
    for (const leaf of leaves) {
      const cert = new X509Certificate(leaf.cert);
      expect(cert.verify(issuer.publicKey)).toBe(true);
      expect(cert.checkIssued(issuer)).toBe(true);
      const id = subjectKeyIdentifier(leaf.cert);
      expect(id).toBe(expectedKeyId(cert.publicKey.export({ type: 'spki', format: 'pem' }).toString()));
      ids.add(id ?? '');
    }
    expect(ids.size).toBe(2);
  });
});
