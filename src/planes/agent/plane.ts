/**
 * The agent plane: `meshgate agent`, run inside a mesh cluster whose API server meshgate cannot
 * dial, registers that cluster at `/agent/v1/clusters/<clusterId>` on the tenant's own host, and
 * keeps the WebSocket open as the tunnel meshgate reaches the API server through (docs/agent.md).
 *
 *   protocol (a WebSocket upgrade, subprotocol meshgate-agent.v1) → route (a cluster of the SNI
 *   tenant) → authenticate (a client certificate of the tenant's client CA, nothing else) → the
 *   certificate names this cluster → the cluster is `via: agent` → the tenant's access.agent rules
 *   → 101, then HTTP/2 over the WebSocket (src/forward/agent-tunnels.ts)
 *
 * Everything is checked before the 101: a refused agent never gets a tunnel. The request lasts as
 * long as the tunnel does, and holds one of the tenant's streams meanwhile.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { createAuthenticator, type Authenticator } from '../../auth/authenticate.js';
import type { Identity } from '../../auth/identity.js';
import type { AccessRule } from '../../config/schema.js';
import { MeshgateError } from '../../errors.js';
import type { AgentTunnel, AgentTunnels, TunnelTimings } from '../../forward/agent-tunnels.js';
import { webSocketStream } from '../../forward/websocket-stream.js';
import type { UpgradeExchange } from '../../listener/exchange.js';
import { DEFAULT_RULE, compileIdentityMatch, ruleName } from '../../policy/authorize.js';
import type { Lease } from '../../tenancy/registry.js';
import type { Plane } from '../plane.js';
import { AGENT_PATH_PREFIX, AGENT_PROTOCOL, AGENT_SUBJECT_PREFIX, INSTANCE_HEADER } from './protocol.js';

/** A cluster's tunnels registered under one set of trust inputs: closed with it (the cluster, or its tenant, removed; the trust changed). */
interface TunnelGroup {
  readonly tunnels: Set<AgentTunnel>;
  closed: boolean;
}

interface AgentCluster {
  readonly id: string;
  /** Present for a cluster `via: agent`. */
  readonly group?: Lease<TunnelGroup> | undefined;
}

export interface AgentState {
  readonly clusters: ReadonlyMap<string, AgentCluster>;
  readonly authenticate: Authenticator;
  /** The tenant's access.agent rules, against the identity and the cluster it registers; returns the rule. */
  readonly authorize: (identity: Identity, cluster: string) => string;
}

export interface AgentPlaneHooks {
  /** A registration ended its checks: 'OK' (the tunnel is up) or the code it was refused with. */
  readonly onRegistration?: (tenant: string, outcome: string) => void;
  readonly onConnected?: (tenant: string, cluster: string, subject: string) => void;
  readonly onDisconnected?: (tenant: string, cluster: string, seconds: number) => void;
}

export interface AgentPlaneOptions {
  readonly tunnels: AgentTunnels;
  /** This process's id, sent with every 101. */
  readonly instance: string;
  readonly timings?: Partial<TunnelTimings>;
  readonly hooks?: AgentPlaneHooks;
}

const DEFAULT_TIMINGS: TunnelTimings = { handshakeTimeoutMs: 10_000, keepaliveIntervalMs: 20_000, keepaliveTimeoutMs: 10_000 };
/** An HTTP/2 frame is at most 16 KiB here; a message of many is still far below this. */
const MAX_MESSAGE = 4 * 1024 * 1024;

export function createAgentPlane(options: AgentPlaneOptions): Plane<AgentState> {
  const { tunnels, hooks = {} } = options;
  const timings = { ...DEFAULT_TIMINGS, ...options.timings };
  const websockets = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE, perMessageDeflate: false, handleProtocols: () => AGENT_PROTOCOL });
  websockets.on('headers', (headers) => headers.push(`${INSTANCE_HEADER}: ${options.instance}`));
  // A handshake ws cannot take (a bad key or version) is refused by the plane, like any request.
  const refusals = new WeakMap<IncomingMessage, (reason: string) => void>();
  websockets.on('wsClientError', (err: Error, _socket: Duplex, req: IncomingMessage) => refusals.get(req)?.(err.message));

  return {
    name: 'agent',

    owns: (path) => path.startsWith('/agent/'),

    upgrades: true,

    build(tenant) {
      const clusters = new Map<string, AgentCluster>();
      // What an agent's admission rests on: a change closes the tunnels admitted before it.
      const trust = { clientCA: tenant.config.tls.clientCA === undefined ? undefined : tenant.files.text(tenant.config.tls.clientCA), rules: tenant.config.access.agent };
      for (const cluster of tenant.config.clusters) {
        const viaAgent = cluster.apiServer?.via === 'agent';
        const group = viaAgent
          ? tenant.resources.use(`agent/${cluster.id}`, trust, () => {
              const value: TunnelGroup = { tunnels: new Set(), closed: false };
              return {
                value,
                close() {
                  value.closed = true;
                  for (const tunnel of value.tunnels) tunnel.close();
                },
              };
            })
          : undefined;
        clusters.set(cluster.id, { id: cluster.id, group });
      }
      const rules = tenant.config.access.agent?.map((rule: AccessRule) => compileIdentityMatch(rule));
      return {
        clusters,
        authenticate: createAuthenticator({
          methods: ['clientCertificate'],
          audiences: [],
          certificates: tenant.certificates,
          tokens: tenant.tokens,
        }),
        authorize(identity, cluster) {
          if (identity.tenant !== tenant.id) {
            throw new MeshgateError('MG_ERR_AUTHZ_TENANT_MISMATCH', { detail: `identity of ${identity.tenant} on ${tenant.id}` });
          }
          if (!rules) return DEFAULT_RULE;
          const index = rules.findIndex((matches) => matches(identity, cluster));
          if (index === -1) throw new MeshgateError('MG_ERR_AUTHZ_DENIED', { detail: `${identity.subject} matches no access.agent rule for ${cluster}` });
          return ruleName('agent', index);
        },
      };
    },

    async handle(context, state) {
      const { exchange, target } = context;
      const tenant = context.tenant.id;
      try {
        if (exchange.protocol !== 'upgrade' || exchange.method !== 'GET' || exchange.upgrade.toLowerCase() !== 'websocket') {
          // No `Upgrade:` with the 426: HTTP/2 forbids the header, and the message says what to send.
          throw new MeshgateError('MG_ERR_AGENT_UPGRADE_REQUIRED');
        }
        if (!offers(exchange.headers['sec-websocket-protocol'], AGENT_PROTOCOL)) {
          throw new MeshgateError('MG_ERR_AGENT_UPGRADE_REQUIRED', { message: `the agent endpoint speaks the WebSocket subprotocol ${AGENT_PROTOCOL} only` });
        }
        const id = target.path.startsWith(AGENT_PATH_PREFIX) ? target.path.slice(AGENT_PATH_PREFIX.length) : '';
        if (id === '' || id.includes('/')) throw new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message: `agents register at ${AGENT_PATH_PREFIX}<clusterId>` });
        const cluster = state?.clusters.get(id);
        // The same answer whether the cluster is another tenant's or unknown.
        if (!state || !cluster) throw new MeshgateError('MG_ERR_ROUTE_UNKNOWN_CLUSTER', { detail: `cluster ${id}` });

        const { identity } = await state.authenticate({ socket: exchange.socket, authorization: undefined });
        context.admit({ identity });
        if (identity.subject !== `${AGENT_SUBJECT_PREFIX}${cluster.id}`) {
          throw new MeshgateError('MG_ERR_AGENT_IDENTITY_MISMATCH', { detail: `${identity.subject} registering ${cluster.id}` });
        }
        if (!cluster.group) throw new MeshgateError('MG_ERR_AGENT_NOT_VIA_AGENT', { detail: `cluster ${cluster.id}` });
        context.rule = state.authorize(identity, cluster.id);
        const group = cluster.group.value;
        if (group.closed) throw new MeshgateError('MG_ERR_TENANT_REMOVED', { detail: `cluster ${cluster.id} changed during registration` });

        const stream = await accept(websockets, refusals, exchange);
        exchange.sent(101);
        // The listener's idle timeout does not apply to a tunnel: pings find a dead one.
        exchange.clientSocket.setTimeout(0);
        const tunnel = await tunnels.attach(tenant, cluster.id, stream, timings);
        // A reload removed the cluster (or changed its trust) while HTTP/2 started.
        if (isClosed(group)) tunnel.close();
        group.tunnels.add(tunnel);
        hooks.onRegistration?.(tenant, 'OK');
        hooks.onConnected?.(tenant, cluster.id, identity.subject);
        const started = performance.now();
        exchange.onClose(() => tunnel.close());
        await tunnel.closed;
        group.tunnels.delete(tunnel);
        exchange.sent(101, true);
        hooks.onDisconnected?.(tenant, cluster.id, (performance.now() - started) / 1000);
      } catch (err) {
        hooks.onRegistration?.(tenant, err instanceof MeshgateError ? err.code : 'MG_ERR_INTERNAL');
        throw err;
      }
    },
  };
}

/** Read anew: a reload may close the group while a registration awaits. */
function isClosed(group: TunnelGroup): boolean {
  return group.closed;
}

/** Whether a Sec-WebSocket-Protocol header offers `protocol`. */
function offers(header: string | string[] | undefined, protocol: string): boolean {
  const values = Array.isArray(header) ? header : header === undefined ? [] : [header];
  return values.some((value) => value.split(',').some((p) => p.trim() === protocol));
}

/** Completes the WebSocket handshake on the exchange's socket; the WebSocket as a byte stream. */
function accept(server: WebSocketServer, refusals: WeakMap<IncomingMessage, (reason: string) => void>, exchange: UpgradeExchange): Promise<Duplex> {
  const req: IncomingMessage = exchange.req;
  // Header hygiene removed Upgrade (hop-by-hop) before routing; ws reads it again.
  req.headers.upgrade = exchange.upgrade;
  return new Promise((resolve, reject) => {
    const refuse = (reason: string): void => {
      exchange.clientSocket.off('close', gone);
      reject(new MeshgateError('MG_ERR_AGENT_UPGRADE_REQUIRED', { message: `not a valid WebSocket handshake: ${reason}` }));
    };
    const gone = (): void => refuse('the connection closed');
    exchange.clientSocket.once('close', gone);
    refusals.set(req, refuse);
    server.handleUpgrade(req, exchange.clientSocket, exchange.head, (ws: WebSocket) => {
      exchange.clientSocket.off('close', gone);
      const stream = webSocketStream(ws);
      // A WebSocket that errs (a bad frame, an oversized message) ends the tunnel; ws closes it.
      stream.on('error', () => undefined);
      resolve(stream);
    });
  });
}
