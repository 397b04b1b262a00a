/**
 * What a stand-in Kubernetes API server holds: namespaces (default, kube-system, istio-system,
 * bookinfo), Bookinfo's pods and services and istiod, with realistic metadata derived from the
 * cluster's name (uids, pod-template hashes and IPs differ per cluster, but not per run); one
 * resourceVersion counter; a short history of watch events; and `touchNextPod()`, which the stand-in
 * calls on a timer so that watches see MODIFIED events. Objects are replaced, never mutated.
 */
import { createHash } from 'node:crypto';

export type KubeResource = 'namespaces' | 'pods' | 'services' | 'secrets' | 'meshtenants';

export interface ObjectMeta {
  readonly name: string;
  readonly namespace?: string;
  readonly generateName?: string;
  readonly uid: string;
  readonly resourceVersion: string;
  readonly creationTimestamp: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: ObjectMeta;
  readonly [field: string]: unknown;
}

export interface WatchEvent {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly object: KubeObject;
}

export interface KubeStore {
  list(resource: KubeResource, namespace?: string): KubeObject[];
  get(resource: KubeResource, namespace: string | undefined, name: string): KubeObject | undefined;
  /** The newest resourceVersion, as lists report it. */
  resourceVersion(): string;
  /** Events on `resource` after resourceVersion `since`; undefined when `since` is older than the history kept. */
  eventsSince(resource: KubeResource, since: number): WatchEvent[] | undefined;
  subscribe(listener: (resource: KubeResource, event: WatchEvent) => void): () => void;
  /** Bumps the `sandbox.meshgate.io/changed-at` annotation and resourceVersion of the next bookinfo pod. */
  touchNextPod(): void;
  /**
   * Stores an object written through the API (secrets, meshtenants): created, or replaced with a
   * new resourceVersion (and, when its spec or data changed, a new generation). Watches see it.
   */
  apply(resource: KubeResource, object: KubeObject): KubeObject;
  /** Replaces an object's status only (the status subresource); undefined when there is no such object. */
  patchStatus(resource: KubeResource, namespace: string, name: string, status: unknown): KubeObject | undefined;
  /** Deletes an object; watches see DELETED. */
  remove(resource: KubeResource, namespace: string, name: string): KubeObject | undefined;
  /** Metadata for an object created through the API (echoed, not stored). */
  stamp(namespace: string, name: string): Pick<ObjectMeta, 'uid' | 'resourceVersion' | 'creationTimestamp'>;
}

export const CHANGED_AT_ANNOTATION = 'sandbox.meshgate.io/changed-at';
const HISTORY = 256;
const DAY_MS = 86_400_000;

interface PodSpec {
  readonly namespace: string;
  readonly app: string;
  readonly version?: string;
  readonly image: string;
  readonly port: number;
  readonly sidecar: boolean;
}

const PODS: readonly PodSpec[] = [
  ...['productpage', 'reviews', 'ratings'].map((app) => ({
    namespace: 'bookinfo',
    app,
    version: 'v1',
    image: `docker.io/istio/examples-bookinfo-${app}-v1:1.20.2`,
    port: 9080,
    sidecar: true,
  })),
  { namespace: 'istio-system', app: 'istiod', image: 'docker.io/istio/pilot:1.24.2', port: 15010, sidecar: false },
];

export function createKubeStore(cluster: string): KubeStore {
  const now = Math.floor(Date.now() / 1000) * 1000;
  const ago = (days: number): string => new Date(now - days * DAY_MS).toISOString().replace('.000Z', 'Z');
  const hash = (...parts: string[]): string => createHash('sha256').update([cluster, ...parts].join('/')).digest('hex');
  let resourceVersion = 4000 + (parseInt(hash('rv').slice(0, 4), 16) % 1000);
  const nextRv = (): string => String(++resourceVersion);
  const meta = (namespace: string | undefined, name: string, days: number, extra: Partial<ObjectMeta> = {}): ObjectMeta => ({
    name,
    ...(namespace === undefined ? {} : { namespace }),
    ...extra,
    uid: uuidFrom(hash(namespace ?? '', name)),
    resourceVersion: nextRv(),
    creationTimestamp: ago(days),
  });
  const ip = (prefix: string, ...parts: string[]): string => {
    const h = hash(...parts);
    return `${prefix}.${parseInt(h.slice(0, 2), 16)}.${1 + (parseInt(h.slice(2, 4), 16) % 254)}`;
  };

  const objects: Record<KubeResource, Map<string, KubeObject>> = {
    namespaces: new Map(),
    pods: new Map(),
    services: new Map(),
    secrets: new Map(),
    meshtenants: new Map(),
  };
  const put = (resource: KubeResource, object: KubeObject): void => {
    objects[resource].set(`${object.metadata.namespace ?? ''}/${object.metadata.name}`, object);
  };

  for (const name of ['default', 'kube-system', 'istio-system', 'bookinfo']) {
    const labels = { 'kubernetes.io/metadata.name': name, ...(name === 'bookinfo' ? { 'istio-injection': 'enabled' } : {}) };
    put('namespaces', {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: meta(undefined, name, 30, { labels }),
      spec: { finalizers: ['kubernetes'] },
      status: { phase: 'Active' },
    });
  }
  for (const pod of PODS) put('pods', podObject(pod));
  put('services', serviceObject('default', 'kubernetes', '10.96.0.1', { name: 'https', port: 443, targetPort: 6443 }, undefined));
  for (const pod of PODS.filter((p) => p.namespace === 'bookinfo')) {
    const clusterIp = ip('10.96', 'svc', pod.app);
    put('services', serviceObject(pod.namespace, pod.app, clusterIp, { name: 'http', port: pod.port, targetPort: pod.port }, { app: pod.app }));
  }

  function podObject(pod: PodSpec): KubeObject {
    const base = `${pod.app}${pod.version ? `-${pod.version}` : ''}`;
    const templateHash = safeString(hash('rs', base), 10);
    const generateName = `${base}-${templateHash}-`;
    const containers = [
      { name: pod.app, image: pod.image, ports: [{ containerPort: pod.port, protocol: 'TCP' }], imagePullPolicy: 'IfNotPresent' },
      ...(pod.sidecar
        ? [{ name: 'istio-proxy', image: 'docker.io/istio/proxyv2:1.24.2', ports: [{ containerPort: 15090, name: 'http-envoy-prom' }] }]
        : []),
    ];
    const labels = { app: pod.app, ...(pod.version ? { version: pod.version } : {}), 'pod-template-hash': templateHash };
    const annotations = { 'kubectl.kubernetes.io/default-container': pod.app };
    const started = ago(2);
    return {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: meta(pod.namespace, `${generateName}${safeString(hash('pod', base), 5)}`, 2, { generateName, labels, annotations }),
      spec: {
        containers,
        serviceAccountName: pod.namespace === 'bookinfo' ? `bookinfo-${pod.app}` : pod.app,
        nodeName: `${cluster}-worker`,
        restartPolicy: 'Always',
      },
      status: {
        phase: 'Running',
        hostIP: ip('172.18', 'node'),
        podIP: ip('10.244', 'pod', base),
        startTime: started,
        conditions: ['Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map((type) => ({ type, status: 'True' })),
        containerStatuses: containers.map((c) => ({
          name: c.name,
          image: c.image,
          ready: true,
          started: true,
          restartCount: 0,
          state: { running: { startedAt: started } },
        })),
      },
    };
  }

  function serviceObject(namespace: string, name: string, clusterIp: string, port: object, selector: object | undefined): KubeObject {
    return {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: meta(namespace, name, namespace === 'default' ? 30 : 2, {
        labels: selector ? { app: name, service: name } : { component: 'apiserver', provider: 'kubernetes' },
      }),
      spec: {
        type: 'ClusterIP',
        clusterIP: clusterIp,
        clusterIPs: [clusterIp],
        ports: [{ protocol: 'TCP', ...port }],
        ...(selector ? { selector } : {}),
        sessionAffinity: 'None',
      },
      status: { loadBalancer: {} },
    };
  }

  const history: { rv: number; resource: KubeResource; event: WatchEvent }[] = [];
  let historyFloor = resourceVersion;
  const listeners = new Set<(resource: KubeResource, event: WatchEvent) => void>();
  let nextPod = 0;
  const emit = (resource: KubeResource, event: WatchEvent): void => {
    history.push({ rv: resourceVersion, resource, event });
    if (history.length > HISTORY) historyFloor = history.shift()?.rv ?? historyFloor;
    for (const listener of listeners) listener(resource, event);
  };
  const key = (namespace: string | undefined, name: string): string => `${namespace ?? ''}/${name}`;

  return {
    list: (resource, namespace) => [...objects[resource].values()].filter((o) => namespace === undefined || o.metadata.namespace === namespace),
    get: (resource, namespace, name) => objects[resource].get(`${namespace ?? ''}/${name}`),
    resourceVersion: () => String(resourceVersion),
    eventsSince: (resource, since) =>
      since < historyFloor ? undefined : history.filter((h) => h.rv > since && h.resource === resource).map((h) => h.event),
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    touchNextPod() {
      const pods = [...objects.pods.values()].filter((p) => p.metadata.namespace === 'bookinfo');
      const pod = pods[nextPod++ % pods.length];
      if (!pod) return;
      const metadata = {
        ...pod.metadata,
        annotations: { ...pod.metadata.annotations, [CHANGED_AT_ANNOTATION]: new Date().toISOString() },
        resourceVersion: nextRv(),
      };
      const object: KubeObject = { ...pod, metadata };
      put('pods', object);
      emit('pods', { type: 'MODIFIED', object });
    },
    apply(resource, object) {
      const { namespace, name } = object.metadata;
      const existing = objects[resource].get(key(namespace, name));
      const content = (o: KubeObject | undefined): string => JSON.stringify(o?.spec ?? o?.data ?? o?.stringData ?? null);
      const generation = (existing?.metadata as { generation?: number } | undefined)?.generation ?? 0;
      const { status: _ignored, ...rest } = object;
      const stored: KubeObject = {
        ...rest,
        ...(existing?.status === undefined ? {} : { status: existing.status }),
        metadata: {
          ...object.metadata,
          uid: existing?.metadata.uid ?? uuidFrom(hash('created', namespace ?? '', name, String(resourceVersion))),
          creationTimestamp: existing?.metadata.creationTimestamp ?? new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
          resourceVersion: nextRv(),
          ...(resource === 'meshtenants' ? { generation: existing && content(existing) === content(object) ? generation : generation + 1 } : {}),
        },
      };
      put(resource, stored);
      emit(resource, { type: existing ? 'MODIFIED' : 'ADDED', object: stored });
      return stored;
    },
    patchStatus(resource, namespace, name, status) {
      const existing = objects[resource].get(key(namespace, name));
      if (!existing) return undefined;
      const stored: KubeObject = { ...existing, status, metadata: { ...existing.metadata, resourceVersion: nextRv() } };
      put(resource, stored);
      emit(resource, { type: 'MODIFIED', object: stored });
      return stored;
    },
    remove(resource, namespace, name) {
      const existing = objects[resource].get(key(namespace, name));
      if (!existing) return undefined;
      objects[resource].delete(key(namespace, name));
      const gone: KubeObject = { ...existing, metadata: { ...existing.metadata, resourceVersion: nextRv() } };
      emit(resource, { type: 'DELETED', object: gone });
      return gone;
    },
    stamp: (namespace, name) => ({
      uid: uuidFrom(hash('created', namespace, name, String(resourceVersion))),
      resourceVersion: nextRv(),
      creationTimestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    }),
  };
}

/**
 * A predicate for `fieldSelector` and `labelSelector`: comma-separated `key=value`, `key==value`,
 * `key!=value` terms (fields by dotted path, e.g. metadata.name, status.phase), and for labels also
 * `key` and `!key`. Throws on anything else.
 */
export function createSelector(fieldSelector: string | null, labelSelector: string | null): (object: KubeObject) => boolean {
  const tests: ((object: KubeObject) => boolean)[] = [];
  const terms = (selector: string | null): string[] => (selector ?? '').split(',').map((t) => t.trim()).filter((t) => t !== '');
  const equality = (term: string) => /^([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)$/.exec(term);
  for (const term of terms(fieldSelector)) {
    const [, key = '', op, value] = equality(term) ?? fail(term);
    tests.push((o) => (fieldValue(o, key) === value) === (op !== '!='));
  }
  for (const term of terms(labelSelector)) {
    const match = equality(term);
    if (match) {
      const [, key = '', op, value] = match;
      tests.push((o) => (o.metadata.labels?.[key] === value) === (op !== '!='));
    } else if (/^!?[A-Za-z0-9._/-]+$/.test(term)) {
      const key = term.replace(/^!/, '');
      tests.push((o) => (o.metadata.labels?.[key] !== undefined) === !term.startsWith('!'));
    } else {
      fail(term);
    }
  }
  return (object) => tests.every((test) => test(object));
}

function fail(term: string): never {
  throw new Error(`unable to parse requirement: "${term}"`);
}

function fieldValue(object: KubeObject, path: string): string | undefined {
  let value: unknown = object;
  for (const key of path.split('.')) {
    value = typeof value === 'object' && value !== null ? (value as Record<string, unknown>)[key] : undefined;
  }
  return typeof value === 'string' ? value : undefined;
}

function uuidFrom(hex: string): string {
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** Kubernetes' alphabet for generated names (no vowels, no look-alikes), from hex. */
function safeString(hex: string, length: number): string {
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  return Array.from({ length }, (_, i) => alphabet[parseInt(hex.slice(2 * i, 2 * i + 2), 16) % alphabet.length]).join('');
}
