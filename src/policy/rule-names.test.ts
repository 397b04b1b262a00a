/** Which rule allowed a request, as its access-log line names it: by position, or `default`. */
import { describe, expect, it } from 'vitest';
import type { Identity } from '../auth/identity.js';
import type { KubeAccessRule } from '../config/schema.js';
import { createMethodPolicy } from '../planes/xds/requests.js';
import { createAuthorizer } from './authorize.js';
import { parseKubeRequest } from './kube-request.js';
import { createKubeDecision } from './kube-rules.js';

const token = (subject: string): Identity => ({ tenant: 'acme', method: 'token', subject, uris: [], cluster: 'acme-east' });
const cert = (uri: string): Identity => ({ tenant: 'acme', method: 'clientCertificate', subject: 'client', uris: [uri] });

describe('the rule that allowed', () => {
  it.each([
    ['no rules', undefined, token('x'), 'default'],
    ['the only rule', [{ method: 'token' as const }], token('x'), 'access.debug[0]'],
    ['the first of two that match', [{ subject: 'x' }, { method: 'token' as const }], token('x'), 'access.debug[0]'],
    ['a later rule', [{ method: 'token' as const }, { uri: 'spiffe://acme/*' }], cert('spiffe://acme/ns/a'), 'access.debug[1]'],
  ])('debug, webhook: %s → its name', (_, rules, identity, expected) => {
    expect(createAuthorizer('acme', rules, 'debug')(identity)).toBe(expected);
  });

  it.each([
    ['no rules, ADS', undefined, token('x'), 'StreamAggregatedResources', 'default'],
    ['the first rule that grants the method', [{ method: 'token' as const, methods: ['StreamAggregatedResources' as const] }, { method: 'token' as const }], token('x'), 'CreateCertificate', 'access.xds[1]'],
    ['a rule naming CreateCertificate for a certificate', [{ uri: '*' }, { uri: 'spiffe://*', methods: ['CreateCertificate' as const] }], cert('spiffe://acme/x'), 'CreateCertificate', 'access.xds[1]'],
  ])('xds: %s → its name', (_, rules, identity, method, expected) => {
    expect(createMethodPolicy(rules)(identity, `/istio.v1.auth.IstioCertificateService/${method}`)).toBe(expected);
  });

  it('kube: the first rule whose identity matches and whose allow permits, never one that only matched', () => {
    const rules: KubeAccessRule[] = [
      { subject: 'kiali', profiles: ['kiali-readonly'] },
      { subject: 'istiod', allow: [{ verbs: ['get'], apiGroups: [''], resources: ['secrets'] }] },
      { method: 'token', profiles: ['istiod'] },
    ];
    const decide = createKubeDecision(rules);
    const pods = parseKubeRequest('GET', '/api/v1/namespaces/bookinfo/pods', undefined);
    const secrets = parseKubeRequest('GET', '/api/v1/namespaces/istio-system/secrets/x', undefined);
    expect(decide(token('kiali'), 'acme-east', pods)).toBe('access.kube[0]');
    expect(decide(token('istiod'), 'acme-east', pods)).toBe('access.kube[2]');
    expect(decide(token('istiod'), 'acme-east', secrets)).toBe('access.kube[1]');
    expect(() => decide(cert('spiffe://x'), 'acme-east', pods)).toThrow(expect.objectContaining({ code: 'MG_ERR_KUBE_FORBIDDEN' }) as Error);
  });
});
