/**
 * Issuing certificates: a CA, server certificates for tenant hosts, client certificates with
 * SPIFFE URIs. node-forge builds and signs them (RSA-2048, SHA-256); keys come from node:crypto,
 * which is much faster than forge's own generator. Parsing certificates at run time is
 * node:crypto's X509Certificate, never forge.
 */
import { constants, generateKeyPair, generateKeyPairSync, privateEncrypt, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { isIP } from 'node:net';
import forge from 'node-forge';

export interface IssuedCertificate {
  readonly cert: string;
  readonly key: string;
}

export interface CertificateAuthority extends IssuedCertificate {
  readonly name: string;
}

export interface CertificateRequest {
  readonly commonName: string;
  readonly organization?: string;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly uris?: readonly string[];
  readonly usage: 'server' | 'client' | 'server-and-client';
  readonly validityDays?: number;
}

const DAY_MS = 86_400_000;

export async function createCertificateAuthority(name: string, validityDays = 3650): Promise<CertificateAuthority> {
  const { cert, key } = build(await rsaKeyPair(), caOptions(name, validityDays));
  return { name, cert, key };
}

/** The same as createCertificateAuthority, synchronously (for a listener's one fallback certificate). */
export function createCertificateAuthoritySync(name: string, validityDays = 3650): CertificateAuthority {
  const { cert, key } = build(rsaKeyPairSync(), caOptions(name, validityDays));
  return { name, cert, key };
}

function caOptions(name: string, validityDays: number): BuildOptions {
  return {
    subject: [{ name: 'commonName', value: name }],
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectKeyIdentifier' },
    ],
    validityDays,
  };
}

export async function issueCertificate(ca: IssuedCertificate, request: CertificateRequest): Promise<IssuedCertificate> {
  return build(await rsaKeyPair(), leafOptions(ca, request));
}

/**
 * A new RSA key and a PEM certificate signing request for it, as istio-agent sends to the CA
 * (RSA: forge, which signs requests here, reads no other). The subject is the organization only;
 * a CA decides the names it certifies.
 */
export async function createCertificateRequest(organization: string): Promise<{ csr: string; publicKey: string }> {
  const { publicKey, privateKey } = await rsaKeyPair();
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(publicKey);
  csr.setSubject([{ name: 'organizationName', value: organization }]);
  csr.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return { csr: forge.pki.certificationRequestToPem(csr), publicKey };
}

/**
 * Signs the public key of a PEM certificate signing request (RSA; forge reads no other), with the
 * names given, not the ones the request asks for: a CA decides what it certifies. Throws when the
 * request's own signature does not verify.
 */
export function signCertificateRequest(ca: IssuedCertificate, csrPem: string, request: CertificateRequest): string {
  const csr = forge.pki.certificationRequestFromPem(csrPem);
  if (!csr.verify()) throw new Error('the certificate signing request is not signed by its own key');
  if (!csr.publicKey) throw new Error('the certificate signing request has no public key');
  return build({ publicKey: forge.pki.publicKeyToPem(csr.publicKey), privateKey: '' }, leafOptions(ca, request)).cert;
}

function leafOptions(ca: IssuedCertificate, request: CertificateRequest): BuildOptions {
  const altNames = [
    ...(request.dnsNames ?? []).map((value) => ({ type: 2, value })),
    ...(request.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
    ...(request.uris ?? []).map((value) => ({ type: 6, value })),
  ];
  const subject = [
    ...(request.organization === undefined ? [] : [{ name: 'organizationName', value: request.organization }]),
    { name: 'commonName', value: request.commonName },
  ];
  return {
    subject,
    issuer: ca,
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      {
        name: 'extKeyUsage',
        serverAuth: request.usage !== 'client',
        clientAuth: request.usage !== 'server',
      },
      ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
      { name: 'subjectKeyIdentifier' },
    ],
    validityDays: request.validityDays ?? 365,
  };
}

/** Splits host arguments into DNS names and IP addresses. */
export function splitHosts(hosts: readonly string[]): { dnsNames: string[]; ipAddresses: string[] } {
  return {
    dnsNames: hosts.filter((h) => isIP(h) === 0),
    ipAddresses: hosts.filter((h) => isIP(h) !== 0),
  };
}

interface BuildOptions {
  readonly subject: forge.pki.CertificateField[];
  readonly issuer?: IssuedCertificate;
  readonly extensions: object[];
  readonly validityDays: number;
}

interface PemKeyPair {
  readonly publicKey: string;
  readonly privateKey: string;
}

const RSA_OPTIONS = {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
} as const;

/** Keys come from node:crypto, on the thread pool: far faster than forge's own generator. */
function rsaKeyPair(): Promise<PemKeyPair> {
  return promisify(generateKeyPair)('rsa', RSA_OPTIONS);
}

function rsaKeyPairSync(): PemKeyPair {
  return generateKeyPairSync('rsa', RSA_OPTIONS);
}

function build({ publicKey: publicPem, privateKey: privatePem }: PemKeyPair, options: BuildOptions): IssuedCertificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicPem);
  // A positive serial: the top bit of the first byte clear.
  const serial = randomBytes(16);
  serial[0] = (serial[0] ?? 0) & 0x7f;
  cert.serialNumber = serial.toString('hex');
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 5 * 60_000);
  cert.validity.notAfter = new Date(now + options.validityDays * DAY_MS);
  cert.setSubject(options.subject);

  let signingKey = privatePem;
  if (options.issuer) {
    const issuerCert = forge.pki.certificateFromPem(options.issuer.cert);
    cert.setIssuer(issuerCert.subject.attributes);
    signingKey = options.issuer.key;
    const authorityKeyId = issuerCert.generateSubjectKeyIdentifier().getBytes();
    options.extensions.push({ name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId });
  } else {
    cert.setIssuer(options.subject);
  }
  cert.setExtensions(options.extensions);
  cert.sign(nativeSigner(signingKey), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: privatePem };
}

/** DER prefix of a SHA-256 DigestInfo (RFC 8017 §9.2, note 1). */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

/**
 * forge builds the certificate; node:crypto does the RSA private-key operation, natively. The
 * result is the same RSASSA-PKCS1-v1_5 signature forge would compute, many times faster.
 */
function nativeSigner(privateKeyPem: string): forge.pki.rsa.PrivateKey {
  const signer = {
    sign(md: forge.md.MessageDigest): string {
      const digestInfo = Buffer.concat([SHA256_DIGEST_INFO, Buffer.from(md.digest().getBytes(), 'binary')]);
      return privateEncrypt({ key: privateKeyPem, padding: constants.RSA_PKCS1_PADDING }, digestInfo).toString('binary');
    },
  };
  return signer as unknown as forge.pki.rsa.PrivateKey;
}
