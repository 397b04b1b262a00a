import type { AddressInfo, Server } from 'node:net';

/**
 * Connections the kernel may hold for accept() (capped by net.core.somaxconn). Node's default,
 * 511, overflows when thousands of sidecars reconnect at once: the rest have their SYNs dropped
 * and retry after 1, 3, 7, 15 s, which stretches a reconnect storm several times over.
 */
export const LISTEN_BACKLOG = 4096;

/** Starts `server` on `host:port` (0: a free port) and resolves with the address it got. */
export function listen(server: Server, host: string, port = 0): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, backlog: LISTEN_BACKLOG }, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
