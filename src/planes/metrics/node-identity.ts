/**
 * Who a StreamMetrics stream says it is, checked against who proved itself, as ADS checks
 * `clusterid`: the node's `CLUSTER_ID` metadata must be a cluster of the tenant and the caller's
 * own; a service-account token's namespace must be the namespace of the node id
 * (`sidecar~10.1.0.7~productpage-v1-6b7f.bookinfo~bookinfo.svc.cluster.local`). A certificate
 * caller has no namespace, so its nodes are checked for their cluster only.
 */
import type { Identity } from '../../auth/identity.js';
import { MeshgateError } from '../../errors.js';

export interface NodeClaim {
  readonly id: string;
  /** The `CLUSTER_ID` node metadata istio-agent sets, when present. */
  readonly cluster?: string;
}

export interface ProxyName {
  readonly pod?: string;
  readonly namespace?: string;
}

/** `type~ip~pod.namespace~namespace.svc.domain` → the pod and its namespace; anything else: nothing. */
export function parseNodeId(id: string): ProxyName {
  const parts = id.split('~');
  if (parts.length !== 4) return {};
  const [, , podDotNamespace = '', domain = ''] = parts;
  const dot = podDotNamespace.lastIndexOf('.');
  const namespace = domain.split('.', 1)[0] ?? '';
  if (dot <= 0 || namespace === '' || podDotNamespace.slice(dot + 1) !== namespace) return {};
  return { pod: podDotNamespace.slice(0, dot), namespace };
}

/** The namespace of a service-account subject (`system:serviceaccount:<ns>:<name>`), if it is one. */
function accountNamespace(identity: Identity): string | undefined {
  if (identity.method !== 'token') return undefined;
  const parts = identity.subject.split(':');
  return parts.length === 4 && parts[0] === 'system' && parts[1] === 'serviceaccount' ? parts[2] : undefined;
}

/**
 * Reads `CLUSTER_ID` from a decoded google.protobuf.Struct: protobufjs's built-in Struct keeps its
 * camelCase names (`{fields: {CLUSTER_ID: {stringValue}}}`) whatever `keepCase` says.
 */
export function clusterOfMetadata(metadata: unknown): string | undefined {
  const fields = (metadata as { fields?: Record<string, { stringValue?: unknown } | undefined> } | undefined)?.fields;
  const value = fields?.CLUSTER_ID?.stringValue;
  return typeof value === 'string' ? value : undefined;
}

/**
 * Throws unless the node may speak for the caller: `clusters` are the tenant's, `proved` the
 * cluster of the caller's credential (its token's issuer, or meshgate's own token for certificates).
 */
export function checkNodeClaim(node: NodeClaim, identity: Identity, proved: string, clusters: ReadonlySet<string>): ProxyName {
  if (node.id === '') throw new MeshgateError('MG_ERR_METRICS_IDENTIFIER', { message: 'the node identifier has no id' });
  if (node.cluster !== undefined) {
    if (!clusters.has(node.cluster)) {
      throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_CLUSTER', { message: 'the node CLUSTER_ID is not a cluster of this tenant', detail: node.cluster });
    }
    if (node.cluster !== proved) {
      throw new MeshgateError('MG_ERR_AUTHZ_CLUSTER_MISMATCH', {
        message: "the node CLUSTER_ID is not the cluster of the caller's credential",
        detail: `${node.cluster} claimed, ${proved} proved`,
      });
    }
  }
  const name = parseNodeId(node.id);
  const namespace = accountNamespace(identity);
  if (namespace !== undefined && name.namespace !== namespace) {
    throw new MeshgateError('MG_ERR_AUTHZ_NODE_MISMATCH', {
      message: "the node id is not in the namespace of the caller's service account",
      detail: `${identity.subject} claimed node ${node.id}`,
    });
  }
  return name;
}
