/**
 * The attributes of a Kubernetes API request, read from its method, path and query exactly as
 * the API server's RequestInfoResolver reads them (k8s.io/apiserver/pkg/endpoints/request), so
 * that meshgate's rules judge the request the API server will run:
 *
 *   /api/v1/namespaces/bookinfo/pods/productpage-1/exec   → create pods/exec in bookinfo
 *   /apis/apps/v1/deployments?watch=1                     → watch deployments (group apps)
 *   /version                                              → get, a non-resource URL
 *
 * One deliberate difference: exec, attach and port-forward count as `create` whatever the method,
 * because a WebSocket upgrade arrives as GET and is the same act as the SPDY POST.
 */

export interface KubeRequest {
  readonly resourceRequest: boolean;
  /** Lower case: get, list, watch, create, update, patch, delete, deletecollection, proxy; or the HTTP method for non-resource URLs. */
  readonly verb: string;
  readonly path: string;
  readonly apiGroup: string;
  readonly apiVersion: string;
  readonly namespace: string;
  readonly resource: string;
  readonly subresource: string;
  readonly name: string;
}

const API_PREFIXES = new Set(['api', 'apis']);
const GROUPLESS_PREFIXES = new Set(['api']);
const SPECIAL_VERBS = new Set(['proxy', 'watch']);
const NAMESPACE_SUBRESOURCES = new Set(['status', 'finalize']);
const CONNECT_SUBRESOURCES = new Set(['exec', 'attach', 'portforward']);
/** What the API server treats as long-running: never cut by a request deadline. */
const LONG_RUNNING_SUBRESOURCES = new Set(['exec', 'attach', 'portforward', 'proxy', 'log']);

const METHOD_VERBS: Readonly<Record<string, string>> = {
  POST: 'create',
  GET: 'get',
  HEAD: 'get',
  PUT: 'update',
  PATCH: 'patch',
  DELETE: 'delete',
};

/** `path` is the canonical Kubernetes path (after `/clusters/<id>`), `query` the raw query. */
export function parseKubeRequest(method: string, path: string, query: string | undefined): KubeRequest {
  const nonResource: KubeRequest = {
    resourceRequest: false,
    verb: method.toLowerCase(),
    path,
    apiGroup: '',
    apiVersion: '',
    namespace: '',
    resource: '',
    subresource: '',
    name: '',
  };
  let parts = path.split('/').filter((part) => part !== '');
  if (parts.length < 3 || !API_PREFIXES.has(parts[0] ?? '')) return nonResource;
  const prefix = parts[0] ?? '';
  parts = parts.slice(1);
  let apiGroup = '';
  if (!GROUPLESS_PREFIXES.has(prefix)) {
    if (parts.length < 3) return nonResource;
    apiGroup = parts[0] ?? '';
    parts = parts.slice(1);
  }
  const apiVersion = parts[0] ?? '';
  parts = parts.slice(1);

  let verb: string;
  if (SPECIAL_VERBS.has(parts[0] ?? '')) {
    // `/api/v1/watch` alone names no resource: the API server refuses it, and so does a rule.
    if (parts.length < 2) return { ...nonResource, verb: '' };
    verb = parts[0] ?? '';
    parts = parts.slice(1);
  } else {
    verb = METHOD_VERBS[method] ?? '';
  }

  let namespace = '';
  if (parts[0] === 'namespaces' && parts.length > 1) {
    namespace = parts[1] ?? '';
    if (parts.length > 2 && !NAMESPACE_SUBRESOURCES.has(parts[2] ?? '')) parts = parts.slice(2);
  }
  const resource = parts[0] ?? '';
  let name = parts[1] ?? '';
  const subresource = parts.length >= 3 && verb !== 'proxy' ? (parts[2] ?? '') : '';

  if (name === '' && verb === 'get') {
    const params = new URLSearchParams(query ?? '');
    verb = isWatch(params.getAll('watch')) ? 'watch' : 'list';
    name = exactNameSelector(params.get('fieldSelector')) ?? '';
  }
  if (name === '' && verb === 'delete') verb = 'deletecollection';
  if (CONNECT_SUBRESOURCES.has(subresource) && resource === 'pods') verb = 'create';

  return { resourceRequest: true, verb, path, apiGroup, apiVersion, namespace, resource, subresource, name };
}

/** Whether the API server holds this request open: watches, exec/attach/port-forward, log, proxy. */
export function isLongRunning(request: KubeRequest, query: string | undefined): boolean {
  if (!request.resourceRequest) return false;
  if (request.verb === 'watch' || request.verb === 'proxy') return true;
  if (request.subresource === 'log') return new URLSearchParams(query ?? '').get('follow') === 'true';
  return LONG_RUNNING_SUBRESOURCES.has(request.subresource);
}

/** `?watch=` as the API server reads it: present and not false. */
function isWatch(values: readonly string[]): boolean {
  const [first] = values;
  if (first === undefined) return false;
  return !['false', '0', 'f'].includes(first.toLowerCase());
}

/** `metadata.name=x` (or `==`) as the only requirement of a field selector. */
function exactNameSelector(selector: string | null): string | undefined {
  if (selector === null) return undefined;
  const match = /^metadata\.name==?([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(selector);
  return match?.[1];
}

/** How a denial names the request, as the API server words it. */
export function describeKubeRequest(request: KubeRequest): string {
  if (!request.resourceRequest) return `${request.verb} path "${request.path}"`;
  const resource = request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`;
  const group = `in API group "${request.apiGroup}"`;
  const scope = request.namespace === '' ? 'at the cluster scope' : `in the namespace "${request.namespace}"`;
  return `${request.verb} resource "${resource}" ${group} ${scope}`;
}
