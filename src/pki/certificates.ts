/**
 * Issuing certificates: a CA, server certificates for tenant hosts, client certificates with
 * SPIFFE URIs, with RSA-2048 or ECDSA P-256 keys and SHA-256 signatures. node-forge builds them
 * (and signs RSA ones); keys and other signatures come from node:crypto, which is much faster. Parsing certificates at run time is
 * node:crypto's X509Certificate, never forge.
 */
import {
  constants,
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPair,
  generateKeyPairSync,
  privateEncrypt,
  randomBytes,
  sign,
  X509Certificate,
  type KeyObject,
} from 'node:crypto';
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
  /** The new certificate's key: RSA 2048 (the default) or ECDSA P-256. */
  readonly keyType?: KeyType;
}

/** ECDSA P-256 keys cost far less per handshake than RSA 2048 (in a reconnect storm, it shows). */
export type KeyType = 'rsa' | 'ecdsa';

const DAY_MS = 86_400_000;

export async function createCertificateAuthority(name: string, validityDays = 3650, keyType: KeyType = 'rsa'): Promise<CertificateAuthority> {
  const { cert, key } = build(await keyPair(keyType), caOptions(name, validityDays));
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
  const keyType = request.keyType ?? 'rsa';
  return build(await keyPair(keyType), leafOptions(ca, request, keyType));
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

function leafOptions(ca: IssuedCertificate, request: CertificateRequest, keyType: KeyType = 'rsa'): BuildOptions {
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
      // An ECDSA key signs; only an RSA key may also encrypt a TLS 1.2 key exchange.
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: keyType === 'rsa', critical: true },
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

function keyPair(keyType: KeyType): Promise<PemKeyPair> {
  if (keyType === 'rsa') return rsaKeyPair();
  return promisify(generateKeyPair)('ec', {
    namedCurve: 'P-256',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

function rsaKeyPairSync(): PemKeyPair {
  return generateKeyPairSync('rsa', RSA_OPTIONS);
}

function build(pair: PemKeyPair, options: BuildOptions): IssuedCertificate {
  const issuerKey = createPrivateKey(options.issuer?.key ?? pair.privateKey);
  if (createPublicKey(pair.publicKey).asymmetricKeyType === 'rsa' && issuerKey.asymmetricKeyType === 'rsa') return buildRsa(pair, options);
  return buildAny(pair, options, issuerKey);
}

/** A certificate with its key, a random positive serial, its validity and its subject: what both builders start from. */
function newCertificate(publicPem: string, options: BuildOptions): forge.pki.Certificate {
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
  return cert;
}

function buildRsa({ publicKey: publicPem, privateKey: privatePem }: PemKeyPair, options: BuildOptions): IssuedCertificate {
  const cert = newCertificate(publicPem, options);

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

/** Signature algorithms, by the issuer's key type (RFC 5758 §3.2, RFC 4055). */
const SIGNATURE_OIDS: Readonly<Record<string, string>> = {
  ec: '1.2.840.10045.4.3.2', // ecdsa-with-SHA256, no parameters
  rsa: '1.2.840.113549.1.1.11', // sha256WithRSAEncryption, NULL parameters
};
const SUBJECT_KEY_IDENTIFIER = '2.5.29.14';

/**
 * A certificate whose key, or whose issuer's key, is not RSA: forge reads and signs RSA only, so it
 * builds the parts it knows (names, validity, extensions) around a stand-in key, and the parts it
 * does not are set in the structure itself: the subject's public key, the signature algorithm, the
 * issuer's name (read from the issuer's certificate, which forge cannot parse), the key
 * identifiers; node:crypto signs.
 */
function buildAny(pair: PemKeyPair, options: BuildOptions, issuerKey: KeyObject): IssuedCertificate {
  const { asn1 } = forge;
  // decodeBitStrings off: an RSA key's bits are DER themselves, and must stay bytes here.
  const fromDer = asn1.fromDer as unknown as (bytes: forge.util.ByteStringBuffer, options: { decodeBitStrings: boolean }) => forge.asn1.Asn1;
  const spki = fromDer(forge.util.createBuffer(createPublicKey(pair.publicKey).export({ type: 'spki', format: 'der' }).toString('binary')), { decodeBitStrings: false });
  // The key identifier: SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2, method 1).
  const keyBits = bytesOf((spki.value as forge.asn1.Asn1[])[1]).slice(1);
  const keyId = createHash('sha1').update(Buffer.from(keyBits, 'binary')).digest('binary');

  const cert = newCertificate(standInRsaKey(), options);
  cert.setIssuer(options.subject);
  const issuerTbs = options.issuer ? tbsOf(options.issuer.cert) : undefined;
  const authorityKeyId = issuerTbs ? subjectKeyIdOf(issuerTbs) : keyId;
  cert.setExtensions([
    ...options.extensions.filter((e) => (e as { name?: string }).name !== 'subjectKeyIdentifier'),
    { id: SUBJECT_KEY_IDENTIFIER, value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, keyId) },
    ...(authorityKeyId === undefined ? [] : [{ name: 'authorityKeyIdentifier', keyIdentifier: authorityKeyId }]),
  ]);

  // forge writes a signature algorithm into what it builds; the real one replaces it below.
  cert.siginfo.algorithmOid = forge.pki.oids.sha256WithRSAEncryption ?? '';
  const algorithm = issuerKey.asymmetricKeyType === 'ec' ? 'ec' : 'rsa';
  const algorithmId = (): forge.asn1.Asn1 =>
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(SIGNATURE_OIDS[algorithm] ?? '').getBytes()),
      ...(algorithm === 'rsa' ? [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')] : []),
    ]);
  const tbs = (forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 }).getTBSCertificate(cert);
  const fields = tbs.value as forge.asn1.Asn1[];
  // version [0], serial, signature, issuer, validity, subject, subjectPublicKeyInfo, extensions [3]
  fields[2] = algorithmId();
  const issuerName = (issuerTbs?.value as forge.asn1.Asn1[] | undefined)?.[5];
  if (issuerName) fields[3] = issuerName;
  fields[6] = spki;
  const tbsDer = Buffer.from(asn1.toDer(tbs).getBytes(), 'binary');
  const signature = sign('sha256', tbsDer, issuerKey);
  const certificate = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    tbs,
    algorithmId(),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\0${signature.toString('binary')}`),
  ]);
  const pem = forge.pem.encode({ type: 'CERTIFICATE', body: asn1.toDer(certificate).getBytes() });
  return { cert: pem.replace(/\r\n/g, '\n'), key: pair.privateKey };
}

/** The subject key identifier of a PEM certificate, in hex; undefined when it has none. */
export function subjectKeyIdentifier(pem: string): string | undefined {
  const id = subjectKeyIdOf(tbsOf(pem));
  return id === undefined ? undefined : Buffer.from(id, 'binary').toString('hex');
}

/** The TBSCertificate of a PEM certificate, whatever its key type. */
function tbsOf(pem: string): forge.asn1.Asn1 {
  const der = new X509Certificate(pem).raw.toString('binary');
  const certificate = forge.asn1.fromDer(forge.util.createBuffer(der));
  const tbs = (certificate.value as forge.asn1.Asn1[])[0];
  if (!tbs) throw new Error('not a certificate');
  return tbs;
}

/** The subjectKeyIdentifier of a TBSCertificate (raw bytes), if it has one. */
function subjectKeyIdOf(tbs: forge.asn1.Asn1): string | undefined {
  const fields = tbs.value as forge.asn1.Asn1[];
  const extensions = fields.find((f) => f.tagClass === forge.asn1.Class.CONTEXT_SPECIFIC && (f.type as number) === 3);
  const list = ((extensions?.value as forge.asn1.Asn1[] | undefined)?.[0]?.value ?? []) as forge.asn1.Asn1[];
  for (const extension of list) {
    const parts = extension.value as forge.asn1.Asn1[];
    if (forge.asn1.derToOid(forge.util.createBuffer(bytesOf(parts[0]))) !== SUBJECT_KEY_IDENTIFIER) continue;
    const octets = parts[parts.length - 1];
    const inner = forge.asn1.fromDer(forge.util.createBuffer(bytesOf(octets)));
    return bytesOf(inner);
  }
  return undefined;
}

/** The bytes of a primitive ASN.1 value, as forge keeps them (a binary string). */
function bytesOf(node: forge.asn1.Asn1 | undefined): string {
  return typeof node?.value === 'string' ? node.value : '';
}

let standIn: string | undefined;
/** A key forge can hold while it builds a certificate for a key it cannot: replaced before signing. */
function standInRsaKey(): string {
  standIn ??= generateKeyPairSync('rsa', { modulusLength: 1024, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } }).publicKey;
  return standIn;
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
