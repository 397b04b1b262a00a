/**
 * `meshgate agent`: the agent of one mesh cluster (src/agent/agent.ts, docs/agent.md), with an
 * optional health port for the kubelet's probes: /healthz answers while the process runs, /readyz
 * while at least one tunnel is up. SIGTERM and SIGINT drain it.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { startAgent } from '../agent/agent.js';
import { listen } from '../listener/listen.js';
import { createLogger } from '../observability/logger.js';
import { UsageError, parse, required } from './args.js';

const USAGE = `usage: meshgate agent --server wss://HOST:PORT --cluster ID --ca FILE --cert FILE --key FILE
                      [--server-name NAME] [--api-server HOST:PORT] [--tunnels N]
                      [--max-connections N] [--health-port P] [--drain-timeout SECONDS]
                      [--log-level LEVEL]

--server is meshgate's address; the tenant's host is the TLS server name (--server-name when
--server names meshgate otherwise). --cert and --key are a client certificate of the tenant's
client CA with subject CN system:meshgate-agent:<cluster> (meshgate certs client --cn …).
--api-server is the only address the agent relays to: by default the in-cluster API server
(KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT). --tunnels keeps that many tunnels, each to a
different meshgate process (set it to meshgate's replicas × workers). --max-connections caps the
connections relayed at once (1000).`;

export async function runAgent(args: readonly string[]): Promise<number> {
  const v = parse(
    args,
    {
      server: { type: 'string' },
      'server-name': { type: 'string' },
      cluster: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'api-server': { type: 'string' },
      tunnels: { type: 'string' },
      'max-connections': { type: 'string' },
      'health-port': { type: 'string' },
      'drain-timeout': { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    USAGE,
  );
  if (v.help === true) {
    console.log(USAGE);
    return 0;
  }
  const server = required(v.server, '--server', USAGE);
  if (!/^wss:\/\/[^/]+\/?$/.test(server)) throw new UsageError(`--server takes wss://HOST:PORT, not "${server}"\n\n${USAGE}`);
  const apiServer = hostPort(v['api-server'] ?? inClusterApiServer(), '--api-server');
  const text = (flag: string, path: string | undefined): string => readFileSync(required(path, flag, USAGE), 'utf8');
  const logger = createLogger(v['log-level'] ?? 'info');
  const agent = startAgent({
    server,
    serverName: v['server-name'],
    cluster: required(v.cluster, '--cluster', USAGE),
    ca: text('--ca', v.ca),
    cert: text('--cert', v.cert),
    key: text('--key', v.key),
    apiServer,
    tunnels: count(v.tunnels, '--tunnels', 1),
    maxConnections: count(v['max-connections'], '--max-connections', 1_000),
    logger,
  });

  let health: ReturnType<typeof createServer> | undefined;
  if (v['health-port'] !== undefined) {
    health = createServer((req, res) => {
      const ok = req.url === '/healthz' || (req.url === '/readyz' && agent.connected() > 0);
      res.writeHead(req.url === '/healthz' || req.url === '/readyz' ? (ok ? 200 : 503) : 404, { 'content-type': 'text/plain' });
      res.end(ok ? 'ok\n' : `tunnels: ${agent.connected()}\n`);
    });
    const address = await listen(health, '0.0.0.0', count(v['health-port'], '--health-port', 0));
    logger.info({ health: address.port }, 'health port listening');
  }

  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  logger.info({ signal }, 'stopping');
  health?.close();
  await agent.close(count(v['drain-timeout'], '--drain-timeout', 10) * 1000);
  logger.info('stopped');
  logger.flush();
  return 0;
}

function inClusterApiServer(): string {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  if (host === undefined || host === '') throw new UsageError(`not in a cluster (no KUBERNETES_SERVICE_HOST): give --api-server HOST:PORT\n\n${USAGE}`);
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

function hostPort(value: string, flag: string): { host: string; port: number } {
  const match = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(value);
  if (!match?.[1] || !match[2] || Number(match[2]) > 65_535) throw new UsageError(`${flag} takes HOST:PORT, not "${value}"\n\n${USAGE}`);
  return { host: match[1], port: Number(match[2]) };
}

function count(value: string | undefined, flag: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag} takes a whole number, not "${value}"\n\n${USAGE}`);
  return n;
}
