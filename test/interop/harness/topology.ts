/**
 * The whole interop topology, as a provider runs it, on loopback:
 *
 *   etcd ─┬─ kube-apiserver "provider" (the config cluster: a namespace and an istiod per tenant)
 *         ├─ kube-apiserver acme-east, acme-west   (tenant acme's mesh clusters)
 *         └─ kube-apiserver globex-main            (tenant globex's mesh cluster)
 *
 *   istiod-acme, istiod-globex: remote secrets = `meshgate kubeconfig` → meshgate's kube plane
 *   mesh API servers' webhooks → meshgate's webhook listener → the tenant's istiod
 *   istio-agent, istioctl → meshgate's xds listener → the tenant's istiod
 *
 * The tenants' host names must resolve to loopback for the Go programs that dial them, so the
 * suite adds them to /etc/hosts once (it runs as root, here and in CI).
 */
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kubeconfig } from '../../../src/cli/kubeconfig.js';
import { createCertificateAuthority, type CertificateAuthority } from '../../../src/pki/certificates.js';
import { istiodPorts, istiodServerName, remoteSecret, renderIstioManifests, startIstiod, type Istiod, type IstioManifests } from './istio.js';
import { startEtcd, startKubeCluster, type Etcd, type KubeCluster } from './kube.js';
import { createMeshgatePki, meshgatePorts, startMeshgate, type Meshgate } from './meshgate.js';

export interface TenantSpec {
  readonly id: string;
  readonly host: string;
  /** istiod's namespace, in the config cluster and in every mesh cluster of the tenant. */
  readonly namespace: string;
  readonly clusters: readonly string[];
  readonly webhookAuth: 'clientCertificate' | 'pathKey';
}

export const TENANTS: readonly TenantSpec[] = [
  { id: 'acme', host: 'acme.meshgate.test', namespace: 'istio-acme', clusters: ['acme-east', 'acme-west'], webhookAuth: 'clientCertificate' },
  { id: 'globex', host: 'globex.meshgate.test', namespace: 'istio-globex', clusters: ['globex-main'], webhookAuth: 'pathKey' },
];

/** istiod's own cluster ID: the provider's config cluster. */
export const CONFIG_CLUSTER_ID = 'provider';

export interface Topology {
  readonly dir: string;
  readonly etcd: Etcd;
  readonly configCluster: KubeCluster;
  readonly clusters: ReadonlyMap<string, KubeCluster>;
  readonly meshgate: Meshgate;
  readonly istiods: ReadonlyMap<string, Istiod>;
  readonly meshCas: ReadonlyMap<string, CertificateAuthority>;
  tenant(id: string): TenantSpec;
  /** meshgate's xds address for a tenant, as a sidecar or istioctl is given it. */
  xdsAddress(tenant: string): string;
}

export function ensureHostsResolve(hosts: readonly string[]): void {
  const current = readFileSync('/etc/hosts', 'utf8');
  const missing = hosts.filter((h) => !new RegExp(`^127\\.0\\.0\\.1\\s.*\\b${h.replaceAll('.', '\\.')}\\b`, 'm').test(current));
  if (missing.length > 0) appendFileSync('/etc/hosts', `${current.endsWith('\n') ? '' : '\n'}127.0.0.1 ${missing.join(' ')}  # meshgate interop suite\n`);
}

export async function startTopology(): Promise<Topology> {
  const dir = mkdtempSync(join(tmpdir(), 'meshgate-interop-'));
  ensureHostsResolve(TENANTS.map((t) => t.host));
  const etcd = await startEtcd(dir);
  const ports = await meshgatePorts();
  const pki = await createMeshgatePki(TENANTS);

  const tenantOf = (cluster: string): TenantSpec => TENANTS.find((t) => t.clusters.includes(cluster))!;
  const clusterIds = TENANTS.flatMap((t) => t.clusters);
  const [configCluster, ...meshClusters] = await Promise.all([
    startKubeCluster({ id: CONFIG_CLUSTER_ID, dir, etcd }),
    ...clusterIds.map((id) => {
      const tenant = tenantOf(id);
      const credentials = pki.credentials.get(tenant.id)!;
      const webhookClients = tenant.webhookAuth === 'clientCertificate' ? new Map([[`${tenant.host}:${ports.webhook}`, credentials.apiServerWebhookClient]]) : undefined;
      return startKubeCluster({ id, dir, etcd, webhookClients });
    }),
  ]);
  const clusters = new Map(meshClusters.map((c) => [c.id, c]));

  // What istioctl's charts make of each tenant's istiod: CRDs, mesh config, injector.
  const manifests = new Map<string, IstioManifests>();
  for (const tenant of TENANTS) manifests.set(tenant.id, await renderIstioManifests(tenant.namespace, `${tenant.host}:${ports.xds}`));

  // Each mesh cluster: istiod's namespace, marked as run by the external istiod; istiod's
  // service account (its remote secret's token); the Istio CRDs, so that Istio config can be
  // created there and validated; and the cluster's public keys for meshgate.
  const jwksFiles = new Map<string, string>();
  const istiodTokens = new Map<string, string>();
  const xdsTokenFiles = new Map<string, string>();
  const keysDir = join(dir, 'keys');
  mkdirSync(keysDir, { recursive: true });
  await Promise.all(
    meshClusters.map(async (cluster) => {
      const tenant = tenantOf(cluster.id);
      await cluster.apply([
        {
          apiVersion: 'v1',
          kind: 'Namespace',
          metadata: { name: tenant.namespace, annotations: { 'topology.istio.io/controlPlaneClusters': CONFIG_CLUSTER_ID } },
        },
        {
          apiVersion: 'rbac.authorization.k8s.io/v1',
          kind: 'ClusterRoleBinding',
          metadata: { name: `istiod-${tenant.id}` },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' },
          subjects: [{ kind: 'ServiceAccount', name: 'istiod', namespace: tenant.namespace }],
        },
        ...manifests.get(tenant.id)!.crds,
      ]);
      istiodTokens.set(cluster.id, await cluster.token(tenant.namespace, 'istiod'));
      jwksFiles.set(cluster.id, writeJson(join(keysDir, `${cluster.id}-jwks.json`), await cluster.kubectl(['get', '--raw', '/openid/v1/jwks'])));
      if (cluster.id === tenant.clusters[0]) {
        // meshgate's own istiod credential for certificate callers: istioctl sends SERVICE_ACCOUNT
        // "default" in istiod's namespace, and istiod checks that the token says the same.
        const token = await cluster.token(tenant.namespace, 'default', { audience: 'istio-ca' });
        xdsTokenFiles.set(tenant.id, writeText(join(keysDir, `${tenant.id}-istiod-xds-token`), token));
      }
    }),
  );

  const meshCas = new Map<string, CertificateAuthority>();
  const istiodPortsByTenant = new Map<string, Awaited<ReturnType<typeof istiodPorts>>>();
  for (const tenant of TENANTS) {
    meshCas.set(tenant.id, await createCertificateAuthority(`${tenant.id} mesh root CA`));
    istiodPortsByTenant.set(tenant.id, await istiodPorts());
  }
  const rootCertFile = (tenant: string): string => writeText(join(keysDir, `${tenant}-mesh-root.pem`), meshCas.get(tenant)!.cert);

  const meshgate = await startMeshgate(
    dir,
    ports,
    TENANTS.map((tenant) => {
      const p = istiodPortsByTenant.get(tenant.id)!;
      return {
        id: tenant.id,
        host: tenant.host,
        namespace: tenant.namespace,
        clusters: tenant.clusters.map((id) => clusters.get(id)!),
        webhookAuth: tenant.webhookAuth,
        istiod: { xds: p.xds, webhook: p.webhook, monitoring: p.monitoring, rootCertFile: rootCertFile(tenant.id), serverName: istiodServerName(tenant.namespace) },
        xdsTokenFile: xdsTokenFiles.get(tenant.id)!,
        xdsTokenCluster: tenant.clusters[0]!,
        istiodClusterId: CONFIG_CLUSTER_ID,
      };
    }),
    pki,
    jwksFiles,
  );

  // The config cluster: per tenant, istiod's namespace with its mesh config, injector and remote
  // secrets (meshgate kubeconfigs carrying the istiod token of each mesh cluster), and the CRDs.
  await configCluster.apply(manifests.get(TENANTS[0]!.id)!.crds);
  for (const tenant of TENANTS) {
    await configCluster.apply([
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: tenant.namespace } },
      ...manifests.get(tenant.id)!.configMaps,
      ...tenant.clusters.map((id) =>
        remoteSecret(
          tenant.namespace,
          id,
          kubeconfig({ tenant: tenant.id, cluster: id, host: tenant.host, port: ports.api, ca: meshgate.providerCa.cert, token: istiodTokens.get(id) }),
        ),
      ),
    ]);
  }

  const istiods = new Map<string, Istiod>();
  await Promise.all(
    TENANTS.map(async (tenant) => {
      istiods.set(
        tenant.id,
        await startIstiod({
          tenant: tenant.id,
          dir,
          configCluster,
          clusterId: CONFIG_CLUSTER_ID,
          namespace: tenant.namespace,
          ports: istiodPortsByTenant.get(tenant.id)!,
          meshCa: meshCas.get(tenant.id)!,
        }),
      );
    }),
  );

  // The mesh clusters' webhooks, at meshgate (its CA in caBundle, where istiod must not write).
  for (const cluster of meshClusters) {
    const tenant = tenantOf(cluster.id);
    const credentials = pki.credentials.get(tenant.id)!;
    const prefix = tenant.webhookAuth === 'pathKey' ? `/k/${credentials.pathKey}` : '';
    const base = `https://${tenant.host}:${ports.webhook}${prefix}`;
    await cluster.apply(webhookConfigurations(base, cluster.id, meshgate.providerCa.cert));
  }

  return {
    dir,
    etcd,
    configCluster,
    clusters,
    meshgate,
    istiods,
    meshCas,
    tenant: (id) => TENANTS.find((t) => t.id === id)!,
    xdsAddress: (tenant) => `${TENANTS.find((t) => t.id === tenant)!.host}:${ports.xds}`,
  };
}

function webhookConfigurations(base: string, cluster: string, caPem: string): object[] {
  const caBundle = Buffer.from(caPem).toString('base64');
  return [
    {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: 'istio-sidecar-injector' },
      webhooks: [
        {
          name: 'sidecar-injector.istio.io',
          clientConfig: { url: `${base}/inject/cluster/${cluster}/net/network1`, caBundle },
          rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'] }],
          namespaceSelector: { matchLabels: { 'istio-injection': 'enabled' } },
          sideEffects: 'None',
          admissionReviewVersions: ['v1'],
          failurePolicy: 'Fail',
          timeoutSeconds: 10,
        },
      ],
    },
    {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'ValidatingWebhookConfiguration',
      metadata: { name: 'istio-validator' },
      webhooks: [
        {
          name: 'rev.validation.istio.io',
          clientConfig: { url: `${base}/validate`, caBundle },
          rules: [
            {
              operations: ['CREATE', 'UPDATE'],
              apiGroups: ['security.istio.io', 'networking.istio.io', 'telemetry.istio.io', 'extensions.istio.io'],
              apiVersions: ['*'],
              resources: ['*'],
            },
          ],
          sideEffects: 'None',
          admissionReviewVersions: ['v1'],
          failurePolicy: 'Fail',
          timeoutSeconds: 10,
        },
      ],
    },
  ];
}

function writeText(path: string, text: string): string {
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

function writeJson(path: string, text: string): string {
  JSON.parse(text);
  return writeText(path, text);
}
