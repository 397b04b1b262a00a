/**
 * The admin listener: plain HTTP, on 127.0.0.1 unless configured otherwise, never on a tenant
 * listener. /metrics (Prometheus), /healthz (the process is up), /readyz (listeners are serving
 * a config snapshot).
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { listen } from '../listener/listen.js';

export interface AdminServerOptions {
  readonly host: string;
  readonly port: number;
  /** The Prometheus text: this process's registry, or every worker's merged. */
  readonly metrics: { readonly contentType: string; text(): Promise<string> };
  readonly readiness: () => { ready: boolean; detail: Record<string, unknown> };
}

export interface AdminServer {
  listen(): Promise<AddressInfo>;
  close(): Promise<void>;
}

export function createAdminServer(options: AdminServerOptions): AdminServer {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      json(res, 405, { status: 'method not allowed' }, { allow: 'GET, HEAD' });
      return;
    }
    switch (path) {
      case '/metrics':
        options.metrics.text().then(
          (text) => {
            res.writeHead(200, { 'content-type': options.metrics.contentType });
            res.end(text);
          },
          () => json(res, 500, { status: 'metrics unavailable' }),
        );
        return;
      case '/healthz':
        json(res, 200, { status: 'ok' });
        return;
      case '/readyz': {
        const { ready, detail } = options.readiness();
        json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', ...detail });
        return;
      }
      default:
        json(res, 404, { status: 'not found', paths: ['/metrics', '/healthz', '/readyz'] });
    }
  });
  server.keepAliveTimeout = 5_000;

  return {
    listen: () => listen(server, options.host, options.port),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function json(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
