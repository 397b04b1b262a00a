/**
 * The fixed documents a stand-in Kubernetes API server answers with: `/version`, legacy
 * (non-aggregated) discovery for `/api`, `/api/v1`, `/apis` and its groups, the OIDC discovery
 * document, and `metav1.Status` bodies. Discovery lists exactly what the stand-in serves.
 */

interface ApiResource {
  readonly name: string;
  readonly singularName: string;
  readonly namespaced: boolean;
  readonly kind: string;
  readonly verbs: readonly string[];
  readonly shortNames?: readonly string[];
  readonly categories?: readonly string[];
}

const READ_WRITE = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];
const CONNECT = ['create', 'get'];

const resource = (name: string, kind: string, namespaced: boolean, verbs: readonly string[], extra: Partial<ApiResource> = {}): ApiResource => ({
  name,
  singularName: name.includes('/') ? '' : kind.toLowerCase(),
  namespaced,
  kind,
  verbs,
  ...extra,
});

/** Resources by group version ('v1' for the core group). */
const API_RESOURCES: Readonly<Record<string, readonly ApiResource[]>> = {
  v1: [
    resource('configmaps', 'ConfigMap', true, READ_WRITE, { shortNames: ['cm'] }),
    resource('namespaces', 'Namespace', false, ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'], { shortNames: ['ns'] }),
    resource('pods', 'Pod', true, READ_WRITE, { shortNames: ['po'], categories: ['all'] }),
    resource('pods/attach', 'PodAttachOptions', true, CONNECT),
    resource('pods/exec', 'PodExecOptions', true, CONNECT),
    resource('pods/log', 'Pod', true, ['get']),
    resource('pods/portforward', 'PodPortForwardOptions', true, CONNECT),
    resource('services', 'Service', true, READ_WRITE, { shortNames: ['svc'], categories: ['all'] }),
  ],
  'authentication.k8s.io/v1': [
    resource('selfsubjectreviews', 'SelfSubjectReview', false, ['create']),
    resource('tokenreviews', 'TokenReview', false, ['create']),
  ],
  // Listed for discovery's sake; the sandbox authorizes nothing, so it serves none of them.
  'authorization.k8s.io/v1': [
    resource('localsubjectaccessreviews', 'LocalSubjectAccessReview', true, ['create']),
    resource('selfsubjectaccessreviews', 'SelfSubjectAccessReview', false, ['create']),
    resource('selfsubjectrulesreviews', 'SelfSubjectRulesReview', false, ['create']),
    resource('subjectaccessreviews', 'SubjectAccessReview', false, ['create']),
  ],
};

export function versionInfo(): object {
  return {
    major: '1',
    minor: '32',
    gitVersion: 'v1.32.0-meshgate-sandbox',
    gitCommit: '0000000000000000000000000000000000000000',
    gitTreeState: 'clean',
    buildDate: '2024-12-11T00:00:00Z',
    goVersion: 'go1.23.4',
    compiler: 'gc',
    platform: 'linux/amd64',
  };
}

function apiVersions(serverAddress: string): object {
  return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] };
}

function apiResourceList(groupVersion: string): object | undefined {
  const resources = API_RESOURCES[groupVersion];
  return resources && { kind: 'APIResourceList', apiVersion: 'v1', groupVersion, resources };
}

function apiGroup(name: string): object {
  const version = { groupVersion: `${name}/v1`, version: 'v1' };
  return { name, versions: [version], preferredVersion: version };
}

const GROUPS = Object.keys(API_RESOURCES)
  .filter((gv) => gv.includes('/'))
  .map((gv) => gv.split('/')[0] ?? '');

function apiGroupList(): object {
  return { kind: 'APIGroupList', apiVersion: 'v1', groups: GROUPS.map(apiGroup) };
}

function apiGroupDocument(name: string): object | undefined {
  return GROUPS.includes(name) ? { kind: 'APIGroup', apiVersion: 'v1', ...apiGroup(name) } : undefined;
}

/** The discovery document at `path` (/api, /api/v1, /apis, /apis/<group>[/<version>]), or undefined. */
export function discoveryDocument(path: string, serverAddress: string): object | undefined {
  if (path === '/api') return apiVersions(serverAddress);
  if (path === '/apis') return apiGroupList();
  if (path === '/api/v1') return apiResourceList('v1');
  const group = /^\/apis\/([^/]+)(?:\/([^/]+))?$/.exec(path);
  if (!group?.[1]) return undefined;
  return group[2] === undefined ? apiGroupDocument(group[1]) : apiResourceList(`${group[1]}/${group[2]}`);
}

export function openIdConfiguration(issuer: string, jwksUri: string, algorithms: readonly string[]): object {
  return {
    issuer,
    jwks_uri: jwksUri,
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: algorithms,
  };
}

export interface StatusDetails {
  readonly name?: string;
  readonly group?: string;
  readonly kind?: string;
  readonly causes?: readonly { readonly reason: string; readonly message: string }[];
}

/** A metav1.Status, with its fields in the API server's order. */
export function kubeStatus(code: number, reason: string, message: string, details?: StatusDetails): object {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: code < 400 ? 'Success' : 'Failure',
    message,
    reason,
    ...(details ? { details } : {}),
    code,
  };
}

export const unauthorized = (): object => kubeStatus(401, 'Unauthorized', 'Unauthorized');

export const notFound = (kind: string, name: string): object =>
  kubeStatus(404, 'NotFound', `${kind} "${name}" not found`, { name, kind });

export const pathNotFound = (): object => kubeStatus(404, 'NotFound', 'the server could not find the requested resource', {});
