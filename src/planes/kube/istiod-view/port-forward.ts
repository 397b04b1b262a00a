/**
 * A port-forward to a control-plane view's istiod pod, served by meshgate itself: there is no pod,
 * and the tenant may not reach the provider's cluster. meshgate answers the upgrade as the API
 * server would (SPDY/3.1 with `portforward.k8s.io`, which is what Kiali sends; or SPDY tunnelled in
 * a WebSocket, `SPDY/3.1+portforward.k8s.io`, what kubectl ≥ 1.31 sends), and reads each forwarded
 * connection as the HTTP/1.1 it carries. Each request in it is then a debug-plane request:
 *
 *   port 15014: GET or HEAD of an allowlisted debug endpoint (`/version`, `/debug/syncz`, …);
 *   port 8080:  `GET /ready`, which is whether istiod's debug port answers (`/version` is asked);
 *   any other port: refused on the stream's error stream, as the kubelet refuses a closed port.
 *
 * forwarded to the tenant's istiod with meshgate's own istiod token (the requests Kiali sends
 * through a port-forward carry no credential). Nothing else reaches istiod: not another port, not a
 * method that writes, not an endpoint off the allowlist.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { MeshgateError } from '../../../errors.js';
import { forwardHttp } from '../../../forward/http.js';
import type { HttpUpstream } from '../../../forward/upstream.js';
import { parseRequestTarget } from '../../../http/canonical-path.js';
import { renderHttpError } from '../../../http/render.js';
import { endRawResponse } from '../../../http/raw-response.js';
import { createH1Exchange, type UpgradeExchange } from '../../../listener/exchange.js';
import { checkDebugEndpoint, debugEndpoint } from '../../debug/endpoints.js';
import { createSpdyServerSession, type SpdySession, type SpdyStream, type SpdyTransport } from '../spdy.js';
import { MONITORING_PORT, READY_PORT } from './objects.js';

const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';
const TUNNELLED_PORT_FORWARD = 'SPDY/3.1+portforward.k8s.io';
/** Kiali sends one small GET per port-forward; a frame or header block larger than this is not one. */
const MAX_FRAME_BYTES = 1024 * 1024;
/** Forwarded connections at once in one port-forward (each is two SPDY streams). */
const MAX_STREAMS = 64;
/** How long a forwarded connection may take to send its request head. */
const HEADERS_TIMEOUT_MS = 10_000;
/**
 * A forwarded connection holds what its one request needs, and no more: bytes beyond 64 KiB that
 * nobody reads reset it. Answers wait while the carrier holds 1 MiB the client has not taken.
 */
const SESSION_LIMITS = { maxFrameBytes: MAX_FRAME_BYTES, maxStreams: MAX_STREAMS, maxStreamBufferBytes: 64 * 1024 };
const CARRIER_HIGH_WATER = 1024 * 1024;

export interface ViewForward {
  readonly upstream: HttpUpstream;
  /** The tenant's debug endpoint allowlist. */
  readonly endpoints: ReadonlySet<string>;
  /** meshgate's istiod token and the cluster it belongs to. */
  readonly token: { readonly token: string; readonly cluster: string };
  /** The debug plane's deadline for one request. */
  readonly timeoutMs: number;
  /** Spends a token of the tenant's debug request rate for each request, or throws MG_ERR_LIMIT_RATE. */
  readonly takeRate?: (() => void) | undefined;
  /** Called once the tunnel is open; the returned function once it has closed. */
  readonly onOpen?: () => () => void;
  /** Each forwarded request's end: the port, the endpoint and the status (0 for a refusal on the error stream). */
  readonly onRequest?: (port: number, endpoint: string, status: number) => void;
}

/**
 * Answers the upgrade and serves the port-forward until either side ends it. Resolves when the
 * tunnel is over; the caller has already decided that the caller may port-forward to this pod.
 */
export function servePortForward(exchange: UpgradeExchange, forward: ViewForward): Promise<{ status: number }> {
  const socket = exchange.clientSocket;
  const closed = new Promise<void>((resolve) => exchange.onClose(resolve));
  const opened = (): void => {
    exchange.sent(101);
    const onClosed = forward.onOpen?.();
    if (onClosed) void closed.then(onClosed);
  };
  socket.setTimeout(exchange.idleTimeoutMs, () => socket.destroy());
  const onStream = connectionHandler(forward);

  if (exchange.upgrade.toLowerCase() === 'websocket') {
    const offered = (exchange.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim());
    if (!offered.includes(TUNNELLED_PORT_FORWARD)) {
      refuse(exchange, 400, `a WebSocket port-forward to the istiod view speaks ${TUNNELLED_PORT_FORWARD}; offered: ${offered.join(', ').slice(0, 200)}`);
      return closed.then(() => ({ status: 400 }));
    }
    const server = new WebSocketServer({ noServer: true, maxPayload: MAX_FRAME_BYTES + 8, perMessageDeflate: false });
    // A handshake ws cannot take (a bad key or version) is refused here, as any refusal.
    server.on('wsClientError', (err: Error) => refuse(exchange, 400, `not a valid WebSocket handshake: ${err.message}`));
    // ws refuses `SPDY/3.1+portforward.k8s.io` as a subprotocol ("/" is not a token character,
    // RFC 6455 §4.1), and Kubernetes sends it all the same: it was checked above, and is answered
    // here, with ws never reading it.
    delete exchange.req.headers['sec-websocket-protocol'];
    server.on('headers', (headers: string[]) => headers.push(`Sec-WebSocket-Protocol: ${TUNNELLED_PORT_FORWARD}`));
    // Header hygiene removed Upgrade (hop-by-hop) before routing; ws reads it again.
    exchange.req.headers.upgrade = exchange.upgrade;
    server.handleUpgrade(exchange.req, socket, exchange.head, (ws: WebSocket) => {
      opened();
      const session: SpdySession = createSpdyServerSession(
        {
          write: (bytes) => {
            if (ws.readyState !== ws.OPEN) return true;
            // Sent to the socket, ws calls back: that is when a full carrier has room again.
            ws.send(bytes, { binary: true }, () => {
              if (ws.bufferedAmount < CARRIER_HIGH_WATER) session.drained();
            });
            return ws.bufferedAmount < CARRIER_HIGH_WATER;
          },
          end: () => ws.close(1000),
        },
        onStream,
        SESSION_LIMITS,
      );
      // ws's default binaryType: each message is one Buffer (as src/forward/websocket-stream.ts takes it).
      ws.on('message', (data: Buffer) => session.receive(data));
      ws.on('close', () => session.close());
      ws.on('error', () => ws.terminate());
    });
    return closed.then(() => ({ status: 101 }));
  }

  const offered = String(exchange.headers['x-stream-protocol-version'] ?? '')
    .split(',')
    .map((p) => p.trim());
  if (!offered.includes(PORT_FORWARD_PROTOCOL)) {
    refuse(exchange, 403, `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(' ').slice(0, 200)}], server accepts [${PORT_FORWARD_PROTOCOL}]`, {
      'x-accepted-stream-protocol-versions': PORT_FORWARD_PROTOCOL,
    });
    return closed.then(() => ({ status: 403 }));
  }
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: ${PORT_FORWARD_PROTOCOL}\r\n\r\n`);
  opened();
  const transport: SpdyTransport = {
    write: (bytes) => !socket.writable || socket.write(bytes),
    end: () => socket.end(),
  };
  const session = createSpdyServerSession(transport, onStream, SESSION_LIMITS);
  socket.on('drain', () => session.drained());
  socket.on('data', (chunk: Buffer) => session.receive(chunk));
  socket.on('end', () => session.close());
  socket.on('close', () => session.close());
  if (exchange.head.length > 0) session.receive(exchange.head);
  return closed.then(() => ({ status: 101 }));
}

function refuse(exchange: UpgradeExchange, status: number, message: string, headers: Record<string, string> = {}): void {
  exchange.sent(status, true);
  endRawResponse(exchange.clientSocket, status, [['content-type', 'text/plain; charset=utf-8'], ...Object.entries(headers)], `${message}\n`);
}

/**
 * Pairs each forwarded connection's error and data streams (by `requestID`) and serves the data
 * stream as an HTTP/1.1 connection to the port it names.
 */
function connectionHandler(forward: ViewForward): (stream: SpdyStream) => void {
  const errors = new Map<string, SpdyStream>();
  // One request per forwarded connection, as Kiali sends: pipelined ones after it are not forwarded.
  const server = createServer({ requestTimeout: forward.timeoutMs, headersTimeout: HEADERS_TIMEOUT_MS, maxHeaderSize: 16 * 1024 }, (req, res) => {
    const stream = req.socket as Duplex & { viewPort?: number };
    // The connection ends with its one answer (Node ends only sockets of its own on "close").
    res.shouldKeepAlive = false;
    res.once('close', () => stream.end());
    void serveForwarded(forward, stream.viewPort ?? 0, req, res);
  });
  server.maxRequestsPerSocket = 1;
  return (stream) => {
    const requestId = stream.headers.requestid ?? '';
    const type = stream.headers.streamtype;
    if (type === 'error') {
      // The client half-closes its error stream at once; what meshgate writes there is the error.
      if (errors.has(requestId)) return stream.reset();
      errors.set(requestId, stream);
      stream.on('close', () => errors.get(requestId) === stream && errors.delete(requestId));
      stream.resume();
      return;
    }
    if (type !== 'data') return stream.reset();
    const error = errors.get(requestId);
    errors.delete(requestId);
    const port = Number(stream.headers.port);
    if (port !== MONITORING_PORT && port !== READY_PORT) {
      const refused = new MeshgateError('MG_ERR_KUBE_VIEW_PORT', { message: `port ${(stream.headers.port ?? '(none)').slice(0, 20)} of the istiod view is not forwarded: only ${MONITORING_PORT} (debug) and ${READY_PORT} (/ready)` });
      forward.onRequest?.(0, 'refused', 0);
      error?.end(`${refused.code}: ${refused.message}`);
      stream.end();
      return;
    }
    const finish = (): void => {
      if (error && !error.writableEnded) error.end();
    };
    stream.on('close', finish);
    Object.assign(stream, { viewPort: port });
    server.emit('connection', stream);
  };
}

async function serveForwarded(forward: ViewForward, port: number, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const exchange = createH1Exchange('kube-view', req, res);
  // A metric label: only ever an endpoint that was allowed, never a path the caller chose.
  let endpoint = 'refused';
  try {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      throw new MeshgateError('MG_ERR_REQUEST_METHOD_NOT_ALLOWED', { message: 'istiod is read through the view with GET only', headers: { allow: 'GET, HEAD' } });
    }
    if (exchange.hasBody) throw new MeshgateError('MG_ERR_REQUEST_BODY_UNEXPECTED', { message: 'debug requests take no body' });
    // The path as sent, checked canonical: what is checked is what istiod is asked, never a cleaned-up spelling.
    const target = parseRequestTarget(req.url ?? '');
    let path: string;
    if (port === READY_PORT) {
      if (target.path !== '/ready') throw new MeshgateError('MG_ERR_AUTHZ_DEBUG_ENDPOINT', { message: `port ${READY_PORT} of the istiod view answers /ready only` });
      // Ready is whether istiod's debug port answers; its version is the cheapest question.
      endpoint = '/ready';
      path = '/version';
    } else {
      const name = debugEndpoint(target.path);
      checkDebugEndpoint(name, target.query, forward.endpoints, target.path);
      endpoint = name === 'version' ? '/version' : `/debug/${name ?? ''}`;
      path = target.query === undefined ? target.path : `${target.path}?${target.query}`;
    }
    // Each request is a debug-plane request, and spends that plane's rate as one would.
    forward.takeRate?.();
    const result = await forwardHttp(exchange, {
      upstream: forward.upstream,
      path,
      headers: { host: forward.upstream.origin.host, authorization: `Bearer ${forward.token.token}`, clusterid: forward.token.cluster },
      timeoutMs: forward.timeoutMs,
    });
    forward.onRequest?.(port, endpoint, result.status);
  } catch (err) {
    const error = err instanceof MeshgateError ? err : new MeshgateError('MG_ERR_INTERNAL', { cause: err });
    forward.onRequest?.(port, endpoint, error.status);
    if (!res.headersSent) renderHttpError(exchange, error);
    else res.destroy();
  }
}
