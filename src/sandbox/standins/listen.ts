import type { Server } from 'node:net';
import type { AddressInfo } from 'node:net';

/** Listens on an ephemeral port of `host`. */
export function listen(server: Server, host: string, port = 0): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
