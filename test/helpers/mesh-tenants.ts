/** A tenant of a config file as a MeshTenant and the Secret of its files, for tests. */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { V1ObjectMeta, V1Secret } from '@kubernetes/client-node';
import { MESH_TENANT, TENANT_LABEL } from '../../src/tenancy/mesh-tenant.js';

type RawConfig = Record<string, any>;

/** A Secret of one tenant's files, labelled as that tenant's (meshgate reads no other for it). */
export function secretOf(name: string, tenant: string, data: Record<string, string>, namespace = 'meshgate'): V1Secret {
  const secret = new V1Secret();
  secret.metadata = new V1ObjectMeta();
  secret.metadata.name = name;
  secret.metadata.namespace = namespace;
  secret.metadata.labels = { [TENANT_LABEL]: tenant };
  secret.data = data;
  return secret;
}

/** The secret keys: file names, as a Secret allows them. */
export function keyOf(name: string): string {
  return name.replace(/[^-._a-zA-Z0-9]/g, '_');
}

/**
 * A tenant of the file as a MeshTenant: every file it names becomes a key of one Secret, and the
 * field a `secretKeyRef` to it.
 */
export function toMeshTenant(tenant: RawConfig, secret: string, namespace = 'meshgate'): { object: RawConfig; data: Record<string, string> } {
  const data: Record<string, string> = {};
  const convert = (value: unknown): unknown => {
    if (typeof value === 'string' && value.startsWith('/')) {
      const key = keyOf(basename(value));
      data[key] = readFileSync(value).toString('base64');
      return { secretKeyRef: { name: secret, key } };
    }
    if (Array.isArray(value)) return value.map(convert);
    if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, convert(v)]));
    return value;
  };
  const { id, ...spec } = tenant;
  return {
    object: { apiVersion: `${MESH_TENANT.group}/${MESH_TENANT.version}`, kind: MESH_TENANT.kind, metadata: { name: String(id), namespace }, spec: convert(spec) },
    data,
  };
}

