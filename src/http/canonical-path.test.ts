import { describe, expect, it } from 'vitest';
import { MeshgateError } from '../errors.js';
import { isCanonicalPath, nonCanonicalReason, parseRequestTarget, queryParam } from './canonical-path.js';

describe('isCanonicalPath', () => {
  it.each([
    '/',
    '/inject',
    '/inject/',
    '/inject/cluster/acme-east/net/network1',
    '/inject/:ENV:cluster=acme-east:ENV:net=network1',
    '/k/Ab-_09/validate',
    '/debug/config_dump',
    '/api/v1/namespaces/a%20b',
    '/x/%25',
  ])('accepts %s', (path) => {
    expect(nonCanonicalReason(path)).toBeUndefined();
  });

  it.each([
    ['', 'does not start with "/"'],
    ['*', 'does not start with "/"'],
    ['http://acme/inject', 'does not start with "/"'],
    ['//inject', 'contains "//"'],
    ['/inject//cluster', 'contains "//"'],
    ['/inject/../validate', 'contains a dot segment'],
    ['/inject/./x', 'contains a dot segment'],
    ['/..', 'contains a dot segment'],
    ['/inject/%2e%2e/validate', 'contains a malformed or lower-case percent-encoding'],
    ['/inject/%2E%2E/validate', 'encodes a character that needs no encoding'],
    ['/inject%2Fcluster', 'encodes a path separator'],
    ['/inject%2fcluster', 'contains a malformed or lower-case percent-encoding'],
    ['/inject%5Ccluster', 'encodes a path separator'],
    ['/inject\\cluster', 'contains "\\"'],
    ['/inject%00', 'encodes a control character'],
    ['/inject\u0000', 'contains a control, space or non-ASCII character'],
    ['/inject\t', 'contains a control, space or non-ASCII character'],
    ['/inject x', 'contains a control, space or non-ASCII character'],
    ['/inject\u00e9', 'contains a control, space or non-ASCII character'],
    ['/inject#frag', 'contains a fragment'],
    ['/%41dmin', 'encodes a character that needs no encoding'],
    ['/inject%', 'contains a malformed or lower-case percent-encoding'],
    ['/inject%G1', 'contains a malformed or lower-case percent-encoding'],
  ])('rejects %j (%s)', (path, reason) => {
    expect(nonCanonicalReason(path)).toBe(reason);
    expect(isCanonicalPath(path)).toBe(false);
  });
});

describe('parseRequestTarget', () => {
  it('keeps the query exactly as received', () => {
    expect(parseRequestTarget('/inject/cluster/c?timeout=10s&x=%2F')).toEqual({
      path: '/inject/cluster/c',
      query: 'timeout=10s&x=%2F',
    });
    expect(parseRequestTarget('/validate')).toEqual({ path: '/validate', query: undefined });
  });

  it('rejects a non-canonical path with MG_ERR_REQUEST_PATH_NOT_CANONICAL', () => {
    expect(() => parseRequestTarget('/a/../b?x=1')).toThrow(
      expect.objectContaining({ code: 'MG_ERR_REQUEST_PATH_NOT_CANONICAL' }) as MeshgateError,
    );
  });

  it('rejects control characters smuggled in the query', () => {
    expect(() => parseRequestTarget('/validate?x=\u0000')).toThrow(MeshgateError);
  });
});

describe('queryParam', () => {
  it('reads one value and refuses repeats', () => {
    expect(queryParam('timeout=10s', 'timeout')).toBe('10s');
    expect(queryParam(undefined, 'timeout')).toBeUndefined();
    expect(() => queryParam('timeout=1s&timeout=30s', 'timeout')).toThrow(MeshgateError);
  });
});
