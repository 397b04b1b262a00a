/** An optional allowlist of source networks, checked in addition to authentication. */
import { BlockList, isIPv4 } from 'node:net';
import { MeshgateError } from '../errors.js';

export type SourceCheck = (remoteAddress: string | undefined) => void;

export function createSourceCheck(cidrs: readonly string[] | undefined): SourceCheck | undefined {
  if (cidrs === undefined) return undefined;
  const allowed = new BlockList();
  for (const cidr of cidrs) {
    const [network = '', bits = ''] = cidr.split('/');
    allowed.addSubnet(network, Number(bits), isIPv4(network) ? 'ipv4' : 'ipv6');
  }
  return (remoteAddress) => {
    const address = unmapped(remoteAddress ?? '');
    const family = isIPv4(address) ? 'ipv4' : 'ipv6';
    if (address === '' || !allowed.check(address, family)) {
      throw new MeshgateError('MG_ERR_AUTHZ_SOURCE_ADDRESS', { detail: `source ${remoteAddress ?? 'unknown'}` });
    }
  };
}

/** `::ffff:10.1.2.3` (an IPv4 client on a dual-stack socket) is checked as `10.1.2.3`. */
function unmapped(address: string): string {
  const match = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return match?.[1] ?? address;
}
