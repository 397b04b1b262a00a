/**
 * The embedded default: meshgate in front of two tenants, `acme` and `globex`, each with a
 * stand-in istiod (xDS, webhook and debug) and clusters whose kube-apiservers (and token issuers)
 * are stand-ins too. It generates its PKI, keys and tokens, writes a real meshgate config and
 * loads it through the real loader, and describes everything in `sandbox.json` (a contract:
 * extended, never renamed).
 *
 * The clusters show the three ways meshgate checks tokens and reaches an API server:
 *  - acme-east: keys from the cluster's OIDC endpoint; meshgate's own token, with impersonation;
 *  - acme-west: no keys (TokenReview); meshgate's own client certificate, with impersonation;
 *  - globex-main: keys from a file; the caller's own token passed through.
 * acme-east and globex-main share an issuer string, as kind clusters do: only their signing keys
 * tell them apart, which is exactly what meshgate relies on.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { loadConfig } from '../config/load.js';
import { buildGateway, type Gateway } from '../gateway/build.js';
import type { Logger } from '../observability/logger.js';
import { createIssuer, type Issuer } from './issuer.js';
import { createSandboxPki, writeFile, type SandboxPki } from './pki.js';
import { startIstiodStandIn, type IstiodStandIn, type RecordedRequest } from './standins/istiod.js';
import { startXdsStandIn, type RecordedCall, type XdsStandIn } from './standins/istiod-xds.js';
import { startKubeApiServerStandIn, type KubeApiServerStandIn, type RecordedKubeRequest } from './standins/kube-apiserver.js';
import { kubeconfig } from '../cli/kubeconfig.js';

export const SANDBOX_ISSUER = 'https://kubernetes.default.svc.cluster.local';
export const SANDBOX_DOMAIN = 'meshgate.test';
export const WEBHOOK_AUDIENCE = 'meshgate-webhook';

/** How meshgate checks a cluster's tokens, and what it presents to the cluster's API server. */
interface ClusterPlan {
  readonly id: string;
  readonly algorithm: 'RS256' | 'ES256';
  readonly tokens: 'jwksUrl' | 'jwksFile' | 'tokenReview';
  readonly credentials: 'token' | 'certificate' | 'passthrough';
}

interface TenantPlan {
  readonly id: string;
  readonly clusters: readonly ClusterPlan[];
  readonly webhookAuth: readonly ('clientCertificate' | 'token' | 'pathKey')[];
}

const PLAN: readonly TenantPlan[] = [
  {
    id: 'acme',
    clusters: [
      { id: 'acme-east', algorithm: 'ES256', tokens: 'jwksUrl', credentials: 'token' },
      { id: 'acme-west', algorithm: 'RS256', tokens: 'tokenReview', credentials: 'certificate' },
    ],
    webhookAuth: ['clientCertificate', 'token'],
  },
  { id: 'globex', clusters: [{ id: 'globex-main', algorithm: 'RS256', tokens: 'jwksFile', credentials: 'passthrough' }], webhookAuth: ['pathKey'] },
];

/** A cluster whose keys meshgate never sees has an issuer of its own, as managed clusters do. */
/** The name of a tenant's control-plane view. */
const viewOf = (tenant: string): string => `${tenant}-istiod`;
const issuerOf = (cluster: ClusterPlan): string => (cluster.tokens === 'tokenReview' ? `https://oidc.${cluster.id}.${SANDBOX_DOMAIN}` : SANDBOX_ISSUER);
/** meshgate's own service account on the clusters that take its token. */
const MESHGATE_SERVICE_ACCOUNT = { namespace: 'meshgate-system', serviceAccount: 'meshgate' };

export interface SandboxOptions {
  readonly dir?: string;
  /** admin = base, xds = base+1, webhook = base+2, api = base+3; 0 makes every port ephemeral. */
  readonly portBase?: number;
  readonly logger?: Logger;
  readonly onIstiodRequest?: (tenant: string, request: RecordedRequest) => void;
  readonly onIstiodCall?: (tenant: string, call: RecordedCall) => void;
  readonly onKubeRequest?: (cluster: string, request: RecordedKubeRequest) => void;
  /** How often the stand-in API servers change a pod (watches see MODIFIED events); default 5 s. */
  readonly podChangeIntervalMs?: number;
}

export interface SandboxTenantInfo {
  readonly host: string;
  readonly clusters: readonly string[];
  readonly clientCert: string;
  readonly clientKey: string;
  /** The tenant's client CA and its key: `meshgate certs client --ca-cert … --ca-key …` issues more. */
  readonly clientCa: string;
  readonly clientCaKey: string;
  readonly tokens: { readonly xds: string; readonly debug: string; readonly kube: string; readonly webhook: string };
  readonly webhook: { readonly inject: string; readonly validate: string };
  readonly webhookAuthentication: readonly string[];
  readonly istiod: { readonly webhook: string; readonly debug: string; readonly xds: string };
  /** The mesh CA (the root of workload certificates istiod's CA signs). */
  readonly meshCaFile: string;
  /** Per cluster, a kubeconfig that reaches it through meshgate with this tenant's credential. */
  readonly kubeconfigs: Readonly<Record<string, string>>;
  /** Per cluster, the stand-in kube-apiserver's own URL (not through meshgate). */
  readonly kubeApiServers: Readonly<Record<string, string>>;
  /** The tenant's control-plane view (docs/kiali.md): its cluster name, and a kubeconfig for it with the tenant's certificate. */
  readonly controlPlaneView: { readonly cluster: string; readonly kubeconfig: string };
}

export interface SandboxInfo {
  readonly caFile: string;
  readonly admin: string;
  readonly listeners: Readonly<Record<'xds' | 'webhook' | 'api', { host: string; port: number }>>;
  readonly tenants: Readonly<Record<string, SandboxTenantInfo>>;
  readonly dir: string;
  readonly config: string;
  readonly admissionReview: string;
  readonly issuer: string;
}

export interface Sandbox {
  readonly info: SandboxInfo;
  readonly gateway: Gateway;
  readonly istiods: ReadonlyMap<string, IstiodStandIn>;
  readonly xdsIstiods: ReadonlyMap<string, XdsStandIn>;
  readonly issuers: ReadonlyMap<string, Issuer>;
  readonly kubeApiServers: ReadonlyMap<string, KubeApiServerStandIn>;
  close(): Promise<void>;
}

export async function startSandbox(options: SandboxOptions = {}): Promise<Sandbox> {
  const dir = resolve(options.dir ?? '.meshgate-sandbox');
  for (const sub of ['certs', 'tokens', 'keys', 'kubeconfigs']) mkdirSync(join(dir, sub), { recursive: true });
  const hostOf = (tenant: string): string => `${tenant}.${SANDBOX_DOMAIN}`;
  const pki = await createSandboxPki(dir, PLAN.map((t) => ({ id: t.id, host: hostOf(t.id) })));

  const issuers = new Map<string, Issuer>();
  const kubeApiServers = new Map<string, KubeApiServerStandIn>();
  for (const tenant of PLAN) {
    for (const cluster of tenant.clusters) {
      const issuer = await createIssuer(cluster.id, issuerOf(cluster), cluster.algorithm);
      issuers.set(cluster.id, issuer);
      kubeApiServers.set(
        cluster.id,
        await startKubeApiServerStandIn({
          cluster: cluster.id,
          tls: pki.apiServer,
          clientCa: pki.clusterCaCert,
          issuer,
          // Only meshgate's own identity may impersonate: its token's, or its certificate's.
          impersonators: [`system:serviceaccount:${MESHGATE_SERVICE_ACCOUNT.namespace}:${MESHGATE_SERVICE_ACCOUNT.serviceAccount}`, 'meshgate'],
          podChangeIntervalMs: options.podChangeIntervalMs ?? 5_000,
          onRequest: (request) => options.onKubeRequest?.(cluster.id, request),
        }),
      );
    }
  }
  const istiods = new Map<string, IstiodStandIn>();
  const xdsIstiods = new Map<string, XdsStandIn>();
  for (const tenant of PLAN) {
    const tenantPki = pki.tenants.get(tenant.id);
    if (!tenantPki) throw new Error(`no istiod certificate for ${tenant.id}`);
    const tls = tenantPki.istiod;
    xdsIstiods.set(
      tenant.id,
      await startXdsStandIn({
        tenant: tenant.id,
        tls,
        meshCa: tenantPki.meshCa,
        trustDomain: `${tenant.id}.local`,
        onCall: (call) => options.onIstiodCall?.(tenant.id, call),
      }),
    );
    istiods.set(
      tenant.id,
      await startIstiodStandIn({
        tenant: tenant.id,
        clusters: tenant.clusters.map((c) => c.id),
        tls,
        onRequest: (request) => options.onIstiodRequest?.(tenant.id, request),
      }),
    );
  }

  const portBase = options.portBase ?? 18000;
  const port = (offset: number): number => (portBase === 0 ? 0 : portBase + offset);
  const tokens = new Map<string, SandboxTenantInfo['tokens']>();
  const pathKeys = new Map<string, string>();
  const tenantConfigs = [];
  for (const tenant of PLAN) {
    const tls = pki.tenants.get(tenant.id);
    const istiod = istiods.get(tenant.id);
    const xdsIstiod = xdsIstiods.get(tenant.id);
    if (!tls || !istiod || !xdsIstiod) throw new Error(`incomplete sandbox tenant ${tenant.id}`);
    const [first] = tenant.clusters;
    const signer = issuers.get(first?.id ?? '');
    if (!first || !signer) throw new Error(`no cluster for ${tenant.id}`);

    const minted = {
      xds: await signer.mint({ namespace: 'bookinfo', serviceAccount: 'productpage', audience: 'istio-ca' }),
      debug: await signer.mint({ namespace: 'istio-system', serviceAccount: 'kiali', audience: 'istio-ca' }),
      kube: await signer.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: SANDBOX_ISSUER }),
      webhook: await signer.mint({ namespace: 'kube-system', serviceAccount: 'kube-apiserver', audience: WEBHOOK_AUDIENCE }),
    };
    tokens.set(tenant.id, minted);
    for (const [plane, token] of Object.entries(minted)) writeFile(join(dir, 'tokens', `${tenant.id}-${plane}.jwt`), `${token}\n`, true);
    const ownDebugToken = writeFile(
      join(dir, 'tokens', `${tenant.id}-meshgate-istiod.jwt`),
      `${await signer.mint({ namespace: 'istio-system', serviceAccount: 'meshgate', audience: 'istio-ca' })}\n`,
      true,
    );

    let pathKeyFile: string | undefined;
    if (tenant.webhookAuth.includes('pathKey')) {
      const key = randomBytes(24).toString('base64url');
      pathKeys.set(tenant.id, key);
      pathKeyFile = writeFile(join(dir, 'keys', `${tenant.id}-webhook-path-key`), `${key}\n`, true);
    }

    tenantConfigs.push({
      id: tenant.id,
      hosts: [hostOf(tenant.id)],
      tls: { cert: tls.server.cert, key: tls.server.key, clientCA: tls.clientCa },
      istiod: {
        webhook: { url: istiod.webhookUrl, ca: tls.istiodCa, serverName: `istiod.${tenant.id}-cp.svc` },
        debug: { url: istiod.debugUrl, token: { file: ownDebugToken, cluster: first.id } },
        xds: { url: xdsIstiod.url, ca: tls.istiodCa, serverName: `istiod.${tenant.id}-cp.svc`, token: { file: ownDebugToken, cluster: first.id } },
      },
      clusters: await Promise.all(tenant.clusters.map((c) => clusterConfig(c, dir, pki, issuers, kubeApiServers))),
      // The tenant's istiod as Kiali finds it: a cluster of meshgate's own (docs/kiali.md).
      controlPlaneView: { cluster: viewOf(tenant.id) },
      webhook: {
        authentication: tenant.webhookAuth,
        audiences: [WEBHOOK_AUDIENCE],
        ...(pathKeyFile === undefined ? {} : { pathKeyFile }),
      },
      debug: { authentication: ['token', 'clientCertificate'] },
      xds: { authentication: ['token', 'clientCertificate'] },
      // Certificate callers use meshgate's own istiod token: only the tenant's istio-system identities may.
      kube: { authentication: ['token', 'clientCertificate'] },
      access: {
        debug: [{ method: 'token' }, { method: 'clientCertificate', uri: `spiffe://${hostOf(tenant.id)}/ns/istio-system/*` }],
        xds: [{ method: 'token' }, { method: 'clientCertificate', uri: `spiffe://${hostOf(tenant.id)}/ns/istio-system/*` }],
        kube: [
          // istiod's remote secret, and Kiali: the ready-made profiles (plus `kubectl auth whoami`).
          { subject: 'system:serviceaccount:istio-system:istiod', profiles: ['istiod'], allow: [WHOAMI] },
          { subject: 'system:serviceaccount:istio-system:kiali', profiles: ['kiali-readonly'] },
          // Kiali's port-forward to istiod in the control-plane view (no profile grants one).
          {
            subject: 'system:serviceaccount:istio-system:kiali',
            cluster: viewOf(tenant.id),
            allow: [{ verbs: ['create'], apiGroups: [''], resources: ['pods/portforward'], namespaces: ['istio-system'] }],
          },
          // The tenant's operators, by client certificate: anything but secrets.
          {
            method: 'clientCertificate',
            uri: `spiffe://${hostOf(tenant.id)}/ns/istio-system/*`,
            allow: [{ verbs: ['*'], apiGroups: ['*'], resources: ['*'] }, { verbs: ['get'], nonResourceURLs: ['*'] }],
            deny: [{ verbs: ['*'], apiGroups: [''], resources: ['secrets'] }],
          },
        ],
      },
    });
  }

  const configFile = writeFile(
    join(dir, 'meshgate.yaml'),
    `# Written by \`meshgate sandbox\`: a complete, working meshgate config.\n` +
      `# The stand-in istiods listen on loopback, which only a sandbox may allow.\n` +
      stringify({
        admin: { host: '127.0.0.1', port: port(0) },
        logging: { level: 'info' },
        security: { allowLoopbackUpstreams: true },
        listeners: {
          // Sized for many streams on one connection, as istioctl and the tests open.
          xds: { host: '127.0.0.1', port: port(1), planes: ['xds'], http2: { maxConcurrentStreams: 4096, maxSessionMemory: 128 } },
          // gRPC on the webhook port too: istioctl finds istiod by the injection webhook's host:port.
          webhook: { host: '127.0.0.1', port: port(2), planes: ['webhook', 'xds'] },
          api: { host: '127.0.0.1', port: port(3), planes: ['debug', 'kube'] },
        },
        tenants: tenantConfigs,
      }),
  );

  const gateway = buildGateway(loadConfig(configFile), options.logger ? { logger: options.logger } : {});
  let addresses;
  try {
    addresses = await gateway.listen();
  } catch (err) {
    await gateway.close(0);
    await Promise.all([...istiods.values(), ...xdsIstiods.values(), ...kubeApiServers.values()].map((i) => i.close()));
    throw err;
  }
  const endpoint = (name: 'xds' | 'webhook' | 'api'): { host: string; port: number } => {
    const address = addresses.listeners[name];
    if (!address) throw new Error(`listener ${name} did not start`);
    return { host: address.address, port: address.port };
  };
  const listeners = { xds: endpoint('xds'), webhook: endpoint('webhook'), api: endpoint('api') };

  const tenantsInfo: Record<string, SandboxTenantInfo> = {};
  for (const tenant of PLAN) {
    const tls = pki.tenants.get(tenant.id);
    const minted = tokens.get(tenant.id);
    const istiod = istiods.get(tenant.id);
    if (!tls || !minted || !istiod) throw new Error(`incomplete sandbox tenant ${tenant.id}`);
    const base = `https://${hostOf(tenant.id)}:${listeners.webhook.port}`;
    const key = pathKeys.get(tenant.id);
    const prefix = key === undefined ? '' : `/k/${key}`;
    const cluster = tenant.clusters[0]?.id ?? '';
    tenantsInfo[tenant.id] = {
      host: hostOf(tenant.id),
      clusters: tenant.clusters.map((c) => c.id),
      clientCert: tls.client.cert,
      clientKey: tls.client.key,
      clientCa: tls.clientCa,
      clientCaKey: tls.clientCaKey,
      tokens: minted,
      webhook: { inject: `${base}${prefix}/inject/cluster/${cluster}/net/network1`, validate: `${base}${prefix}/validate` },
      webhookAuthentication: tenant.webhookAuth,
      istiod: { webhook: istiod.webhookUrl, debug: istiod.debugUrl, xds: xdsIstiods.get(tenant.id)?.url ?? '' },
      meshCaFile: tls.istiodCa,
      kubeconfigs: Object.fromEntries(
        tenant.clusters.map((c) => {
          // Clusters that see meshgate's credential take the tenant's certificate; passthrough needs a token of the cluster.
          const credential =
            c.credentials === 'passthrough'
              ? { token: minted.kube }
              : { clientCert: { cert: readFileSync(tls.client.cert, 'utf8'), key: readFileSync(tls.client.key, 'utf8') } };
          const text = kubeconfig({
            tenant: tenant.id,
            cluster: c.id,
            host: hostOf(tenant.id),
            port: listeners.api.port,
            connectTo: '127.0.0.1',
            ca: readFileSync(pki.ca, 'utf8'),
            ...credential,
          });
          return [c.id, writeFile(join(dir, 'kubeconfigs', `${tenant.id}-${c.id}.yaml`), text, true)];
        }),
      ),
      kubeApiServers: Object.fromEntries(tenant.clusters.map((c) => [c.id, kubeApiServers.get(c.id)?.url ?? ''])),
      controlPlaneView: {
        cluster: viewOf(tenant.id),
        kubeconfig: writeFile(
          join(dir, 'kubeconfigs', `${tenant.id}-${viewOf(tenant.id)}.yaml`),
          kubeconfig({
            tenant: tenant.id,
            cluster: viewOf(tenant.id),
            host: hostOf(tenant.id),
            port: listeners.api.port,
            connectTo: '127.0.0.1',
            ca: readFileSync(pki.ca, 'utf8'),
            clientCert: { cert: readFileSync(tls.client.cert, 'utf8'), key: readFileSync(tls.client.key, 'utf8') },
          }),
          true,
        ),
      },
    };
  }

  const info: SandboxInfo = {
    caFile: pki.ca,
    admin: `http://${addresses.admin.address}:${addresses.admin.port}`,
    listeners,
    tenants: tenantsInfo,
    dir,
    config: configFile,
    admissionReview: writeFile(join(dir, 'admission-review.json'), `${JSON.stringify(sampleAdmissionReview(), null, 2)}\n`),
    issuer: SANDBOX_ISSUER,
  };
  writeFile(join(dir, 'sandbox.json'), `${JSON.stringify(info, null, 2)}\n`);

  return {
    info,
    gateway,
    istiods,
    xdsIstiods,
    issuers,
    kubeApiServers,
    async close() {
      await gateway.close(1_000);
      await Promise.all([...istiods.values(), ...xdsIstiods.values(), ...kubeApiServers.values()].map((i) => i.close()));
    },
  };
}

/** `kubectl auth whoami`. */
const WHOAMI = { verbs: ['create'], apiGroups: ['authentication.k8s.io'], resources: ['selfsubjectreviews'] };

/** One cluster of the meshgate config: how its tokens are checked, and how its API server is reached. */
async function clusterConfig(
  cluster: ClusterPlan,
  dir: string,
  pki: SandboxPki,
  issuers: ReadonlyMap<string, Issuer>,
  apiServers: ReadonlyMap<string, KubeApiServerStandIn>,
): Promise<object> {
  const issuer = issuers.get(cluster.id);
  const apiServer = apiServers.get(cluster.id);
  if (!issuer || !apiServer) throw new Error(`incomplete sandbox cluster ${cluster.id}`);
  const tokens =
    cluster.tokens === 'jwksUrl'
      ? { jwks: { url: `${apiServer.url}/openid/v1/jwks`, ca: pki.clusterCa } }
      : cluster.tokens === 'jwksFile'
        ? { jwks: { file: writeFile(join(dir, 'keys', `${cluster.id}-jwks.json`), JSON.stringify(issuer.jwks(), null, 2)) } }
        : { tokenReview: {} };
  let credentials: object | string = 'passthrough';
  if (cluster.credentials === 'token') {
    const token = await issuer.mint({ ...MESHGATE_SERVICE_ACCOUNT, audience: issuer.issuer });
    credentials = { tokenFile: writeFile(join(dir, 'tokens', `meshgate-${cluster.id}.jwt`), `${token}\n`, true) };
  } else if (cluster.credentials === 'certificate') {
    credentials = { cert: pki.meshgateClient.cert, key: pki.meshgateClient.key };
  }
  return { id: cluster.id, issuer: issuer.issuer, ...tokens, apiServer: { url: apiServer.url, ca: pki.clusterCa, credentials } };
}

/** What a kube-apiserver sends for a pod creation, trimmed. */
export function sampleAdmissionReview(uid = '7d1a6c3e-5b5e-4f0a-9a51-3c2f0e6b9a10'): object {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid,
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      namespace: 'bookinfo',
      operation: 'CREATE',
      userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller' },
      object: {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { generateName: 'productpage-v1-', namespace: 'bookinfo', labels: { app: 'productpage' } },
        spec: { containers: [{ name: 'productpage', image: 'docker.io/istio/examples-bookinfo-productpage-v1:1.20.2' }] },
      },
      dryRun: false,
    },
  };
}
