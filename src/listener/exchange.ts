/**
 * One request and its response, whether it came over HTTP/1.1 or as an HTTP/2 stream. Stages read
 * the request and answer through this; only the forwarders look at the protocol underneath.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { constants as h2, type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { endRawResponse } from '../http/raw-response.js';

interface ExchangeBase {
  readonly id: string;
  readonly listener: string;
  readonly method: string;
  /** The request target (path and query) exactly as received. */
  readonly target: string;
  /** Host (HTTP/1.1) or :authority (HTTP/2) as received. */
  readonly authority: string | undefined;
  /** The request's headers, sanitized in place and then completed by the plane. */
  readonly headers: IncomingHttpHeaders;
  readonly socket: TLSSocket;
  /** The TLS server name (SNI) of the connection, lower-cased; undefined when none was sent. */
  readonly serverName: string | undefined;
  readonly remoteAddress: string | undefined;
  /** performance.now() when the request arrived. */
  readonly startedAt: number;
  readonly body: Readable;
  /**
   * Whether the request carries a body, read from its framing before header hygiene removes
   * `Transfer-Encoding`: a non-zero Content-Length or any Transfer-Encoding (HTTP/1.1), or DATA
   * to follow the HEADERS frame (HTTP/2).
   */
  readonly hasBody: boolean;
  readonly headersSent: boolean;
  /** The response status, once headers went out. */
  readonly status: number | undefined;
  /** Whether the response was sent to its end (false when it was cut short). */
  readonly completed: boolean;
  /** Sends a whole response. Only before headers went out. */
  respond(status: number, headers: OutgoingHttpHeaders, body: string | Buffer): void;
  /** Ends the exchange at once: a reset stream, or a destroyed connection. Never a clean end. */
  abort(): void;
  /** Asks the client to use another connection after this response (Connection: close, or GOAWAY). */
  closeConnectionAfter(): void;
  /** Counts a refusal against the connection: an HTTP/2 session refused too often is ended. */
  refused(): void;
  /** Runs once when the exchange is over, however it ended. */
  onClose(listener: () => void): void;
}

export interface H1Exchange extends ExchangeBase {
  readonly protocol: 'http/1.1';
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
}

export interface H2Exchange extends ExchangeBase {
  readonly protocol: 'h2';
  readonly stream: ServerHttp2Stream;
}

/**
 * An HTTP/1.1 request with `Upgrade:` (WebSocket, SPDY/3.1). Node hands over the raw socket: the
 * answer, whether a refusal or the upstream's 101, is written to it by hand, and the connection
 * is never reused for another request.
 */
export interface UpgradeExchange extends ExchangeBase {
  readonly protocol: 'upgrade';
  readonly req: IncomingMessage;
  /** The client's connection, detached from the HTTP server. */
  readonly clientSocket: TLSSocket;
  /** Bytes the client sent after the request head. */
  readonly head: Buffer;
  /** The `Upgrade:` header as the client sent it, read before header hygiene removes it. */
  readonly upgrade: string;
  /** The listener's idle timeout: a tunnel with no traffic for this long is closed. */
  readonly idleTimeoutMs: number;
  /** Records the status of a response head the tunnel wrote itself. */
  sent(status: number, completed?: boolean): void;
}

export type Exchange = H1Exchange | H2Exchange | UpgradeExchange;

function serverNameOf(socket: TLSSocket): string | undefined {
  const name = (socket as TLSSocket & { servername?: string | false }).servername;
  return typeof name === 'string' && name !== '' ? name.toLowerCase() : undefined;
}

/** What an HTTP/1.1 request says about itself, whether it is answered by a server or on its raw socket. */
function h1RequestFields(listener: string, req: IncomingMessage, socket: TLSSocket) {
  return {
    id: randomUUID(),
    listener,
    req,
    method: req.method ?? 'GET',
    target: req.url ?? '',
    authority: req.headers.host,
    headers: req.headers,
    socket,
    serverName: serverNameOf(socket),
    remoteAddress: socket.remoteAddress,
    startedAt: performance.now(),
    body: req,
  };
}

export function createH1Exchange(listener: string, req: IncomingMessage, res: ServerResponse): H1Exchange {
  // The listener only hands this server TLS sockets.
  // eslint-disable-next-line @typescript-eslint/no-unsafe-class-instance-assignment
  const socket = req.socket as TLSSocket;
  return {
    protocol: 'http/1.1',
    ...h1RequestFields(listener, req, socket),
    res,
    hasBody: req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0',
    get headersSent() {
      return res.headersSent;
    },
    get status() {
      return res.headersSent ? res.statusCode : undefined;
    },
    get completed() {
      return res.writableFinished;
    },
    respond(status, headers, body) {
      // A request whose body was not read to the end leaves the connection in an unknown
      // state: close it rather than let Node read and discard an unbounded remainder.
      if (!req.complete) res.shouldKeepAlive = false;
      res.writeHead(status, { ...headers, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    },
    abort() {
      res.destroy();
    },
    closeConnectionAfter() {
      res.shouldKeepAlive = false;
    },
    // One request at a time: an HTTP/1.1 client's refusals are paced by its own round trips.
    refused: () => undefined,
    onClose(listener) {
      res.once('close', listener);
    },
  };
}

export function createUpgradeExchange(listener: string, req: IncomingMessage, socket: TLSSocket, head: Buffer, idleTimeoutMs: number): UpgradeExchange {
  let status: number | undefined;
  let completed = false;
  const upgrade = req.headers.upgrade;
  return {
    protocol: 'upgrade',
    ...h1RequestFields(listener, req, socket),
    clientSocket: socket,
    head,
    upgrade: typeof upgrade === 'string' ? upgrade : '',
    idleTimeoutMs,
    hasBody: false,
    get headersSent() {
      return status !== undefined;
    },
    get status() {
      return status;
    },
    get completed() {
      return completed;
    },
    respond(code, headers, body) {
      if (status !== undefined || socket.destroyed) return;
      status = code;
      completed = true;
      const lines = Object.entries(headers).flatMap(([name, value]) =>
        value === undefined ? [] : (Array.isArray(value) ? value : [value]).map((one): [string, string] => [name, String(one)]),
      );
      endRawResponse(socket, code, lines, body);
    },
    abort() {
      socket.destroy();
    },
    closeConnectionAfter: () => undefined,
    refused: () => undefined,
    onClose(listener) {
      if (socket.destroyed) queueMicrotask(listener);
      else socket.once('close', listener);
    },
    sent(code, done = false) {
      status = code;
      completed = done;
    },
  };
}

/**
 * `socket` is the session's TLS socket itself: `stream.session.socket` is a proxy, which is not
 * the object other parts (connection limits) know the connection by.
 */
export function createH2Exchange(
  listener: string,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  socket: TLSSocket,
  onRefused: () => void = () => undefined,
  /** Ends the session with GOAWAY (the listener counts it, and bounds how long it may take). */
  goAway: () => void = () => stream.session?.close(),
): H2Exchange {
  const method = headers[h2.HTTP2_HEADER_METHOD];
  const path = headers[h2.HTTP2_HEADER_PATH];
  const authority = headers[h2.HTTP2_HEADER_AUTHORITY] ?? headers.host;
  let status: number | undefined;
  return {
    protocol: 'h2',
    id: randomUUID(),
    listener,
    stream,
    method: typeof method === 'string' ? method : 'GET',
    target: typeof path === 'string' ? path : '',
    authority: typeof authority === 'string' ? authority : undefined,
    headers,
    socket,
    serverName: serverNameOf(socket),
    remoteAddress: socket.remoteAddress,
    startedAt: performance.now(),
    body: stream,
    hasBody: !stream.endAfterHeaders,
    get headersSent() {
      return stream.headersSent;
    },
    get status() {
      if (status !== undefined) return status;
      // A stream destroyed before it answered has no sent headers at all.
      const sent = (stream.sentHeaders as OutgoingHttpHeaders | undefined)?.[h2.HTTP2_HEADER_STATUS];
      return typeof sent === 'number' ? sent : sent === undefined ? undefined : Number(sent);
    },
    get completed() {
      // At 'close', a stream that ended normally can still read writableFinished === false; what
      // tells a complete response from a cut one is that it ended without a reset.
      return stream.writableFinished || (stream.writableEnded && stream.rstCode === h2.NGHTTP2_NO_ERROR);
    },
    respond(code, responseHeaders, body) {
      if (stream.destroyed || stream.closed) return;
      status = code;
      stream.respond({ ...responseHeaders, [h2.HTTP2_HEADER_STATUS]: code, 'content-length': Buffer.byteLength(body) });
      stream.end(body, () => {
        // Answered before the request ended (a refusal): RST_STREAM(NO_ERROR) tells the client to
        // stop sending (RFC 9113 §8.1); otherwise its half of the stream would stay open.
        if (!stream.readableEnded && !stream.closed) stream.close(h2.NGHTTP2_NO_ERROR);
      });
    },
    abort() {
      // destroy(err) sends RST_STREAM(INTERNAL_ERROR); close() could end the stream cleanly instead.
      stream.destroy(new Error('exchange aborted'));
    },
    closeConnectionAfter() {
      // GOAWAY: streams already open finish, no new ones start on this connection.
      if (stream.session && !stream.session.closed) goAway();
    },
    refused: onRefused,
    onClose(listener) {
      stream.once('close', listener);
    },
  };
}
