/**
 * The lookup every upstream connection uses unless loopback upstreams are allowed: istiod trusts
 * loopback callers fully, so a name that resolves to loopback is refused.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns';
import { isLoopbackHost } from '../config/schema.js';
import { MeshgateError } from '../errors.js';

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** A dns.lookup that fails when any resolved address is loopback. */
export function refuseLoopback(hostname: string, options: LookupOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) {
      callback(err, []);
      return;
    }
    if (addresses.some((a) => isLoopbackHost(a.address))) {
      callback(new MeshgateError('MG_ERR_UPSTREAM_LOOPBACK', { detail: `${hostname} resolves to loopback` }), []);
      return;
    }
    if (options.all === true) callback(null, addresses);
    else {
      const [first] = addresses;
      callback(null, first?.address ?? '', first?.family);
    }
  });
}
