/**
 * buildGateway(config) assembles meshgate without side effects: nothing listens and nothing is
 * fetched until listen(). Tests build, listen on port 0, and close.
 */
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { createAdminServer } from '../admin/admin-server.js';
import { adminAccessSettings, createAdminAccess } from '../admin/access.js';
import type { LoadedConfig } from '../config/load.js';
import { createAgentTunnels, type TunnelTimings } from '../forward/agent-tunnels.js';
import { createBodyBudget } from '../http/body.js';
import { createTlsListener, type TlsListener } from '../listener/tls-listener.js';
import { accessLogger, createLogger, type Logger } from '../observability/logger.js';
import { createMetrics, type Metrics } from '../observability/metrics.js';
import { createAgentPlane } from '../planes/agent/plane.js';
import { createDebugPlane } from '../planes/debug/plane.js';
import { createKubePlane } from '../planes/kube/plane.js';
import type { Plane } from '../planes/plane.js';
import { createWebhookPlane } from '../planes/webhook/plane.js';
import { createXdsPlane, type XdsState } from '../planes/xds/plane.js';
import { storeOf } from '../planes/metrics/stream-metrics.js';
import { createTenantLimits } from '../policy/limits.js';
import { createRequestRates } from '../policy/request-rate.js';
import { defaultCertificate } from '../pki/default-certificate.js';
import { createResourceRegistry, type ResourceRegistry } from '../tenancy/registry.js';
import { CERTIFICATE_KINDS, certificateExpiries } from '../tenancy/expiry.js';
import { buildSnapshot, type Snapshot } from '../tenancy/snapshot.js';
import { registryReader } from '../status/metric-reader.js';
import { createStatusSource, topologyOf } from '../status/status-source.js';
import { createRequestHandler } from './handle-request.js';

export interface GatewayOptions {
  readonly logger?: Logger;
  /** Sum of request bodies buffered at once across all requests. */
  readonly bodyBudgetBytes?: number;
  /** A worker of `serve --workers N`: no admin listener (the primary has it). */
  readonly worker?: boolean;
  /** How agent tunnels are started and kept alive (tests shorten the pings). */
  readonly agentTimings?: Partial<TunnelTimings>;
}

export interface GatewayAddresses {
  readonly admin: AddressInfo;
  readonly listeners: Readonly<Record<string, AddressInfo>>;
}

export interface Gateway {
  readonly metrics: Metrics;
  readonly logger: Logger;
  current(): Snapshot;
  listen(): Promise<GatewayAddresses>;
  /**
   * Loads a config and swaps in a snapshot built from it. On any failure (the file, the schema,
   * the files it names, the build) the current snapshot stays, the failure is counted, and the
   * error is thrown. Listener and admin settings are not changed by a reload. Each tenant's
   * long-lived resources whose inputs did not change are kept as they are (see the registry).
   */
  reload(load: () => LoadedConfig): void;
  /** The registry of long-lived tenant resources (for tests and the status of a drain). */
  readonly resources: ResourceRegistry;
  close(graceMs?: number): Promise<void>;
}

export function buildGateway(loaded: LoadedConfig, options: GatewayOptions = {}): Gateway {
  const logger = options.logger ?? createLogger(loaded.config.logging.level);
  const metrics = createMetrics();
  /** Which pool last reported each tenant's istiod replica (`tenant\0replica`). */
  const replicaHealthOwners = new Map<string, object>();
  const xds = createXdsPlane({
    poolEvents: (tenant) => {
      // A replaced pool closes after its successor opened: it may take away only what it set.
      const pool = {};
      return {
        sessions: (replica, count) => metrics.xdsUpstreamSessions.set({ tenant, replica }, count),
        goaway: () => metrics.goaways.inc({ direction: 'received', tenant, listener: '' }),
        health: (replica, state) => {
          const key = `${tenant}\0${replica}`;
          if (state !== 'removed') {
            replicaHealthOwners.set(key, pool);
            metrics.upstreamReplicaUp.set({ tenant, replica }, state === 'up' ? 1 : 0);
          } else if (replicaHealthOwners.get(key) === pool) {
            replicaHealthOwners.delete(key);
            metrics.upstreamReplicaUp.remove({ tenant, replica });
          }
        },
      };
    },
    onStream: (tenant, delta) => metrics.xdsStreams.inc({ tenant }, delta),
    onStreamEnd: (tenant, seconds) => metrics.xdsStreamDuration.observe({ tenant }, seconds),
    onBytes: (tenant, direction, bytes) =>
      metrics.xdsBytes.inc({ tenant, direction: direction === 'toUpstream' ? 'to_upstream' : 'to_client' }, bytes),
    onDebugFanout: (tenant, { outcome, missing }) => {
      metrics.xdsDebugFanouts.inc({ tenant, outcome });
      if (missing > 0) metrics.xdsDebugFanoutMissing.inc({ tenant }, missing);
    },
    metricsService: {
      onStream: (tenant, delta) => metrics.sidecarMetricsStreams.inc({ tenant }, delta),
      onMessage: (tenant) => metrics.sidecarMetricsMessages.inc({ tenant }),
      onDropped: (tenant, reason, count) => metrics.sidecarMetricsDropped.inc({ tenant, reason }, count),
    },
  });
  const tunnels = createAgentTunnels({
    tunnels: (tenant, cluster, count) => metrics.agentTunnels.set({ tenant, cluster }, count),
    streams: (tenant, cluster, delta) => metrics.agentStreams.inc({ tenant, cluster }, delta),
  });
  const planes: Plane[] = [
    createWebhookPlane({ bodyBudget: createBodyBudget(options.bodyBudgetBytes ?? 256 * 1024 * 1024) }),
    createDebugPlane(),
    xds,
    createKubePlane({
      onRequest: (tenant, cluster, verb, code) => metrics.kubeRequests.inc({ tenant, cluster, verb, code }),
      onWatch: (tenant, cluster, delta) => metrics.kubeWatches.inc({ tenant, cluster }, delta),
      onTunnel: (tenant, cluster, protocol, delta) => metrics.kubeTunnels.inc({ tenant, cluster, protocol }, delta),
      onViewForward: (tenant, port, endpoint, status) => metrics.kubeViewForwards.inc({ tenant, port: String(port), endpoint, code: String(status) }),
      // Each request inside a view's port-forward is a debug-plane request, and spends its rate.
      takeRate: (tenant, plane) => {
        try {
          rates.take(tenant, plane);
        } catch (err) {
          metrics.limitsHit.inc({ tenant: tenant.id, plane, limit: 'rate' });
          throw err;
        }
      },
      onUpstreamLatency: (tenant, cluster, seconds) => metrics.kubeUpstreamLatency.observe({ tenant, cluster }, seconds),
      // Watches and tunnels can last hours: their start is recorded when it happens, their end by the access log.
      onLongRunning: ({ requestId, tenant, cluster, identity, request }) =>
        logger.info(
          {
            requestId,
            tenant,
            cluster,
            subject: identity.subject,
            auth: identity.method,
            verb: request.verb,
            resource: request.subresource === '' ? request.resource : `${request.resource}/${request.subresource}`,
            namespace: request.namespace,
            name: request.name,
          },
          'kube long-running request started',
        ),
    }, tunnels),
    createAgentPlane({
      tunnels,
      instance: randomUUID(),
      ...(options.agentTimings === undefined ? {} : { timings: options.agentTimings }),
      hooks: {
        onRegistration: (tenant, outcome) => metrics.agentRegistrations.inc({ tenant, outcome }),
        onConnected: (tenant, cluster, subject) => logger.info({ tenant, cluster, subject }, 'agent connected'),
        onDisconnected: (tenant, cluster, seconds) => logger.info({ tenant, cluster, seconds: Math.round(seconds) }, 'agent disconnected'),
      },
    }),
  ];
  const limits = createTenantLimits({
    connections: (tenant, count) => metrics.tenantConnections.set({ tenant }, count),
    streams: (tenant, count) => metrics.tenantStreams.set({ tenant }, count),
  });

  let drainMs = loaded.config.reload.drainTimeout;
  const resources = createResourceRegistry({
    drainMs: () => drainMs,
    onClose: (key, reason) => {
      metrics.tenantResourcesClosed.inc({ reason });
      if (reason !== 'replaced') logger.info({ resource: key, reason }, 'tenant resource closed');
      countResources();
    },
    onError: (key, err) => logger.error({ resource: key, err }, 'a tenant resource failed to close'),
  });
  const countResources = (): void => {
    const { current, draining } = resources.stats();
    metrics.tenantResources.set({ state: 'current' }, current);
    metrics.tenantResources.set({ state: 'draining' }, draining);
  };

  let version = 0;
  /** Builds a snapshot in a new registry generation, and commits it: the caller swaps it in at once. */
  const build = (next: LoadedConfig): Snapshot => {
    const generation = resources.begin();
    let built: Snapshot;
    try {
      built = buildSnapshot(next, {
        version: version + 1,
        planes,
        generation,
        listeners: loaded.config.listeners,
        onTokenCacheLookup: (hit) => metrics.tokenCacheLookups.inc({ result: hit ? 'hit' : 'miss' }),
        onTokenReview: (tenant, cluster, result) => metrics.tokenReviews.inc({ tenant, cluster, result }),
        onJwksLoad: (tenant, cluster, result, error) => {
          metrics.jwksLoads.inc({ tenant, cluster, result });
          if (error !== undefined) logger.warn({ tenant, cluster, err: error }, 'JWKS load failed');
        },
      });
    } catch (err) {
      generation.abort();
      throw err;
    }
    version = built.version;
    drainMs = next.config.reload.drainTimeout;
    generation.commit();
    countResources();
    return built;
  };
  /** Certificate expiry by tenant, for the snapshot in use: a removed tenant's series go with it. */
  const recordExpiries = (s: Snapshot, before: readonly string[]): void => {
    for (const tenant of before) for (const certificate of CERTIFICATE_KINDS) metrics.certificateExpiry.remove({ tenant, certificate });
    for (const tenant of s.tenants) {
      for (const [certificate, notAfter] of certificateExpiries(tenant)) metrics.certificateExpiry.set({ tenant: tenant.id, certificate }, notAfter.getTime() / 1000);
    }
  };
  let snapshot = build(loaded);
  metrics.configVersion.set(snapshot.version);
  metrics.configLoadedAt.set(snapshot.loadedAt.getTime() / 1000);
  recordExpiries(snapshot, []);
  metrics.configLastReloadSuccessful.set(1);
  let listening = false;

  const rates = createRequestRates();
  const handlerDeps = { current: () => snapshot, planes, metrics, logger: accessLogger(logger), limits, rates };
  const fallback = defaultCertificate();
  const listeners: TlsListener[] = Object.entries(loaded.config.listeners).map(([name, config]) =>
    createTlsListener({
      name,
      config,
      contextFor: (serverName) => snapshot.tenantForHost(serverName)?.secureContexts.get(name),
      defaultCertificate: config.defaultCertificate
        ? { cert: loaded.files.text(config.defaultCertificate.cert), key: loaded.files.text(config.defaultCertificate.key) }
        : fallback,
      onExchange: createRequestHandler(handlerDeps, config.planes),
      onConnection: (socket) => {
        const serverName = (socket as { servername?: string | false }).servername;
        limits.admitConnection(socket, typeof serverName === 'string' ? snapshot.tenantForHost(serverName) : undefined);
      },
      metrics,
      logger,
    }),
  );
  const admin = options.worker === true ? undefined : createAdminServer({
    host: loaded.config.admin.host,
    port: loaded.config.admin.port,
    metrics: { contentType: metrics.registry.contentType, text: () => metrics.registry.metrics() },
    readiness: () => ({ ready: listening, detail: { snapshot: snapshot.version, tenants: snapshot.tenants.length } }),
    access: createAdminAccess(adminAccessSettings(loaded)),
    status: createStatusSource({
      topology: () => topologyOf(snapshot.tenants.map((t) => t.config), 'one process'),
      read: registryReader(metrics.registry),
    }),
    sidecarMetrics: (id) => {
      const tenant = snapshot.tenants.find((t) => t.id === id);
      return tenant === undefined ? undefined : storeOf((snapshot.planeState(tenant, 'xds') as XdsState | undefined)?.metrics)?.render();
    },
  });

  const warmKeys = (s: Snapshot): void => {
    for (const tenant of s.tenants) for (const source of tenant.jwks.values()) void source.warm();
  };

  return {
    metrics,
    logger,
    resources,
    current: () => snapshot,
    async listen() {
      const adminAddress = (await admin?.listen()) ?? { address: '', family: '', port: 0 };
      const addresses: Record<string, AddressInfo> = {};
      for (const listener of listeners) addresses[listener.name] = await listener.listen();
      listening = true;
      warmKeys(snapshot);
      const tenants = snapshot.tenants.map((t) => t.id);
      if (admin) logger.info({ admin: adminAddress, listeners: addresses, tenants }, 'meshgate is serving');
      else logger.info({ listeners: addresses, tenants }, 'worker is serving');
      return { admin: adminAddress, listeners: addresses };
    },
    reload(load) {
      let fresh: Snapshot;
      try {
        fresh = build(load());
      } catch (err) {
        metrics.configReloads.inc({ result: 'failure' });
        metrics.configLastReloadSuccessful.set(0);
        throw err;
      }
      const before = new Set(snapshot.tenants.map((t) => t.id));
      snapshot = fresh;
      rates.retain(new Set(fresh.tenants.map((t) => t.id)));
      metrics.configReloads.inc({ result: 'success' });
      metrics.configLastReloadSuccessful.set(1);
      metrics.configVersion.set(fresh.version);
      metrics.configLoadedAt.set(fresh.loadedAt.getTime() / 1000);
      recordExpiries(fresh, [...before]);
      if (listening) warmKeys(fresh);
      const after = fresh.tenants.map((t) => t.id);
      logger.info(
        {
          snapshot: fresh.version,
          tenants: after,
          added: after.filter((id) => !before.has(id)),
          removed: [...before].filter((id) => !after.includes(id)),
          resources: resources.stats(),
        },
        'config reloaded',
      );
    },
    async close(graceMs = 5_000) {
      listening = false;
      // GOAWAY to every client, the grace to finish, then xDS streams end with UNAVAILABLE so
      // that sidecars reconnect to another replica, then connections are cut.
      await Promise.all(listeners.map((l) => l.close(graceMs, () => xds.terminateAll())));
      await admin?.close();
      tunnels.closeAll();
      resources.close();
      countResources();
    },
  };
}
