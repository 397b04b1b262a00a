/**
 * What a plane is: a small pipeline of its own (checks, authentication, authorization, forwarding)
 * behind a path prefix. Each plane builds, per config snapshot and per tenant, everything its
 * requests need; a request only reads it. What outlives the snapshot (its upstream pools) it takes
 * from the tenant's registry resources, and holds for as long as a request runs on it.
 */
import type { Authenticated } from '../auth/authenticate.js';
import type { PlaneName } from '../config/schema.js';
import type { MeshgateError } from '../errors.js';
import type { RequestTarget } from '../http/canonical-path.js';
import type { StrippedHeaders } from '../http/headers.js';
import type { Exchange } from '../listener/exchange.js';
import type { TenantCore } from '../tenancy/tenant.js';

/** The state of one request, filled in order: tenant → plane → identity → outcome. */
export interface RequestContext {
  readonly exchange: Exchange;
  tenant?: TenantCore;
  target?: RequestTarget;
  plane?: PlaneName;
  /** What the client claimed in headers upstreams trust; removed, never forwarded. */
  stripped?: StrippedHeaders;
  authenticated?: Authenticated;
  /**
   * Records who authenticated: planes call it as soon as the caller is known. The connection then
   * counts against the tenant's connection limit instead of the unauthenticated budget (and may
   * be refused there, MG_ERR_LIMIT_CONNECTIONS).
   */
  admit(authenticated: Authenticated): void;
  /**
   * The rule that allowed the request, for its access-log line: `access.<plane>[i]` by position in
   * the tenant's list, or `default` when the plane has no rules. Unset until the rules allowed.
   */
  rule?: string;
  error?: MeshgateError;
  /** Set by the forwarder when the upstream answered. */
  upstreamStatus?: number;
  /** For gRPC streams: the grpc-status the client was sent. */
  grpcStatus?: string | undefined;
  /** The renderer of the plane the path claims, chosen before the path is checked. */
  render?: ((exchange: Exchange, error: MeshgateError) => void) | undefined;
}

export interface RoutedContext extends RequestContext {
  tenant: TenantCore;
  target: RequestTarget;
}

export interface Plane<TenantState = unknown> {
  readonly name: PlaneName;
  /** Whether the request belongs to this plane (on a listener that serves it). */
  owns(path: string, exchange: Exchange): boolean;
  /**
   * Builds this plane's state for one tenant of a new snapshot; undefined when the tenant has none.
   * Pools come from `tenant.resources`, never made here: a snapshot owns nothing to close.
   */
  build(tenant: TenantCore): TenantState | undefined;
  /**
   * Holds the registry resources a request of this plane runs on (its upstream pool), from the
   * moment the snapshot is read until the request is over: a reload meanwhile cannot close them
   * under it. Called in the same turn as the snapshot is read; returns the release.
   */
  hold?(state: TenantState | undefined): () => void;
  /** Handles one request: responds, or throws a MeshgateError for the renderer. */
  handle(context: RoutedContext, state: TenantState | undefined): Promise<void>;
  /** Whether it takes HTTP/1.1 `Upgrade` requests; other planes refuse them. */
  readonly upgrades?: boolean;
  /** Renders its errors its own way (a Kubernetes Status); the default is JSON or a gRPC status. */
  readonly renderError?: (exchange: Exchange, error: MeshgateError) => void;
}
