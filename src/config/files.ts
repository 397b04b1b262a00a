/**
 * The second stage of loading: every file the config names is read once, checked for what it must
 * hold (a certificate, a key, a JWKS, a secret), and kept in memory. Later stages never touch the
 * disk, so a snapshot is built from exactly what was checked.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import type { Config } from './schema.js';
import type { ConfigIssue } from './issues.js';

type FileKind = 'certificate' | 'bundle' | 'key' | 'jwks' | 'secret' | 'pathKey';

/** Files by absolute path, checked. */
export interface ConfigFiles {
  text(path: string): string;
  certificates(path: string): X509Certificate[];
  key(path: string): KeyObject;
  /** Every file read, by absolute path (or reference): what a change of must reload. */
  paths(): string[];
}

/**
 * Where file references are read from. Paths on disk by default; a MeshTenant's references name
 * Secret keys instead, and are read from the Secrets meshgate watches, never from its own disk.
 */
export interface FileReader {
  /** The absolute form of a reference, or an issue's message when the reference is not allowed. */
  resolve(file: string, baseDir: string): string | { readonly refused: string };
  /** The text, or an error whose `code` (or message) says why not. */
  read(absolute: string): string;
}

export const DISK: FileReader = {
  resolve: (file, baseDir) => (isAbsolute(file) ? file : resolve(baseDir, file)),
  read: (absolute) => readFileSync(absolute, 'utf8'),
};

export function readConfigFiles(
  config: Config,
  baseDir: string,
  readerFor: (tenant: number | undefined) => FileReader = () => DISK,
): { config: Config; files: ConfigFiles; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const texts = new Map<string, string>();
  const certs = new Map<string, X509Certificate[]>();
  const keys = new Map<string, KeyObject>();

  const use = (path: PropertyKey[], file: string, kind: FileKind): string => {
    const reader = readerFor(path[0] === 'tenants' && typeof path[1] === 'number' ? path[1] : undefined);
    const resolved = reader.resolve(file, baseDir);
    if (typeof resolved !== 'string') {
      issues.push({ path, message: resolved.refused });
      return file;
    }
    const absolute = resolved;
    let text: string;
    try {
      text = reader.read(absolute);
    } catch (err) {
      const reason = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
      issues.push({ path, message: `cannot read ${absolute}: ${reason}` });
      return absolute;
    }
    const problem = checkContent(kind, text, absolute, certs, keys);
    if (problem) issues.push({ path, message: `${absolute}: ${problem}` });
    else texts.set(absolute, text);
    return absolute;
  };

  const resolved = structuredClone(config);
  const adminToken = resolved.admin.access.bearerTokenFile;
  if (adminToken !== undefined) resolved.admin.access.bearerTokenFile = use(['admin', 'access', 'bearerTokenFile'], adminToken, 'secret');
  for (const [name, listener] of Object.entries(resolved.listeners)) {
    const cert = listener.defaultCertificate;
    if (cert) {
      cert.cert = use(['listeners', name, 'defaultCertificate', 'cert'], cert.cert, 'certificate');
      cert.key = use(['listeners', name, 'defaultCertificate', 'key'], cert.key, 'key');
    }
  }
  resolved.tenants.forEach((t, i) => {
    const at = (...rest: PropertyKey[]): PropertyKey[] => ['tenants', i, ...rest];
    t.tls.cert = use(at('tls', 'cert'), t.tls.cert, 'certificate');
    t.tls.key = use(at('tls', 'key'), t.tls.key, 'key');
    if (t.tls.clientCA !== undefined) t.tls.clientCA = use(at('tls', 'clientCA'), t.tls.clientCA, 'bundle');
    const { webhook, debug, xds } = t.istiod;
    if (webhook?.ca !== undefined) webhook.ca = use(at('istiod', 'webhook', 'ca'), webhook.ca, 'bundle');
    if (debug?.ca !== undefined) debug.ca = use(at('istiod', 'debug', 'ca'), debug.ca, 'bundle');
    if (debug?.token !== undefined) debug.token.file = use(at('istiod', 'debug', 'token', 'file'), debug.token.file, 'secret');
    if (xds?.ca !== undefined) xds.ca = use(at('istiod', 'xds', 'ca'), xds.ca, 'bundle');
    if (xds?.token !== undefined) xds.token.file = use(at('istiod', 'xds', 'token', 'file'), xds.token.file, 'secret');
    const collector = t.metrics?.collector;
    if (collector?.ca !== undefined) collector.ca = use(at('metrics', 'collector', 'ca'), collector.ca, 'bundle');
    if (collector?.token !== undefined) collector.token.file = use(at('metrics', 'collector', 'token', 'file'), collector.token.file, 'secret');
    t.clusters.forEach((c, j) => {
      const { jwks, apiServer } = c;
      if (jwks?.file !== undefined) jwks.file = use(at('clusters', j, 'jwks', 'file'), jwks.file, 'jwks');
      if (jwks?.ca !== undefined) jwks.ca = use(at('clusters', j, 'jwks', 'ca'), jwks.ca, 'bundle');
      if (jwks?.tokenFile !== undefined) jwks.tokenFile = use(at('clusters', j, 'jwks', 'tokenFile'), jwks.tokenFile, 'secret');
      if (apiServer === undefined) return;
      const server = (...rest: PropertyKey[]): PropertyKey[] => at('clusters', j, 'apiServer', ...rest);
      if (apiServer.ca !== undefined) apiServer.ca = use(server('ca'), apiServer.ca, 'bundle');
      const credentials = apiServer.credentials;
      if (credentials === 'passthrough') return;
      if ('tokenFile' in credentials) credentials.tokenFile = use(server('credentials', 'tokenFile'), credentials.tokenFile, 'secret');
      else {
        credentials.cert = use(server('credentials', 'cert'), credentials.cert, 'certificate');
        credentials.key = use(server('credentials', 'key'), credentials.key, 'key');
      }
    });
    if (t.webhook?.pathKeyFile !== undefined) {
      t.webhook.pathKeyFile = use(at('webhook', 'pathKeyFile'), t.webhook.pathKeyFile, 'pathKey');
    }

    // A serving certificate must match its key and cover the tenant's host names.
    const cert = certs.get(t.tls.cert)?.[0];
    const key = keys.get(t.tls.key);
    if (cert && key && !cert.checkPrivateKey(key)) issues.push({ path: at('tls', 'key'), message: 'key does not match tls.cert' });
    if (cert) {
      t.hosts.forEach((host, h) => {
        const probe = host.startsWith('*.') ? `meshgate-probe${host.slice(1)}` : host;
        if (cert.checkHost(probe) === undefined) {
          issues.push({ path: at('hosts', h), message: `tls.cert does not cover "${host}"` });
        }
      });
    }
  });

  const files: ConfigFiles = {
    text: (path) => required(texts, path),
    certificates: (path) => required(certs, path),
    key: (path) => required(keys, path),
    paths: () => [...texts.keys()],
  };
  return { config: resolved, files, issues };
}

function required<T>(map: Map<string, T>, path: string): T {
  const value = map.get(path);
  if (value === undefined) throw new Error(`config file ${path} was not loaded`);
  return value;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function checkContent(
  kind: FileKind,
  text: string,
  path: string,
  certs: Map<string, X509Certificate[]>,
  keys: Map<string, KeyObject>,
): string | undefined {
  switch (kind) {
    case 'certificate':
    case 'bundle': {
      const blocks = text.match(PEM_CERT) ?? [];
      if (blocks.length === 0) return 'holds no PEM certificate';
      try {
        certs.set(path, blocks.map((pem) => new X509Certificate(pem)));
      } catch (err) {
        return `holds a certificate that does not parse (${(err as Error).message})`;
      }
      return undefined;
    }
    case 'key':
      try {
        keys.set(path, createPrivateKey(text));
      } catch {
        return 'holds no PEM private key';
      }
      return undefined;
    case 'jwks': {
      try {
        const parsed = JSON.parse(text) as { keys?: unknown };
        return Array.isArray(parsed.keys) ? undefined : 'is not a JWKS: it has no "keys" array';
      } catch {
        return 'is not JSON';
      }
    }
    case 'secret':
      return text.trim().length > 0 ? undefined : 'is empty';
    case 'pathKey':
      return /^[A-Za-z0-9_-]{24,256}$/.test(text.trim())
        ? undefined
        : 'a path key must be 24 to 256 characters of A-Z, a-z, 0-9, "-" and "_"';
  }
}
