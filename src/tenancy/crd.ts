/**
 * The MeshTenant CustomResourceDefinition, made from the tenant schema itself, so that the two can
 * never drift: `meshgate crd` prints it, and deploy/ holds its output (a test keeps them equal).
 *
 * A CRD's schema must be structural (every field typed, no `additionalProperties: false`, no types
 * inside `anyOf`), so the JSON Schema of the tenant is reshaped:
 *  - a file reference becomes `{ secretKeyRef: { name, key } }`;
 *  - a field that is one of several shapes (API server credentials) keeps unknown fields, and is
 *    checked by meshgate's own schema, which reports it in the status;
 *  - defaults are left to meshgate, so a stored object stays as its author wrote it.
 */
import { z } from 'zod';
import { FILE_MARK, tenantSchema } from '../config/schema.js';
import { MESH_TENANT } from './mesh-tenant.js';

type JsonSchema = Record<string, unknown>;

const SECRET_KEY_REF: JsonSchema = {
  type: 'object',
  description: 'A key of a Secret in the MeshTenant\'s own namespace.',
  required: ['secretKeyRef'],
  properties: {
    secretKeyRef: {
      type: 'object',
      required: ['name', 'key'],
      properties: { name: { type: 'string', minLength: 1 }, key: { type: 'string', minLength: 1 } },
    },
  },
};

export function meshTenantCrd(): JsonSchema {
  const tenant = structural(z.toJSONSchema(tenantSchema, { io: 'input', unrepresentable: 'any' }));
  const properties = { ...(tenant.properties as Record<string, JsonSchema>) };
  // The tenant's id is the MeshTenant's name.
  delete properties.id;
  const spec: JsonSchema = {
    ...tenant,
    description: "The tenant, as in meshgate's config file; files are Secret keys.",
    properties,
    required: (tenant.required as string[]).filter((field) => field !== 'id'),
  };
  const condition: JsonSchema = {
    type: 'object',
    required: ['type', 'status'],
    properties: {
      type: { type: 'string' },
      status: { type: 'string', enum: ['True', 'False', 'Unknown'] },
      reason: { type: 'string' },
      message: { type: 'string' },
      observedGeneration: { type: 'integer', format: 'int64' },
      lastTransitionTime: { type: 'string', format: 'date-time' },
    },
  };
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${MESH_TENANT.plural}.${MESH_TENANT.group}` },
    spec: {
      group: MESH_TENANT.group,
      names: { kind: MESH_TENANT.kind, listKind: `${MESH_TENANT.kind}List`, plural: MESH_TENANT.plural, singular: 'meshtenant', shortNames: ['mt'] },
      scope: 'Namespaced',
      versions: [
        {
          name: MESH_TENANT.version,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
            { name: 'Reason', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].reason' },
            { name: 'Hosts', type: 'string', jsonPath: '.spec.hosts' },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: {
            openAPIV3Schema: {
              type: 'object',
              required: ['spec'],
              properties: {
                apiVersion: { type: 'string' },
                kind: { type: 'string' },
                metadata: { type: 'object' },
                spec,
                status: {
                  type: 'object',
                  properties: {
                    observedGeneration: { type: 'integer', format: 'int64' },
                    conditions: {
                      type: 'array',
                      items: condition,
                      'x-kubernetes-list-type': 'map',
                      'x-kubernetes-list-map-keys': ['type'],
                    },
                  },
                },
              },
            },
          },
        },
      ],
    },
  };
}

function structural(node: JsonSchema): JsonSchema {
  if (node[FILE_MARK] === true) return SECRET_KEY_REF;
  const branches = (node.anyOf ?? node.oneOf) as JsonSchema[] | undefined;
  if (branches !== undefined) {
    // Strings of several formats (IPv4 or IPv6 CIDRs) are strings; other unions keep what they hold.
    return branches.every((b) => b.type === 'string') ? { type: 'string' } : { 'x-kubernetes-preserve-unknown-fields': true };
  }
  // A map with a closed set of keys (z.partialRecord of an enum): Kubernetes has no propertyNames,
  // so each key becomes a property of its own.
  const keys = (node.propertyNames as JsonSchema | undefined)?.enum as string[] | undefined;
  if (keys !== undefined && typeof node.additionalProperties === 'object') {
    const value = structural(node.additionalProperties as JsonSchema);
    return { type: 'object', properties: Object.fromEntries(keys.map((key) => [key, value])) };
  }
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === '$schema' || key === 'default' || key === 'additionalProperties') continue;
    if (key === 'maximum' && value === Number.MAX_SAFE_INTEGER) continue;
    if (key === 'const') out.enum = [value];
    else if (key === 'exclusiveMinimum' && typeof value === 'number') {
      out.minimum = value;
      out.exclusiveMinimum = true;
    } else if (key === 'properties') {
      out.properties = Object.fromEntries(Object.entries(value as Record<string, JsonSchema>).map(([k, v]) => [k, structural(v)]));
    } else if (key === 'items') out.items = structural(value as JsonSchema);
    else if (key === 'type' && Array.isArray(value)) {
      // A size: a byte count or "64KiB".
      if (value.includes('string') && (value.includes('number') || value.includes('integer'))) out['x-kubernetes-int-or-string'] = true;
      else out['x-kubernetes-preserve-unknown-fields'] = true;
    } else out[key] = value;
  }
  // A map (z.record) keeps its value schema.
  if (typeof node.additionalProperties === 'object' && node.properties === undefined) {
    out.additionalProperties = structural(node.additionalProperties as JsonSchema);
  }
  if (out.type === undefined && out['x-kubernetes-preserve-unknown-fields'] === undefined && out['x-kubernetes-int-or-string'] === undefined) {
    out['x-kubernetes-preserve-unknown-fields'] = true;
  }
  return out;
}
