/**
 * An HTTP(S) upstream of one tenant: its origin and its own connection pools. An HTTPS upstream
 * gets an HTTP/2 pool, used as long as the upstream offers h2 (requests multiplex on a few
 * sessions), and an HTTP/1.1 keep-alive agent for an upstream that does not. Pools are never
 * shared between tenants, so a pooled connection can never carry one tenant's request to another's
 * backend. TLS is always verified (against the configured CA, or the system roots), and a name
 * that resolves to loopback is refused: istiod trusts loopback callers fully.
 */
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { isIP } from 'node:net';
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

export function createHttpUpstream(config: UpstreamConfig, files: ConfigFiles, options: UpstreamOptions): HttpUpstream {
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
  const h2 =
    origin.protocol === 'https:' && options.http2 !== false
      ? createH2Pool({
          config: { ...H2_SESSIONS, url: origin.href, serverName: config.serverName },
          ca: tls.ca,
          clientCertificate: options.clientCertificate,
          allowLoopback: options.allowLoopback,
          http1Fallback: true,
          ...(options.events ? { events: options.events } : {}),
        })
      : undefined;
  return {
    origin,
    agent,
    h2,
    connectOptions: tls,
    close: () => {
      agent.destroy();
      h2?.close();
    },
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
