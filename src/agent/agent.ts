/**
 * `meshgate agent`: runs inside a mesh cluster whose API server meshgate cannot reach, and dials
 * out to meshgate instead (docs/agent.md). It keeps a WebSocket open to meshgate's agent plane,
 * authenticated with a client certificate of the tenant that names its cluster, and serves HTTP/2
 * on it: every CONNECT stream meshgate opens is one connection to the API server, which the
 * agent dials at the address it was configured with, whatever the stream names, and relays byte
 * for byte. meshgate's TLS runs inside, end to end to the API server: the agent never sees a
 * request, a token or a response, and cannot be made to reach anything else.
 *
 *  - Tunnels: `tunnels` of them, each to a different meshgate process (the 101 names it), so that
 *    every replica behind a load balancer has one; a tunnel that lands on a process already held
 *    is closed and tried again. Each is redialed with exponential backoff and jitter.
 *  - Bounded: at most `maxConnections` relayed connections at once (SETTINGS_MAX_CONCURRENT_STREAMS,
 *    and a 503 beyond it); pings find a dead tunnel on this side too.
 *  - close() drains: GOAWAY on every tunnel, so meshgate opens nothing new on it, then the open
 *    connections have `graceMs` to end.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { constants as h2, performServerHandshake, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { IncomingMessage } from 'node:http';
import { WebSocket, type ClientOptions } from 'ws';
import { backoffMs } from '../backoff.js';
import { keepSessionAlive } from '../forward/h2-keepalive.js';
import { webSocketStream } from '../forward/websocket-stream.js';
import type { Logger } from '../observability/logger.js';
import { AGENT_PATH_PREFIX, AGENT_PROTOCOL, INSTANCE_HEADER } from '../planes/agent/protocol.js';

export interface AgentOptions {
  /** meshgate's address: `wss://acme.cp.example.com:443` (the host is also the TLS server name, unless `serverName`). */
  readonly server: string;
  /** The tenant's host name, when `server` names meshgate otherwise (an IP address, an internal name). */
  readonly serverName?: string | undefined;
  /** PEM: the CA meshgate's serving certificate chains to. */
  readonly ca: string;
  /** PEM: the agent's client certificate (subject CN `system:meshgate-agent:<cluster>`) and key. */
  readonly cert: string;
  readonly key: string;
  readonly cluster: string;
  /** Where the API server is, from inside the cluster; the only address the agent ever dials. */
  readonly apiServer: { readonly host: string; readonly port: number };
  /** Tunnels to keep, each to a different meshgate process. */
  readonly tunnels?: number;
  /** Relayed connections at once, over all tunnels. */
  readonly maxConnections?: number;
  readonly logger: Logger;
  /** Delay before redial attempt n (from 0); jitter is added. Default: src/backoff.ts. */
  readonly backoff?: (attempt: number) => number;
  readonly pingIntervalMs?: number;
  readonly pingTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
}

export interface Agent {
  /** Tunnels up now. */
  connected(): number;
  /** Relayed connections open now. */
  connections(): number;
  /** Resolves once `count` tunnels are up. */
  ready(count?: number): Promise<void>;
  /** Stops redialing, sends GOAWAY on every tunnel, and gives open connections `graceMs` to end. */
  close(graceMs?: number): Promise<void>;
}

/** A tunnel that lived this long was fine: the next one starts again from the shortest backoff. */
const HEALTHY_MS = 30_000;
const STREAM_WINDOW = 256 * 1024;

export function startAgent(options: AgentOptions): Agent {
  const { logger, cluster } = options;
  const maxConnections = options.maxConnections ?? 1_000;
  const backoff = options.backoff ?? backoffMs;
  const pingIntervalMs = options.pingIntervalMs ?? 20_000;
  const pingTimeoutMs = options.pingTimeoutMs ?? 10_000;
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  const url = new URL(`${AGENT_PATH_PREFIX}${encodeURIComponent(cluster)}`, options.server);
  const serverName = options.serverName ?? url.hostname;

  const sessions = new Set<ServerHttp2Session>();
  const instances = new Set<string>();
  let relayed = 0;
  let stopping = false;
  /** Read anew after each await: close() may have run meanwhile. */
  const isStopping = (): boolean => stopping;
  const waiters = new Set<() => void>();
  const wake = (): void => {
    for (const waiter of waiters) waiter();
  };
  /** Cancels the backoff sleeps when the agent stops. */
  const stopped = new AbortController();

  const open = (): Promise<{ ws: WebSocket; instance: string }> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, [AGENT_PROTOCOL], {
        // ws hands TLS options to tls.connect: the tenant's host is the server name, whatever is dialed.
        ...({ servername: serverName } as ClientOptions),
        ca: options.ca,
        cert: options.cert,
        key: options.key,
        perMessageDeflate: false,
        maxPayload: 4 * 1024 * 1024,
        handshakeTimeout: connectTimeoutMs,
      });
      let instance = '';
      ws.once('upgrade', (res: IncomingMessage) => {
        const header = res.headers[INSTANCE_HEADER];
        instance = typeof header === 'string' ? header : '';
      });
      // A refusal: meshgate's JSON says why (the code), which is what the log should say.
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        let body = '';
        res.on('data', (chunk: Buffer) => {
          if (body.length < 4096) body += chunk.toString();
        });
        res.on('end', () => {
          ws.terminate();
          reject(new Error(`meshgate refused the agent: ${res.statusCode ?? 0} ${refusalCode(body)}`));
        });
        res.on('error', () => undefined);
      });
      ws.once('open', () => resolve({ ws, instance }));
      ws.once('error', reject);
    });

  /** Serves HTTP/2 on the tunnel until it ends. */
  const serve = (ws: WebSocket): Promise<void> =>
    new Promise((resolve) => {
      const stream = webSocketStream(ws);
      stream.on('error', () => undefined);
      const session = performServerHandshake(stream, {
        settings: { maxConcurrentStreams: maxConnections, initialWindowSize: STREAM_WINDOW, enablePush: false },
        maxSessionMemory: 64,
      });
      sessions.add(session);
      wake();
      session.on('error', () => undefined);
      session.on('stream', (relay: ServerHttp2Stream, headers) => answer(relay, headers[h2.HTTP2_HEADER_METHOD]));
      keepSessionAlive(session, {
        intervalMs: pingIntervalMs,
        timeoutMs: pingTimeoutMs,
        onTimeout: () => logger.warn({ cluster }, 'meshgate did not answer a ping: the tunnel is dropped'),
      });
      session.once('close', () => {
        sessions.delete(session);
        ws.terminate();
        resolve();
      });
      if (stopping) session.close();
    });

  /** One CONNECT stream: a connection to the API server, whatever address the stream names. */
  const answer = (relay: ServerHttp2Stream, method: string | string[] | undefined): void => {
    relay.on('error', () => undefined);
    if (method !== 'CONNECT') {
      relay.respond({ [h2.HTTP2_HEADER_STATUS]: 405, 'meshgate-agent-error': 'CONNECT only' }, { endStream: true });
      return;
    }
    if (relayed >= maxConnections) {
      relay.respond({ [h2.HTTP2_HEADER_STATUS]: 503, 'meshgate-agent-error': `at its cap of ${maxConnections} connections` }, { endStream: true });
      return;
    }
    relayed++;
    relay.once('close', () => relayed--);
    const upstream: Socket = netConnect({ host: options.apiServer.host, port: options.apiServer.port });
    upstream.setTimeout(connectTimeoutMs, () => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })));
    upstream.once('connect', () => {
      upstream.setTimeout(0);
      upstream.setNoDelay(true);
      if (relay.destroyed) {
        upstream.destroy();
        return;
      }
      relay.respond({ [h2.HTTP2_HEADER_STATUS]: 200 });
      relay.pipe(upstream);
      upstream.pipe(relay);
    });
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      if (!relay.headersSent && !relay.destroyed) {
        logger.warn({ cluster, apiServer: `${options.apiServer.host}:${options.apiServer.port}`, code: err.code }, 'could not reach the API server');
        relay.respond({ [h2.HTTP2_HEADER_STATUS]: 502, 'meshgate-agent-error': err.code ?? 'unreachable' }, { endStream: true });
      }
    });
    upstream.once('close', () => relay.destroy());
    relay.once('close', () => upstream.destroy());
  };

  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      stopped.signal.addEventListener('abort', () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });

  /** One tunnel slot: dial, serve, and dial again, until the agent stops. */
  const keep = async (slot: number): Promise<void> => {
    let attempt = 0;
    while (!isStopping()) {
      let delay: number;
      try {
        const { ws, instance } = await open();
        if (isStopping()) {
          ws.terminate();
          break;
        }
        if (instance !== '' && instances.has(instance)) {
          ws.close(1000, 'a tunnel to this meshgate process is up already');
          throw new Error(`landed on meshgate ${instance}, which slot ${String(slot)} does not need`);
        }
        instances.add(instance);
        const started = Date.now();
        logger.info({ cluster, slot, instance }, 'tunnel up');
        await serve(ws);
        instances.delete(instance);
        if (Date.now() - started >= HEALTHY_MS) attempt = 0;
        delay = jittered(backoff(attempt++));
        if (!isStopping()) logger.warn({ cluster, slot, instance, retryInMs: delay }, 'tunnel down');
      } catch (err) {
        delay = jittered(backoff(attempt++));
        if (!isStopping()) logger.warn({ cluster, slot, err: err instanceof Error ? err.message : String(err), retryInMs: delay }, 'could not open a tunnel');
      }
      if (!isStopping()) await sleep(delay);
    }
  };

  const count = Math.max(1, options.tunnels ?? 1);
  const loops = Array.from({ length: count }, (_, slot) => keep(slot));
  logger.info({ cluster, server: url.origin, serverName, tunnels: count, apiServer: `${options.apiServer.host}:${options.apiServer.port}` }, 'agent started');

  return {
    connected: () => sessions.size,
    connections: () => relayed,
    ready: (wanted = count) =>
      new Promise((resolve) => {
        const check = (): void => {
          if (sessions.size < wanted) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      }),
    async close(graceMs = 10_000) {
      if (!stopping) logger.info({ cluster, connections: relayed }, 'agent draining');
      stopping = true;
      stopped.abort();
      // GOAWAY: meshgate opens nothing new here; what is open may finish within the grace.
      for (const session of sessions) session.close();
      const drained = Promise.all(loops);
      const timer = setTimeout(() => {
        for (const session of sessions) session.destroy();
      }, graceMs);
      await drained;
      clearTimeout(timer);
    },
  };
}

/** Between half and all of `ms`: agents that lost meshgate together do not come back together. */
function jittered(ms: number): number {
  return Math.round(ms / 2 + Math.random() * (ms / 2));
}

/** The MG_ERR_* code of meshgate's refusal, or nothing if the body is not meshgate's JSON. */
function refusalCode(body: string): string {
  try {
    const parsed = JSON.parse(body) as { code?: unknown; message?: unknown };
    return typeof parsed.code === 'string' ? `${parsed.code}: ${typeof parsed.message === 'string' ? parsed.message : ''}` : '';
  } catch {
    return '';
  }
}
