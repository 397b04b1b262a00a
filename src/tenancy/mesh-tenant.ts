/**
 * The MeshTenant resource (meshgate.dev/v1alpha1): a tenant of the file, as a Kubernetes object.
 *  - `metadata.name` is the tenant's id; `spec` is the tenant's model, field for field;
 *  - where the file names a file (a certificate, key, CA bundle, token, JWKS or path key), a
 *    MeshTenant names a key of a Secret in its own namespace: `{ secretKeyRef: { name, key } }`.
 *    A path on meshgate's own disk is refused: a MeshTenant's author must never be able to point
 *    meshgate at another tenant's key.
 * Converted, a MeshTenant goes through the same schema and file checks as a tenant of the file.
 */
import type { FileReader } from '../config/files.js';
import { ConfigError, formatPath, type ConfigIssue } from '../config/issues.js';
import type { LoadedConfig } from '../config/load.js';

export const MESH_TENANT = { group: 'meshgate.dev', version: 'v1alpha1', plural: 'meshtenants', kind: 'MeshTenant' } as const;

/** How a Secret key is named inside meshgate once converted: `secret:<name>/<key>`. */
const SECRET_PREFIX = 'secret:';
const SECRET_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const SECRET_KEY = /^[-._a-zA-Z0-9]+$/;

export interface MeshTenantObject {
  readonly apiVersion?: string;
  readonly kind?: string;
  readonly metadata?: {
    readonly name?: string;
    readonly namespace?: string;
    readonly generation?: number;
    readonly creationTimestamp?: string | Date;
    readonly resourceVersion?: string;
  };
  readonly spec?: unknown;
  readonly status?: { readonly conditions?: readonly MeshTenantCondition[]; readonly observedGeneration?: number };
}

export interface MeshTenantCondition {
  readonly type: string;
  readonly status: 'True' | 'False' | 'Unknown';
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
  readonly lastTransitionTime?: string;
}

/** A MeshTenant as a tenant of the config, not yet validated: what `tenants[i]` would hold in the file. */
export function tenantFromMeshTenant(object: MeshTenantObject): Record<string, unknown> {
  const spec = object.spec;
  const converted = typeof spec === 'object' && spec !== null && !Array.isArray(spec) ? (convertRefs(spec) as Record<string, unknown>) : {};
  return { ...converted, id: object.metadata?.name ?? '' };
}

function convertRefs(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(convertRefs);
  if (typeof value !== 'object' || value === null) return value;
  const record = value as Record<string, unknown>;
  const ref: unknown = record.secretKeyRef;
  if (Object.keys(record).length === 1 && typeof ref === 'object' && ref !== null) {
    const { name, key } = ref as { name?: unknown; key?: unknown };
    if (typeof name === 'string' && typeof key === 'string' && SECRET_NAME.test(name) && SECRET_KEY.test(key)) {
      return `${SECRET_PREFIX}${name}/${key}`;
    }
    // Left as an object: the schema then says that a file reference is expected here.
    return record;
  }
  return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, convertRefs(v)]));
}

/** The label that gives a Secret to one tenant: a MeshTenant may name only Secrets labelled with its own name. */
export const TENANT_LABEL = 'meshgate.dev/tenant';

export interface SecretLike {
  readonly metadata?: { readonly labels?: Readonly<Record<string, string>> };
  readonly data?: Record<string, string>;
}

/**
 * Reads one tenant's `secret:<name>/<key>` references from Secrets (base64 `data`), and refuses
 * every other reference: a path on meshgate's disk, and a Secret not labelled as this tenant's
 * (`meshgate.dev/tenant: <name>`), so that no MeshTenant can send another tenant's credential
 * anywhere, though they share a namespace.
 */
export function secretReader(namespace: string, tenant: unknown, secret: (name: string) => SecretLike | undefined): FileReader {
  const id = typeof tenant === 'object' && tenant !== null ? (tenant as { id?: unknown }).id : undefined;
  return {
    resolve: (file) =>
      file.startsWith(SECRET_PREFIX)
        ? file
        : { refused: `a MeshTenant names files as { secretKeyRef: { name, key } } of a Secret in ${namespace}, never as a path ("${file}")` },
    read(reference) {
      const [name = '', key = ''] = reference.slice(SECRET_PREFIX.length).split('/');
      const found = secret(name);
      if (!found) throw new Error(`Secret ${namespace}/${name} does not exist`);
      if (typeof id !== 'string' || found.metadata?.labels?.[TENANT_LABEL] !== id) {
        throw new Error(`Secret ${namespace}/${name} is not labelled ${TENANT_LABEL}: ${String(id)}`);
      }
      const value = found.data?.[key];
      if (value === undefined) throw new Error(`Secret ${namespace}/${name} has no key "${key}"`);
      return Buffer.from(value, 'base64').toString('utf8');
    },
  };
}

/** The Secrets a converted tenant names. */
export function secretsNamed(tenant: unknown): Set<string> {
  const names = new Set<string>();
  const walk = (value: unknown): void => {
    if (typeof value === 'string' && value.startsWith(SECRET_PREFIX)) names.add(value.slice(SECRET_PREFIX.length).split('/')[0] ?? '');
    else if (Array.isArray(value)) value.forEach(walk);
    else if (typeof value === 'object' && value !== null) Object.values(value).forEach(walk);
  };
  walk(tenant);
  return names;
}

/**
 * A config issue of `tenants[i]`, said the way the MeshTenant's author wrote it: `spec.<path>`,
 * and a Secret key instead of its internal reference.
 */
export function describeIssue(issue: ConfigIssue): string {
  const [, , ...rest] = issue.path;
  const where = rest.length === 1 && rest[0] === 'id' ? 'metadata.name' : formatPath(['spec', ...rest]);
  return `${where}: ${issue.message.replaceAll(SECRET_PREFIX, 'Secret key ')}`;
}

export interface AdmittedTenant {
  readonly name: string;
  readonly tenant: Record<string, unknown>;
  readonly generation: number;
  /** An earlier, valid generation serving because the current one is invalid. */
  readonly stale: boolean;
}

export interface Admission {
  readonly accepted: readonly AdmittedTenant[];
  /** Why each refused MeshTenant was refused, by name. */
  readonly problems: ReadonlyMap<string, string>;
  readonly loaded: LoadedConfig;
}

/**
 * Which MeshTenants meshgate serves, the same on every replica: oldest first; each checked alone
 * (with the file's settings), then all that passed together, where an id or host that two claim
 * goes to the older. An invalid one that has an earlier valid form (`lastGood`) serves that.
 * Throws a ConfigError when the file's own settings are at fault.
 */
export function admitMeshTenants(
  objects: readonly MeshTenantObject[],
  load: (tenants: readonly unknown[]) => LoadedConfig,
  lastGood: ReadonlyMap<string, { readonly tenant: Record<string, unknown>; readonly generation: number }> = new Map(),
): Admission {
  const problems = new Map<string, string>();
  const accepted: AdmittedTenant[] = [];
  for (const object of [...objects].sort(byAge)) {
    const name = object.metadata?.name ?? '';
    const tenant = tenantFromMeshTenant(object);
    try {
      load([tenant]);
      accepted.push({ name, tenant, generation: object.metadata?.generation ?? 0, stale: false });
    } catch (error) {
      problems.set(name, [...issuesByTenant(error).values()].flat().map(describeIssue).join('; '));
      const previous = lastGood.get(name);
      if (previous && loads(() => load([previous.tenant]))) accepted.push({ name, ...previous, stale: true });
    }
  }
  for (;;) {
    try {
      return { accepted, problems, loaded: load(accepted.map((a) => a.tenant)) };
    } catch (error) {
      const byTenant = issuesByTenant(error);
      for (const index of [...byTenant.keys()].sort((a, b) => b - a)) {
        const [loser] = accepted.splice(index, 1);
        if (loser) problems.set(loser.name, (byTenant.get(index) ?? []).map(describeIssue).join('; '));
      }
    }
  }
}

/** Oldest first, then by name: the order every replica agrees on. */
export function byAge(a: MeshTenantObject, b: MeshTenantObject): number {
  const time = (o: MeshTenantObject): number => new Date(o.metadata?.creationTimestamp ?? 0).getTime();
  return time(a) - time(b) || (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? '');
}

/** Issues of `tenants[i]`, by i; rethrows when the file itself is at fault. */
function issuesByTenant(error: unknown): Map<number, ConfigIssue[]> {
  if (!(error instanceof ConfigError)) throw error;
  const byTenant = new Map<number, ConfigIssue[]>();
  for (const issue of error.issues) {
    const [top, index] = issue.path;
    if (top !== 'tenants' || typeof index !== 'number') throw error;
    byTenant.set(index, [...(byTenant.get(index) ?? []), issue]);
  }
  return byTenant;
}

function loads(load: () => unknown): boolean {
  try {
    load();
    return true;
  } catch {
    return false;
  }
}
