/**
 * An HTTP(S) upstream of one tenant: its origin and its own connection pools. An HTTPS upstream
 * gets an HTTP/2 pool, used as long as the upstream offers h2 (requests multiplex on a few
 * sessions), and an HTTP/1.1 keep-alive agent for an upstream that does not. Pools are never
 * shared between tenants, so a pooled connection can never carry one tenant's request to another's
 * backend. TLS is always verified (against the configured CA, or the system roots), and a name
 * that resolves to loopback is refused: istiod trusts loopback callers fully.
 *
 * An upstream may also be reached through a `dial` instead of its address (a mesh API server
 * behind an agent, src/forward/agent-tunnels.ts): each connection is then a stream that `dial`
 * opens, and meshgate's TLS, verified exactly as for a direct upstream, runs over it.
 */
import type { ClientRequestArgs } from 'node:http';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { isIP } from 'node:net';
import { PassThrough, type Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import type { UpstreamConfig } from '../config/schema.js';
import type { ConfigFiles } from '../config/files.js';
import { MeshgateError } from '../errors.js';
import { refuseLoopback } from './refuse-loopback.js';
import { createH2Pool, type H2Pool, type H2PoolEvents } from './h2-pool.js';

export interface HttpUpstream {
  /** `https://istiod.acme-cp.svc:15017`: protocol, host and port only. */
  readonly origin: URL;
  readonly agent: HttpAgent;
  /** HTTPS upstreams: the HTTP/2 pool, until the upstream turns out to speak only HTTP/1.1. */
  readonly h2?: H2Pool | undefined;
  /** What a connection of its own (an upgrade, never pooled) needs: the same TLS checks and lookup. */
  readonly connectOptions: Readonly<TlsConnectOptions>;
  /**
   * The agent for a connection of its own: false (a fresh one, to the origin's address), or, for an
   * upstream reached through a dial, an agent that dials a fresh connection for every request.
   */
  readonly upgradeAgent: HttpsAgent | false;
  close(): void;
}

export interface TlsConnectOptions {
  readonly ca?: string | undefined;
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  readonly servername?: string | undefined;
  readonly rejectUnauthorized: true;
  readonly lookup?: typeof refuseLoopback | undefined;
}

export interface UpstreamOptions {
  readonly allowLoopback: boolean;
  /** meshgate's own client certificate for this upstream (PEM texts). */
  readonly clientCertificate?: { readonly cert: string; readonly key: string } | undefined;
  /** HTTP/1.1 connections at once; long-lived requests (watches) each hold one. */
  readonly maxSockets?: number;
  /** Use HTTP/2 when an HTTPS upstream offers it (the default), or never. */
  readonly http2?: boolean;
  readonly events?: H2PoolEvents;
  /**
   * Opens each connection's byte stream (an agent's tunnel) instead of dialing the origin; throws
   * a MeshgateError when it cannot. TLS runs over what it returns.
   */
  readonly dial?: (() => Duplex) | undefined;
}

/** Where an upstream is, and how its certificate is checked. */
export interface UpstreamTarget {
  readonly url: string;
  readonly ca?: string | undefined;
  readonly serverName?: string | undefined;
}

/** HTTP/2 sessions to an API server or istiod's webhook port: as towards istiod's xDS port. */
const H2_SESSIONS = {
  discovery: 'static',
  dnsRefreshInterval: 30_000,
  maxStreamsPerSession: 1_000,
  keepaliveInterval: 30_000,
  keepaliveTimeout: 10_000,
  connectTimeout: 5_000,
} as const;

export function createHttpUpstream(config: UpstreamConfig | UpstreamTarget, files: ConfigFiles, options: UpstreamOptions): HttpUpstream {
  const url = new URL(config.url);
  const origin = new URL(url.origin);
  const tls: TlsConnectOptions = {
    ca: config.ca === undefined ? undefined : files.text(config.ca),
    cert: options.clientCertificate?.cert,
    key: options.clientCertificate?.key,
    servername: config.serverName ?? (isIP(origin.hostname.replace(/^\[|\]$/g, '')) === 0 ? origin.hostname : undefined),
    rejectUnauthorized: true,
    lookup: options.allowLoopback ? undefined : refuseLoopback,
  };
  const pool = {
    keepAlive: true,
    maxSockets: options.maxSockets ?? 256,
    // As many idle connections as busy ones: a smaller pool would close connections after each
    // burst and pay a TLS handshake to istiod for the next one.
    maxFreeSockets: 256,
    scheduling: 'lifo' as const,
    lookup: options.allowLoopback ? undefined : refuseLoopback,
  };
  const agent =
    origin.protocol === 'https:' ? new HttpsAgent({ ...pool, ...tls }) : new HttpAgent(pool);
  const { dial } = options;
  let upgradeAgent: HttpsAgent | false = false;
  if (dial !== undefined && agent instanceof HttpsAgent) {
    agent.createConnection = dialing(dial);
    // Never kept alive: an upgraded connection is the tunnel's alone.
    upgradeAgent = new HttpsAgent({ ...tls, keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
    upgradeAgent.createConnection = dialing(dial);
  }
  const h2 =
    origin.protocol === 'https:' && options.http2 !== false
      ? createH2Pool({
          config: { ...H2_SESSIONS, url: origin.href, serverName: config.serverName },
          ca: tls.ca,
          clientCertificate: options.clientCertificate,
          allowLoopback: options.allowLoopback,
          http1Fallback: true,
          ...(options.events ? { events: options.events } : {}),
          ...(dial === undefined ? {} : { dial }),
        })
      : undefined;
  return {
    origin,
    agent,
    h2,
    connectOptions: tls,
    upgradeAgent,
    close: () => {
      agent.destroy();
      if (upgradeAgent) upgradeAgent.destroy();
      h2?.close();
    },
  };
}

type CreateConnection = (options: ClientRequestArgs, done?: (err: Error | null, stream: Duplex) => void) => Duplex | undefined;

/** What a failed dial hands an agent with its error: never read. */
const FAILED = new PassThrough();

/** An HTTPS agent's createConnection that runs its TLS over a dialed stream; a failed dial fails the request. */
function dialing(dial: () => Duplex): CreateConnection {
  return (options, done) => {
    let stream: Duplex;
    try {
      stream = dial();
    } catch (err) {
      // Node's agents pass `done`; the request fails with the error given to it.
      done?.(err instanceof Error ? err : new Error(String(err)), FAILED);
      return undefined;
    }
    return tlsConnect({ ...(options as object), socket: stream });
  };
}

const TLS_ERROR = /^(CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERR_TLS_|ERR_SSL_|HOSTNAME_MISMATCH|EPROTO$)/;
const UNAVAILABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'EADDRNOTAVAIL']);

/** What an upstream failure means to the client. */
export function classifyUpstreamError(err: unknown): MeshgateError {
  if (err instanceof MeshgateError) return err;
  const code = (err as { code?: string }).code ?? '';
  if (TLS_ERROR.test(code)) return new MeshgateError('MG_ERR_UPSTREAM_TLS', { detail: code, cause: err });
  if (UNAVAILABLE.has(code)) return new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { detail: code, cause: err });
  return new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: code || String(err), cause: err });
}
