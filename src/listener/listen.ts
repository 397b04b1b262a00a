import type { AddressInfo, Server } from 'node:net';

/** Starts `server` on `host:port` (0: a free port) and resolves with the address it got. */
export function listen(server: Server, host: string, port = 0): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
