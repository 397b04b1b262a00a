/**
 * The objects of a tenant's control-plane view: what Kiali looks for to find an istiod, and
 * nothing more. Kiali (v2) finds a control plane by a Deployment labelled `app=istiod` in any
 * cluster it can read, takes istiod's cluster id from the first container's `CLUSTER_ID`, marks it
 * as managing other clusters when `EXTERNAL_ISTIOD` is `true`, reads the monitoring port from
 * `--monitoringAddr`, its mesh config from the `istio[-<rev>]` ConfigMap, and port-forwards to the
 * newest Running pod labelled `app=istiod` and `istio.io/rev` (read from Kiali's source, not tested
 * with Kiali: docs/kiali.md).
 *
 * Every object is built from the view's config alone, so every meshgate replica serves the same
 * objects with the same resourceVersion (only creationTimestamp, the process's start, differs), and
 * a reload that does not change the view changes none.
 */
import { createHash } from 'node:crypto';
import type { ControlPlaneViewConfig } from '../../../config/schema.js';

export interface ViewObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace?: string;
    readonly uid: string;
    readonly resourceVersion: string;
    readonly creationTimestamp: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly [field: string]: unknown;
}

/** A resource the view serves: its group version, plural name, kind, and whether namespaced. */
export interface ViewResource {
  readonly groupVersion: string;
  readonly name: string;
  readonly kind: string;
  readonly namespaced: boolean;
  readonly shortNames?: readonly string[];
}

/** istiod's ports as Istio's chart declares them; port-forwards reach only the two Kiali uses. */
export const MONITORING_PORT = 15014;
export const READY_PORT = 8080;

const READ = ['get', 'list', 'watch'];

const resource = (groupVersion: string, name: string, kind: string, namespaced = true, shortNames?: readonly string[]): ViewResource => ({
  groupVersion,
  name,
  kind,
  namespaced,
  ...(shortNames ? { shortNames } : {}),
});

/**
 * What the view's discovery lists. Besides the kinds it holds objects of, the kinds Kiali's cache
 * watches on every cluster it reads (workloads, Istio and Gateway API config) are listed and served
 * empty, so that no informer of Kiali's fails on this cluster for want of a kind.
 */
export const VIEW_RESOURCES: readonly ViewResource[] = [
  resource('v1', 'namespaces', 'Namespace', false, ['ns']),
  resource('v1', 'pods', 'Pod', true, ['po']),
  resource('v1', 'services', 'Service', true, ['svc']),
  resource('v1', 'configmaps', 'ConfigMap', true, ['cm']),
  resource('v1', 'endpoints', 'Endpoints', true, ['ep']),
  resource('v1', 'replicationcontrollers', 'ReplicationController'),
  resource('apps/v1', 'deployments', 'Deployment', true, ['deploy']),
  resource('apps/v1', 'replicasets', 'ReplicaSet', true, ['rs']),
  resource('apps/v1', 'statefulsets', 'StatefulSet', true, ['sts']),
  resource('apps/v1', 'daemonsets', 'DaemonSet', true, ['ds']),
  resource('batch/v1', 'jobs', 'Job'),
  resource('batch/v1', 'cronjobs', 'CronJob'),
  resource('discovery.k8s.io/v1', 'endpointslices', 'EndpointSlice'),
  resource('admissionregistration.k8s.io/v1', 'mutatingwebhookconfigurations', 'MutatingWebhookConfiguration', false),
  resource('admissionregistration.k8s.io/v1', 'validatingwebhookconfigurations', 'ValidatingWebhookConfiguration', false),
  resource('networking.istio.io/v1', 'virtualservices', 'VirtualService'),
  resource('networking.istio.io/v1', 'destinationrules', 'DestinationRule'),
  resource('networking.istio.io/v1', 'gateways', 'Gateway'),
  resource('networking.istio.io/v1', 'serviceentries', 'ServiceEntry'),
  resource('networking.istio.io/v1', 'sidecars', 'Sidecar'),
  resource('networking.istio.io/v1', 'workloadentries', 'WorkloadEntry'),
  resource('networking.istio.io/v1', 'workloadgroups', 'WorkloadGroup'),
  resource('networking.istio.io/v1alpha3', 'envoyfilters', 'EnvoyFilter'),
  resource('security.istio.io/v1', 'authorizationpolicies', 'AuthorizationPolicy'),
  resource('security.istio.io/v1', 'peerauthentications', 'PeerAuthentication'),
  resource('security.istio.io/v1', 'requestauthentications', 'RequestAuthentication'),
  resource('telemetry.istio.io/v1', 'telemetries', 'Telemetry'),
  resource('extensions.istio.io/v1alpha1', 'wasmplugins', 'WasmPlugin'),
  resource('gateway.networking.k8s.io/v1', 'gateways', 'Gateway'),
  resource('gateway.networking.k8s.io/v1', 'httproutes', 'HTTPRoute'),
  resource('gateway.networking.k8s.io/v1', 'grpcroutes', 'GRPCRoute'),
  resource('gateway.networking.k8s.io/v1', 'gatewayclasses', 'GatewayClass', false),
];

export interface ViewContents {
  /** The one resourceVersion of everything in the view. */
  readonly resourceVersion: string;
  readonly namespace: string;
  /** Objects by `<groupVersion>/<plural>`. */
  readonly objects: ReadonlyMap<string, readonly ViewObject[]>;
  /** The istiod pods' names, which port-forwards may name: the i-th is istiod's i-th replica. */
  readonly pods: readonly string[];
}

export interface ViewInputs {
  readonly tenant: string;
  /** The tenant's host: where istio-agent reaches "istiod", for the default mesh config. */
  readonly host: string;
  readonly config: ControlPlaneViewConfig;
  /** istiod's CLUSTER_ID. */
  readonly clusterId: string;
  /** The `mesh` of the istio ConfigMap, when the config names a file. */
  readonly meshConfig: string | undefined;
  /** istiod's replicas: a pod each. */
  readonly replicas: number;
}

export function resourceKey(groupVersion: string, plural: string): string {
  return `${groupVersion}/${plural}`;
}

/** When this process started: a view's objects are as old as meshgate's view of them. Kiali picks the newest pod by it. */
const CREATED = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().replace('.000Z', 'Z');

export function buildViewContents(inputs: ViewInputs): ViewContents {
  const { config, tenant } = inputs;
  const digest = createHash('sha256').update(JSON.stringify(inputs)).digest();
  // A uint64 in decimal, as the API server's: clients compare resourceVersions only for equality.
  const resourceVersion = String(digest.readUInt32BE(0) * 1024 + (digest.readUInt16BE(4) & 0x3ff));
  const namespace = config.namespace;
  const revision = config.revision;
  const suffix = revision === 'default' ? '' : `-${revision}`;
  const name = `istiod${suffix}`;
  const hash = digest.toString('hex').slice(0, 10);
  // As a ReplicaSet names its pods: the Deployment, the template hash, and five characters each.
  const podNames = Array.from({ length: inputs.replicas }, (_, i) => `${name}-${hash.slice(0, 8)}-${hash.slice(8, 10)}mg${i}`);
  const labels = { app: 'istiod', 'istio.io/rev': revision, istio: 'pilot', 'app.kubernetes.io/managed-by': 'meshgate' };
  const uid = (kind: string, objectName: string): string => {
    const h = createHash('sha256').update(`${tenant}/${config.cluster}/${kind}/${namespace}/${objectName}`).digest('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
  };
  const meta = (kind: string, objectName: string, extra: object = {}) => ({
    name: objectName,
    namespace,
    uid: uid(kind, objectName),
    resourceVersion,
    creationTimestamp: CREATED,
    ...extra,
  });
  const ports = [
    { name: 'grpc-xds', containerPort: 15010, protocol: 'TCP' },
    { name: 'https-dns', containerPort: 15012, protocol: 'TCP' },
    { name: 'https-webhooks', containerPort: 15017, protocol: 'TCP' },
    { name: 'http-monitoring', containerPort: MONITORING_PORT, protocol: 'TCP' },
    { name: 'http-ready', containerPort: READY_PORT, protocol: 'TCP' },
  ];
  const container = {
    name: 'discovery',
    image: 'meshgate.io/istiod-view',
    args: ['discovery', `--monitoringAddr=:${MONITORING_PORT}`],
    env: [
      { name: 'CLUSTER_ID', value: inputs.clusterId },
      { name: 'EXTERNAL_ISTIOD', value: 'true' },
      { name: 'REVISION', value: revision },
    ],
    ports,
  };

  const deployment: ViewObject = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: meta('Deployment', name, { labels, generation: 1 }),
    spec: {
      replicas: inputs.replicas,
      selector: { matchLabels: { app: 'istiod', 'istio.io/rev': revision } },
      template: { metadata: { labels }, spec: { containers: [container] } },
    },
    status: { observedGeneration: 1, replicas: inputs.replicas, readyReplicas: inputs.replicas, availableReplicas: inputs.replicas, updatedReplicas: inputs.replicas },
  };
  const pods = podNames.map((podName): ViewObject => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: meta('Pod', podName, {
      labels: { ...labels, 'pod-template-hash': hash.slice(0, 8) },
      annotations: { 'meshgate.io/view': `istiod of tenant ${tenant}, reached through meshgate's debug plane` },
    }),
    spec: { containers: [container] },
    status: {
      phase: 'Running',
      conditions: [{ type: 'Ready', status: 'True' }],
      containerStatuses: [{ name: 'discovery', ready: true, restartCount: 0, image: container.image, started: true }],
    },
  }));
  const service: ViewObject = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta('Service', name, { labels }),
    spec: {
      type: 'ClusterIP',
      selector: { app: 'istiod', 'istio.io/rev': revision },
      ports: ports.map((p) => ({ name: p.name, port: p.containerPort, targetPort: p.containerPort, protocol: 'TCP' })),
    },
  };
  const mesh = inputs.meshConfig ?? `rootNamespace: ${namespace}\ntrustDomain: cluster.local\ndefaultConfig:\n  discoveryAddress: ${inputs.host}:15012\n`;
  const meshConfigMap: ViewObject = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: meta('ConfigMap', `istio${suffix}`, { labels: { 'istio.io/rev': revision, 'app.kubernetes.io/managed-by': 'meshgate' } }),
    data: { mesh },
  };
  const namespaceObject: ViewObject = {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: namespace,
      uid: uid('Namespace', namespace),
      resourceVersion,
      creationTimestamp: CREATED,
      labels: { 'kubernetes.io/metadata.name': namespace },
    },
    spec: { finalizers: ['kubernetes'] },
    status: { phase: 'Active' },
  };

  const objects = new Map<string, readonly ViewObject[]>([
    [resourceKey('v1', 'namespaces'), [namespaceObject]],
    [resourceKey('v1', 'pods'), pods],
    [resourceKey('v1', 'services'), [service]],
    [resourceKey('v1', 'configmaps'), [meshConfigMap]],
    [resourceKey('apps/v1', 'deployments'), [deployment]],
  ]);
  return { resourceVersion, namespace, objects, pods: podNames };
}

/** Discovery documents for the view: `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]`; undefined for anything else. */
export function viewDiscovery(path: string): object | undefined {
  if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] };
  if (path === '/api/v1') return resourceList('v1');
  const groups = groupVersions();
  if (path === '/apis') {
    return { kind: 'APIGroupList', apiVersion: 'v1', groups: [...groups].map(([group, versions]) => apiGroup(group, versions)) };
  }
  const match = /^\/apis\/([^/]+)(?:\/([^/]+))?$/.exec(path);
  const group = match?.[1];
  if (group === undefined || !groups.has(group)) return undefined;
  const version = match?.[2];
  if (version === undefined) return { kind: 'APIGroup', apiVersion: 'v1', ...apiGroup(group, groups.get(group) ?? []) };
  return resourceList(`${group}/${version}`);
}

function groupVersions(): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const { groupVersion } of [...VIEW_RESOURCES, ...ACTIONS]) {
    const [group, version] = groupVersion.split('/');
    if (group === undefined || version === undefined) continue;
    const versions = groups.get(group) ?? [];
    if (!versions.includes(version)) versions.push(version);
    groups.set(group, versions);
  }
  return groups;
}

function apiGroup(name: string, versions: readonly string[]): object {
  const listed = versions.map((version) => ({ groupVersion: `${name}/${version}`, version }));
  return { name, versions: listed, preferredVersion: listed[0] };
}

/** What the view answers besides reads: a port-forward to its istiod pod, and "can I?" questions. */
const ACTIONS: readonly (ViewResource & { readonly verbs: readonly string[] })[] = [
  { ...resource('v1', 'pods/portforward', 'PodPortForwardOptions'), verbs: ['create', 'get'] },
  { ...resource('authorization.k8s.io/v1', 'selfsubjectaccessreviews', 'SelfSubjectAccessReview', false), verbs: ['create'] },
];

function resourceList(groupVersion: string): object | undefined {
  const listed = [...VIEW_RESOURCES.map((r) => ({ ...r, verbs: READ })), ...ACTIONS]
    .filter((r) => r.groupVersion === groupVersion)
    .map((r) => ({
      name: r.name,
      singularName: r.name.includes('/') ? '' : r.kind.toLowerCase(),
      namespaced: r.namespaced,
      kind: r.kind,
      verbs: r.verbs,
      ...(r.shortNames ? { shortNames: r.shortNames } : {}),
    }));
  return listed.length === 0 ? undefined : { kind: 'APIResourceList', apiVersion: 'v1', groupVersion, resources: listed };
}

/** The view's resource a path's group, version and plural name, or undefined. */
export function viewResource(apiGroup: string, apiVersion: string, plural: string): ViewResource | undefined {
  const groupVersion = apiGroup === '' ? apiVersion : `${apiGroup}/${apiVersion}`;
  return VIEW_RESOURCES.find((r) => r.groupVersion === groupVersion && r.name === plural);
}
