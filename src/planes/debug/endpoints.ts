import { MeshgateError } from '../../errors.js';

/**
 * Which of istiod's debug endpoints the debug plane forwards. Read-only ones that tools need are
 * allowed by default; a tenant may choose its own list. Endpoints that change state or cost a lot
 * are never forwarded, whatever the list says.
 */

/** `/debug/<name>`; `version` stands for istiod's `/version`. */
export const DEFAULT_DEBUG_ENDPOINTS: readonly string[] = [
  'version',
  'syncz',
  'config_dump',
  'configz',
  'registryz',
  'endpointz',
  'endpointShardz',
  'push_status',
  'mesh',
  'clusterz',
  'networkz',
  'authorizationz',
  'telemetryz',
  'sidecarz',
  'instancesz',
  'resourcesz',
  'inject',
  'ndsz',
  'edsz',
  'ecdsz',
];

/** Never forwarded: they mutate istiod (force_disconnect) or cost it heavily (pprof). */
export const FORBIDDEN_DEBUG_ENDPOINTS: readonly string[] = ['force_disconnect', 'pprof'];

/** Query parameters that turn a read into a write: `adsz?push=true` pushes to every proxy. */
export const MUTATING_PARAMETERS: Readonly<Record<string, readonly string[]>> = {
  adsz: ['push'],
  cachez: ['clear'],
};

/**
 * The endpoint a canonical path names (`/debug/syncz` → `syncz`, `/version` → `version`), or
 * undefined when it is not a debug path. Sub-paths (`/debug/pprof/heap`) come back whole, so they
 * match an allowlist entry only if it names them whole.
 */
export function debugEndpoint(path: string): string | undefined {
  if (path === '/version') return 'version';
  if (!path.startsWith('/debug/')) return undefined;
  const name = path.slice('/debug/'.length);
  return name === '' ? undefined : name;
}

/**
 * Throws unless the endpoint may be forwarded: in the allowlist, not forbidden, and without a
 * parameter that makes it a write. The same check for `/debug/…` on the debug plane and for the
 * `istio.io/debug` type URLs of an xDS request.
 */
export function checkDebugEndpoint(endpoint: string | undefined, query: string | undefined, allowed: ReadonlySet<string>, shown?: string): void {
  if (endpoint === undefined || isForbiddenEndpoint(endpoint) || !allowed.has(endpoint)) {
    throw new MeshgateError('MG_ERR_AUTHZ_DEBUG_ENDPOINT', { message: `debug endpoint "${endpoint ?? shown ?? ''}" is not allowed` });
  }
  const params = new URLSearchParams(query ?? '');
  for (const mutating of MUTATING_PARAMETERS[endpoint] ?? []) {
    if (params.has(mutating)) {
      throw new MeshgateError('MG_ERR_AUTHZ_DEBUG_ENDPOINT', { message: `"${endpoint}?${mutating}" changes istiod's state` });
    }
  }
}

/** Forbidden endpoints, and anything under them (`pprof/heap`). */
export function isForbiddenEndpoint(name: string): boolean {
  const head = name.split('/')[0] ?? name;
  return FORBIDDEN_DEBUG_ENDPOINTS.includes(head);
}
