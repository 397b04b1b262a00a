/**
 * The agents' tunnels (docs/agent.md): for each tenant's cluster reached `via: agent`, the HTTP/2
 * sessions meshgate holds over the WebSockets that the cluster's `meshgate agent`s opened to it.
 *
 * On a tunnel the roles are reversed: meshgate is the HTTP/2 client. Each connection meshgate
 * needs to the cluster's API server is one CONNECT stream, which the agent answers by dialing its
 * own API server (never an address meshgate names), and meshgate's TLS, verified against the
 * cluster's CA as for any API server, runs over the stream: the agent relays ciphertext only.
 * HTTP/2 flow control holds each connection back on its own, and pings find a dead tunnel.
 *
 * Tunnels are keyed by tenant and cluster, and nothing else: the kube plane of tenant A asks for
 * A's cluster by A's id, and an agent is attached under the tenant and cluster it authenticated
 * for (src/planes/agent/plane.ts). Several tunnels of one cluster (agent replicas, or one agent's
 * reconnect before its old tunnel was found dead) share the connections: each new one goes to the
 * tunnel with the fewest open.
 */
import { connect, constants as h2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type { Duplex } from 'node:stream';
import { MeshgateError } from '../errors.js';
import { keepSessionAlive } from './h2-keepalive.js';

export interface AgentTunnelEvents {
  /** The number of tunnels of a cluster changed. */
  readonly tunnels?: (tenant: string, cluster: string, count: number) => void;
  /** A connection through a tunnel opened (1) or closed (-1). */
  readonly streams?: (tenant: string, cluster: string, delta: 1 | -1) => void;
}

export interface TunnelTimings {
  /** How long the agent has to send its HTTP/2 SETTINGS once its WebSocket is up. */
  readonly handshakeTimeoutMs: number;
  /** How often meshgate pings the agent, and how long an answer may take before the tunnel is dropped. */
  readonly keepaliveIntervalMs: number;
  readonly keepaliveTimeoutMs: number;
}

export interface AgentTunnel {
  readonly tenant: string;
  readonly cluster: string;
  /** Resolves when the tunnel is over, however it ended. */
  readonly closed: Promise<void>;
  /** Connections open through it now. */
  streams(): number;
  close(): void;
}

export interface AgentTunnels {
  /**
   * Speaks HTTP/2 over an accepted agent's stream; resolves once the agent's SETTINGS arrived and
   * the tunnel carries connections, or rejects (MG_ERR_AGENT_HANDSHAKE) and destroys the stream.
   */
  attach(tenant: string, cluster: string, stream: Duplex, timings: TunnelTimings): Promise<AgentTunnel>;
  /** Whether a tunnel of the cluster is up to carry a new connection. */
  has(tenant: string, cluster: string): boolean;
  /** A new connection to the cluster's API server; throws MG_ERR_UPSTREAM_AGENT_UNAVAILABLE. */
  dial(tenant: string, cluster: string): Duplex;
  /** Ends every tunnel (the process is stopping). */
  closeAll(): void;
}

interface Tunnel extends AgentTunnel {
  readonly session: ClientHttp2Session;
  /** Set on GOAWAY: the agent is draining, so no new connection goes to it. */
  draining: boolean;
  active: number;
}

interface ClusterTunnels {
  readonly tunnels: Set<Tunnel>;
}

/** Per relayed connection, as towards an upstream: bounds what one slow side makes the other hold. */
const STREAM_WINDOW = 256 * 1024;
const SESSION_WINDOW = 16 * 1024 * 1024;
/** What a CONNECT stream names: the agent dials its own API server whatever this says. */
const CONNECT_AUTHORITY = 'kubernetes.default.svc:443';

export function createAgentTunnels(events: AgentTunnelEvents = {}): AgentTunnels {
  const byCluster = new Map<string, ClusterTunnels>();
  const keyOf = (tenant: string, cluster: string): string => `${tenant}\0${cluster}`;
  const entryOf = (tenant: string, cluster: string): ClusterTunnels => {
    const key = keyOf(tenant, cluster);
    let entry = byCluster.get(key);
    if (!entry) byCluster.set(key, (entry = { tunnels: new Set() }));
    return entry;
  };
  const usable = (tunnel: Tunnel): boolean => !tunnel.draining && !tunnel.session.closed && !tunnel.session.destroyed;

  return {
    attach(tenant, cluster, stream, timings) {
      return new Promise((resolve, reject) => {
        const session = connect('http://meshgate-agent.invalid', {
          createConnection: () => stream,
          settings: { enablePush: false, initialWindowSize: STREAM_WINDOW },
          maxSessionMemory: 64,
        });
        let registered = false;
        let resolveClosed: () => void = () => undefined;
        const tunnel: Tunnel = {
          tenant,
          cluster,
          session,
          draining: false,
          active: 0,
          closed: new Promise<void>((done) => (resolveClosed = done)),
          streams: () => tunnel.active,
          close: () => session.destroy(),
        };
        const handshake = setTimeout(() => {
          session.destroy(new MeshgateError('MG_ERR_AGENT_HANDSHAKE', { detail: `no HTTP/2 SETTINGS within ${timings.handshakeTimeoutMs} ms` }));
        }, timings.handshakeTimeoutMs);
        keepSessionAlive(session, { intervalMs: timings.keepaliveIntervalMs, timeoutMs: timings.keepaliveTimeoutMs });

        session.once('remoteSettings', () => {
          clearTimeout(handshake);
          if (session.destroyed) return;
          session.setLocalWindowSize(SESSION_WINDOW);
          registered = true;
          const entry = entryOf(tenant, cluster);
          entry.tunnels.add(tunnel);
          events.tunnels?.(tenant, cluster, entry.tunnels.size);
          resolve(tunnel);
        });
        session.on('goaway', () => {
          tunnel.draining = true;
        });
        // A session error ends it; 'close' follows, and is where the tunnel is let go.
        session.on('error', () => undefined);
        session.once('close', () => {
          clearTimeout(handshake);
          stream.destroy();
          if (registered) {
            const entry = entryOf(tenant, cluster);
            entry.tunnels.delete(tunnel);
            events.tunnels?.(tenant, cluster, entry.tunnels.size);
            // A cluster with no tunnel left is forgotten.
            if (entry.tunnels.size === 0) byCluster.delete(keyOf(tenant, cluster));
          } else {
            reject(new MeshgateError('MG_ERR_AGENT_HANDSHAKE', { detail: 'the agent ended its tunnel before HTTP/2 started' }));
          }
          resolveClosed();
        });
      });
    },

    has(tenant, cluster) {
      const entry = byCluster.get(keyOf(tenant, cluster));
      return entry !== undefined && [...entry.tunnels].some(usable);
    },

    dial(tenant, cluster) {
      let best: Tunnel | undefined;
      for (const tunnel of byCluster.get(keyOf(tenant, cluster))?.tunnels ?? []) {
        if (!usable(tunnel)) continue;
        const limit = tunnel.session.remoteSettings.maxConcurrentStreams ?? Number.POSITIVE_INFINITY;
        if (tunnel.active >= limit) continue;
        if (best === undefined || tunnel.active < best.active) best = tunnel;
      }
      if (best === undefined) throw new MeshgateError('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE', { detail: `no tunnel of ${tenant}/${cluster} can take a connection` });
      const tunnel = best;
      let stream: ClientHttp2Stream;
      try {
        stream = tunnel.session.request({ [h2.HTTP2_HEADER_METHOD]: 'CONNECT', [h2.HTTP2_HEADER_AUTHORITY]: CONNECT_AUTHORITY });
      } catch (err) {
        // Closing, or out of stream ids: this tunnel takes no more.
        tunnel.draining = true;
        throw new MeshgateError('MG_ERR_UPSTREAM_AGENT_UNAVAILABLE', { detail: 'the tunnel takes no new connection', cause: err });
      }
      tunnel.active++;
      events.streams?.(tenant, cluster, 1);
      stream.once('close', () => {
        tunnel.active--;
        events.streams?.(tenant, cluster, -1);
      });
      stream.once('response', (headers) => {
        const status = Number(headers[h2.HTTP2_HEADER_STATUS]);
        if (status === 200) return;
        // The agent could not reach its API server (502), or is at its cap of connections (503).
        const reason = headers['meshgate-agent-error'];
        stream.destroy(
          new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', {
            message: 'the agent could not reach its API server',
            detail: `agent answered ${status}${typeof reason === 'string' ? ` (${reason.slice(0, 80)})` : ''}`,
          }),
        );
      });
      return stream;
    },

    closeAll() {
      for (const entry of byCluster.values()) for (const tunnel of entry.tunnels) tunnel.close();
    },
  };
}
