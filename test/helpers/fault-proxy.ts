/**
 * A TCP proxy in front of a real upstream (a stand-in istiod or API server), whose behaviour the
 * test switches: pass bytes through, refuse connections, reset them, hang, answer with garbage, or
 * read slowly. TLS passes through untouched, end to end, so meshgate still verifies the upstream.
 */
import { randomBytes } from 'node:crypto';
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export type FaultMode = 'pass' | 'refuse' | 'reset' | 'hang' | 'garbage' | 'slow';

export interface FaultProxy {
  readonly port: number;
  /** The upstream URL with this proxy's port in place of the upstream's. */
  url(upstream: string): string;
  /** How new connections are treated from now on. */
  set(mode: FaultMode): Promise<void>;
  /** Resets every connection open through the proxy (an upstream that dies mid-stream). */
  resetAll(): void;
  /** Connections the proxy has accepted so far. */
  accepted(): number;
  close(): Promise<void>;
}

export interface FaultProxyOptions {
  /** In `slow` mode, bytes per second carried from meshgate to the upstream. */
  readonly slowBytesPerSecond?: number;
}

export async function startFaultProxy(target: { host: string; port: number }, options: FaultProxyOptions = {}): Promise<FaultProxy> {
  const rate = options.slowBytesPerSecond ?? 16 * 1024;
  const open = new Set<Socket>();
  let mode: FaultMode = 'pass';
  let accepted = 0;

  const track = (socket: Socket): void => {
    open.add(socket);
    socket.on('close', () => open.delete(socket));
    socket.on('error', () => undefined);
  };

  const server: Server = createServer((client) => {
    accepted++;
    track(client);
    switch (mode) {
      case 'reset':
        client.resetAndDestroy();
        return;
      case 'hang':
        client.pause();
        return;
      case 'garbage':
        client.end(randomBytes(4096));
        return;
      default:
        break;
    }
    const upstream = createConnection(target);
    track(upstream);
    upstream.on('close', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.pipe(client);
    if (mode === 'slow') throttle(client, upstream, rate);
    else client.pipe(upstream);
  });

  const listen = (port: number): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        const address = server.address();
        resolve(typeof address === 'object' && address ? address.port : 0);
      });
    });
  const port = await listen(0);

  return {
    port,
    url: (upstream) => {
      const url = new URL(upstream);
      url.hostname = '127.0.0.1';
      url.port = String(port);
      return url.toString().replace(/\/$/, '');
    },
    async set(next) {
      // Refusing is not listening: the kernel answers a connection with RST (ECONNREFUSED).
      if (next === 'refuse' && server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
      if (next !== 'refuse' && !server.listening) await listen(port);
      mode = next;
    },
    resetAll() {
      for (const socket of open) socket.resetAndDestroy();
    },
    accepted: () => accepted,
    close: async () => {
      for (const socket of open) socket.destroy();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Carries `from` to `to` at `rate` bytes per second: `from` is paused in between, so its sender feels it. */
function throttle(from: Socket, to: Socket, rate: number): void {
  const slice = Math.max(1, Math.floor(rate / 10));
  from.on('data', (chunk: Buffer) => {
    from.pause();
    let offset = 0;
    const step = (): void => {
      if (to.destroyed) return;
      to.write(chunk.subarray(offset, offset + slice));
      offset += slice;
      if (offset < chunk.length) setTimeout(step, 100);
      else setTimeout(() => from.resume(), 100);
    };
    step();
  });
}
