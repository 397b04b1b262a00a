import { describe, expect, it } from 'vitest';
import { isLongRunning, parseKubeRequest } from './kube-request.js';

describe('parseKubeRequest reads a request as the API server does', () => {
  it.each([
    ['GET', '/api/v1/namespaces/bookinfo/pods', undefined, { verb: 'list', apiGroup: '', apiVersion: 'v1', namespace: 'bookinfo', resource: 'pods', name: '' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods', 'watch=1&resourceVersion=10', { verb: 'watch', resource: 'pods', namespace: 'bookinfo' }],
    ['GET', '/api/v1/pods', 'watch=true', { verb: 'watch', resource: 'pods', namespace: '' }],
    ['GET', '/api/v1/pods', 'watch=false', { verb: 'list' }],
    ['GET', '/api/v1/pods', 'watch=0', { verb: 'list' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods', 'fieldSelector=metadata.name%3Dp1', { verb: 'list', name: 'p1' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods/p1', undefined, { verb: 'get', name: 'p1', subresource: '' }],
    ['HEAD', '/api/v1/namespaces/bookinfo/pods/p1', undefined, { verb: 'get' }],
    ['GET', '/api/v1/watch/namespaces/bookinfo/pods', undefined, { verb: 'watch', resource: 'pods', namespace: 'bookinfo' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods/p1/log', 'follow=true', { verb: 'get', resource: 'pods', subresource: 'log', name: 'p1' }],
    ['POST', '/api/v1/namespaces/bookinfo/pods/p1/exec', 'command=ls', { verb: 'create', subresource: 'exec' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods/p1/exec', 'command=ls', { verb: 'create', subresource: 'exec' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods/p1/portforward', undefined, { verb: 'create', subresource: 'portforward' }],
    ['POST', '/api/v1/namespaces/bookinfo/pods/p1/attach', undefined, { verb: 'create', subresource: 'attach' }],
    ['GET', '/api/v1/namespaces/bookinfo/pods/p1/proxy/metrics/x', undefined, { verb: 'get', subresource: 'proxy', name: 'p1' }],
    ['GET', '/api/v1/proxy/namespaces/bookinfo/pods/p1/metrics', undefined, { verb: 'proxy', resource: 'pods', name: 'p1', subresource: '' }],
    ['DELETE', '/api/v1/namespaces/bookinfo/pods', undefined, { verb: 'deletecollection' }],
    ['DELETE', '/api/v1/namespaces/bookinfo/pods/p1', undefined, { verb: 'delete', name: 'p1' }],
    ['PUT', '/api/v1/namespaces/istio-system/configmaps/istio', undefined, { verb: 'update', resource: 'configmaps' }],
    ['PATCH', '/apis/apps/v1/namespaces/bookinfo/deployments/d1/scale', undefined, { verb: 'patch', apiGroup: 'apps', subresource: 'scale' }],
    ['GET', '/apis/networking.istio.io/v1/virtualservices', undefined, { verb: 'list', apiGroup: 'networking.istio.io', apiVersion: 'v1' }],
    ['POST', '/apis/authentication.k8s.io/v1/tokenreviews', undefined, { verb: 'create', apiGroup: 'authentication.k8s.io', resource: 'tokenreviews' }],
    ['GET', '/api/v1/namespaces/bookinfo', undefined, { verb: 'get', resource: 'namespaces', name: 'bookinfo', namespace: 'bookinfo' }],
    ['GET', '/api/v1/namespaces', undefined, { verb: 'list', resource: 'namespaces', namespace: '' }],
    ['PUT', '/api/v1/namespaces/bookinfo/finalize', undefined, { verb: 'update', resource: 'namespaces', subresource: 'finalize', name: 'bookinfo' }],
  ])('%s %s?%s', (method, path, query, expected) => {
    expect(parseKubeRequest(method, path, query)).toMatchObject({ resourceRequest: true, ...expected });
  });

  it.each([
    ['GET', '/version'],
    ['GET', '/api'],
    ['GET', '/api/v1'],
    ['GET', '/apis'],
    ['GET', '/apis/apps/v1'],
    ['GET', '/openapi/v3'],
    ['GET', '/'],
  ])('%s %s is a non-resource request', (method, path) => {
    expect(parseKubeRequest(method, path, undefined)).toMatchObject({ resourceRequest: false, verb: method.toLowerCase(), path });
  });

  it('names no verb for /api/v1/watch alone, so that no rule can allow it', () => {
    expect(parseKubeRequest('GET', '/api/v1/watch', undefined).verb).toBe('');
  });

  it.each([
    ['GET', '/api/v1/pods', 'watch=1', true],
    ['GET', '/api/v1/pods', undefined, false],
    ['GET', '/api/v1/namespaces/a/pods/p/log', 'follow=true', true],
    ['GET', '/api/v1/namespaces/a/pods/p/log', undefined, false],
    ['POST', '/api/v1/namespaces/a/pods/p/exec', undefined, true],
    ['GET', '/api/v1/namespaces/a/pods/p/portforward', undefined, true],
    ['GET', '/version', undefined, false],
  ])('%s %s?%s is long-running: %s', (method, path, query, expected) => {
    expect(isLongRunning(parseKubeRequest(method, path, query), query)).toBe(expected);
  });
});
