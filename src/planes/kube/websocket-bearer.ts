/**
 * A WebSocket client that cannot set headers (a browser) carries its bearer token as a subprotocol:
 * `Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.<token>, v5.channel.k8s.io`.
 * meshgate takes it out, verifies it as it would an `Authorization` header, and never forwards it:
 * what the API server gets is meshgate's choice of credential, as for any other request.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { MeshgateError } from '../../errors.js';

const PREFIX = 'base64url.bearer.authorization.k8s.io.';

/** Removes the bearer subprotocol, in place, and returns `Bearer <token>`; undefined when there was none. */
export function takeWebSocketBearer(headers: IncomingHttpHeaders): string | undefined {
  const header = headers['sec-websocket-protocol'];
  if (typeof header !== 'string') return undefined;
  const protocols = header.split(',').map((p) => p.trim());
  const bearers = protocols.filter((p) => p.startsWith(PREFIX));
  if (bearers.length === 0) return undefined;
  if (bearers.length > 1 || headers.authorization !== undefined) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { message: 'more than one bearer token' });
  }
  const rest = protocols.filter((p) => !p.startsWith(PREFIX));
  if (rest.length > 0) headers['sec-websocket-protocol'] = rest.join(', ');
  else delete headers['sec-websocket-protocol'];
  const encoded = bearers[0]?.slice(PREFIX.length) ?? '';
  if (!/^[A-Za-z0-9_-]+$/.test(encoded)) throw new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { message: 'bearer subprotocol is not base64url' });
  return `Bearer ${Buffer.from(encoded, 'base64url').toString('utf8')}`;
}
