/**
 * Canonical request paths. A path is parsed once; what is authorized is exactly what is forwarded,
 * so a path that an upstream could read differently from meshgate is rejected, never "fixed":
 * dot segments, `//`, `\`, NUL and control characters, fragments, and percent-encodings that
 * decode to something else worth matching (`%2e`, `%2f`, `%5c`, `%00`, encoded letters, lower-case
 * hex).
 */
import { MeshgateError } from '../errors.js';

export interface RequestTarget {
  /** The path, exactly as received, checked canonical. */
  readonly path: string;
  /** The query without `?`, exactly as received; undefined when there was none. */
  readonly query: string | undefined;
}

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** Why a path is not canonical, or undefined when it is. */
export function nonCanonicalReason(path: string): string | undefined {
  if (!path.startsWith('/')) return 'does not start with "/"';
  if (path.includes('//')) return 'contains "//"';
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i);
    const char = path[i];
    if (code <= 0x20 || code >= 0x7f) return 'contains a control, space or non-ASCII character';
    if (char === '\\') return 'contains "\\"';
    if (char === '#') return 'contains a fragment';
    if (char === '%') {
      const hex = path.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) return 'contains a malformed or lower-case percent-encoding';
      const decoded = parseInt(hex, 16);
      if (decoded < 0x20 || decoded === 0x7f) return 'encodes a control character';
      if (decoded === 0x2f || decoded === 0x5c) return 'encodes a path separator';
      if (UNRESERVED.test(String.fromCharCode(decoded))) return 'encodes a character that needs no encoding';
      i += 2;
    }
  }
  for (const segment of path.split('/')) {
    if (segment === '.' || segment === '..') return 'contains a dot segment';
  }
  return undefined;
}

export function isCanonicalPath(path: string): boolean {
  return nonCanonicalReason(path) === undefined;
}

/** Splits a request target into path and query. Throws MG_ERR_REQUEST_PATH_NOT_CANONICAL. */
export function parseRequestTarget(target: string): RequestTarget {
  const mark = target.indexOf('?');
  const path = mark === -1 ? target : target.slice(0, mark);
  const query = mark === -1 ? undefined : target.slice(mark + 1);
  const reason = nonCanonicalReason(path);
  if (reason !== undefined) {
    throw new MeshgateError('MG_ERR_REQUEST_PATH_NOT_CANONICAL', { message: `request path ${reason}` });
  }
  // The query is passed on untouched, but it may not smuggle what the path may not.
  if (query !== undefined && hasControlOrFragment(query)) {
    throw new MeshgateError('MG_ERR_REQUEST_PATH_NOT_CANONICAL', { message: 'request query contains a control character or fragment' });
  }
  return { path, query };
}

function hasControlOrFragment(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f || code === 0x23) return true;
  }
  return false;
}

/** The value of a query parameter, decoded; undefined when absent. Repeats are an error. */
export function queryParam(query: string | undefined, name: string): string | undefined {
  if (query === undefined) return undefined;
  const values = new URLSearchParams(query).getAll(name);
  if (values.length > 1) {
    throw new MeshgateError('MG_ERR_REQUEST_PATH_NOT_CANONICAL', { message: `query parameter "${name}" is repeated` });
  }
  return values[0];
}
