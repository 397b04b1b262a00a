import { describe, expect, it } from 'vitest';
import type { Identity } from '../auth/identity.js';
import { compileGlob, createAuthorizer } from './authorize.js';

const token = (subject: string, cluster = 'acme-east', tenant = 'acme'): Identity => ({ tenant, method: 'token', subject, uris: [], cluster });
const cert = (uris: string[], tenant = 'acme'): Identity => ({ tenant, method: 'clientCertificate', subject: 'client', uris });

describe('createAuthorizer', () => {
  it('always refuses an identity of another tenant, whatever the rules', () => {
    for (const rules of [undefined, [{ subject: '*' }]]) {
      expect(() => createAuthorizer('acme', rules, 'debug')(token('system:serviceaccount:istio-system:kiali', 'globex-main', 'globex'))).toThrow(
        expect.objectContaining({ code: 'MG_ERR_AUTHZ_TENANT_MISMATCH' }) as Error,
      );
    }
  });

  it('allows any identity of the tenant when the plane has no rules', () => {
    expect(() => createAuthorizer('acme', undefined, 'debug')(token('anyone'))).not.toThrow();
  });

  it('allows nobody when the plane has an empty rule list', () => {
    expect(() => createAuthorizer('acme', [], 'debug')(token('anyone'))).toThrow(expect.objectContaining({ code: 'MG_ERR_AUTHZ_DENIED' }) as Error);
  });

  it.each([
    [{ method: 'token' as const }, token('x'), true],
    [{ method: 'clientCertificate' as const }, token('x'), false],
    [{ subject: 'system:serviceaccount:istio-system:*' }, token('system:serviceaccount:istio-system:kiali'), true],
    [{ subject: 'system:serviceaccount:istio-system:*' }, token('system:serviceaccount:default:kiali'), false],
    [{ cluster: 'acme-west' }, token('x', 'acme-east'), false],
    [{ cluster: 'acme-east', method: 'token' as const }, token('x', 'acme-east'), true],
    [{ uri: 'spiffe://acme.example/ns/kube-system/*' }, cert(['spiffe://acme.example/ns/kube-system/sa/apiserver']), true],
    [{ uri: 'spiffe://acme.example/ns/kube-system/*' }, cert(['spiffe://acme.example/ns/default/sa/x']), false],
    [{ uri: 'spiffe://acme.example/*' }, token('spiffe://acme.example/x'), false],
  ])('rule %j on %j → %s', (rule, identity, allowed) => {
    const authorize = createAuthorizer('acme', [rule], 'debug');
    if (allowed) expect(() => authorize(identity)).not.toThrow();
    else expect(() => authorize(identity)).toThrow(expect.objectContaining({ code: 'MG_ERR_AUTHZ_DENIED' }) as Error);
  });
});

describe('compileGlob', () => {
  it('treats only * as special', () => {
    expect(compileGlob('a.b*').test('a.bcd')).toBe(true);
    expect(compileGlob('a.b*').test('aXbcd')).toBe(false);
    expect(compileGlob('(x)+[y]').test('(x)+[y]')).toBe(true);
    expect(compileGlob('*').test('anything\nat all')).toBe(true);
  });
});
