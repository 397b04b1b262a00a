/**
 * Upstream pools as registry resources. A pool's fingerprint is what its connections were made
 * with: the upstream's settings, the CA it verifies against, meshgate's own client certificate,
 * and the loopback rule. A token meshgate sends is a header, not part of a connection, so a
 * rotated token file never replaces a pool.
 */
import type { UpstreamConfig } from '../config/schema.js';
import { createHttpUpstream, type HttpUpstream, type UpstreamOptions } from '../forward/upstream.js';
import type { Lease } from './registry.js';
import type { TenantCore } from './tenant.js';

export function leaseHttpUpstream(
  tenant: TenantCore,
  name: string,
  config: UpstreamConfig,
  options: Omit<UpstreamOptions, 'allowLoopback'> = {},
): Lease<HttpUpstream> {
  const allowLoopback = tenant.allowLoopbackUpstreams;
  const inputs = {
    url: config.url,
    serverName: config.serverName,
    ca: config.ca === undefined ? undefined : tenant.files.text(config.ca),
    clientCertificate: options.clientCertificate,
    maxSockets: options.maxSockets === Number.POSITIVE_INFINITY ? 'unbounded' : options.maxSockets,
    allowLoopback,
  };
  return tenant.resources.use(name, inputs, () => {
    const upstream = createHttpUpstream(config, tenant.files, { ...options, allowLoopback });
    return { value: upstream, close: () => upstream.close() };
  });
}
