/**
 * The upgrade tunnel: exec, attach and port-forward over WebSocket or SPDY/3.1. http-proxy's
 * `ws()` takes only GET WebSocket upgrades, and SPDY's is a POST, so the tunnel is our own:
 *
 *  1. a fresh HTTP/1.1 connection to the upstream (never pooled, never reused; through an agent's
 *     tunnel for an upstream reached that way), TLS verified as for any request, carrying the request with `Connection: Upgrade` and the client's `Upgrade`;
 *  2. only a `101` switches. For WebSocket, `Sec-WebSocket-Accept` must answer the client's key;
 *     then the upstream's head goes to the client as it came, and bytes flow both ways;
 *  3. any other answer is relayed whole (status, headers, a bounded body) and **both** connections
 *     are closed: a refused upgrade never leaves either side open for a second request
 *     (CVE-2018-1002105 was a proxy that kept using the connection after a failed upgrade).
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { MeshgateError } from '../errors.js';
import { isHopByHopResponseHeader } from '../http/headers.js';
import type { UpgradeExchange } from '../listener/exchange.js';
import { endRawResponse } from '../http/raw-response.js';
import { classifyUpstreamError, type HttpUpstream } from './upstream.js';

/** A refused upgrade's body is an error message (a Kubernetes Status); more than this is cut off. */
const MAX_REFUSAL_BODY = 64 * 1024;
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export interface TunnelRequest {
  readonly upstream: HttpUpstream;
  readonly path: string;
  /** The outbound headers, sanitized and completed by the plane; the tunnel adds Connection and Upgrade. */
  readonly headers: OutgoingHttpHeaders;
  /** How long the upstream may take to answer the upgrade. */
  readonly handshakeTimeoutMs: number;
  /** Called once the tunnel is open; the returned function once it has closed. */
  readonly onOpen?: () => () => void;
  /** Called when the upstream's answer arrives, with its status. */
  readonly onResponse?: (status: number) => void;
}

export interface TunnelResult {
  /** The upstream's status: 101 for a tunnel that opened. */
  readonly status: number;
}

/** Opens the tunnel; resolves when it is over. Rejects (nothing sent yet) for the plane to render. */
export function openTunnel(exchange: UpgradeExchange, request: TunnelRequest): Promise<TunnelResult> {
  const { origin, connectOptions, upgradeAgent } = request.upstream;
  const client = exchange.clientSocket;

  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    };
    const upstreamReq = httpsRequest({
      ...connectOptions,
      agent: upgradeAgent,
      hostname: origin.hostname.replace(/^\[|\]$/g, ''),
      port: origin.port,
      method: exchange.method,
      path: request.path,
      headers: { ...request.headers, host: origin.host, connection: 'Upgrade', upgrade: exchange.upgrade },
    });
    const timer = setTimeout(() => {
      upstreamReq.destroy(new MeshgateError('MG_ERR_UPSTREAM_TIMEOUT', { detail: `no answer to the upgrade in ${request.handshakeTimeoutMs} ms` }));
    }, request.handshakeTimeoutMs);
    // The client gave up before the upstream answered.
    const onClientGone = (): void => {
      upstreamReq.destroy();
      settle(() => resolve({ status: 0 }));
    };
    client.once('close', onClientGone);

    upstreamReq.on('error', (err) => settle(() => reject(classifyUpstreamError(err))));

    upstreamReq.on('response', (res) => {
      request.onResponse?.(res.statusCode ?? 0);
      relayRefusal(exchange, res, () => {
        upstreamReq.destroy();
        settle(() => resolve({ status: res.statusCode ?? 0 }));
      });
    });

    upstreamReq.on('upgrade', (res, upstream: Socket, upstreamHead: Buffer) => {
      request.onResponse?.(101);
      client.off('close', onClientGone);
      const key = exchange.headers['sec-websocket-key'];
      if (exchange.upgrade.toLowerCase() === 'websocket' && !acceptsKey(res.headers['sec-websocket-accept'], key)) {
        upstream.destroy();
        settle(() => reject(new MeshgateError('MG_ERR_UPSTREAM_UPGRADE_INVALID', { detail: 'Sec-WebSocket-Accept does not answer the key' })));
        return;
      }
      settle(() => undefined);
      const closed = request.onOpen?.();
      client.write(responseHead(res));
      exchange.sent(101);
      if (upstreamHead.length > 0) client.write(upstreamHead);
      if (exchange.head.length > 0) upstream.write(exchange.head);
      splice(client, upstream, exchange.idleTimeoutMs, () => {
        exchange.sent(101, true);
        closed?.();
        resolve({ status: 101 });
      });
    });

    upstreamReq.end();
  });
}

/** Relays a non-101 answer with its body (bounded), then closes the client's connection. */
function relayRefusal(exchange: UpgradeExchange, res: IncomingMessage, done: () => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  const finish = (): void => {
    const status = res.statusCode ?? 502;
    const headers: [string, string][] = [];
    for (let i = 0; i < res.rawHeaders.length; i += 2) {
      const name = res.rawHeaders[i] ?? '';
      if (!isHopByHopResponseHeader(name) && name.toLowerCase() !== 'content-length') headers.push([name, res.rawHeaders[i + 1] ?? '']);
    }
    exchange.sent(status, true);
    endRawResponse(exchange.clientSocket, status, headers, Buffer.concat(chunks), res.statusMessage);
    done();
  };
  res.on('data', (chunk: Buffer) => {
    if (size >= MAX_REFUSAL_BODY) return;
    chunks.push(chunk.subarray(0, MAX_REFUSAL_BODY - size));
    size += chunk.length;
  });
  res.once('end', finish);
  res.once('error', finish);
}

/** The upstream's 101 head, as it sent it. */
function responseHead(res: IncomingMessage): string {
  let head = `HTTP/1.1 101 ${res.statusMessage ?? 'Switching Protocols'}\r\n`;
  for (let i = 0; i < res.rawHeaders.length; i += 2) head += `${res.rawHeaders[i] ?? ''}: ${res.rawHeaders[i + 1] ?? ''}\r\n`;
  return `${head}\r\n`;
}

function acceptsKey(accept: string | string[] | undefined, key: string | string[] | undefined): boolean {
  if (typeof accept !== 'string' || typeof key !== 'string') return false;
  return accept === createHash('sha1').update(key + WEBSOCKET_GUID).digest('base64');
}

/** Bytes both ways until either side ends or errs, or nothing moves for `idleMs`; then both close. */
function splice(a: Socket, b: Socket, idleMs: number, onClosed: () => void): void {
  let open = 2;
  const closeBoth = (): void => {
    a.destroy();
    b.destroy();
  };
  for (const [from, to] of [
    [a, b],
    [b, a],
  ] as const) {
    from.pipe(to);
    from.on('error', closeBoth);
    from.setTimeout(idleMs, closeBoth);
    from.once('close', () => {
      closeBoth();
      if (--open === 0) onClosed();
    });
  }
}
