import type { IncomingHttpHeaders } from 'node:http';
import { describe, expect, it } from 'vitest';
import { isTrustedByUpstreams, sanitizeRequestHeaders } from './headers.js';

const sanitized = (headers: IncomingHttpHeaders): IncomingHttpHeaders => {
  const copy = { ...headers };
  sanitizeRequestHeaders(copy);
  return copy;
};

describe('sanitizeRequestHeaders', () => {
  it.each([
    'clusterid',
    'ClusterID',
    'x-forwarded-client-cert',
    'X_Forwarded_Client_Cert',
    'x-forwarded-for',
    'x-forwarded-proto',
    'x_forwarded_host',
    'forwarded',
    'x-real-ip',
    'impersonate-user',
    'Impersonate-Group',
    'impersonate-uid',
    'impersonate-extra-scopes',
    'impersonate_user',
    'IMPERSONATE_EXTRA_FOO',
    'x-remote-user',
    'X_Remote_Group',
    'x-envoy-original-path',
  ])('removes %s, a header upstreams trust', (name) => {
    expect(isTrustedByUpstreams(name)).toBe(true);
    expect(sanitized({ [name]: 'spoofed', accept: 'application/json' })).toEqual({ accept: 'application/json' });
  });

  it.each(['keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'http2-settings', 'expect'])(
    'removes the hop-by-hop header %s',
    (name) => {
      expect(sanitized({ [name]: 'x', 'user-agent': 'kube-apiserver-admission' })).toEqual({ 'user-agent': 'kube-apiserver-admission' });
    },
  );

  it('removes headers named in Connection, in any spelling', () => {
    expect(sanitized({ connection: 'close, X-Custom, x_other', 'x-custom': '1', 'x-other': '2', keep: '3' })).toEqual({ keep: '3' });
  });

  it.each(['authorization', 'Host', 'content-length', 'clusterid', 'Impersonate-User', 'x_remote_user', 'X-Forwarded-For'])(
    'rejects a Connection header that names %s (the hop-by-hop deletion attack)',
    (name) => {
      expect(() => sanitized({ connection: `keep-alive, ${name}` })).toThrow(
        expect.objectContaining({ code: 'MG_ERR_REQUEST_HOP_BY_HOP' }) as Error,
      );
    },
  );

  it('reports the trusted headers it removed, by normalised name, every value kept', () => {
    const headers = { clusterid: 'a', ClusterID: 'b', x_forwarded_for: '10.0.0.1', accept: '*/*' };
    expect(sanitizeRequestHeaders(headers)).toEqual(
      new Map([
        ['clusterid', ['a', 'b']],
        ['x-forwarded-for', ['10.0.0.1']],
      ]),
    );
  });

  it('keeps ordinary headers and HTTP/2 pseudo-headers', () => {
    const headers = { ':path': '/inject', ':method': 'POST', 'content-type': 'application/json', authorization: 'Bearer x' };
    expect(sanitized(headers)).toEqual(headers);
  });
});
