/**
 * The webhook paths istiod serves, and the tenant data they carry. The cluster in an injection path
 * becomes the `clusterid` every injected sidecar sends, so it must name one of the caller's own
 * clusters. Parameters are read as istiod reads them: `cluster` and `net` map to their env names,
 * any other key is upper-cased into one, so `/inject/istio_meta_cluster_id/x` names a cluster too.
 * Anything istiod would read ambiguously (a repeated env name, an odd segment) is rejected, and so
 * is any percent-encoding: istiod reads the decoded path and upper-cases keys with Go's Unicode
 * rules, so `/inject/%C4%B1stio_meta_cluster_id/x` (ı upper-cases to I) would name a cluster
 * that meshgate did not see.
 *
 *   /inject                                   /validate
 *   /inject/cluster/<c>/net/<n>[/<k>/<v>…]    /validate/
 *   /inject/:ENV:cluster=<c>:ENV:net=<n>      (legacy)
 *   /k/<key>/<any of the above>               (path-key authentication; the prefix is stripped)
 */
import { MeshgateError } from '../../errors.js';

export interface WebhookPath {
  readonly kind: 'inject' | 'validate';
  /** The path to forward: the original without any `/k/<key>` prefix. */
  readonly forwardPath: string;
  readonly pathKey?: string;
  /** Injection parameters by the env name istiod gives them, values as written. */
  readonly env: ReadonlyMap<string, string>;
  /**
   * Every value istiod may take the cluster to be: as written, and with `--slash--` read as "/"
   * (Istio versions differ on whether they decode it). Each must be a cluster of the tenant.
   */
  readonly clusters: readonly string[];
}

/** The env var that carries the cluster id into every injected sidecar. */
export const CLUSTER_ENV = 'ISTIO_META_CLUSTER_ID';
const PARAMETER_ENV: Readonly<Record<string, string>> = { cluster: CLUSTER_ENV, net: 'ISTIO_META_NETWORK' };

const KEY_PREFIX = /^\/k\/([^/]+)(\/.*)$/;

/** Parses a canonical path; throws MG_ERR_ROUTE_NOT_FOUND when it is not a webhook path. */
export function parseWebhookPath(path: string): WebhookPath {
  if (path.includes('%')) {
    throw new MeshgateError('MG_ERR_REQUEST_PATH_NOT_CANONICAL', { message: 'webhook paths take no percent-encoding' });
  }
  let rest = path;
  let pathKey: string | undefined;
  const keyed = KEY_PREFIX.exec(path);
  if (keyed) {
    pathKey = keyed[1];
    rest = keyed[2] ?? '';
  }
  const parsed = parseUnkeyed(rest);
  if (!parsed) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: 'not an injection or validation path' });
  return pathKey === undefined ? { ...parsed, forwardPath: rest } : { ...parsed, forwardPath: rest, pathKey };
}

function parseUnkeyed(path: string): Omit<WebhookPath, 'forwardPath' | 'pathKey'> | undefined {
  if (path === '/validate' || path === '/validate/') return { kind: 'validate', env: new Map(), clusters: [] };
  if (path === '/inject' || path === '/inject/') return { kind: 'inject', env: new Map(), clusters: [] };
  if (!path.startsWith('/inject/')) return undefined;

  const tail = path.slice('/inject/'.length).replace(/\/$/, '');
  const pairs: [string, string][] = [];
  if (tail.startsWith(':ENV:')) {
    for (const assignment of tail.split(':ENV:').slice(1)) {
      const eq = assignment.indexOf('=');
      if (eq <= 0) return undefined;
      pairs.push([assignment.slice(0, eq), assignment.slice(eq + 1)]);
    }
  } else {
    const segments = tail.split('/');
    if (segments.length % 2 !== 0) return undefined;
    for (let i = 0; i < segments.length; i += 2) pairs.push([segments[i] ?? '', segments[i + 1] ?? '']);
  }

  const env = new Map<string, string>();
  for (const [key, value] of pairs) {
    const name = PARAMETER_ENV[key] ?? key.toUpperCase();
    if (key === '' || env.has(name)) return undefined;
    env.set(name, value);
  }
  const cluster = env.get(CLUSTER_ENV);
  const clusters = cluster === undefined ? [] : [...new Set([cluster, cluster.replaceAll('--slash--', '/')])];
  return { kind: 'inject', env, clusters };
}
