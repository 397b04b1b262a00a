/**
 * `meshgate certs`: a CA, server certificates for tenant hosts, client certificates for a tenant.
 * PEM files; keys are written mode 0600 and never overwritten unless --force.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createCertificateAuthority, issueCertificate, splitHosts, type IssuedCertificate, type KeyType } from '../pki/certificates.js';
import { UsageError, parse, required } from './args.js';

const USAGE = `usage:
  meshgate certs ca     --name NAME [--key-type rsa|ecdsa] [--out-dir DIR] [--days N] [--force]
  meshgate certs server --ca-cert FILE --ca-key FILE --host HOST [--host HOST…] [--key-type rsa|ecdsa] [--name NAME] [--out-dir DIR] [--days N] [--force]
  meshgate certs client --ca-cert FILE --ca-key FILE --tenant TENANT [--uri spiffe://…]… [--cn NAME] [--key-type rsa|ecdsa] [--name NAME] [--out-dir DIR] [--days N] [--force]

Writes DIR/NAME.pem (certificate) and DIR/NAME-key.pem (private key, mode 0600). DIR defaults to ./certs.
Keys are RSA 2048 by default; --key-type ecdsa makes ECDSA P-256 keys, which cost less per handshake.`;

const COMMON = {
  name: { type: 'string' },
  'out-dir': { type: 'string', default: 'certs' },
  'key-type': { type: 'string', default: 'rsa' },
  days: { type: 'string' },
  force: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} as const;
const ISSUED = { ...COMMON, 'ca-cert': { type: 'string' }, 'ca-key': { type: 'string' } } as const;

export async function runCerts(args: readonly string[]): Promise<number> {
  const [kind, ...rest] = args;
  switch (kind) {
    case 'ca': {
      const v = parse(rest, COMMON, USAGE);
      if (v.help) return help();
      const name = required(v.name, '--name', USAGE);
      return write(v['out-dir'], name, await createCertificateAuthority(name, days(v.days, 3650), keyType(v['key-type'])), v.force);
    }
    case 'server': {
      const v = parse(rest, { ...ISSUED, host: { type: 'string', multiple: true } }, USAGE);
      if (v.help) return help();
      const hosts = v.host ?? [];
      if (hosts.length === 0) throw new UsageError(`--host is required\n\n${USAGE}`);
      const [first = ''] = hosts;
      const issued = await issueCertificate(loadCa(v['ca-cert'], v['ca-key']), {
        commonName: first,
        ...splitHosts(hosts),
        usage: 'server',
        validityDays: days(v.days, 365),
        keyType: keyType(v['key-type']),
      });
      return write(v['out-dir'], v.name ?? first, issued, v.force);
    }
    case 'client': {
      const v = parse(rest, { ...ISSUED, tenant: { type: 'string' }, uri: { type: 'string', multiple: true }, cn: { type: 'string' } }, USAGE);
      if (v.help) return help();
      const tenant = required(v.tenant, '--tenant', USAGE);
      const uris = v.uri ?? [];
      for (const uri of uris) {
        if (!/^spiffe:\/\/[^/\s]+\/\S+$/.test(uri)) throw new UsageError(`--uri ${uri} is not a spiffe:// URI\n\n${USAGE}`);
      }
      const commonName = v.cn ?? `${tenant}-client`;
      const issued = await issueCertificate(loadCa(v['ca-cert'], v['ca-key']), {
        commonName,
        organization: tenant,
        uris,
        usage: 'client',
        validityDays: days(v.days, 365),
        keyType: keyType(v['key-type']),
      });
      return write(v['out-dir'], v.name ?? commonName, issued, v.force);
    }
    case undefined:
    case '-h':
    case '--help':
      return help();
    default:
      throw new UsageError(`unknown certs command "${kind}"\n\n${USAGE}`);
  }
}

function help(): number {
  console.log(USAGE);
  return 0;
}

function days(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0 || n > 36500) throw new UsageError(`--days must be a whole number of days\n\n${USAGE}`);
  return n;
}

function keyType(text: string): KeyType {
  if (text === 'rsa' || text === 'ecdsa') return text;
  throw new UsageError(`--key-type must be rsa or ecdsa\n\n${USAGE}`);
}

function loadCa(certFile: string | undefined, keyFile: string | undefined): IssuedCertificate {
  return {
    cert: readFileSync(required(certFile, '--ca-cert', USAGE), 'utf8'),
    key: readFileSync(required(keyFile, '--ca-key', USAGE), 'utf8'),
  };
}

function write(dir: string, name: string, issued: IssuedCertificate, force: boolean): number {
  if (!/^[\w.-]+$/.test(name)) throw new UsageError(`--name ${name} may hold only letters, digits, ".", "_" and "-"`);
  const outDir = resolve(dir);
  mkdirSync(outDir, { recursive: true });
  const certFile = join(outDir, `${name}.pem`);
  const keyFile = join(outDir, `${name}-key.pem`);
  for (const file of [certFile, keyFile]) {
    if (!force && existsSync(file)) throw new UsageError(`${file} exists; pass --force to replace it`);
  }
  writeFileSync(certFile, issued.cert, { mode: 0o644 });
  writeFileSync(keyFile, issued.key, { mode: 0o600 });
  chmodSync(keyFile, 0o600);
  console.log(`${certFile}\n${keyFile}`);
  return 0;
}
