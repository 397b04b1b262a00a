/** Misbehaving upstreams for failure tests: they listen on loopback, on an ephemeral port. */
import { createServer as createHttpServer, type RequestListener } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Server, Socket } from 'node:net';

export interface TestUpstream {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

async function start(server: Server, protocol: 'http' | 'https'): Promise<TestUpstream> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${protocol}://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export function startHttpUpstream(handler: RequestListener): Promise<TestUpstream> {
  return start(createHttpServer(handler), 'http');
}

export function startHttpsUpstream(tls: { cert: string; key: string }, handler: RequestListener): Promise<TestUpstream> {
  return start(createHttpsServer(tls, handler), 'https');
}

/** A port nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const upstream = await startHttpUpstream(() => undefined);
  await upstream.close();
  return upstream.port;
}
