/**
 * The route: which tenant a request belongs to. The TLS server name (SNI) decides; Host or
 * :authority may not name a different host (421), so one connection can never be steered to
 * another tenant by a header, nor reused for another tenant's host (HTTP/2 coalescing). An
 * IP-literal Host is allowed: clients that set `tls-server-name` send one.
 */
import { isIP } from 'node:net';
import { MeshgateError } from '../errors.js';
import type { TenantCore } from '../tenancy/tenant.js';
import type { Snapshot } from '../tenancy/snapshot.js';
import type { Exchange } from './exchange.js';

export function resolveTenant(exchange: Exchange, snapshot: Snapshot): TenantCore {
  const serverName = exchange.serverName;
  if (serverName === undefined) throw new MeshgateError('MG_ERR_ROUTE_NO_SNI');
  const tenant = snapshot.tenantForHost(serverName);
  if (!tenant) throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_HOST', { detail: `SNI ${serverName}` });

  if (exchange.authority === undefined) {
    throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'request has no Host or :authority' });
  }
  const host = hostOf(exchange.authority);
  if (host !== serverName.replace(/\.$/, '') && isIP(host) === 0) {
    throw new MeshgateError('MG_ERR_ROUTE_HOST_MISMATCH', { detail: `SNI ${serverName}, Host ${exchange.authority}` });
  }
  return tenant;
}

/** `Acme.Example.com:8443` → `acme.example.com`; `[::1]:8443` → `::1`. */
export function hostOf(authority: string): string {
  const value = authority.trim().toLowerCase();
  if (value.startsWith('[')) {
    const end = value.indexOf(']');
    return end === -1 ? value : value.slice(1, end);
  }
  const colon = value.lastIndexOf(':');
  const host = colon === -1 || value.indexOf(':') !== colon ? value : value.slice(0, colon);
  return host.replace(/\.$/, '');
}
