/**
 * The kube plane's errors as Kubernetes `Status` objects, so that kubectl, client-go and
 * @kubernetes/client-node print them as they print the API server's own: "Error from server
 * (Forbidden): …". The message begins with the MG_ERR_* code, as gRPC messages do.
 */
import type { MeshgateError } from '../../errors.js';
import { renderHttpError } from '../../http/render.js';
import type { Exchange } from '../../listener/exchange.js';

/** metav1.StatusReason by HTTP status. */
const REASONS: Readonly<Record<number, string>> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  408: 'Timeout',
  413: 'RequestEntityTooLarge',
  415: 'UnsupportedMediaType',
  421: 'BadRequest',
  429: 'TooManyRequests',
  431: 'BadRequest',
  500: 'InternalError',
  502: 'ServiceUnavailable',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

export function kubeStatus(error: MeshgateError, requestId: string): object {
  const header = error.headers['retry-after'];
  const retryAfter = header === undefined ? undefined : Number(header);
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: `${error.code}: ${error.message}`,
    reason: REASONS[error.status] ?? 'InternalError',
    details: {
      causes: [{ reason: error.code, message: `request id ${requestId}` }],
      // As the API server's own 429s: client-go waits this long (from Retry-After) and retries.
      ...(retryAfter === undefined ? {} : { retryAfterSeconds: retryAfter }),
    },
    code: error.status,
  };
}

export function renderKubeError(exchange: Exchange, error: MeshgateError): void {
  renderHttpError(exchange, error, kubeStatus(error, exchange.id));
}
