import { describe, expect, it } from 'vitest';
import type { Identity } from '../auth/identity.js';
import type { KubeAccessRule } from '../config/schema.js';
import { parseKubeRequest } from './kube-request.js';
import { createKubeDecision } from './kube-rules.js';

const token = (subject: string, cluster = 'east'): Identity => ({ tenant: 'acme', method: 'token', subject, uris: [], cluster });
const istiod = token('system:serviceaccount:istio-system:istiod');
const kiali = token('system:serviceaccount:istio-system:kiali');
const operator: Identity = { tenant: 'acme', method: 'clientCertificate', subject: 'ops', uris: ['spiffe://acme/ns/ops/sa/o'] };

const rules: KubeAccessRule[] = [
  { subject: 'system:serviceaccount:istio-system:istiod', profiles: ['istiod'] },
  { subject: 'system:serviceaccount:istio-system:kiali', profiles: ['kiali-readonly'] },
  {
    method: 'clientCertificate',
    uri: 'spiffe://acme/ns/ops/*',
    allow: [{ verbs: ['*'], apiGroups: ['*'], resources: ['*'] }],
    deny: [{ verbs: ['*'], apiGroups: [''], resources: ['secrets'] }],
  },
  { cluster: 'west', method: 'clientCertificate', deny: [{ verbs: ['create'], apiGroups: [''], resources: ['pods/exec'] }] },
];
const decide = createKubeDecision(rules);
const attempt = (identity: Identity, method: string, path: string, query?: string, cluster = 'east'): string => {
  try {
    decide(identity, cluster, parseKubeRequest(method, path, query));
    return 'allow';
  } catch (err) {
    return (err as { code: string }).code;
  }
};

describe("the kube plane's tenant rules", () => {
  it.each([
    [istiod, 'GET', '/api/v1/pods', 'watch=1', 'allow'],
    [istiod, 'GET', '/apis/discovery.k8s.io/v1/endpointslices', undefined, 'allow'],
    [istiod, 'GET', '/apis/networking.istio.io/v1/namespaces/a/virtualservices', 'watch=true', 'allow'],
    [istiod, 'POST', '/apis/authentication.k8s.io/v1/tokenreviews', undefined, 'allow'],
    [istiod, 'POST', '/apis/authorization.k8s.io/v1/subjectaccessreviews', undefined, 'allow'],
    [istiod, 'PUT', '/api/v1/namespaces/bookinfo/configmaps/istio-ca-root-cert', undefined, 'allow'],
    [istiod, 'PATCH', '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/istio-sidecar-injector', undefined, 'allow'],
    [istiod, 'GET', '/version', undefined, 'allow'],
    [istiod, 'GET', '/apis/apps/v1', undefined, 'allow'],
    [istiod, 'DELETE', '/api/v1/namespaces/bookinfo/pods/p1', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [istiod, 'POST', '/api/v1/namespaces/bookinfo/pods/p1/exec', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [istiod, 'DELETE', '/api/v1/namespaces/bookinfo/configmaps', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [istiod, 'GET', '/apis/apps/v1/deployments', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [kiali, 'GET', '/apis/apps/v1/deployments', undefined, 'allow'],
    [kiali, 'GET', '/api/v1/namespaces/bookinfo/pods/p1/log', undefined, 'allow'],
    [kiali, 'GET', '/api/v1/secrets', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [kiali, 'PATCH', '/apis/networking.istio.io/v1/namespaces/a/virtualservices/v', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [kiali, 'GET', '/api/v1/namespaces/a/pods/p/portforward', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [operator, 'GET', '/api/v1/namespaces/a/pods/p/exec', 'command=ls', 'allow'],
    [operator, 'GET', '/api/v1/namespaces/a/secrets/s', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [operator, 'GET', '/version', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
    [token('system:serviceaccount:default:default'), 'GET', '/api/v1/pods', undefined, 'MG_ERR_KUBE_FORBIDDEN'],
  ])('%o %s %s?%s → %s', (identity, method, path, query, expected) => {
    expect(attempt(identity, method, path, query)).toBe(expected);
  });

  it('lets a deny of one rule win over an allow of another, per cluster', () => {
    expect(attempt(operator, 'POST', '/api/v1/namespaces/a/pods/p/exec', undefined, 'east')).toBe('allow');
    expect(attempt(operator, 'POST', '/api/v1/namespaces/a/pods/p/exec', undefined, 'west')).toBe('MG_ERR_KUBE_FORBIDDEN');
  });

  it('matches namespaces and names exactly, and never a cluster-scoped request to a namespaced rule', () => {
    const scoped = createKubeDecision([{ method: 'token', allow: [{ verbs: ['get'], apiGroups: [''], resources: ['pods'], namespaces: ['a'], names: ['p'] }] }]);
    const run = (path: string): boolean => {
      try {
        scoped(istiod, 'east', parseKubeRequest('GET', path, undefined));
        return true;
      } catch {
        return false;
      }
    };
    expect(run('/api/v1/namespaces/a/pods/p')).toBe(true);
    expect(run('/api/v1/namespaces/a/pods/q')).toBe(false);
    expect(run('/api/v1/namespaces/b/pods/p')).toBe(false);
    expect(run('/api/v1/namespaces/a/pods/p/log')).toBe(false);
  });

  it('words a denial as the API server does, so kubectl reads it naturally', () => {
    expect(() => decide(kiali, 'east', parseKubeRequest('GET', '/api/v1/namespaces/a/secrets', undefined))).toThrow(
      /^secrets is forbidden: User "system:serviceaccount:istio-system:kiali" cannot list resource "secrets" in API group "" in the namespace "a"/,
    );
  });
});
