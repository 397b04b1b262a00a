/**
 * Forwarding an HTTP request to an HTTP/1.1 upstream. Chosen by the inbound protocol:
 *  - HTTP/1.1 in: http-proxy-3. Outbound headers are put on `req.headers` before `proxy.web()`,
 *    never in a `proxyReq` handler, which http-proxy skips when the request has `Expect:`.
 *  - HTTP/2 in: a request of our own per stream, its answer piped back to the stream.
 * Either way: one deadline for the whole exchange, errors before the response headers become a
 * MeshgateError for the plane to render, and a failure after them cuts the response off so it can
 * never look complete.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ClientRequest } from 'node:http';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { constants as h2 } from 'node:http2';
import { Readable } from 'node:stream';
import { createProxyServer } from 'http-proxy-3';
import { MeshgateError } from '../errors.js';
import type { Exchange, H1Exchange, H2Exchange } from '../listener/exchange.js';
import { isHopByHopResponseHeader } from '../http/headers.js';
import { classifyUpstreamError, type HttpUpstream } from './upstream.js';

export interface ForwardRequest {
  readonly upstream: HttpUpstream;
  /** Path and query to request from the upstream. */
  readonly path: string;
  /** The complete outbound headers, already sanitized and completed by the plane. */
  readonly headers: OutgoingHttpHeaders;
  /**
   * The body: read in advance, or `'stream'` to pipe the client's body through as it arrives (the
   * kube plane; the plane then sets its framing, Content-Length or chunked, in `headers`). None is
   * sent when absent: an unframed body after a GET would be read by istiod as the next request.
   */
  readonly body?: Buffer | 'stream' | undefined;
  /** The deadline for the whole exchange; none for long-running requests (watches). */
  readonly timeoutMs?: number | undefined;
  /** Called when the upstream's response head arrives. */
  readonly onResponse?: (status: number) => void;
  /**
   * Pass the response head on as soon as it arrives, before any of the body (watches and other
   * long-running answers: a client waits for the head, and the first event may be minutes away).
   * Otherwise HTTP/1.1 sends the head with the first chunk of the body, in one write.
   */
  readonly streaming?: boolean;
}

export interface ForwardResult {
  readonly status: number;
  /** Set when the upstream failed after the response had begun. */
  readonly error?: MeshgateError;
}

/** Forwards the exchange; resolves when it is over. Rejects (nothing sent yet) for the plane to render. */
export function forwardHttp(exchange: Exchange, request: ForwardRequest): Promise<ForwardResult> {
  if (exchange.protocol === 'upgrade') return Promise.reject(new MeshgateError('MG_ERR_REQUEST_UPGRADE'));
  return exchange.protocol === 'h2' ? forwardH2(exchange, request) : forwardH1(exchange, request);
}

/** A deadline, or none. */
function startTimer(ms: number | undefined, onTimeout: () => void): NodeJS.Timeout | undefined {
  return ms === undefined ? undefined : setTimeout(onTimeout, ms);
}

const proxy = createProxyServer({ xfwd: false, changeOrigin: true, secure: true, ws: false, prependPath: true });
/**
 * By inbound request: who learns of its outbound request (so that a deadline can cancel it), and
 * of the upstream's response status.
 */
const inFlight = new WeakMap<
  object,
  { onProxyReq: (proxyReq: ClientRequest) => void; onResponse?: ((status: number) => void) | undefined; streaming: boolean }
>();
proxy.on('proxyReq', (proxyReq, req) => inFlight.get(req)?.onProxyReq(proxyReq));
// The upstream's hop-by-hop headers stay on its hop. And the client's own choice decides whether
// the connection stays open: without a `connection` here, http-proxy would copy the request's
// (already removed) one and fall back to an explicit keep-alive that overrides `Connection: close`.
proxy.on('proxyRes', (proxyRes, req, res) => {
  for (const name of Object.keys(proxyRes.headers)) {
    // eslint-disable-next-line @typescript-eslint/no-dynamic-delete -- removing by computed name is the point
    if (isHopByHopResponseHeader(name)) delete proxyRes.headers[name];
  }
  proxyRes.headers.connection = res.shouldKeepAlive ? 'keep-alive' : 'close';
  const record = inFlight.get(req);
  record?.onResponse?.(proxyRes.statusCode ?? 0);
  // http-proxy copies status and headers onto `res` right after this event, in the same turn, and
  // then pipes the body: by the next microtask the head is complete and can go out on its own.
  if (record?.streaming === true) {
    queueMicrotask(() => {
      if (!res.headersSent && !res.destroyed) res.flushHeaders();
    });
  }
  // http-proxy pipes the response, and a pipe does not pass on errors: an upstream that dies
  // mid-body would leave the client waiting forever for the rest. Cut the client off instead.
  proxyRes.once('close', () => {
    if (!proxyRes.complete) res.destroy();
  });
});
// Errors reach each request's callback; this listener only keeps a stray one from crashing the process.
proxy.on('error', () => undefined);

function forwardH1(exchange: H1Exchange, request: ForwardRequest): Promise<ForwardResult> {
  const { req, res } = exchange;
  replaceHeaders(req.headers, request.headers);
  req.url = request.path;

  return new Promise((resolve, reject) => {
    // Made only when the deadline passes: an Error captures a stack, which costs on every request.
    let timeout: MeshgateError | undefined;
    const timeoutError = (): MeshgateError =>
      (timeout ??= new MeshgateError('MG_ERR_UPSTREAM_TIMEOUT', { detail: `no complete answer in ${request.timeoutMs} ms` }));
    let timedOut = false;
    let upstreamReq: ClientRequest | undefined;
    let failure: MeshgateError | undefined;
    let rejected = false;

    const timer = startTimer(request.timeoutMs, () => {
      timedOut = true;
      if (upstreamReq) upstreamReq.destroy(timeoutError());
      else fail(timeoutError());
    });
    inFlight.set(req, {
      onProxyReq: (proxyReq) => {
        upstreamReq = proxyReq;
        if (timedOut) proxyReq.destroy(timeoutError());
      },
      onResponse: request.onResponse,
      streaming: request.streaming === true,
    });

    const fail = (error: MeshgateError): void => {
      failure ??= error;
      if (!res.headersSent && !rejected) {
        rejected = true;
        upstreamReq?.destroy();
        reject(error);
      } else {
        res.destroy();
      }
    };
    res.once('close', () => {
      clearTimeout(timer);
      inFlight.delete(req);
      if (!rejected) resolve(failure ? { status: res.statusCode, error: failure } : { status: res.statusCode });
    });

    proxy.web(
      req,
      res,
      {
        target: request.upstream.origin,
        agent: request.upstream.agent,
        // Without `buffer`, http-proxy pipes the request itself, as it arrives.
        ...(request.body === 'stream' ? {} : { buffer: Readable.from(request.body ? [request.body] : []) }),
      },
      (err) => fail(timedOut ? timeoutError() : classifyUpstreamError(err)),
    );
  });
}

function replaceHeaders(target: IncomingHttpHeaders, source: OutgoingHttpHeaders): void {
  for (const name of Object.keys(target)) {
    // eslint-disable-next-line @typescript-eslint/no-dynamic-delete -- clearing the object in place
    delete target[name];
  }
  for (const [name, value] of Object.entries(source)) {
    if (value !== undefined) target[name] = typeof value === 'number' ? String(value) : value;
  }
}

function forwardH2(exchange: H2Exchange, request: ForwardRequest): Promise<ForwardResult> {
  const { stream } = exchange;
  const { origin, agent } = request.upstream;
  const send = origin.protocol === 'https:' ? httpsRequest : httpRequest;

  return new Promise((resolve, reject) => {
    let failure: MeshgateError | undefined;
    let rejected = false;
    const fail = (error: MeshgateError): void => {
      failure ??= error;
      upstreamReq.destroy();
      if (!stream.headersSent && !rejected) {
        rejected = true;
        reject(error);
      } else if (!stream.destroyed) {
        stream.destroy(error);
      }
    };

    const upstreamReq = send({
      protocol: origin.protocol,
      hostname: origin.hostname.replace(/^\[|\]$/g, ''),
      port: origin.port,
      method: exchange.method,
      path: request.path,
      headers: { ...request.headers, host: origin.host },
      agent,
    });
    const timer = startTimer(request.timeoutMs, () => {
      fail(new MeshgateError('MG_ERR_UPSTREAM_TIMEOUT', { detail: `no complete answer in ${String(request.timeoutMs)} ms` }));
    });

    let upstreamComplete = false;
    upstreamReq.on('error', (err) => fail(classifyUpstreamError(err)));
    upstreamReq.on('response', (upstreamRes) => {
      upstreamRes.once('end', () => (upstreamComplete = true));
      request.onResponse?.(upstreamRes.statusCode ?? 0);
      if (stream.destroyed || stream.closed) {
        upstreamRes.resume();
        return;
      }
      const headers: OutgoingHttpHeaders = { [h2.HTTP2_HEADER_STATUS]: upstreamRes.statusCode ?? 502 };
      for (const [name, value] of Object.entries(upstreamRes.headers)) {
        if (!isHopByHopResponseHeader(name) && value !== undefined) headers[name] = value;
      }
      try {
        stream.respond(headers);
      } catch (err) {
        // A header HTTP/2 refuses: a bad answer from istiod, never a crash of meshgate.
        upstreamRes.resume();
        fail(new MeshgateError('MG_ERR_UPSTREAM_RESET', { message: 'upstream answered with headers HTTP/2 cannot carry', cause: err }));
        return;
      }
      upstreamRes.on('error', (err) => fail(classifyUpstreamError(err)));
      upstreamRes.pipe(stream);
    });
    stream.once('close', () => {
      clearTimeout(timer);
      // The client went away (or was cut off) before istiod's answer ended: drop the upstream
      // request too, or its socket would stay out of the pool, paused, for good.
      if (!upstreamComplete) upstreamReq.destroy();
      const status = exchange.status ?? 0;
      if (!rejected) resolve(failure ? { status, error: failure } : { status });
    });

    if (request.body === 'stream') stream.pipe(upstreamReq);
    else upstreamReq.end(request.body);
  });
}
