/**
 * Forwarding an HTTP request upstream, whatever the two sides speak:
 *  - in: HTTP/1.1 (a ServerResponse) or an HTTP/2 stream;
 *  - out: an HTTP/2 stream on the upstream's pool when it offers h2 (istiod's webhook port, a
 *    mesh API server), otherwise a request on its HTTP/1.1 keep-alive agent.
 * Either way: one deadline for the whole exchange; errors before the response headers become a
 * MeshgateError for the plane to render; a failure after them cuts the response off so that it
 * can never look complete; a client that leaves cancels the upstream request.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { request as httpRequest } from 'node:http';
import { constants as h2, type ClientHttp2Stream } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import type { Readable, Writable } from 'node:stream';
import { MeshgateError } from '../errors.js';
import { isHopByHopResponseHeader } from '../http/headers.js';
import type { Exchange, H1Exchange, H2Exchange } from '../listener/exchange.js';
import { Http1Only } from './h2-pool.js';
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

/** One request in flight upstream, over either protocol. */
interface Outbound {
  /** Where the request body goes. */
  readonly body: Writable;
  /** Whether the upstream's answer arrived whole. */
  complete(): boolean;
  /** Abandons the request: RST_STREAM(CANCEL), or the HTTP/1.1 connection closed. */
  cancel(): void;
}

interface UpstreamAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Readable;
}

interface OutboundHandlers {
  readonly response: (answer: UpstreamAnswer) => void;
  readonly error: (err: unknown) => void;
  /** The answer's body ended early (reset, or the connection died). */
  readonly cut: () => void;
}

/** Forwards the exchange; resolves when it is over. Rejects (nothing sent yet) for the plane to render. */
export function forwardHttp(exchange: Exchange, request: ForwardRequest): Promise<ForwardResult> {
  if (exchange.protocol === 'upgrade') return Promise.reject(new MeshgateError('MG_ERR_REQUEST_UPGRADE'));
  const sink = exchange.protocol === 'h2' ? h2Sink(exchange) : h1Sink(exchange);

  return new Promise((resolve, reject) => {
    let outbound: Outbound | undefined;
    let failure: MeshgateError | undefined;
    let rejected = false;
    let over = false;

    const fail = (error: MeshgateError): void => {
      failure ??= error;
      outbound?.cancel();
      if (!exchange.headersSent && !rejected && !over) {
        rejected = true;
        clearTimeout(timer);
        reject(error);
      } else {
        exchange.abort();
      }
    };
    // Made only when the deadline passes: an Error captures a stack, which costs on every request.
    const timer =
      request.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            fail(new MeshgateError('MG_ERR_UPSTREAM_TIMEOUT', { detail: `no complete answer in ${String(request.timeoutMs)} ms` }));
          }, request.timeoutMs);

    exchange.onClose(() => {
      over = true;
      clearTimeout(timer);
      // The client went away (or was cut off) before the answer ended: drop the upstream request
      // too, or its connection would stay out of the pool, paused, for good.
      if (outbound && !outbound.complete()) outbound.cancel();
      if (!rejected) resolve(failure ? { status: exchange.status ?? 0, error: failure } : { status: exchange.status ?? 0 });
    });

    const handlers: OutboundHandlers = {
      response(answer) {
        request.onResponse?.(answer.status);
        if (over) {
          answer.body.resume();
          return;
        }
        try {
          sink.head(answer.status, responseHeaders(answer.headers), request.streaming === true);
        } catch (err) {
          // A header the client's protocol refuses: a bad answer from upstream, never a crash.
          answer.body.resume();
          fail(new MeshgateError('MG_ERR_UPSTREAM_RESET', { message: 'upstream answered with headers the client protocol cannot carry', cause: err }));
          return;
        }
        answer.body.pipe(sink.body);
      },
      error: (err) => fail(classifyUpstreamError(err)),
      cut: () => {
        failure ??= new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: 'the answer was cut short' });
        exchange.abort();
      },
    };

    const send = (call: Outbound): void => {
      outbound = call;
      if (over) {
        call.cancel();
        return;
      }
      if (request.body === 'stream') exchange.body.pipe(call.body);
      else call.body.end(request.body);
    };

    const { h2: pool } = request.upstream;
    if (pool === undefined || pool.protocol === 'http/1.1') {
      send(openHttp1(exchange.method, request, handlers));
      return;
    }
    // No AbortSignal (a listener and an AbortError per request): a client gone before the stream
    // opened is seen by send(), which cancels it.
    pool.open(h2RequestHeaders(exchange.method, request, pool.authority), { endStream: request.body === undefined }).then(
      (stream) => send(openHttp2(stream, handlers)),
      (err: unknown) => {
        if (err instanceof Http1Only) send(openHttp1(exchange.method, request, handlers));
        else if (!over) fail(poolError(err));
      },
    );
  });
}

/** A pool's UNAVAILABLE that a bad certificate caused is a TLS failure (502), as over HTTP/1.1. */
function poolError(err: unknown): MeshgateError {
  const error = classifyUpstreamError(err);
  if (error.cause === undefined || error.cause === err) return error;
  const cause = classifyUpstreamError(error.cause);
  return cause.code === 'MG_ERR_UPSTREAM_TLS' ? cause : error;
}

function openHttp1(method: string, request: ForwardRequest, on: OutboundHandlers): Outbound {
  const { origin, agent } = request.upstream;
  const send = origin.protocol === 'https:' ? httpsRequest : httpRequest;
  let response: IncomingMessage | undefined;
  const req = send({
    protocol: origin.protocol,
    hostname: origin.hostname.replace(/^\[|\]$/g, ''),
    port: origin.port,
    method,
    path: request.path,
    headers: { ...request.headers, host: origin.host },
    agent,
  });
  req.on('error', on.error);
  req.on('response', (res) => {
    response = res;
    res.on('error', on.error);
    res.once('close', () => {
      if (!res.complete) on.cut();
    });
    on.response({ status: res.statusCode ?? 502, headers: res.headers, body: res });
  });
  return {
    body: req,
    complete: () => response?.complete === true,
    cancel: () => req.destroy(),
  };
}

function openHttp2(stream: ClientHttp2Stream, on: OutboundHandlers): Outbound {
  let ended = false;
  stream.on('error', on.error);
  stream.once('response', (headers) => {
    const status = Number(headers[h2.HTTP2_HEADER_STATUS] ?? 502);
    stream.once('end', () => (ended = true));
    stream.once('close', () => {
      if (!ended) on.cut();
    });
    on.response({ status, headers, body: stream });
  });
  return {
    body: stream,
    complete: () => ended,
    cancel: () => {
      if (!stream.closed) stream.close(h2.NGHTTP2_CANCEL);
    },
  };
}

/** Headers HTTP/2 forbids in a request (RFC 9113 §8.2.2), or that node:http2 sets itself. */
const NOT_IN_H2_REQUEST = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te']);

function h2RequestHeaders(method: string, request: ForwardRequest, authority: string): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {
    [h2.HTTP2_HEADER_METHOD]: method,
    [h2.HTTP2_HEADER_PATH]: request.path,
    [h2.HTTP2_HEADER_SCHEME]: 'https',
    [h2.HTTP2_HEADER_AUTHORITY]: authority,
  };
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined && !NOT_IN_H2_REQUEST.has(name)) out[name] = value;
  }
  return out;
}

/** The upstream's headers minus pseudo-headers and those of its hop. */
function responseHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !name.startsWith(':') && !isHopByHopResponseHeader(name)) out[name] = value;
  }
  return out;
}

/** Where the upstream's answer goes: the client's response, in its protocol. */
interface Sink {
  head(status: number, headers: OutgoingHttpHeaders, flush: boolean): void;
  readonly body: Writable;
}

function h1Sink({ res }: H1Exchange): Sink {
  return {
    head(status, headers, flush) {
      // Said explicitly, as the client asked: Node would otherwise add a Keep-Alive header too.
      headers.connection = res.shouldKeepAlive ? 'keep-alive' : 'close';
      res.writeHead(status, headers);
      if (flush) res.flushHeaders();
    },
    body: res,
  };
}

function h2Sink({ stream }: H2Exchange): Sink {
  return {
    head(status, headers) {
      stream.respond({ ...headers, [h2.HTTP2_HEADER_STATUS]: status });
    },
    body: stream,
  };
}
