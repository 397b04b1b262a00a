/**
 * One TLS listener. It offers ALPN `h2` and `http/1.1` and hands each connection, by the protocol
 * negotiated, to an HTTP/2 server (`'stream'` only) or an HTTP/1.1 server. It never uses
 * `allowHTTP1` with a compat `'request'` listener: that combination crashes on gRPC responses.
 *
 * The SNI picks the tenant's TLS context (its server certificate and its own client-CA bundle).
 * Client certificates are requested but not required, and verified per tenant; whether a
 * presented certificate counts is decided per request (src/auth/client-cert.ts).
 */
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { constants as h2c, createServer as createHttp2Server, type Http2Session, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContext, type TLSSocket } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { MeshgateError, type ErrorCode } from '../errors.js';
import { createHandshakeLog } from '../observability/handshake-log.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { tlsServerOptions } from './tls-profile.js';
import { endRawResponse } from '../http/raw-response.js';
import { createTokenBucket } from '../policy/token-bucket.js';
import { createH1Exchange, createH2Exchange, createUpgradeExchange, type Exchange } from './exchange.js';
import { listen } from './listen.js';

/** How long an idle HTTP/2 session may take to finish after GOAWAY. */
const IDLE_CLOSE_GRACE_MS = 5_000;
/** How long a session told to go after a refusal (no tenant, over a limit, not authenticated) may take. */
const REFUSED_CLOSE_GRACE_MS = 1_000;
/**
 * Streams that may end badly per session: reset by the client before meshgate answered them, or
 * refused by meshgate. A burst, refilled at a rate per second. Past it the session is a flood, rapid
 * reset (CVE-2023-44487) or a stream of refused attempts, and is ended. A cancel after the answer
 * began is an ordinary cancel and costs nothing. nghttp2 has its own reset bucket (1,000), but when
 * it trips Node leaves the session hanging with its socket open; this one trips first.
 */
const ABUSE_BURST = 200;
const ABUSE_RATE_PER_SECOND = 20;
/** How long the GOAWAY of an abusive session has to reach the peer before its socket is cut. */
const ABUSE_CLOSE_GRACE_MS = 250;

export interface TlsListenerOptions {
  readonly name: string;
  readonly config: ListenerConfig;
  /** The TLS context for a server name, or undefined for the listener's default. */
  readonly contextFor: (serverName: string) => SecureContext | undefined;
  /** Served when the SNI names no tenant (the request is then refused over HTTP, with a reason). */
  readonly defaultCertificate: { readonly cert: string; readonly key: string };
  readonly onExchange: (exchange: Exchange) => void;
  /** Called for every accepted TLS connection, before any request on it. */
  readonly onConnection?: (socket: TLSSocket) => void;
  readonly metrics: Metrics;
  readonly logger: Logger;
}

export interface TlsListener {
  readonly name: string;
  listen(): Promise<AddressInfo>;
  /**
   * Stops accepting, asks open connections to finish (GOAWAY for HTTP/2), and ends them after the
   * grace. `beforeCut` runs when the grace is over and connections remain, so that their streams
   * can be ended with a status first.
   */
  close(graceMs: number, beforeCut?: () => void): Promise<void>;
}

export function createTlsListener(options: TlsListenerOptions): TlsListener {
  const { name, config, metrics, logger } = options;
  const sockets = new Set<TLSSocket>();
  const sessions = new Set<Http2Session>();
  const handshakeLog = createHandshakeLog(name, logger);
  /** The SNI each socket sent, from the SNI callback: a handshake that then fails may not expose it. */
  const sniOf = new WeakMap<TLSSocket, string>();

  const h1 = createHttpServer({
    maxHeaderSize: config.maxHeaderSize,
    headersTimeout: config.headersTimeout,
    requestTimeout: config.requestTimeout,
    keepAliveTimeout: config.keepAliveTimeout,
    // Node enforces the two timeouts above only when it checks, every 30 s by default: check
    // often enough that a configured headersTimeout means what it says.
    connectionsCheckingInterval: Math.max(100, Math.min(5_000, Math.floor(Math.min(config.headersTimeout, config.requestTimeout) / 2))),
    // Host is checked by the route stage, with a reason the client can read.
    requireHostHeader: false,
  });
  // The HTTP/1.1 server is handed sockets, never listens itself. Node only starts enforcing
  // headersTimeout and requestTimeout once a server emits 'listening', so start that here.
  h1.emit('listening');
  h1.setTimeout(config.idleTimeout);
  h1.on('request', (req, res) => options.onExchange(createH1Exchange(name, req, res)));
  h1.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    refuseRawSocket(socket, clientErrorCode(err));
  });
  // Upgrades (exec, port-forward) are requests too: routed, authenticated and authorized like any,
  // and answered on the raw socket by the plane that takes them (src/forward/tunnel.ts).
  h1.on('upgrade', (req: IncomingMessage, socket: TLSSocket, head: Buffer) => {
    socket.on('error', () => undefined);
    options.onExchange(createUpgradeExchange(name, req, socket, head, config.idleTimeout));
  });

  const h2 = createHttp2Server({
    settings: {
      maxConcurrentStreams: config.http2.maxConcurrentStreams,
      maxHeaderListSize: config.maxHeaderSize,
      initialWindowSize: config.http2.initialWindowSize,
    },
    maxSessionMemory: config.http2.maxSessionMemory,
    // Flood protections (nghttp2 also limits rapid resets itself): a session that keeps sending
    // what meshgate must answer or refuse is ended with GOAWAY.
    maxOutstandingPings: 10,
    maxSettings: 32,
    maxSessionInvalidFrames: 100,
    maxSessionRejectedStreams: 100,
    maxHeaderListPairs: 256,
  });
  /** GOAWAY, counted; the session ends after `graceMs` even if a stalled stream is still open (close() alone would wait for it forever). */
  const goAway = (session: Http2Session, graceMs: number): void => {
    if (session.closed || session.destroyed) return;
    metrics.goaways.inc({ direction: 'sent', tenant: '', listener: name });
    session.close();
    setTimeout(() => session.destroy(), graceMs).unref();
  };
  /**
   * GOAWAY after a refusal, counted, with the socket left to the peer to close (or cut after
   * `graceMs`). close() would shut the socket at once when no stream is open, while the peer may
   * still be sending the request meshgate has just refused: a socket closed on unread data is
   * reset, and the reset can destroy the refusal before the peer reads it (the real istioctl then
   * printed "EOF" instead of the error).
   */
  const goAwayAfterRefusal = (session: Http2Session, graceMs: number): void => {
    if (session.closed || session.destroyed || toldToGo.has(session)) return;
    toldToGo.add(session);
    metrics.goaways.inc({ direction: 'sent', tenant: '', listener: name });
    session.goaway(h2c.NGHTTP2_NO_ERROR, lastStreamId.get(session) ?? 0);
    setTimeout(() => session.destroy(), graceMs).unref();
  };
  /** The highest stream id each session has seen: a GOAWAY tells the peer every one of them was processed. */
  const lastStreamId = new WeakMap<Http2Session, number>();
  const toldToGo = new WeakSet<Http2Session>();
  const budgets = new WeakMap<Http2Session, StreamBudget>();
  const socketOf = new WeakMap<Http2Session, TLSSocket>();
  // The TLS socket being handed to the HTTP/2 server ('session' is emitted synchronously): the
  // session itself only exposes a proxy that may not be destroyed.
  let adopting: TLSSocket | undefined;
  h2.on('session', (session: Http2Session) => {
    const socket = adopting;
    if (socket) socketOf.set(session, socket);
    sessions.add(session);
    session.on('goaway', () => metrics.goaways.inc({ direction: 'received', tenant: '', listener: name }));
    session.once('close', () => sessions.delete(session));
    budgets.set(
      session,
      streamBudget(session, () => {
        metrics.goaways.inc({ direction: 'sent', tenant: '', listener: name });
        logger.warn({ listener: name, remote: socket?.remoteAddress }, 'HTTP/2 client reset or was refused too many streams; ending its session');
        // GOAWAY(ENHANCE_YOUR_CALM); the socket goes a moment later even if the peer never reads.
        session.destroy(new Error('too many streams reset or refused'), h2c.NGHTTP2_ENHANCE_YOUR_CALM);
        setTimeout(() => socket?.destroy(), ABUSE_CLOSE_GRACE_MS).unref();
      }),
    );
    session.on('error', (err) => logger.debug({ listener: name, err }, 'http2 session error'));
    // Idle: ask the client to go (GOAWAY), and end the session shortly after even if a stalled
    // stream is still open; close() alone would wait for that stream forever.
    session.setTimeout(config.idleTimeout, () => goAway(session, IDLE_CLOSE_GRACE_MS));
  });
  h2.on('stream', (stream: ServerHttp2Stream, headers) => {
    // Errors reach the forwarder or the renderer; a stream error must never become uncaught.
    stream.on('error', () => undefined);
    const session = stream.session;
    const socket = session ? socketOf.get(session) : undefined;
    // A stream whose session is already gone has nobody left to answer.
    if (!session || !socket) {
      stream.close(h2c.NGHTTP2_REFUSED_STREAM);
      return;
    }
    lastStreamId.set(session, Math.max(lastStreamId.get(session) ?? 0, stream.id ?? 0));
    const budget = budgets.get(session);
    budget?.watch(stream);
    options.onExchange(
      createH2Exchange(name, stream, headers, socket, () => budget?.spend(), () => goAwayAfterRefusal(session, REFUSED_CLOSE_GRACE_MS)),
    );
  });

  const server = createTlsServer({
    ...tlsServerOptions(config.tls),
    cert: options.defaultCertificate.cert,
    key: options.defaultCertificate.key,
    ca: [],
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ['h2', 'http/1.1'],
    handshakeTimeout: config.handshakeTimeout,
    // A regular function: `this` is the socket, whose SNI a failed handshake may not keep.
    SNICallback(this: TLSSocket, serverName, callback) {
      sniOf.set(this, serverName);
      callback(null, options.contextFor(serverName.toLowerCase()));
    },
  });
  server.maxConnections = config.maxConnections;
  server.on('secureConnection', (socket: TLSSocket) => {
    sockets.add(socket);
    metrics.connections.inc({ listener: name });
    socket.once('close', () => {
      sockets.delete(socket);
      metrics.connections.dec({ listener: name });
    });
    socket.setNoDelay(true);
    options.onConnection?.(socket);
    if (socket.alpnProtocol === 'h2') {
      adopting = socket;
      h2.emit('connection', socket);
      adopting = undefined;
    } else {
      h1.emit('connection', socket);
    }
  });
  server.on('tlsClientError', (err, socket) => {
    metrics.tlsHandshakeErrors.inc({ listener: name });
    const servername = (socket as { servername?: unknown }).servername;
    handshakeLog.failed({ sni: sniOf.get(socket) ?? (typeof servername === 'string' ? servername : undefined), remote: socket.remoteAddress, err });
    socket.destroy();
  });

  return {
    name,
    listen: () => listen(server, config.host, config.port),
    async close(graceMs, beforeCut) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) {
        metrics.goaways.inc({ direction: 'sent', tenant: '', listener: name });
        session.close();
      }
      h1.close();
      const drained = (async () => {
        while (sockets.size > 0) await new Promise((r) => setTimeout(r, 25));
      })();
      await Promise.race([drained, new Promise((r) => setTimeout(r, graceMs))]);
      if (sockets.size > 0 && beforeCut) {
        beforeCut();
        // A moment for those final statuses to reach the clients.
        await Promise.race([drained, new Promise((r) => setTimeout(r, 200))]);
      }
      for (const socket of sockets) socket.destroy();
      await closed;
      handshakeLog.close();
    },
  };
}

interface StreamBudget {
  /** Spends a token if `stream` ends reset before meshgate answered it. */
  watch(stream: ServerHttp2Stream): void;
  /** Spends a token now (meshgate refused a stream). */
  spend(): void;
}

/**
 * A session's budget of streams that end badly. It calls `onAbuse` once, when the session
 * overspends, and never from inside nghttp2's handling of received frames: ending a session there
 * (a stream's 'close' runs before that handling returns) makes Node 20 loop, queueing frames until
 * the process runs out of memory.
 */
function streamBudget(session: Http2Session, onAbuse: () => void): StreamBudget {
  const bucket = createTokenBucket(ABUSE_RATE_PER_SECOND, ABUSE_BURST);
  let tripped = false;
  const spend = (): void => {
    if (tripped || session.destroyed || bucket.take()) return;
    tripped = true;
    setImmediate(() => {
      if (!session.destroyed) onAbuse();
    });
  };
  return {
    watch(stream) {
      stream.once('close', () => {
        if (stream.rstCode !== h2c.NGHTTP2_NO_ERROR && !stream.headersSent) spend();
      });
    },
    spend,
  };
}

function clientErrorCode(err: NodeJS.ErrnoException): ErrorCode | undefined {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 'MG_ERR_REQUEST_HEADERS_TOO_LARGE';
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 'MG_ERR_REQUEST_TIMEOUT';
    case 'ECONNRESET':
    case 'EPIPE':
      return undefined;
    default:
      return 'MG_ERR_REQUEST_MALFORMED';
  }
}

/** Answers on a socket that has no usable request object (a parse error, an upgrade), then closes it. */
function refuseRawSocket(socket: Socket, code: ErrorCode | undefined): void {
  if (code === undefined) {
    // Nothing to say (the peer reset): the socket still must not linger.
    setTimeout(() => socket.destroy(), 1_000).unref();
    return;
  }
  const error = new MeshgateError(code);
  endRawResponse(socket, error.status, [['content-type', 'application/json']], `${JSON.stringify({ code: error.code, message: error.message })}\n`);
}
