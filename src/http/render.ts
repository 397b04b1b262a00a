/** The HTTP planes' error renderer: a status and a JSON body `{code, message, requestId}`. */
import type { Exchange } from '../listener/exchange.js';
import type { MeshgateError } from '../errors.js';

export function renderHttpError(exchange: Exchange, error: MeshgateError): void {
  if (exchange.headersSent) {
    // Too late for a status: cut the response off so that it can never look complete.
    exchange.abort();
    return;
  }
  const body = JSON.stringify({ code: error.code, message: error.message, requestId: exchange.id });
  exchange.respond(
    error.status,
    { ...error.headers, 'content-type': 'application/json', 'cache-control': 'no-store', 'x-request-id': exchange.id },
    `${body}\n`,
  );
}
