/**
 * The headers a plane sends upstream: the caller's sanitized headers, minus what meshgate owns
 * (pseudo-headers, Host, Authorization, Content-Length), plus meshgate's own, set last and
 * replacing whatever was there.
 */
import type { OutgoingHttpHeaders } from 'node:http';
import type { Exchange } from '../listener/exchange.js';

const OWNED = new Set(['host', 'authorization', 'content-length']);

export function outboundHeaders(exchange: Exchange, own: Readonly<OutgoingHttpHeaders>): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(exchange.headers)) {
    if (name.startsWith(':') || OWNED.has(name) || value === undefined) continue;
    out[name] = value;
  }
  out['x-request-id'] = exchange.id;
  out['x-forwarded-proto'] = 'https';
  if (exchange.remoteAddress !== undefined) out['x-forwarded-for'] = exchange.remoteAddress.replace(/^::ffff:/, '');
  return Object.assign(out, own);
}
