/**
 * The kube plane's decision: may this identity make this Kubernetes request on this cluster. A
 * tenant's `access.kube` rules each match identities (method, subject, uri, cluster, as on other
 * planes) and carry profiles, allow rules and deny rules shaped like RBAC PolicyRules. Every rule
 * whose identity part matches contributes; a matching deny wins over any allow; nothing matching
 * means no. The cluster's API server still runs its own RBAC afterwards: this is the tenant's
 * policy in front of it, not a replacement.
 */
import type { Identity } from '../auth/identity.js';
import type { KubeAccessRule, KubePolicyRule, KubeProfile } from '../config/schema.js';
import { MeshgateError } from '../errors.js';
import { compileIdentityMatch, ruleName } from './authorize.js';
import { describeKubeRequest, type KubeRequest } from './kube-request.js';

const READ = ['get', 'list', 'watch'];
const ISTIO_GROUPS = [
  'config.istio.io',
  'security.istio.io',
  'networking.istio.io',
  'authentication.istio.io',
  'rbac.istio.io',
  'telemetry.istio.io',
  'extensions.istio.io',
];
const DISCOVERY: KubePolicyRule = { verbs: ['get'], nonResourceURLs: ['/api', '/api/*', '/apis', '/apis/*', '/version', '/openapi/*'] };

/**
 * What istiod does on a remote cluster (its istio-reader and istiod-remote roles): read the
 * mesh's resources, review tokens and access, keep its configmaps and patch its webhooks.
 */
const ISTIOD: readonly KubePolicyRule[] = [
  DISCOVERY,
  {
    verbs: READ,
    apiGroups: [''],
    resources: ['endpoints', 'pods', 'services', 'nodes', 'replicationcontrollers', 'namespaces', 'secrets', 'configmaps'],
  },
  { verbs: READ, apiGroups: [...ISTIO_GROUPS, 'gateway.networking.k8s.io'], resources: ['*'] },
  { verbs: READ, apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'] },
  { verbs: READ, apiGroups: ['apps'], resources: ['replicasets'] },
  { verbs: READ, apiGroups: ['apiextensions.k8s.io'], resources: ['customresourcedefinitions'] },
  { verbs: [...READ, 'create', 'delete'], apiGroups: ['multicluster.x-k8s.io'], resources: ['serviceimports', 'serviceexports'] },
  { verbs: ['create'], apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'] },
  { verbs: ['create'], apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'] },
  { verbs: ['create', 'update', 'patch'], apiGroups: [''], resources: ['configmaps'] },
  {
    verbs: [...READ, 'update', 'patch'],
    apiGroups: ['admissionregistration.k8s.io'],
    resources: ['mutatingwebhookconfigurations', 'validatingwebhookconfigurations'],
  },
];

/** What a view-only Kiali reads: workloads, networking and Istio config, never secrets, never writes. */
const KIALI_READONLY: readonly KubePolicyRule[] = [
  DISCOVERY,
  {
    verbs: READ,
    apiGroups: [''],
    resources: ['namespaces', 'pods', 'pods/log', 'services', 'endpoints', 'configmaps', 'replicationcontrollers'],
  },
  { verbs: READ, apiGroups: ['apps'], resources: ['deployments', 'replicasets', 'statefulsets', 'daemonsets'] },
  { verbs: READ, apiGroups: ['batch'], resources: ['jobs', 'cronjobs'] },
  { verbs: READ, apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'] },
  { verbs: READ, apiGroups: [...ISTIO_GROUPS, 'gateway.networking.k8s.io', 'gateway.networking.x-k8s.io'], resources: ['*'] },
  { verbs: ['create'], apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews', 'selfsubjectreviews'] },
  { verbs: ['create'], apiGroups: ['authorization.k8s.io'], resources: ['selfsubjectaccessreviews', 'selfsubjectrulesreviews'] },
];

export const KUBE_PROFILE_RULES: Readonly<Record<KubeProfile, readonly KubePolicyRule[]>> = {
  istiod: ISTIOD,
  'kiali-readonly': KIALI_READONLY,
};

/** Throws unless allowed; returns the rule whose allow (or profile) let the request through: `access.kube[i]`. */
export type KubeDecision = (identity: Identity, cluster: string, request: KubeRequest) => string;

export function createKubeDecision(rules: readonly KubeAccessRule[]): KubeDecision {
  const compiled = rules.map((rule, index) => ({
    name: ruleName('kube', index),
    // `cluster` is the cluster the request goes to (a certificate names none of its own).
    matches: compileIdentityMatch(rule),
    allow: [...(rule.profiles ?? []).flatMap((p) => KUBE_PROFILE_RULES[p]), ...(rule.allow ?? [])].map(compilePolicyRule),
    deny: (rule.deny ?? []).map(compilePolicyRule),
  }));
  return (identity, cluster, request) => {
    const applicable = compiled.filter((rule) => rule.matches(identity, cluster));
    const denied = applicable.some((rule) => rule.deny.some((permits) => permits(request)));
    const allowedBy = denied ? undefined : applicable.find((rule) => rule.allow.some((permits) => permits(request)));
    if (!allowedBy) {
      throw new MeshgateError('MG_ERR_KUBE_FORBIDDEN', {
        message: `${forbiddenSubject(request)}: User "${identity.subject}" cannot ${describeKubeRequest(request)} through meshgate`,
        detail: denied ? 'a deny rule matched' : 'no allow rule matched',
      });
    }
    return allowedBy.name;
  };
}

function forbiddenSubject(request: KubeRequest): string {
  if (!request.resourceRequest) return 'forbidden';
  const kind = request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`;
  return request.name === '' ? `${kind} is forbidden` : `${kind} "${request.name}" is forbidden`;
}

/** RBAC's matching: `*` for all; `pods/*` for every subresource of pods; `/apis/*` as a path prefix. */
export function compilePolicyRule(rule: KubePolicyRule): (request: KubeRequest) => boolean {
  const has = (list: readonly string[] | undefined, value: string): boolean => list === undefined || list.includes('*') || list.includes(value);
  const verbs = rule.verbs;
  if (rule.nonResourceURLs !== undefined) {
    const urls = rule.nonResourceURLs;
    return (request) =>
      !request.resourceRequest &&
      has(verbs, request.verb) &&
      urls.some((url) => url === '*' || url === request.path || (url.endsWith('*') && request.path.startsWith(url.slice(0, -1))));
  }
  return (request) => {
    if (!request.resourceRequest || !has(verbs, request.verb) || !has(rule.apiGroups, request.apiGroup)) return false;
    if (!has(rule.namespaces, request.namespace)) return false;
    if (rule.names !== undefined && !rule.names.includes(request.name)) return false;
    const resource = request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`;
    const resources = rule.resources ?? [];
    return (
      resources.includes('*') ||
      resources.includes(resource) ||
      (request.subresource !== '' && resources.includes(`${request.resource}/*`)) ||
      (request.subresource !== '' && resources.includes(`*/${request.subresource}`))
    );
  };
}
