/**
 * Every metric meshgate exports, in one place, on a registry of its own (never prom-client's
 * global one, so that two gateways in one process do not collide). Labels are bounded: tenant,
 * plane, listener and stable codes, never a token, a path or an identity.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { droppedAuditLines } from './audit-file.js';
import { droppedLogLines } from './logger.js';

export type Metrics = ReturnType<typeof createMetrics>;

/** Label value for requests that never reached a tenant or a plane. */
export const NONE = '-';

/** Per counter: the drops it has counted so far (the logger counts for the whole process). */
const seenDrops = new WeakMap<object, number>();

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  return {
    registry,
    requests: new Counter({
      name: 'meshgate_http_requests_total',
      help: 'Requests by tenant, plane and outcome (OK, or the MG_ERR_* code).',
      labelNames: ['tenant', 'plane', 'outcome'] as const,
      registers,
    }),
    requestDuration: new Histogram({
      name: 'meshgate_http_request_duration_seconds',
      help: 'Time from request to the end of the response.',
      labelNames: ['tenant', 'plane'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    denials: new Counter({
      name: 'meshgate_denials_total',
      help: 'Requests rejected by meshgate, by reason (the MG_ERR_* code).',
      labelNames: ['tenant', 'plane', 'reason'] as const,
      registers,
    }),
    upstreamErrors: new Counter({
      name: 'meshgate_upstream_errors_total',
      help: 'Failures reaching or reading an upstream, by reason.',
      labelNames: ['tenant', 'plane', 'reason'] as const,
      registers,
    }),
    logLinesDropped: new Counter({
      name: 'meshgate_log_lines_dropped_total',
      help: 'Log lines dropped because 16 MiB were already waiting for stdout (nobody was reading it).',
      registers,
      collect() {
        const dropped = droppedLogLines();
        const counted = seenDrops.get(this) ?? 0;
        if (dropped > counted) this.inc(dropped - counted);
        seenDrops.set(this, dropped);
      },
    }),
    auditLinesDropped: new Counter({
      name: 'meshgate_audit_lines_dropped_total',
      help: 'Audit log lines dropped before reaching the audit file: 16 MiB were already waiting for the disk, or a write or rotation failed.',
      registers,
      collect() {
        const dropped = droppedAuditLines();
        const counted = seenDrops.get(this) ?? 0;
        if (dropped > counted) this.inc(dropped - counted);
        seenDrops.set(this, dropped);
      },
    }),
    configReloads: new Counter({
      name: 'meshgate_config_reloads_total',
      help: 'Config reloads by result (success, failure).',
      labelNames: ['result'] as const,
      aggregator: 'max',
      registers,
    }),
    configLastReloadSuccessful: new Gauge({
      name: 'meshgate_config_last_reload_successful',
      help: 'Whether the last config reload worked (1), or was refused and the config before it kept (0). 1 at start.',
      aggregator: 'min',
      registers,
    }),
    configVersion: new Gauge({
      name: 'meshgate_config_snapshot_version',
      help: 'Version of the config snapshot in use; it rises with each successful reload.',
      aggregator: 'min',
      registers,
    }),
    configLoadedAt: new Gauge({
      name: 'meshgate_config_loaded_timestamp_seconds',
      help: 'When the config snapshot in use was loaded (Unix time).',
      aggregator: 'min',
      registers,
    }),
    tenantSourceErrors: new Counter({
      name: 'meshgate_tenant_source_errors_total',
      help: 'Tenant definitions refused by a source (a bad file, an invalid MeshTenant), by source.',
      labelNames: ['source'] as const,
      aggregator: 'max',
      registers,
    }),
    tenantResources: new Gauge({
      name: 'meshgate_tenant_resources',
      help: 'Long-lived tenant resources (pools, key sets, caches) by state: current, or draining after a reload replaced them.',
      labelNames: ['state'] as const,
      registers,
    }),
    tenantResourcesClosed: new Counter({
      name: 'meshgate_tenant_resources_closed_total',
      help: 'Tenant resources closed, by reason: replaced (its last work ended), drained (the drain bound passed), removed, shutdown.',
      labelNames: ['reason'] as const,
      registers,
    }),
    jwksLoads: new Counter({
      name: 'meshgate_jwks_loads_total',
      help: 'JWKS loads by tenant, cluster and result.',
      labelNames: ['tenant', 'cluster', 'result'] as const,
      registers,
    }),
    tokenCacheLookups: new Counter({
      name: 'meshgate_token_cache_lookups_total',
      help: 'Verified-token cache lookups by result (hit, miss).',
      labelNames: ['result'] as const,
      registers,
    }),
    tlsHandshakeErrors: new Counter({
      name: 'meshgate_tls_handshake_errors_total',
      help: 'TLS handshakes that failed, by listener.',
      labelNames: ['listener'] as const,
      registers,
    }),
    connections: new Gauge({
      name: 'meshgate_listener_connections',
      help: 'Open client connections by listener.',
      labelNames: ['listener'] as const,
      registers,
    }),
    tenantConnections: new Gauge({
      name: 'meshgate_tenant_connections',
      help: 'Open client connections by tenant (by TLS server name).',
      labelNames: ['tenant'] as const,
      registers,
    }),
    tenantStreams: new Gauge({
      name: 'meshgate_tenant_streams',
      help: 'Requests and streams in flight by tenant, all planes.',
      labelNames: ['tenant'] as const,
      registers,
    }),
    xdsStreams: new Gauge({
      name: 'meshgate_xds_streams',
      help: 'Open xDS and CA streams by tenant.',
      labelNames: ['tenant'] as const,
      registers,
    }),
    xdsStreamDuration: new Histogram({
      name: 'meshgate_xds_stream_duration_seconds',
      help: 'How long xDS and CA streams lasted.',
      labelNames: ['tenant'] as const,
      buckets: [0.01, 0.1, 1, 10, 60, 300, 900, 1800, 3600, 7200, 21600],
      registers,
    }),
    xdsBytes: new Counter({
      name: 'meshgate_xds_bytes_total',
      help: 'Bytes of gRPC messages forwarded on the xds plane, by tenant and direction (to_upstream, to_client).',
      labelNames: ['tenant', 'direction'] as const,
      registers,
    }),
    xdsDebugFanouts: new Counter({
      name: 'meshgate_xds_debug_fanout_total',
      help: "istioctl debug requests asked of every istiod replica (syncz, config_dump), by tenant and outcome: complete, partial (a replica did not answer), failed.",
      labelNames: ['tenant', 'outcome'] as const,
      registers,
    }),
    xdsDebugFanoutMissing: new Counter({
      name: 'meshgate_xds_debug_fanout_replicas_missing_total',
      help: 'istiod replicas that did not answer a debug request asked of every replica in time, by tenant.',
      labelNames: ['tenant'] as const,
      registers,
    }),
    sidecarMetricsStreams: new Gauge({
      name: 'meshgate_xds_metrics_streams',
      help: "Open sidecar metrics streams (Envoy's MetricsService) by tenant.",
      labelNames: ['tenant'] as const,
      registers,
    }),
    sidecarMetricsMessages: new Counter({
      name: 'meshgate_xds_metrics_messages_total',
      help: 'Sidecar metrics messages accepted, by tenant.',
      labelNames: ['tenant'] as const,
      registers,
    }),
    sidecarMetricsDropped: new Counter({
      name: 'meshgate_xds_metrics_series_dropped_total',
      help: "Sidecar metric series not kept for the tenant's Prometheus endpoint, by tenant and reason (max_proxies, max_series, invalid).",
      labelNames: ['tenant', 'reason'] as const,
      registers,
    }),
    upstreamReplicaUp: new Gauge({
      name: 'meshgate_upstream_replica_up',
      help: "Whether meshgate's last attempt to open a session to an istiod replica (xds plane) succeeded: 1 up, 0 down.",
      labelNames: ['tenant', 'replica'] as const,
      aggregator: 'min',
      registers,
    }),
    xdsUpstreamSessions: new Gauge({
      name: 'meshgate_xds_upstream_sessions',
      help: 'HTTP/2 sessions to istiod by tenant and replica.',
      labelNames: ['tenant', 'replica'] as const,
      registers,
    }),
    kubeRequests: new Counter({
      name: 'meshgate_kube_requests_total',
      help: 'Kube plane requests by tenant, cluster, verb and HTTP status code (the upstream\'s, or meshgate\'s refusal).',
      labelNames: ['tenant', 'cluster', 'verb', 'code'] as const,
      registers,
    }),
    kubeWatches: new Gauge({
      name: 'meshgate_kube_watches',
      help: 'Kube plane watches in flight by tenant and cluster.',
      labelNames: ['tenant', 'cluster'] as const,
      registers,
    }),
    kubeTunnels: new Gauge({
      name: 'meshgate_kube_tunnels',
      help: 'Open exec, attach and port-forward tunnels by tenant, cluster and protocol (websocket, spdy).',
      labelNames: ['tenant', 'cluster', 'protocol'] as const,
      registers,
    }),
    kubeViewForwards: new Counter({
      name: 'meshgate_kube_view_forwards_total',
      help: "Requests carried through port-forwards to a control-plane view's istiod, by tenant, port, endpoint and status (0: a port that is not forwarded).",
      labelNames: ['tenant', 'port', 'endpoint', 'code'] as const,
      registers,
    }),
    kubeUpstreamLatency: new Histogram({
      name: 'meshgate_kube_upstream_latency_seconds',
      help: 'Time from forwarding a kube request to the API server\'s response head.',
      labelNames: ['tenant', 'cluster'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    }),
    agentTunnels: new Gauge({
      name: 'meshgate_agent_tunnels',
      help: 'Agent tunnels connected to this process, by tenant and cluster (clusters via: agent; 0 when none is).',
      labelNames: ['tenant', 'cluster'] as const,
      registers,
    }),
    agentRegistrations: new Counter({
      name: 'meshgate_agent_registrations_total',
      help: 'Agent registrations by tenant and outcome (OK, or the MG_ERR_* code it was refused or ended with).',
      labelNames: ['tenant', 'outcome'] as const,
      registers,
    }),
    agentStreams: new Gauge({
      name: 'meshgate_agent_streams',
      help: "Connections to a cluster's API server open through its agents' tunnels, by tenant and cluster.",
      labelNames: ['tenant', 'cluster'] as const,
      registers,
    }),
    tokenReviews: new Counter({
      name: 'meshgate_tokenreviews_total',
      help: 'TokenReview lookups against clusters, by result (authenticated, rejected, error, limited).',
      labelNames: ['tenant', 'cluster', 'result'] as const,
      registers,
    }),
    limitsHit: new Counter({
      name: 'meshgate_limits_hit_total',
      help: 'Requests refused by a tenant limit, by plane and limit (rate, streams, connections).',
      labelNames: ['tenant', 'plane', 'limit'] as const,
      registers,
    }),
    certificateExpiry: new Gauge({
      name: 'meshgate_certificate_expiry_timestamp_seconds',
      help: 'When a certificate meshgate serves or trusts stops being valid (Unix time), by tenant and certificate (serving, client-ca, istiod-ca).',
      labelNames: ['tenant', 'certificate'] as const,
      aggregator: 'min',
      registers,
    }),
    goaways: new Counter({
      name: 'meshgate_http2_goaways_total',
      help: 'HTTP/2 GOAWAY frames received and sent: with istiod (by tenant), with clients (by listener).',
      labelNames: ['direction', 'tenant', 'listener'] as const,
      registers,
    }),
  };
}
