import { describe, expect, it } from 'vitest';
import { CLUSTER_ENV, parseWebhookPath } from './paths.js';

describe('parseWebhookPath', () => {
  it.each([
    ['/inject', 'inject', undefined, undefined],
    ['/inject/', 'inject', undefined, undefined],
    ['/validate', 'validate', undefined, undefined],
    ['/validate/', 'validate', undefined, undefined],
    ['/inject/cluster/acme-east/net/network1', 'inject', 'acme-east', 'network1'],
    ['/inject/net/network1/cluster/acme-east', 'inject', 'acme-east', 'network1'],
    ['/inject/cluster/acme-east/net/network1/', 'inject', 'acme-east', 'network1'],
    ['/inject/:ENV:cluster=acme-east:ENV:net=network1', 'inject', 'acme-east', 'network1'],
  ])('%s', (path, kind, cluster, network) => {
    const parsed = parseWebhookPath(path);
    expect(parsed.kind).toBe(kind);
    expect(parsed.env.get(CLUSTER_ENV)).toBe(cluster);
    expect(parsed.clusters).toEqual(cluster === undefined ? [] : [cluster]);
    expect(parsed.env.get('ISTIO_META_NETWORK')).toBe(network);
    expect(parsed.forwardPath).toBe(path);
    expect(parsed.pathKey).toBeUndefined();
  });

  it('reads any key as istiod does: upper-cased into an env name, so the cluster cannot hide', () => {
    expect(parseWebhookPath('/inject/istio_meta_cluster_id/globex-main').env.get(CLUSTER_ENV)).toBe('globex-main');
    expect(parseWebhookPath('/inject/:ENV:ISTIO_META_CLUSTER_ID=globex-main').env.get(CLUSTER_ENV)).toBe('globex-main');
    expect(parseWebhookPath('/inject/rootpage/x').env.get('ROOTPAGE')).toBe('x');
  });

  it('names every cluster istiod may read: "--slash--" as written and decoded', () => {
    expect(parseWebhookPath('/inject/cluster/a--slash--b').clusters).toEqual(['a--slash--b', 'a/b']);
    expect(parseWebhookPath('/inject/:ENV:cluster=a--slash--b').clusters).toEqual(['a--slash--b', 'a/b']);
  });

  it.each(['/inject/%C4%B1stio_meta_cluster_id/globex-main', '/inject/cluster/acme%2Deast', '/k/abc%41/inject', '/validate%3F'])(
    'refuses percent-encoding in %s: istiod reads the decoded path',
    (path) => {
      expect(() => parseWebhookPath(path)).toThrow(expect.objectContaining({ code: 'MG_ERR_REQUEST_PATH_NOT_CANONICAL' }) as Error);
    },
  );

  it('strips a /k/<key> prefix and reports the key', () => {
    const parsed = parseWebhookPath('/k/s3cr3t-key_0123456789abcdef/inject/cluster/globex-main/net/n1');
    expect(parsed.pathKey).toBe('s3cr3t-key_0123456789abcdef');
    expect(parsed.forwardPath).toBe('/inject/cluster/globex-main/net/n1');
    expect(parsed.env.get(CLUSTER_ENV)).toBe('globex-main');
  });

  it.each([
    '/injectx',
    '/inject/cluster',
    '/inject/cluster/a/net',
    '/inject/cluster/a/cluster/b',
    '/inject/cluster/a/ISTIO_META_CLUSTER_ID/b',
    '/inject/:ENV:cluster=a:ENV:cluster=b',
    '/inject/:ENV:=a',
    '/inject/:ENV:cluster',
    '/validate/x',
    '/k/key',
    '/k/key/other',
    '/debug/syncz',
  ])('rejects %s, which istiod would read differently or not at all', (path) => {
    expect(() => parseWebhookPath(path)).toThrow(expect.objectContaining({ code: 'MG_ERR_ROUTE_NOT_FOUND' }) as Error);
  });
});
