/**
 * Header hygiene, the first thing done to every request on every HTTP plane, before routing:
 *
 *  1. a `Connection:` header that names a header meshgate protects is rejected (the hop-by-hop
 *     trick: a compliant hop would delete the identity header meshgate is about to set);
 *  2. headers named in `Connection:` and the hop-by-hop headers are removed;
 *  3. headers that upstreams trust (`clusterid`, `x-forwarded-client-cert`, `impersonate-*`,
 *     `x-forwarded-*`, `x-remote-*`, …) are removed, in any case and any `_`/`-` spelling.
 *
 * Only after that does a plane set meshgate's own headers, on the same object, before forwarding.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { MeshgateError } from '../errors.js';

/** Exact names upstreams trust, after normalisation. */
const TRUSTED_NAMES = new Set(['clusterid', 'x-forwarded-client-cert', 'forwarded', 'x-real-ip']);
/** Prefixes upstreams trust, after normalisation. */
const TRUSTED_PREFIXES = ['impersonate-', 'x-forwarded-', 'x-remote-', 'x-envoy-'];

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  'http2-settings',
  // Not hop-by-hop, but meshgate answers `Expect: 100-continue` itself and forwards a complete body.
  'expect',
]);

/** Headers meshgate sets or relies on: naming one in `Connection:` is an attack, not a request. */
const SET_BY_MESHGATE = new Set(['authorization', 'host', 'content-length', 'content-type', 'x-request-id']);

/** Lower case, `_` as `-`: how a lenient upstream might read the name. */
export function normalizeHeaderName(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

export function isTrustedByUpstreams(name: string): boolean {
  const normalized = normalizeHeaderName(name);
  return TRUSTED_NAMES.has(normalized) || TRUSTED_PREFIXES.some((prefix) => normalized.startsWith(prefix));
}

function isProtected(normalized: string): boolean {
  return SET_BY_MESHGATE.has(normalized) || isTrustedByUpstreams(normalized);
}

/**
 * What a client claimed in headers upstreams trust, by normalised name. Never forwarded; a plane
 * may judge a claim (the xDS plane refuses a `clusterid` that is not the caller's).
 */
export type StrippedHeaders = ReadonlyMap<string, readonly string[]>;

/** Removes, in place, everything listed above, and returns the trusted ones it removed. Throws MG_ERR_REQUEST_HOP_BY_HOP. */
export function sanitizeRequestHeaders(headers: IncomingHttpHeaders): StrippedHeaders {
  const stripped = new Map<string, string[]>();
  const named = new Set<string>();
  const connection: string | string[] | undefined = headers.connection;
  const values: string[] = Array.isArray(connection) ? connection : connection === undefined ? [] : [connection];
  for (const value of values) {
    for (const token of value.split(',')) {
      const normalized = normalizeHeaderName(token.trim());
      if (normalized === '') continue;
      if (isProtected(normalized)) {
        throw new MeshgateError('MG_ERR_REQUEST_HOP_BY_HOP', { detail: `Connection names ${normalized}` });
      }
      named.add(normalized);
    }
  }
  for (const name of Object.keys(headers)) {
    if (name.startsWith(':')) continue;
    const normalized = normalizeHeaderName(name);
    const trusted = isTrustedByUpstreams(normalized);
    if (trusted) {
      const value = headers[name];
      const values = Array.isArray(value) ? value : value === undefined ? [] : [value];
      stripped.set(normalized, [...(stripped.get(normalized) ?? []), ...values]);
    }
    if (HOP_BY_HOP.has(normalized) || named.has(normalized) || trusted) {
      // eslint-disable-next-line @typescript-eslint/no-dynamic-delete -- removing by computed name is the point
      delete headers[name];
    }
  }
  return stripped;
}

/** Response headers that must not cross a hop (and that HTTP/2 forbids outright). */
const RESPONSE_HOP_BY_HOP = new Set([
  'connection',
  'te',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'trailer',
  'proxy-authenticate',
  'http2-settings',
]);

export function isHopByHopResponseHeader(name: string): boolean {
  return RESPONSE_HOP_BY_HOP.has(name.toLowerCase());
}
