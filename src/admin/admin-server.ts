/**
 * The admin listener: plain HTTP, on 127.0.0.1 unless configured otherwise, never on a tenant
 * listener. /healthz (the process is up) and /readyz (listeners are serving a config snapshot)
 * answer anyone, for probes. Everything else, /metrics (Prometheus) and /status (the live status
 * page and its data) and even an unknown path, answers only a caller that `access` admits; any
 * other caller gets one and the same 403, whatever it asked for.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { listen } from '../listener/listen.js';
import type { StatusReport, StatusSource } from '../status/status-source.js';
import { STATUS_PAGE_HEADERS, renderStatusPage } from '../status/page.js';
import type { AdminAccess } from './access.js';

export interface AdminServerOptions {
  readonly host: string;
  readonly port: number;
  /** The Prometheus text: this process's registry, or every worker's merged. */
  readonly metrics: { readonly contentType: string; text(): Promise<string> };
  readonly readiness: () => { ready: boolean; detail: Record<string, unknown> };
  /** Who may read what is beyond /healthz and /readyz. */
  readonly access: AdminAccess;
  /** The status page's data; sampled while the listener is open. */
  readonly status: StatusSource;
  /**
   * A tenant's sidecars' latest metrics (Prometheus text), for /tenants/<id>/sidecar-metrics:
   * undefined when the tenant does not expose them here (or is unknown).
   */
  readonly sidecarMetrics?: (tenant: string) => string | undefined;
}

const SIDECAR_METRICS = /^\/tenants\/([^/]+)\/sidecar-metrics$/;

export interface AdminServer {
  listen(): Promise<AddressInfo>;
  close(): Promise<void>;
}

const PATHS = ['/healthz', '/readyz', '/metrics', '/status', '/status.json', '/tenants/<id>/sidecar-metrics'];

export function createAdminServer(options: AdminServerOptions): AdminServer {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const isProbe = path === '/healthz' || path === '/readyz';
    if (!isProbe && !options.access(req)) {
      json(res, 403, { status: 'forbidden' });
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      json(res, 405, { status: 'method not allowed' }, { allow: 'GET, HEAD' });
      return;
    }
    switch (path) {
      case '/healthz':
        json(res, 200, { status: 'ok' });
        return;
      case '/readyz': {
        const { ready, detail } = options.readiness();
        json(res, ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', ...detail });
        return;
      }
      case '/metrics':
        options.metrics.text().then(
          (text) => {
            res.writeHead(200, { 'content-type': options.metrics.contentType });
            res.end(text);
          },
          () => json(res, 500, { status: 'metrics unavailable' }),
        );
        return;
      case '/status':
        respondWithStatus(res, options.status, (report) => {
          const html = renderStatusPage(report);
          res.writeHead(200, { ...STATUS_PAGE_HEADERS, 'content-length': Buffer.byteLength(html) });
          res.end(html);
        });
        return;
      case '/status.json':
        respondWithStatus(res, options.status, (report) => json(res, 200, report, { 'cache-control': 'no-store' }));
        return;
      default: {
        const tenant = SIDECAR_METRICS.exec(path ?? '')?.[1];
        const text = tenant === undefined ? undefined : options.sidecarMetrics?.(tenant);
        if (text === undefined) {
          json(res, 404, { status: 'not found', paths: PATHS });
          return;
        }
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
        res.end(text);
      }
    }
  });
  server.keepAliveTimeout = 5_000;

  return {
    async listen() {
      const address = await listen(server, options.host, options.port);
      options.status.start();
      return address;
    },
    close: () =>
      new Promise((resolve) => {
        options.status.stop();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function respondWithStatus(res: ServerResponse, status: StatusSource, send: (report: StatusReport) => void): void {
  status.report().then(send, () => json(res, 500, { status: 'status unavailable' }));
}

function json(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
