/**
 * The renderers of errors: gRPC requests get a status in a Trailers-Only answer (grpc-status,
 * and a grpc-message that begins with the code); everything else gets an HTTP status and a JSON
 * body `{code, message, requestId}`.
 */
import type { Exchange } from '../listener/exchange.js';
import type { MeshgateError } from '../errors.js';
import { isGrpcContentType, respondTrailersOnly } from '../grpc/status.js';

export function renderError(exchange: Exchange, error: MeshgateError): void {
  if (exchange.protocol === 'h2' && isGrpcContentType(exchange.headers['content-type']) && !exchange.headersSent) {
    const retryAfter = error.headers['retry-after'];
    respondTrailersOnly(exchange.stream, error.grpcStatus, `${error.code}: ${error.message}`, {
      'x-request-id': exchange.id,
      // gRFC A6's server pushback: a client with a retry policy waits this long.
      ...(retryAfter === undefined ? {} : { 'grpc-retry-pushback-ms': String(Number(retryAfter) * 1000) }),
    });
    return;
  }
  renderHttpError(exchange, error);
}

/** An HTTP status and a body: meshgate's JSON by default, or a plane's own (a Kubernetes Status). */
export function renderHttpError(exchange: Exchange, error: MeshgateError, body: object = { code: error.code, message: error.message, requestId: exchange.id }): void {
  if (exchange.headersSent) {
    // Too late for a status: cut the response off so that it can never look complete.
    exchange.abort();
    return;
  }
  exchange.respond(
    error.status,
    { ...error.headers, 'content-type': 'application/json', 'cache-control': 'no-store', 'x-request-id': exchange.id },
    `${JSON.stringify(body)}\n`,
  );
}
