/**
 * One TLS listener. It offers ALPN `h2` and `http/1.1` and hands each connection, by the protocol
 * negotiated, to an HTTP/2 server (`'stream'` only) or an HTTP/1.1 server. It never uses
 * `allowHTTP1` with a compat `'request'` listener: that combination crashes on gRPC responses.
 *
 * The SNI picks the tenant's TLS context (its server certificate and its own client-CA bundle).
 * Client certificates are requested but not required, and verified per tenant; whether a
 * presented certificate counts is decided per request (src/auth/client-cert.ts).
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttp2Server, type Http2Session } from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContext, type TLSSocket } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { MeshgateError, type ErrorCode } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { TLS_SERVER_OPTIONS } from '../tenancy/tenant.js';
import { createH1Exchange, createH2Exchange, type Exchange } from './exchange.js';
import { listen } from './listen.js';

/** How long an idle HTTP/2 session may take to finish after GOAWAY. */
const IDLE_CLOSE_GRACE_MS = 5_000;

export interface TlsListenerOptions {
  readonly name: string;
  readonly config: ListenerConfig;
  /** The TLS context for a server name, or undefined for the listener's default. */
  readonly contextFor: (serverName: string) => SecureContext | undefined;
  /** Served when the SNI names no tenant (the request is then refused over HTTP, with a reason). */
  readonly defaultCertificate: { readonly cert: string; readonly key: string };
  readonly onExchange: (exchange: Exchange) => void;
  readonly metrics: Metrics;
  readonly logger: Logger;
}

export interface TlsListener {
  readonly name: string;
  listen(): Promise<AddressInfo>;
  /** Stops accepting, asks open connections to finish (GOAWAY for HTTP/2), and ends them after the grace. */
  close(graceMs: number): Promise<void>;
}

export function createTlsListener(options: TlsListenerOptions): TlsListener {
  const { name, config, metrics, logger } = options;
  const sockets = new Set<TLSSocket>();
  const sessions = new Set<Http2Session>();

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
  h1.on('upgrade', (_req, socket: Socket) => refuseRawSocket(socket, 'MG_ERR_REQUEST_UPGRADE'));

  const h2 = createHttp2Server({
    settings: { maxConcurrentStreams: config.http2.maxConcurrentStreams, maxHeaderListSize: config.maxHeaderSize },
    maxSessionMemory: 64,
  });
  h2.on('session', (session: Http2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    session.on('error', (err) => logger.debug({ listener: name, err }, 'http2 session error'));
    // Idle: ask the client to go (GOAWAY), and end the session shortly after even if a stalled
    // stream is still open; close() alone would wait for that stream forever.
    session.setTimeout(config.idleTimeout, () => {
      session.close();
      setTimeout(() => session.destroy(), IDLE_CLOSE_GRACE_MS).unref();
    });
  });
  h2.on('stream', (stream, headers) => {
    // Errors reach the forwarder or the renderer; a stream error must never become uncaught.
    stream.on('error', () => undefined);
    options.onExchange(createH2Exchange(name, stream, headers));
  });

  const server = createTlsServer({
    ...TLS_SERVER_OPTIONS,
    cert: options.defaultCertificate.cert,
    key: options.defaultCertificate.key,
    ca: [],
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ['h2', 'http/1.1'],
    handshakeTimeout: config.handshakeTimeout,
    SNICallback: (serverName, callback) => callback(null, options.contextFor(serverName.toLowerCase())),
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
    if (socket.alpnProtocol === 'h2') h2.emit('connection', socket);
    else h1.emit('connection', socket);
  });
  server.on('tlsClientError', (err, socket) => {
    metrics.tlsHandshakeErrors.inc({ listener: name });
    logger.debug({ listener: name, err: err.message, remote: socket.remoteAddress }, 'TLS handshake failed');
    socket.destroy();
  });

  return {
    name,
    listen: () => listen(server, config.host, config.port),
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.close();
      h1.close();
      const drained = (async () => {
        while (sockets.size > 0) await new Promise((r) => setTimeout(r, 25));
      })();
      await Promise.race([drained, new Promise((r) => setTimeout(r, graceMs))]);
      for (const socket of sockets) socket.destroy();
      await closed;
    },
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
  if (code !== undefined && socket.writable) {
    const error = new MeshgateError(code);
    const body = `${JSON.stringify({ code: error.code, message: error.message })}\n`;
    socket.end(
      `HTTP/1.1 ${error.status} ${STATUS_TEXT[error.status] ?? 'Error'}\r\n` +
        'content-type: application/json\r\n' +
        `content-length: ${Buffer.byteLength(body)}\r\n` +
        'connection: close\r\n\r\n' +
        body,
    );
  }
  // The peer has a second to read the answer; a half-closed socket must not linger.
  setTimeout(() => socket.destroy(), 1000).unref();
}

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
};
