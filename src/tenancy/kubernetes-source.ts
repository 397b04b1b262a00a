/**
 * MeshTenant resources as a tenant source: informers (`@kubernetes/client-node`) watch the
 * MeshTenants of one namespace and the Secrets there, and any change recomputes the tenants.
 *
 * Every replica computes the same answer from the same objects, so all converge:
 *  - MeshTenants are taken oldest first (creationTimestamp, then name);
 *  - each is converted and checked alone against the config file's settings (schema, Secret keys,
 *    certificates that cover the hosts, …), then all that passed are checked together (ids and
 *    hosts that two claim): the later one loses;
 *  - an invalid MeshTenant is skipped. If an earlier generation of it was valid, that one goes on
 *    serving (a typo must not cut a tenant's traffic); otherwise it is not served;
 *  - each MeshTenant's `Ready` condition says which, and why, written only when it changed.
 */
import {
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  makeInformer,
  type Informer,
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
  type V1Secret,
} from '@kubernetes/client-node';
import { loadConfig, type LoadedConfig, type TenantOverlay } from '../config/load.js';
import type { KubernetesSourceConfig } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import {
  admitMeshTenants,
  byAge,
  MESH_TENANT,
  secretReader,
  TENANT_LABEL,
  type MeshTenantCondition,
  type MeshTenantObject,
} from './mesh-tenant.js';
import type { TenantSource, TenantSourceEvents } from './source.js';

export interface KubernetesSourceOptions {
  /** The config file: its settings are checked with every MeshTenant. */
  readonly path: string;
  readonly config: KubernetesSourceConfig;
  /** The kubeconfig, resolved; without it, the in-cluster service account. */
  readonly kubeconfig?: string | undefined;
  readonly logger: Logger;
  /** Changes closer together than this are taken as one. */
  readonly settleMs?: number;
  /** A MeshTenant was refused (counted by the caller). */
  readonly onInvalid?: (name: string) => void;
}

export interface KubernetesSource extends TenantSource {
  /** The MeshTenants in use, and the reader of their Secret keys. */
  overlay(): TenantOverlay;
  /** Judges the MeshTenants again, against the config file as it is now (after the file changed). */
  refresh(): void;
  /** The verdict on each MeshTenant, by name, as its status says it. */
  verdicts(): ReadonlyMap<string, MeshTenantCondition>;
}

type Watched<T extends KubernetesObject> = Informer<T> & ObjectCache<T>;

const RESTART_MS = { min: 500, max: 30_000 };

export function createKubernetesSource(options: KubernetesSourceOptions): KubernetesSource {
  const { namespace, labelSelector } = options.config;
  const kc = new KubeConfig();
  if (options.kubeconfig === undefined) kc.loadFromCluster();
  else kc.loadFromFile(options.kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const settleMs = options.settleMs ?? 200;

  const tenantsPath = `/apis/${MESH_TENANT.group}/${MESH_TENANT.version}/namespaces/${namespace}/${MESH_TENANT.plural}`;
  const tenantInformer: Watched<MeshTenantObject & KubernetesObject> = makeInformer(
    kc,
    tenantsPath,
    () =>
      custom.listNamespacedCustomObject({
        group: MESH_TENANT.group,
        version: MESH_TENANT.version,
        namespace,
        plural: MESH_TENANT.plural,
        ...(labelSelector === undefined ? {} : { labelSelector }),
      }) as Promise<KubernetesListObject<MeshTenantObject & KubernetesObject>>,
    labelSelector,
  );
  // Only Secrets given to a tenant are cached: meshgate never holds the namespace's others.
  const secretInformer: Watched<V1Secret> = makeInformer(
    kc,
    `/api/v1/namespaces/${namespace}/secrets`,
    () => core.listNamespacedSecret({ namespace, labelSelector: TENANT_LABEL }),
    TENANT_LABEL,
  );

  const reader = (tenant: unknown) => secretReader(namespace, tenant, (name) => secretInformer.get(name, namespace));
  let inUse: Record<string, unknown>[] = [];
  /** The last valid form of each MeshTenant, and its generation. */
  const lastGood = new Map<string, { tenant: Record<string, unknown>; generation: number }>();
  const verdicts = new Map<string, MeshTenantCondition>();
  let events: TenantSourceEvents | undefined;
  let settle: NodeJS.Timeout | undefined;
  let closed = false;
  const restarts = new Map<string, NodeJS.Timeout>();

  const load = (tenants: readonly unknown[]): LoadedConfig => loadConfig(options.path, { tenants, reader });

  /** Whether an informer has listed at least once: before, its cache is empty, not "no objects". */
  const synced = (informer: object): boolean => (informer as { latestResourceVersion(): string }).latestResourceVersion() !== '';

  const recompute = (): void => {
    // Judging MeshTenants against Secrets not yet listed would mark every one Invalid.
    if (!synced(tenantInformer) || !synced(secretInformer)) return;
    const objects = [...tenantInformer.list(namespace)];
    const { accepted, problems } = admitMeshTenants(objects, load, lastGood);
    lastGood.clear();
    for (const a of accepted) lastGood.set(a.name, { tenant: a.tenant, generation: a.generation });
    inUse = accepted.map((a) => a.tenant);
    verdicts.clear();
    for (const object of objects.sort(byAge)) {
      const name = object.metadata?.name ?? '';
      const serving = accepted.find((a) => a.name === name);
      const problem = problems.get(name);
      const condition: MeshTenantCondition =
        problem === undefined
          ? { type: 'Ready', status: 'True', reason: 'Accepted', message: 'meshgate serves this tenant' }
          : {
              type: 'Ready',
              status: 'False',
              reason: serving ? 'InvalidServingPrevious' : 'Invalid',
              message: serving ? `${problem} (meshgate goes on serving generation ${serving.generation})` : problem,
            };
      verdicts.set(name, condition);
      void writeStatus(object, condition);
    }
  };

  const writeStatus = async (object: MeshTenantObject, condition: MeshTenantCondition): Promise<void> => {
    const name = object.metadata?.name ?? '';
    const generation = object.metadata?.generation ?? 0;
    const current = object.status?.conditions?.find((c) => c.type === condition.type);
    if (
      current?.status === condition.status &&
      current.reason === condition.reason &&
      current.message === condition.message &&
      current.observedGeneration === generation
    ) {
      return;
    }
    if (condition.status === 'False') options.onInvalid?.(name);
    const lastTransitionTime =
      current?.status === condition.status && current.lastTransitionTime !== undefined ? current.lastTransitionTime : new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const others = object.status?.conditions?.filter((c) => c.type !== condition.type) ?? [];
    const status = { observedGeneration: generation, conditions: [...others, { ...condition, observedGeneration: generation, lastTransitionTime }] };
    try {
      await custom.patchNamespacedCustomObjectStatus({
        group: MESH_TENANT.group,
        version: MESH_TENANT.version,
        namespace,
        plural: MESH_TENANT.plural,
        name,
        body: [{ op: 'add', path: '/status', value: status }],
      });
    } catch (err) {
      options.logger.warn({ meshTenant: name, err: errorText(err) }, 'could not write a MeshTenant status');
    }
  };

  const changed = (): void => {
    if (closed || settle) return;
    settle = setTimeout(() => {
      settle = undefined;
      try {
        recompute();
      } catch (err) {
        options.logger.error({ err: errorText(err) }, 'MeshTenants not applied: the config file is at fault; keeping the tenants in use');
        return;
      }
      events?.onChange('MeshTenants or their Secrets changed');
    }, settleMs);
    settle.unref();
  };

  /** An informer stops on an error: it is started again, with backoff. */
  const keepRunning = (label: string, informer: Watched<KubernetesObject>): void => {
    let delay = RESTART_MS.min;
    informer.on('connect', () => (delay = RESTART_MS.min));
    informer.on('error', (err: unknown) => {
      if (closed) return;
      options.logger.warn({ informer: label, err: errorText(err), retryMs: delay }, 'watch failed; restarting it');
      const timer = setTimeout(() => {
        restarts.delete(label);
        if (!closed) informer.start().catch(() => undefined);
      }, delay);
      timer.unref();
      restarts.set(label, timer);
      delay = Math.min(delay * 2, RESTART_MS.max);
    });
    for (const verb of ['add', 'update', 'delete'] as const) informer.on(verb, changed);
  };

  return {
    name: 'kubernetes',
    async start(handlers) {
      keepRunning('meshtenants', tenantInformer);
      keepRunning('secrets', secretInformer);
      await Promise.all([secretInformer.start(), tenantInformer.start()]);
      // A list that failed is retried (keepRunning); tenants are judged once both have listed.
      while (!closed && !(synced(tenantInformer) && synced(secretInformer))) await new Promise((resolve) => setTimeout(resolve, 200));
      recompute();
      events = handlers;
    },
    overlay: () => ({ tenants: inUse, reader }),
    verdicts: () => verdicts,
    refresh() {
      try {
        recompute();
      } catch (err) {
        options.logger.error({ err: errorText(err) }, 'MeshTenants not judged again: the config file is at fault');
      }
    },
    close() {
      closed = true;
      clearTimeout(settle);
      for (const timer of restarts.values()) clearTimeout(timer);
      void tenantInformer.stop();
      void secretInformer.stop();
    },
  };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
