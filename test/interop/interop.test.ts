/**
 * meshgate between real Istio and real Kubernetes (interop/build.sh builds them): the rows a
 * provider's external control plane depends on, each proved with the real programs, and the
 * tenants kept apart, as the API servers' audit logs and istiod's own logs tell it.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parse, stringify } from 'yaml';
import { kubeconfig } from '../../src/cli/kubeconfig.js';
import { createLogger } from '../../src/observability/logger.js';
import { writeFile } from '../../src/sandbox/pki.js';
import { createKubernetesSource } from '../../src/tenancy/kubernetes-source.js';
import { TENANT_LABEL } from '../../src/tenancy/mesh-tenant.js';
import { toMeshTenant } from '../helpers/mesh-tenants.js';
import { istioctl, startAgent, startEcho, type Agent } from './harness/istio.js';
import { binary, hasBinary, stopAll } from './harness/processes.js';
import { CONFIG_CLUSTER_ID, startTopology, TENANTS, type Topology } from './harness/topology.js';

let topology: Topology;
beforeAll(async () => {
  for (const program of ['etcd', 'kube-apiserver', 'kubectl', 'pilot-discovery', 'pilot-agent', 'istioctl', 'echo-server']) {
    if (!hasBinary(program)) throw new Error(`${binary(program)} is missing: run interop/build.sh (npm run test:interop does)`);
  }
  topology = await startTopology();
});
// Everything started, even by a topology that failed half-way.
afterAll(stopAll);

/** The real kubectl (interop/build.sh's) with a kubeconfig of the test's own. */
const runKubectl = (config: string, args: readonly string[]) => promisify(execFile)(binary('kubectl'), ['--kubeconfig', config, ...args], { timeout: 30_000 });

const cluster = (id: string) => {
  const found = topology.clusters.get(id);
  if (!found) throw new Error(`no cluster ${id}`);
  return found;
};

interface Container {
  name: string;
  env?: { name: string; value?: string }[];
}
interface PodLike {
  spec?: { containers?: Container[]; initContainers?: Container[] };
  metadata?: { annotations?: Record<string, string> };
}
/** Init containers too: istiod injects istio-proxy as a native sidecar where the cluster has them. */
const containersOf = (pod: PodLike): Container[] => [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])];

async function createPod(clusterId: string, namespace: string, name: string): Promise<PodLike> {
  const kube = cluster(clusterId);
  await kube.apply([
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace, labels: { 'istio-injection': 'enabled' } } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'web', namespace } },
  ]);
  const out = await kube.kubectl(
    ['create', '-o', 'json', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace, labels: { app: name } },
      // A service account: the injected sidecar mounts a projected istio-token of its own.
      spec: { serviceAccountName: 'web', containers: [{ name: 'app', image: 'registry.example/app:1', ports: [{ containerPort: 8080 }] }] },
    }),
  );
  return JSON.parse(out) as PodLike;
}

describe('sidecar injection through meshgate (mesh kube-apiserver → webhook listener → the tenant istiod)', () => {
  it.each(TENANTS.flatMap((t) => t.clusters.map((c) => [t.id, c] as const)))('%s: a Pod created in %s comes back with istio-proxy', async (tenant, clusterId) => {
    const pod = await createPod(clusterId, 'shop', `web-${clusterId}`);
    const proxy = containersOf(pod).find((c) => c.name === 'istio-proxy');
    expect(proxy, JSON.stringify(containersOf(pod).map((c) => c.name))).toBeDefined();
    const env = new Map((proxy?.env ?? []).map((e) => [e.name, e.value ?? '']));
    // Injected by this tenant's istiod, for this cluster, pointing the sidecar at meshgate.
    expect(env.get('ISTIO_META_CLUSTER_ID')).toBe(clusterId);
    expect(pod.metadata?.annotations?.['sidecar.istio.io/status']).toBeDefined();
    expect(JSON.stringify(proxy)).toContain(topology.xdsAddress(tenant));
  });
});

describe('validation through meshgate', () => {
  it.each(TENANTS.map((t) => [t.id, t.clusters[0]!] as const))('%s: invalid Istio config in %s is refused by istiod', async (_tenant, clusterId) => {
    const invalid = {
      apiVersion: 'networking.istio.io/v1',
      kind: 'VirtualService',
      metadata: { name: 'broken', namespace: 'default' },
      spec: { hosts: ['reviews'], http: [{ route: [{ destination: { host: 'reviews' }, weight: -5 }] }] },
    };
    const refused = await cluster(clusterId)
      .kubectl(['create', '-f', '-'], JSON.stringify(invalid))
      .then(
        () => '',
        (err: unknown) => String(err),
      );
    expect(refused).toMatch(/admission webhook "rev\.validation\.istio\.io" denied the request/);
  });
});

describe('istio-agent (proxyless) through meshgate', () => {
  const agents = new Map<string, Agent>();
  beforeAll(async () => {
    for (const [tenant, clusterId] of [
      ['acme', 'acme-east'],
      ['acme', 'acme-west'],
      ['globex', 'globex-main'],
    ] as const) {
      const token = await cluster(clusterId).token('echo', 'echo', { audience: 'istio-ca' });
      const agent = await startAgent({
        name: clusterId,
        dir: topology.dir,
        cluster: clusterId,
        namespace: 'echo',
        serviceAccount: 'echo',
        token,
        discoveryAddress: topology.xdsAddress(tenant),
        rootCaFile: topology.meshgate.providerCaFile,
        serverName: topology.tenant(tenant).host,
      });
      agents.set(clusterId, agent);
    }
  });

  it.each([
    ['acme', 'acme-east'],
    ['acme', 'acme-west'],
    ['globex', 'globex-main'],
  ] as const)('%s: the agent in %s gets its workload certificate from its own istiod', async (tenant, clusterId) => {
    const agent = agents.get(clusterId)!;
    const chain = await vi.waitFor(
      () => {
        if (!existsSync(join(agent.certDir, 'cert-chain.pem'))) throw new Error(`no certificate yet:\n${agent.program.log().slice(-2000)}`);
        return readFileSync(join(agent.certDir, 'cert-chain.pem'), 'utf8');
      },
      { timeout: 60_000, interval: 500 },
    );
    const leaf = new X509Certificate(chain);
    expect(leaf.subjectAltName).toBe('URI:spiffe://cluster.local/ns/echo/sa/echo');
    // Signed by this tenant's mesh CA, never the other's.
    expect(leaf.verify(new X509Certificate(topology.meshCas.get(tenant)!.cert).publicKey)).toBe(true);
    const other = TENANTS.find((t) => t.id !== tenant)!.id;
    expect(leaf.verify(new X509Certificate(topology.meshCas.get(other)!.cert).publicKey)).toBe(false);
  });

  it.each([
    ['acme', 'acme-east'],
    ['acme', 'acme-west'],
    ['globex', 'globex-main'],
  ] as const)('%s: the echo workload in %s holds an xDS stream that istiod lists', async (tenant, clusterId) => {
    const agent = agents.get(clusterId)!;
    await vi.waitFor(() => expect(existsSync(agent.bootstrap)).toBe(true), { timeout: 30_000, interval: 250 });
    await startEcho(clusterId, topology.dir, agent.bootstrap);
    const istiod = topology.istiods.get(tenant)!;
    await vi.waitFor(
      async () => {
        const syncz = (await (await fetch(`http://127.0.0.1:${istiod.ports.http}/debug/syncz`)).json()) as { proxy?: string; cluster_id?: string }[];
        expect(syncz.map((p) => `${p.cluster_id ?? ''} ${p.proxy ?? ''}`)).toContainEqual(expect.stringMatching(new RegExp(`^${clusterId} .*${clusterId}-0\\.echo`)));
      },
      { timeout: 60_000, interval: 1000 },
    );
  });

  describe('istioctl through meshgate', () => {
    /** istioctl's --cert-dir for an operator of `tenant`: its client certificate, and meshgate's CA as the root. */
    const operatorDir = (tenant: string): string => {
      const dir = mkdtempSync(join(tmpdir(), `istioctl-${tenant}-`));
      const operator = topology.meshgate.credentials.get(tenant)!.operator;
      writeFile(join(dir, 'cert-chain.pem'), operator.cert);
      writeFile(join(dir, 'key.pem'), operator.key, true);
      writeFile(join(dir, 'root-cert.pem'), topology.meshgate.providerCa.cert);
      return dir;
    };

    it.each(TENANTS.map((t) => [t.id] as const))('%s: proxy-status and internal-debug syncz with a token list only its own proxies', async (tenant) => {
      const spec = topology.tenant(tenant);
      const kubeconfig = cluster(spec.clusters[0]!).adminKubeconfig;
      const common = ['--xds-address', topology.xdsAddress(tenant), '-i', spec.namespace];
      await vi.waitFor(
        async () => {
          const status = await istioctl(['proxy-status', ...common], kubeconfig);
          expect(status.stderr + status.stdout).toMatch(/echo/);
          for (const c of spec.clusters) expect(status.stdout).toContain(`${c}-0.echo`);
          for (const foreign of TENANTS.filter((t) => t.id !== tenant).flatMap((t) => t.clusters)) expect(status.stdout).not.toContain(`${foreign}-0`);
        },
        { timeout: 60_000, interval: 2000 },
      );
      const syncz = await istioctl(['x', 'internal-debug', 'syncz', ...common], kubeconfig);
      expect(syncz.code, syncz.stderr).toBe(0);
      expect(syncz.stdout).toContain(`${spec.clusters[0]}-0.echo`);
      for (const foreign of TENANTS.filter((t) => t.id !== tenant).flatMap((t) => t.clusters)) expect(syncz.stdout).not.toContain(`${foreign}-0`);
    });

    it.each(TENANTS.map((t) => [t.id] as const))('%s: proxy-status and internal-debug syncz with --cert-dir list only its own proxies', async (tenant) => {
      const spec = topology.tenant(tenant);
      const dir = operatorDir(tenant);
      const kubeconfig = cluster(spec.clusters[0]!).adminKubeconfig;
      const common = ['--xds-address', topology.xdsAddress(tenant), '--cert-dir', dir, '-i', spec.namespace];
      const status = await istioctl(['proxy-status', ...common], kubeconfig);
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toContain(`${spec.clusters[0]}-0.echo`);
      const syncz = await istioctl(['x', 'internal-debug', 'syncz', ...common], kubeconfig);
      expect(syncz.code, syncz.stderr).toBe(0);
      expect(syncz.stdout).toContain(`${spec.clusters[0]}-0.echo`);
      for (const foreign of TENANTS.filter((t) => t.id !== tenant).flatMap((t) => t.clusters)) {
        expect(status.stdout).not.toContain(`${foreign}-0`);
        expect(syncz.stdout).not.toContain(`${foreign}-0`);
      }
    });

    it("refuses istioctl's state-changing and costly debug requests over xds, with a token and with --cert-dir", async () => {
      const spec = topology.tenant('acme');
      const dir = operatorDir('acme');
      const kubeconfig = cluster(spec.clusters[0]!).adminKubeconfig;
      for (const credential of [[], ['--cert-dir', dir]]) {
        for (const resource of ['adsz?push=true', 'force_disconnect', 'pprof/heap']) {
          const result = await istioctl(['x', 'internal-debug', resource, '--xds-address', topology.xdsAddress('acme'), '-i', spec.namespace, ...credential], kubeconfig);
          expect(result.code, resource).not.toBe(0);
          expect(result.stderr).toMatch(/code = PermissionDenied desc = MG_ERR_AUTHZ_DEBUG_ENDPOINT/);
        }
      }
    });

    it('refuses an acme operator certificate and an acme token on the globex host', async () => {
      const acme = topology.tenant('acme');
      const dir = operatorDir('acme');
      const kubeconfig = cluster(acme.clusters[0]!).adminKubeconfig;
      const certOnGlobex = await istioctl(['proxy-status', '--xds-address', topology.xdsAddress('globex'), '--cert-dir', dir, '-i', acme.namespace], kubeconfig);
      const tokenOnGlobex = await istioctl(['proxy-status', '--xds-address', topology.xdsAddress('globex'), '-i', acme.namespace], kubeconfig);
      expect(certOnGlobex.code).not.toBe(0);
      expect(certOnGlobex.stderr).toMatch(/code = Unauthenticated desc = MG_ERR_AUTHN_CLIENT_CERT_INVALID/);
      expect(tokenOnGlobex.code).not.toBe(0);
      expect(tokenOnGlobex.stderr).toMatch(/code = Unauthenticated desc = MG_ERR_AUTHN_TOKEN_ISSUER/);
    });
  });

  it('refuses an acme agent aimed at globex, one claiming a globex cluster, and one claiming its sibling cluster', async () => {
    const token = await cluster('acme-east').token('echo', 'stray', { audience: 'istio-ca' });
    // The same acme-east token each time, aimed at another tenant or claiming another cluster.
    const stray = (name: string, claimedCluster: string, aimedAt: 'acme' | 'globex') =>
      startAgent({
        name,
        dir: topology.dir,
        cluster: claimedCluster,
        namespace: 'echo',
        serviceAccount: 'stray',
        token,
        discoveryAddress: topology.xdsAddress(aimedAt),
        rootCaFile: topology.meshgate.providerCaFile,
        serverName: topology.tenant(aimedAt).host,
      });
    const wrongHost = await stray('acme-on-globex', 'acme-east', 'globex');
    const wrongCluster = await stray('acme-claims-globex-main', 'globex-main', 'acme');
    const otherCluster = await stray('acme-east-claims-acme-west', 'acme-west', 'acme');
    // What the agent itself logs: meshgate's refusal, as the CA call's gRPC status.
    await vi.waitFor(
      () => {
        expect(wrongHost.program.log()).toMatch(/code = Unauthenticated desc = MG_ERR_AUTHN_TOKEN_ISSUER/);
        expect(wrongCluster.program.log()).toMatch(/code = PermissionDenied desc = MG_ERR_ROUTE_UNKNOWN_CLUSTER/);
        expect(otherCluster.program.log()).toMatch(/code = PermissionDenied desc = MG_ERR_AUTHZ_CLUSTER_MISMATCH/);
      },
      { timeout: 60_000, interval: 1000 },
    );
    for (const agent of [wrongHost, wrongCluster, otherCluster]) {
      expect(existsSync(join(agent.certDir, 'cert-chain.pem'))).toBe(false);
      await agent.program.stop();
    }
  });
});

describe("Kiali's view of istiod: the control-plane view, port-forwarded to the real istiod's debug port", () => {
  /** A kubeconfig for `tenant`'s view with a real service-account token of `kiali/kiali` from its first cluster. */
  async function viewKubeconfig(tenant: string): Promise<string> {
    const spec = topology.tenant(tenant);
    const home = cluster(spec.clusters[0]!);
    await home.apply([
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kiali' } },
      { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'kiali', namespace: 'kiali' } },
    ]);
    // The TokenRequest API's default audience is the API server's own: what the view accepts.
    const token = (await home.kubectl(['create', 'token', 'kiali', '-n', 'kiali'])).trim();
    const text = kubeconfig({ tenant, cluster: `${tenant}-istiod`, host: spec.host, port: topology.meshgate.ports.api, ca: topology.meshgate.providerCa.cert, token });
    return writeFile(join(mkdtempSync(join(tmpdir(), `kiali-${tenant}-`)), 'kubeconfig'), text, true);
  }

  /** The real kubectl's port-forward to the view's istiod pod; its local ports in order, and a stop. */
  function portForward(config: string, pod: string, ports: readonly number[], env: Record<string, string>) {
    return new Promise<{ local: number[]; stop: () => void }>((resolve, reject) => {
      const child = spawn(binary('kubectl'), ['--kubeconfig', config, 'port-forward', '-n', 'istio-system', pod, ...ports.map((p) => `:${p}`)], {
        env: { ...process.env, ...env },
      });
      let output = '';
      const timer = setTimeout(() => {
        child.kill();
        reject(new Error(`kubectl port-forward did not start:\n${output}`));
      }, 30_000);
      const onData = (chunk: Buffer): void => {
        output += chunk.toString();
        const local = [...output.matchAll(/Forwarding from 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
        if (local.length === ports.length) {
          clearTimeout(timer);
          resolve({ local, stop: () => child.kill() });
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
    });
  }

  it.each(TENANTS.map((t) => [t.id] as const))("%s: Kiali's token finds its istiod, and a SPDY and a WebSocket port-forward read the real syncz, version and ready", async (tenant) => {
    const spec = topology.tenant(tenant);
    const config = await viewKubeconfig(tenant);
    const run = async (args: readonly string[]): Promise<string> => (await runKubectl(config, args)).stdout.trim();
    expect(await run(['get', 'deployments', '-A', '-l', 'app=istiod', '-o', 'jsonpath={.items[0].spec.template.spec.containers[0].env[0]}'])).toBe(
      // istiod's own CLUSTER_ID: the provider's config cluster, which the mesh clusters' istio namespaces name.
      JSON.stringify({ name: 'CLUSTER_ID', value: CONFIG_CLUSTER_ID }),
    );
    const pod = await run(['get', 'pods', '-n', 'istio-system', '-l', 'app=istiod,istio.io/rev=default', '-o', 'name']);
    expect(pod).toMatch(/^pod\/istiod-/);

    const transports: Record<string, string>[] = [{ KUBECTL_PORT_FORWARD_WEBSOCKETS: 'false' }, {}];
    for (const env of transports) {
      const forward = await portForward(config, pod, [15014, 8080], env);
      try {
        const [debug, ready] = forward.local;
        // The real istiod's own answers: its proxies (this tenant's only), its version, and ready.
        const syncz = (await (await fetch(`http://127.0.0.1:${debug}/debug/syncz`)).json()) as { proxy?: string; cluster_id?: string }[];
        expect(syncz.some((p) => p.proxy === `${spec.clusters[0]}-0.echo`)).toBe(true);
        for (const foreign of TENANTS.filter((t) => t.id !== tenant).flatMap((t) => t.clusters)) expect(syncz.some((p) => p.cluster_id === foreign)).toBe(false);
        const version = await fetch(`http://127.0.0.1:${debug}/version`);
        expect(version.status).toBe(200);
        expect(await version.text()).toMatch(/\d+\.\d+/);
        expect((await fetch(`http://127.0.0.1:${ready}/ready`)).status).toBe(200);
        expect((await fetch(`http://127.0.0.1:${debug}/debug/force_disconnect`)).status).toBe(403);
      } finally {
        forward.stop();
      }
    }
    const metrics = await topology.meshgate.metrics();
    expect(metrics).toMatch(new RegExp(`^meshgate_kube_view_forwards_total\\{tenant="${tenant}",port="15014",endpoint="/debug/syncz",code="200"\\} [1-9]`, 'm'));
  });

  it("refuses one tenant's Kiali token on the other tenant's view", async () => {
    const config = await viewKubeconfig('acme');
    const crossed = readFileSync(config, 'utf8').replaceAll('acme-istiod', 'globex-istiod').replaceAll(topology.tenant('acme').host, topology.tenant('globex').host);
    const file = writeFile(join(mkdtempSync(join(tmpdir(), 'kiali-crossed-')), 'kubeconfig'), crossed, true);
    const refused = await runKubectl(file, ['get', 'pods', '-n', 'istio-system']).then(
      () => '',
      (err: unknown) => (err as { stderr: string }).stderr,
    );
    expect(refused).toMatch(/Unauthorized|MG_ERR_AUTHN/);
  });
});

describe('istiod reaches the mesh clusters only through meshgate, each tenant its own', () => {
  it('istiod wrote istio-ca-root-cert with its own root into its mesh clusters', async () => {
    for (const tenant of TENANTS) {
      for (const clusterId of tenant.clusters) {
        const root = await vi.waitFor(
          async () => JSON.parse(await cluster(clusterId).kubectl(['get', 'configmap', 'istio-ca-root-cert', '-n', 'shop', '-o', 'json'])) as { data: Record<string, string> },
          { timeout: 60_000, interval: 1000 },
        );
        expect(root.data['root-cert.pem']?.trim()).toBe(topology.meshCas.get(tenant.id)!.cert.trim());
      }
    }
  });

  it("no request of one tenant's istiod, token or TokenReview reaches another tenant's API servers", () => {
    for (const tenant of TENANTS) {
      for (const clusterId of tenant.clusters) {
        const events = cluster(clusterId).audit();
        expect(events.length).toBeGreaterThan(0);
        // The suite's own readiness probe is the one anonymous caller.
        const users = new Set(events.filter((e) => !(e.user.username === 'system:anonymous' && e.requestURI === '/readyz')).map((e) => e.user.username ?? ''));
        for (const user of users) {
          // The cluster's own admin (setup), its API server, and this tenant's service accounts.
          expect(user, `${clusterId} served ${user}`).toMatch(new RegExp(`^(interop-admin|system:apiserver|system:serviceaccount:(${tenant.namespace}|echo):[\\w-]+)$`));
        }
        // Every token it saw was its own: a foreign one would be a 401 here.
        expect(events.filter((e) => e.responseStatus?.code === 401)).toEqual([]);
        // istiod's TokenReviews for this cluster came from this tenant's istiod, through meshgate.
        const reviews = events.filter((e) => e.objectRef?.resource === 'tokenreviews');
        for (const review of reviews) expect(review.user.username).toBe(`system:serviceaccount:${tenant.namespace}:istiod`);
      }
    }
    // istiod's own logs: it added, started and served its tenant's clusters and no other. (It does
    // see the other tenant's remote Secrets go by in the shared config cluster: docs/interop.md.)
    const touched = (cluster: string): RegExp => new RegExp(`(Add cluster\\s+cluster=|cluster "|service registry "|new connection for node:)${cluster}\\b`);
    for (const tenant of TENANTS) {
      const log = topology.istiods.get(tenant.id)!.program.log();
      for (const own of tenant.clusters) expect(log).toMatch(touched(own));
      for (const foreign of TENANTS.filter((t) => t.id !== tenant.id).flatMap((t) => t.clusters)) expect(log).not.toMatch(touched(foreign));
    }
  });

  it("meshgate counted istiod's watches and TokenReviews by tenant and cluster", async () => {
    const metrics = await topology.meshgate.metrics();
    for (const tenant of TENANTS) {
      for (const clusterId of tenant.clusters) {
        // istiod's informers hold their watches open for as long as it runs.
        expect(metrics).toMatch(new RegExp(`^meshgate_kube_watches\\{tenant="${tenant.id}",cluster="${clusterId}"\\} [1-9]`, 'm'));
        // Each agent's token was reviewed by istiod against the agent's own cluster, through meshgate.
        expect(metrics).toMatch(new RegExp(`^meshgate_kube_requests_total\\{tenant="${tenant.id}",cluster="${clusterId}",verb="create",code="201"\\} [1-9]`, 'm'));
      }
    }
  });
});

describe('MeshTenant resources on the real kube-apiserver (the provider cluster)', () => {
  const namespace = 'meshgate-tenants';
  const crdFile = fileURLToPath(new URL('../../deploy/base/crd-meshtenant.yaml', import.meta.url));

  it('accepts the CRD as structural, refuses a malformed MeshTenant itself, and gets the Ready condition meshgate writes', async () => {
    const provider = topology.configCluster;
    await provider.kubectl(['apply', '-f', crdFile]);
    await provider.kubectl(['wait', '--for=condition=Established', '--timeout=30s', 'crd/meshtenants.meshgate.dev']);
    await provider.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } }]);

    // acme, as meshgate's own config has it, made a MeshTenant and a Secret of its files.
    const config = parse(readFileSync(topology.meshgate.configFile, 'utf8')) as { tenants: Record<string, any>[] };
    const acme = toMeshTenant(config.tenants.find((t) => t.id === 'acme') ?? {}, 'acme-files', namespace);
    await provider.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'acme-files', namespace, labels: { [TENANT_LABEL]: 'acme' } }, data: acme.data }));
    await provider.kubectl(['apply', '-f', '-'], JSON.stringify(acme.object));
    // One the API server's schema refuses (hosts is a list), and one only meshgate can judge (no such Secret).
    const malformed = { ...acme.object, metadata: { name: 'malformed', namespace }, spec: { ...acme.object.spec, hosts: 'acme.example' } };
    await expect(provider.kubectl(['apply', '-f', '-'], JSON.stringify(malformed))).rejects.toThrow(/spec\.hosts: Invalid value: "string": spec\.hosts in body must be of type array/);
    const orphan = { ...acme.object, metadata: { name: 'orphan', namespace }, spec: { ...acme.object.spec, hosts: ['orphan.interop.example'], tls: { ...acme.object.spec.tls, key: { secretKeyRef: { name: 'gone', key: 'tls.key' } } } } };
    await provider.kubectl(['apply', '-f', '-'], JSON.stringify(orphan));

    // meshgate's Kubernetes source, with the provider's admin kubeconfig, against these.
    const dir = mkdtempSync(join(tmpdir(), 'meshgate-interop-meshtenants-'));
    const base = { ...parse(readFileSync(topology.meshgate.configFile, 'utf8')), tenantSource: { kubernetes: { namespace, kubeconfig: provider.adminKubeconfig } } } as Record<string, unknown>;
    delete base.tenants;
    const file = writeFile(join(dir, 'meshgate.yaml'), stringify(base));
    const source = createKubernetesSource({ path: file, config: { namespace, kubeconfig: provider.adminKubeconfig }, kubeconfig: provider.adminKubeconfig, logger: createLogger('silent') });
    try {
      await source.start({ onChange: () => undefined });
      expect(source.overlay().tenants.map((t) => (t as { id: string }).id)).toEqual(['acme']);
      const ready = async (name: string): Promise<{ status: string; reason: string; message: string } | undefined> => {
        const object = JSON.parse(await provider.kubectl(['get', 'meshtenant', name, '-n', namespace, '-o', 'json'])) as { status?: { conditions?: { type: string; status: string; reason: string; message: string }[] } };
        return object.status?.conditions?.find((c) => c.type === 'Ready');
      };
      await vi.waitFor(async () => expect(await ready('acme')).toMatchObject({ status: 'True', reason: 'Accepted' }), { timeout: 15_000, interval: 200 });
      await vi.waitFor(async () => expect((await ready('orphan'))?.message).toContain(`Secret ${namespace}/gone does not exist`), { timeout: 15_000, interval: 200 });
      // kubectl's columns, from the CRD.
      expect(await provider.kubectl(['get', 'meshtenants', '-n', namespace])).toMatch(/^acme\s+True\s+Accepted\s+\["acme\./m);
    } finally {
      source.close();
    }
  });
});
