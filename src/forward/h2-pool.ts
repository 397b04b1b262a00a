/**
 * A pool of HTTP/2 sessions to one upstream of one tenant: its istiod replicas (:15012, the xDS
 * plane; :15017, the webhook plane) or one mesh cluster's API server (the kube plane).
 *
 *  - Replicas come from the config (one URL, a list), or from the DNS of a headless Service,
 *    re-resolved periodically. A new stream goes to the replica with the fewest active streams.
 *  - Streams per session are capped by the smaller of our cap and the peer's
 *    SETTINGS_MAX_CONCURRENT_STREAMS; past it a new session opens. Node would otherwise queue the
 *    stream silently, and a never-ending xDS stream would hang behind it.
 *  - Keepalive pings no more often than every 30 s (istiod answers pings closer than 15 s with
 *    GOAWAY), and only while streams are open; no answer in time ends the session.
 *  - An upstream GOAWAY drains only that session: its streams go on to their natural end, new
 *    streams go elsewhere. istiod's 30-minute connection age never resets every stream at once.
 *  - A replica that cannot be reached is skipped for a backoff, and when none can be, a stream
 *    fails at once (UNAVAILABLE) rather than waiting.
 *  - With `http1Fallback`, TLS offers both `h2` and `http/1.1`; an upstream that picks HTTP/1.1
 *    (or no ALPN at all) makes the pool say so (`protocol`), and `open` rejects with Http1Only
 *    from then on, for the caller to use its HTTP/1.1 agent instead.
 * Pools are per tenant (and per cluster): a session never carries two tenants' streams.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { connect, type ClientHttp2Session, type ClientHttp2Stream, type OutgoingHttpHeaders, type Settings } from 'node:http2';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { backoffMs } from '../backoff.js';
import { isLoopbackHost } from '../config/schema.js';
import { MeshgateError } from '../errors.js';
import { keepSessionAlive } from './h2-keepalive.js';
import { refuseLoopback } from './refuse-loopback.js';

export interface H2PoolEvents {
  /** The number of sessions to a replica changed. */
  readonly sessions?: (replica: string, count: number) => void;
  /** A replica sent GOAWAY on one of its sessions. */
  readonly goaway?: (replica: string) => void;
  /**
   * What meshgate last learned of a replica: a session became ready (up), one failed to open
   * (down), or discovery no longer lists it (removed).
   */
  readonly health?: (replica: string, state: 'up' | 'down' | 'removed') => void;
}

/** Where the replicas are and how sessions to them behave: the xds upstream's settings. */
export interface H2PoolConfig {
  readonly url?: string | undefined;
  readonly replicas?: readonly string[] | undefined;
  readonly discovery: 'static' | 'dns';
  readonly dnsRefreshInterval: number;
  readonly serverName?: string | undefined;
  readonly maxStreamsPerSession: number;
  readonly keepaliveInterval: number;
  readonly keepaliveTimeout: number;
  readonly connectTimeout: number;
}

export interface H2PoolOptions {
  readonly config: H2PoolConfig;
  /** PEM bundle the upstream's certificate must chain to; system roots when absent. */
  readonly ca: string | undefined;
  /** meshgate's own client certificate (PEM texts). */
  readonly clientCertificate?: { readonly cert: string; readonly key: string } | undefined;
  readonly allowLoopback: boolean;
  /** Offer HTTP/1.1 as well, and report an upstream that picks it (see Http1Only). */
  readonly http1Fallback?: boolean;
  readonly events?: H2PoolEvents;
  /** Opens each session's byte stream (an agent's tunnel) instead of dialing the replica; TLS runs over it. */
  readonly dial?: () => Duplex;
}

/** The upstream does not speak HTTP/2: use HTTP/1.1. Never reaches a client. */
export class Http1Only extends Error {
  constructor() {
    super('the upstream does not offer HTTP/2');
  }
}

export interface ReplicaStats {
  readonly replica: string;
  readonly sessions: number;
  readonly streams: number;
}

export interface H2Pool {
  /** The :authority streams should carry (the upstream's name). */
  readonly authority: string;
  /** What the upstream speaks, as far as is known: 'unknown' until a first session is up. */
  readonly protocol: 'unknown' | 'h2' | 'http/1.1';
  /**
   * Opens a stream. With a `signal`, aborting it cancels the stream (RST_STREAM(CANCEL)); without
   * one (it costs a listener per stream), the caller closes the stream itself.
   */
  open(headers: OutgoingHttpHeaders, options: { endStream: boolean; signal?: AbortSignal; replica?: string }): Promise<ClientHttp2Stream>;
  /**
   * The replicas new streams may go to (`host:port`), for a caller that must ask each of them
   * (`open` with `replica`). Waits for the first DNS resolution.
   */
  replicas(): Promise<string[]>;
  stats(): ReplicaStats[];
  close(): void;
}

interface Replica {
  readonly key: string;
  readonly origin: string;
  readonly sessions: Set<PooledSession>;
  active: number;
  failures: number;
  failedUntil: number;
  /** The streams per session this replica last allowed (SETTINGS_MAX_CONCURRENT_STREAMS), once known. */
  peerLimit: number | undefined;
  removed: boolean;
  /** When its backoff ends, a session is tried even if no stream asks for one (see `fail`). */
  probe?: NodeJS.Timeout;
}

interface PooledSession {
  readonly session: ClientHttp2Session;
  readonly replica: Replica;
  readonly ready: Promise<void>;
  active: number;
  limit: number;
  draining: boolean;
  idleTimer?: NodeJS.Timeout;
}

/** Flow-control window per upstream stream: bounds what one slow client can make meshgate hold. */
const STREAM_WINDOW = 256 * 1024;
const SESSION_WINDOW = 16 * 1024 * 1024;
const IDLE_SESSION_MS = 300_000;

export function createH2Pool(options: H2PoolOptions): H2Pool {
  const { config } = options;
  const first = new URL(config.url ?? config.replicas?.[0] ?? '');
  const serverName = config.serverName ?? (isIP(first.hostname.replace(/^\[|\]$/g, '')) === 0 ? first.hostname : undefined);
  const authority = serverName === undefined ? first.host : `${serverName}:${first.port || '443'}`;
  const replicas = new Map<string, Replica>();
  let discovered: Promise<void> = Promise.resolve();
  let closed = false;
  let protocol: H2Pool['protocol'] = 'unknown';

  const addReplica = (origin: string): void => {
    const key = new URL(origin).host;
    const existing = replicas.get(key);
    if (existing) {
      existing.removed = false;
      return;
    }
    replicas.set(key, { key, origin, sessions: new Set(), active: 0, failures: 0, failedUntil: 0, removed: false, peerLimit: undefined });
  };

  let dnsTimer: NodeJS.Timeout | undefined;
  if (config.discovery === 'dns') {
    const port = first.port || '443';
    const resolve = async (): Promise<void> => {
      const addresses = await dnsLookup(first.hostname, { all: true });
      const seen = new Set<string>();
      for (const { address, family } of addresses) {
        if (!options.allowLoopback && isLoopbackHost(address)) continue;
        const host = family === 6 ? `[${address}]` : address;
        seen.add(`${host}:${port}`);
        addReplica(`https://${host}:${port}`);
      }
      // Replicas that left the Service: no new streams; their sessions finish what they carry.
      for (const replica of replicas.values()) {
        if (seen.has(replica.key) || replica.removed) continue;
        replica.removed = true;
        options.events?.health?.(replica.key, 'removed');
        for (const pooled of replica.sessions) drain(pooled);
      }
    };
    const refresh = (): void => {
      discovered = resolve();
      discovered.catch(() => undefined);
    };
    refresh();
    dnsTimer = setInterval(refresh, config.dnsRefreshInterval);
    dnsTimer.unref();
  } else {
    for (const url of config.url === undefined ? (config.replicas ?? []) : [config.url]) addReplica(new URL(url).origin);
  }

  const drain = (pooled: PooledSession): void => {
    pooled.draining = true;
    if (pooled.active === 0 && !pooled.session.closed) pooled.session.close();
  };

  const release = (pooled: PooledSession): void => {
    pooled.active--;
    pooled.replica.active--;
    if (pooled.active > 0) return;
    if (pooled.draining) {
      if (!pooled.session.closed) pooled.session.close();
      return;
    }
    idle(pooled);
  };

  /** A session with no stream closes after IDLE_SESSION_MS, unless a stream comes first. */
  const idle = (pooled: PooledSession): void => {
    clearTimeout(pooled.idleTimer);
    pooled.idleTimer = setTimeout(() => {
      if (pooled.active === 0) drain(pooled);
    }, IDLE_SESSION_MS);
    pooled.idleTimer.unref();
  };

  /** Why the last session failed: the cause given while every replica is backing off. */
  let lastFailure: unknown;
  const fail = (replica: Replica, err: unknown): void => {
    lastFailure = err;
    replica.failures++;
    const delay = backoffMs(replica.failures);
    replica.failedUntil = Date.now() + delay;
    options.events?.health?.(replica.key, 'down');
    // With someone watching its health, a replica that failed is tried again when its backoff
    // ends, traffic or not: streams avoid it meanwhile, so none might ever find out it is back.
    if (options.events?.health === undefined) return;
    clearTimeout(replica.probe);
    replica.probe = setTimeout(() => {
      replica.probe = undefined;
      if (closed || replica.removed || replica.sessions.size > 0) return;
      const pooled = openSession(replica);
      // Ready, it waits for streams like any idle session; failed, `fail` schedules the next try.
      pooled.ready.then(() => {
        if (pooled.active === 0) idle(pooled);
      }, () => undefined);
    }, delay);
    replica.probe.unref();
  };

  const openSession = (replica: Replica): PooledSession => {
    const url = new URL(replica.origin);
    const replicaHost = url.hostname.replace(/^\[|\]$/g, '');
    const tls = {
      ca: options.ca,
      cert: options.clientCertificate?.cert,
      key: options.clientCertificate?.key,
      servername: serverName,
      rejectUnauthorized: true as const,
      ...(options.allowLoopback || isIP(replicaHost) !== 0 ? {} : { lookup: refuseLoopback }),
    };
    const { dial } = options;
    const alpn = options.http1Fallback === true ? ['h2', 'http/1.1'] : ['h2'];
    const session = connect(replica.origin, {
      ...tls,
      // node:http2 offers only h2; to learn whether the upstream would rather speak HTTP/1.1,
      // the TLS connection is ours, offering both. Through a dial, it is ours anyway.
      ...(dial !== undefined
        ? { createConnection: () => tlsConnect({ ...tls, socket: dial(), ALPNProtocols: alpn }) }
        : options.http1Fallback === true
          ? {
              createConnection: () => tlsConnect({ ...tls, host: replicaHost, port: Number(url.port || 443), ALPNProtocols: alpn }),
            }
          : {}),
      settings: { enablePush: false, initialWindowSize: STREAM_WINDOW },
      maxSessionMemory: 64,
      // Until its SETTINGS arrive, assume the peer takes what it allowed last time, or what we
      // would send it.
      peerMaxConcurrentStreams: replica.peerLimit ?? config.maxStreamsPerSession,
    });
    const pooled: PooledSession = {
      session,
      replica,
      active: 0,
      limit: replica.peerLimit ?? config.maxStreamsPerSession,
      draining: false,
      ready: new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          session.destroy(new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { detail: `no HTTP/2 session within ${config.connectTimeout} ms` }));
        }, config.connectTimeout);
        session.once('remoteSettings', () => {
          clearTimeout(timer);
          resolve();
        });
        session.once('close', () => {
          clearTimeout(timer);
          reject(protocol === 'http/1.1' ? new Http1Only() : new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { detail: 'session closed before it was ready' }));
        });
        session.once('error', (err: Error) => {
          clearTimeout(timer);
          reject(protocol === 'http/1.1' ? new Http1Only() : err);
        });
      }),
    };
    pooled.ready.then(
      () => {
        protocol = 'h2';
        replica.failures = 0;
        options.events?.health?.(replica.key, 'up');
        session.setLocalWindowSize(SESSION_WINDOW);
      },
      (err: unknown) => {
        if (!(err instanceof Http1Only)) fail(replica, err);
      },
    );
    if (options.http1Fallback === true) {
      // The socket must not be touched before node:http2 has taken it; by 'connect' it has. An
      // HTTP/1.1 server reads the preface already sent as a bad request, and is hung up on.
      session.once('connect', () => {
        if ((session.socket as { alpnProtocol?: string | false }).alpnProtocol === 'h2') return;
        protocol = 'http/1.1';
        session.destroy(new Http1Only());
      });
    }
    session.on('remoteSettings', (settings: Settings) => {
      pooled.limit = Math.min(config.maxStreamsPerSession, settings.maxConcurrentStreams ?? config.maxStreamsPerSession);
      replica.peerLimit = pooled.limit;
    });
    session.on('error', () => undefined);
    session.on('goaway', () => {
      options.events?.goaway?.(replica.key);
      drain(pooled);
    });
    keepSessionAlive(session, { intervalMs: config.keepaliveInterval, timeoutMs: config.keepaliveTimeout, idle: () => pooled.active === 0 });
    session.once('close', () => {
      clearTimeout(pooled.idleTimer);
      replica.sessions.delete(pooled);
      options.events?.sessions?.(replica.key, replica.sessions.size);
    });
    replica.sessions.add(pooled);
    options.events?.sessions?.(replica.key, replica.sessions.size);
    return pooled;
  };

  /**
   * Reserves a slot on the least busy replica, or on the one asked for (backing off or not: its
   * caller asked for it by name), on a session with room or a new one.
   */
  const pick = (wanted?: string): PooledSession => {
    const now = Date.now();
    let best: Replica | undefined;
    if (wanted === undefined) {
      for (const replica of replicas.values()) {
        if (replica.removed || replica.failedUntil > now) continue;
        if (best === undefined || replica.active < best.active) best = replica;
      }
    } else {
      best = replicas.get(wanted);
      if (best?.removed === true) best = undefined;
      if (best === undefined) throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { message: 'no such replica of the upstream', detail: wanted });
    }
    if (best === undefined) {
      throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { message: 'no replica of the upstream is reachable', cause: lastFailure });
    }
    let pooled: PooledSession | undefined;
    for (const candidate of best.sessions) {
      if (!candidate.draining && !candidate.session.closed && !candidate.session.destroyed && candidate.active < candidate.limit) {
        pooled = candidate;
        break;
      }
    }
    pooled ??= openSession(best);
    clearTimeout(pooled.idleTimer);
    pooled.active++;
    best.active++;
    return pooled;
  };

  return {
    authority,
    get protocol() {
      return protocol;
    },
    async open(headers, { endStream, signal, replica: wanted }) {
      if (closed) throw new MeshgateError('MG_ERR_SHUTTING_DOWN');
      if (protocol === 'http/1.1') throw new Http1Only();
      if (replicas.size === 0) {
        // Only the first resolution is waited for; later ones refresh in the background.
        await discovered.catch(() => undefined);
        // A resolution may have added replicas while this waited.
        // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition
        if (replicas.size === 0) {
          throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { detail: `${first.hostname} resolves to no replica` });
        }
      }
      let lastError: unknown;
      for (let attempt = 0; attempt < 3; attempt++) {
        const pooled = pick(wanted);
        try {
          await pooled.ready;
        } catch (err) {
          release(pooled);
          if (err instanceof Http1Only) throw err;
          lastError = err;
          continue;
        }
        const { session } = pooled;
        if (pooled.draining || session.closed || session.destroyed || pooled.active > pooled.limit) {
          release(pooled);
          continue;
        }
        if (signal?.aborted === true) {
          release(pooled);
          throw new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: 'the client went away before the stream opened' });
        }
        let stream: ClientHttp2Stream;
        try {
          stream = session.request(headers, signal === undefined ? { endStream } : { endStream, signal });
        } catch (err) {
          // Out of stream ids, or closing: this session takes no more.
          drain(pooled);
          release(pooled);
          lastError = err;
          continue;
        }
        stream.once('close', () => release(pooled));
        return stream;
      }
      throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { cause: lastError, detail: 'could not open a stream upstream' });
    },
    async replicas() {
      if (replicas.size === 0) await discovered.catch(() => undefined);
      return [...replicas.values()].filter((r) => !r.removed).map((r) => r.key);
    },
    stats: () =>
      [...replicas.values()].map((r) => ({ replica: r.key, sessions: r.sessions.size, streams: r.active })),
    close() {
      closed = true;
      clearInterval(dnsTimer);
      for (const replica of replicas.values()) {
        clearTimeout(replica.probe);
        for (const pooled of replica.sessions) pooled.session.destroy();
        options.events?.health?.(replica.key, 'removed');
      }
    },
  };
}
