/**
 * One error type for every rejection meshgate makes. Each code is stable: clients, dashboards and
 * tests match on `code`, never on the message. docs/errors.md lists every code, and
 * src/errors.test.ts keeps the two in step.
 */

interface CodeSpec {
  /** HTTP status rendered by the HTTP planes. */
  readonly status: number;
  /** gRPC status rendered by the gRPC planes. */
  readonly grpc: number;
  /** The short, client-facing reason. The log gets the detail. */
  readonly message: string;
}

const GRPC = {
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
  DEADLINE_EXCEEDED: 4,
} as const;

const spec = (status: number, grpc: number, message: string): CodeSpec => ({ status, grpc, message });

export const ERROR_CODES = {
  // Routing: which tenant and which plane a request belongs to.
  MG_ERR_ROUTE_NO_SNI: spec(421, GRPC.UNAUTHENTICATED, 'TLS connection carries no server name (SNI)'),
  MG_ERR_ROUTE_UNKNOWN_HOST: spec(421, GRPC.UNAUTHENTICATED, 'no tenant is served under this server name'),
  MG_ERR_ROUTE_HOST_MISMATCH: spec(421, GRPC.PERMISSION_DENIED, 'Host or :authority names a different host than the TLS server name'),
  MG_ERR_ROUTE_NOT_FOUND: spec(404, GRPC.UNIMPLEMENTED, 'no plane on this listener serves this path'),
  MG_ERR_ROUTE_UNKNOWN_METHOD: spec(404, GRPC.UNIMPLEMENTED, 'meshgate does not forward this gRPC method'),
  MG_ERR_ROUTE_UNKNOWN_CLUSTER: spec(403, GRPC.PERMISSION_DENIED, 'the cluster named in the request is not a cluster of this tenant'),

  // Request shape: rejected before anything is forwarded.
  MG_ERR_REQUEST_MALFORMED: spec(400, GRPC.INVALID_ARGUMENT, 'malformed HTTP request'),
  MG_ERR_REQUEST_HEADERS_TOO_LARGE: spec(431, GRPC.RESOURCE_EXHAUSTED, 'request headers are too large'),
  MG_ERR_REQUEST_TIMEOUT: spec(408, GRPC.DEADLINE_EXCEEDED, 'request was not received in time'),
  MG_ERR_REQUEST_PATH_NOT_CANONICAL: spec(400, GRPC.INVALID_ARGUMENT, 'request path is not canonical'),
  MG_ERR_REQUEST_HOP_BY_HOP: spec(400, GRPC.INVALID_ARGUMENT, 'Connection header names a header that meshgate protects'),
  MG_ERR_REQUEST_METHOD_NOT_ALLOWED: spec(405, GRPC.INVALID_ARGUMENT, 'method not allowed on this path'),
  MG_ERR_REQUEST_CONTENT_TYPE: spec(415, GRPC.INVALID_ARGUMENT, 'unsupported content type'),
  MG_ERR_REQUEST_BODY_TOO_LARGE: spec(413, GRPC.RESOURCE_EXHAUSTED, 'request body is too large'),
  MG_ERR_REQUEST_BAD_TIMEOUT: spec(400, GRPC.INVALID_ARGUMENT, 'invalid timeout query parameter'),
  MG_ERR_REQUEST_BODY_UNEXPECTED: spec(400, GRPC.INVALID_ARGUMENT, 'this request may not have a body'),
  MG_ERR_REQUEST_NOT_GRPC: spec(415, GRPC.INVALID_ARGUMENT, 'the xds plane takes gRPC over HTTP/2 only'),
  MG_ERR_REQUEST_UPGRADE: spec(400, GRPC.INVALID_ARGUMENT, 'protocol upgrade is not supported on this plane'),
  MG_ERR_REQUEST_BUSY: spec(503, GRPC.RESOURCE_EXHAUSTED, 'too many request bodies in flight; retry'),
  MG_ERR_METRICS_IDENTIFIER: spec(400, GRPC.INVALID_ARGUMENT, 'a metrics stream must name its node in its first message, and only there'),

  // Authentication: who is calling.
  MG_ERR_AUTHN_REQUIRED: spec(401, GRPC.UNAUTHENTICATED, 'authentication required'),
  MG_ERR_AUTHN_CLIENT_CERT_INVALID: spec(401, GRPC.UNAUTHENTICATED, 'client certificate is not valid for this tenant'),
  MG_ERR_AUTHN_TOKEN_MALFORMED: spec(401, GRPC.UNAUTHENTICATED, 'bearer token is malformed'),
  MG_ERR_AUTHN_TOKEN_ISSUER: spec(401, GRPC.UNAUTHENTICATED, 'bearer token issuer is not a cluster of this tenant'),
  MG_ERR_AUTHN_TOKEN_INVALID: spec(401, GRPC.UNAUTHENTICATED, 'bearer token signature or claims are invalid'),
  MG_ERR_AUTHN_TOKEN_EXPIRED: spec(401, GRPC.UNAUTHENTICATED, 'bearer token has expired or is not yet valid'),
  MG_ERR_AUTHN_TOKEN_AUDIENCE: spec(401, GRPC.UNAUTHENTICATED, 'bearer token audience is not accepted on this plane'),
  MG_ERR_AUTHN_PATH_KEY_INVALID: spec(401, GRPC.UNAUTHENTICATED, 'path key is not valid for this tenant'),
  MG_ERR_AUTHN_JWKS_UNAVAILABLE: spec(503, GRPC.UNAVAILABLE, 'signing keys for this issuer are unavailable'),
  MG_ERR_AUTHN_TOKENREVIEW_UNAVAILABLE: spec(503, GRPC.UNAVAILABLE, "the cluster's TokenReview API could not check the token"),
  MG_ERR_AUTHN_TOKENREVIEW_LIMITED: spec(503, GRPC.UNAVAILABLE, 'too many tokens to review against this cluster right now; retry'),

  // Authorization: may this identity do this.
  MG_ERR_AUTHZ_TENANT_MISMATCH: spec(403, GRPC.PERMISSION_DENIED, 'identity belongs to a different tenant'),
  MG_ERR_AUTHZ_CLUSTER_MISMATCH: spec(403, GRPC.PERMISSION_DENIED, "the token's cluster is not the cluster named in the request"),
  MG_ERR_AUTHZ_DENIED: spec(403, GRPC.PERMISSION_DENIED, 'identity may not use this plane'),
  MG_ERR_AUTHZ_SOURCE_ADDRESS: spec(403, GRPC.PERMISSION_DENIED, 'source address is not allowed'),
  MG_ERR_AUTHZ_DEBUG_ENDPOINT: spec(403, GRPC.PERMISSION_DENIED, 'debug endpoint is not allowed'),
  MG_ERR_AUTHZ_NODE_MISMATCH: spec(403, GRPC.PERMISSION_DENIED, "the node a metrics stream names is not the caller's"),
  MG_ERR_KUBE_FORBIDDEN: spec(403, GRPC.PERMISSION_DENIED, "the tenant's kube rules do not allow this request"),
  MG_ERR_KUBE_IDENTITY_RESERVED: spec(403, GRPC.PERMISSION_DENIED, 'a certificate may not claim a reserved Kubernetes user or group'),
  MG_ERR_KUBE_VIEW_READ_ONLY: spec(405, GRPC.PERMISSION_DENIED, 'the control-plane view is read-only'),
  MG_ERR_KUBE_VIEW_PORT: spec(403, GRPC.PERMISSION_DENIED, "a port-forward to the istiod view reaches istiod's monitoring (15014) and readiness (8080) ports only"),

  // Upstream: the tenant's backend.
  MG_ERR_UPSTREAM_UNAVAILABLE: spec(503, GRPC.UNAVAILABLE, 'upstream is unavailable'),
  MG_ERR_UPSTREAM_TLS: spec(502, GRPC.UNAVAILABLE, 'upstream TLS verification failed'),
  MG_ERR_UPSTREAM_TIMEOUT: spec(504, GRPC.DEADLINE_EXCEEDED, 'upstream did not answer in time'),
  MG_ERR_UPSTREAM_RESET: spec(502, GRPC.UNAVAILABLE, 'upstream closed the connection'),
  MG_ERR_UPSTREAM_LOOPBACK: spec(502, GRPC.FAILED_PRECONDITION, 'upstream resolves to a loopback address'),
  MG_ERR_UPSTREAM_UPGRADE_INVALID: spec(502, GRPC.UNAVAILABLE, 'upstream switched protocols with an invalid handshake'),
  MG_ERR_UPSTREAM_AGENT_UNAVAILABLE: spec(503, GRPC.UNAVAILABLE, "no agent of this cluster is connected to meshgate; retry"),

  // Agents: `meshgate agent` registering a cluster that meshgate reaches through it (docs/agent.md).
  MG_ERR_AGENT_UPGRADE_REQUIRED: spec(426, GRPC.INVALID_ARGUMENT, 'the agent endpoint takes a WebSocket upgrade with the meshgate agent protocol only'),
  MG_ERR_AGENT_NOT_VIA_AGENT: spec(403, GRPC.PERMISSION_DENIED, 'this cluster is not configured to be reached through an agent'),
  MG_ERR_AGENT_IDENTITY_MISMATCH: spec(403, GRPC.PERMISSION_DENIED, "the agent's certificate is not for the cluster it registers"),
  MG_ERR_AGENT_HANDSHAKE: spec(502, GRPC.UNAVAILABLE, 'the agent did not start its HTTP/2 session in time'),

  // Limits: what one tenant, or the gateway, may hold at once.
  MG_ERR_LIMIT_CONNECTIONS: spec(503, GRPC.RESOURCE_EXHAUSTED, 'the tenant has too many connections open'),
  MG_ERR_LIMIT_STREAMS: spec(429, GRPC.RESOURCE_EXHAUSTED, 'the tenant has too many requests or streams open'),
  MG_ERR_LIMIT_RATE: spec(429, GRPC.RESOURCE_EXHAUSTED, "the tenant is over its request rate on this plane; retry after the time given"),
  MG_ERR_SHUTTING_DOWN: spec(503, GRPC.UNAVAILABLE, 'meshgate is shutting down; reconnect'),

  // Reloads: what a change of config does to work that was running.
  MG_ERR_TENANT_REMOVED: spec(503, GRPC.UNAVAILABLE, 'this tenant, or this part of it, is no longer served here'),
  MG_ERR_UPSTREAM_REPLACED: spec(503, GRPC.UNAVAILABLE, "the tenant's upstream settings changed and this stream outlived the drain; reconnect"),

  MG_ERR_INTERNAL: spec(500, GRPC.INTERNAL, 'internal error'),
} as const satisfies Record<string, CodeSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface MeshgateErrorOptions {
  /** A client-safe message more specific than the catalogue's. Never put a credential in it. */
  readonly message?: string;
  /** Detail for the log only. */
  readonly detail?: string | undefined;
  /** Response headers that belong with the error, e.g. `allow` on a 405. */
  readonly headers?: Readonly<Record<string, string>>;
  readonly cause?: unknown;
}

export class MeshgateError extends Error {
  override readonly name = 'MeshgateError';
  readonly code: ErrorCode;
  readonly status: number;
  readonly grpcStatus: number;
  /** For the log; `message` is what the client sees. */
  readonly detail: string | undefined;
  readonly headers: Readonly<Record<string, string>>;

  constructor(code: ErrorCode, options: MeshgateErrorOptions = {}) {
    const known = ERROR_CODES[code];
    super(options.message ?? known.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = known.status;
    this.grpcStatus = known.grpc;
    this.detail = options.detail;
    this.headers = options.headers ?? {};
  }
}

export function isMeshgateError(err: unknown): err is MeshgateError {
  return err instanceof MeshgateError;
}

/** Anything thrown that is not a MeshgateError becomes MG_ERR_INTERNAL, with the original as cause. */
export function toMeshgateError(err: unknown): MeshgateError {
  return isMeshgateError(err) ? err : new MeshgateError('MG_ERR_INTERNAL', { cause: err });
}
