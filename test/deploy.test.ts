/**
 * deploy/ renders, with the real `kubectl kustomize`, into objects that agree with each other and
 * with the config they ship: ports, probes, drain, selectors, NetworkPolicy, RBAC, autoscaling, the
 * admin token, and the example MeshTenant (against the CRD's schema and meshgate's own checks).
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, posix, relative } from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { loadConfig, parseConfig } from '../src/config/load.js';
import type { Config } from '../src/config/schema.js';
import { createCertificateAuthority, issueCertificate } from '../src/pki/certificates.js';
import { admitMeshTenants, secretReader, TENANT_LABEL, tenantFromMeshTenant } from '../src/tenancy/mesh-tenant.js';
import { ROOT } from './helpers/cli.js';

const KUBECTL = '/usr/bin/kubectl';
const DEPLOY = join(ROOT, 'deploy');

/* eslint-disable @typescript-eslint/no-unsafe-return, @typescript-eslint/restrict-plus-operands -- rendered
   Kubernetes objects are read field by field, untyped: a wrong field fails an assertion. */
type K8s = Record<string, any>;

function render(dir: string): K8s[] {
  const out = execFileSync(KUBECTL, ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return parseAllDocuments(out)
    .map((d) => d.toJS() as K8s | null)
    .filter((o): o is K8s => o !== null);
}

const one = (objects: K8s[], kind: string, name?: string): K8s => {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  expect(found, `${kind} ${name ?? ''}`).toHaveLength(1);
  return found[0]!;
};

const matches = (selector: Record<string, string>, labels: Record<string, string> = {}): boolean =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

/** Every folder of deploy/ with a kustomization.yaml. */
function kustomizations(dir = DEPLOY): string[] {
  const here = readdirSync(dir, { withFileTypes: true });
  return [
    ...(here.some((e) => e.isFile() && e.name === 'kustomization.yaml') ? [dir] : []),
    ...here.filter((e) => e.isDirectory()).flatMap((e) => kustomizations(join(dir, e.name))),
  ];
}

describe('deploy/ kustomizations', () => {
  const dirs = kustomizations();

  it('are the base, both overlays, the default and the agent, and each renders with kubectl kustomize', () => {
    expect(dirs.map((d) => relative(DEPLOY, d) || '.').sort()).toEqual(['.', 'agent', 'base', 'overlays/file-config', 'overlays/kubernetes-config']);
    for (const dir of dirs) expect(render(dir).length, dir).toBeGreaterThan(dir.endsWith('agent') ? 4 : 5);
  });

  it('render the file-config overlay by default (kubectl kustomize deploy/)', () => {
    expect(render(DEPLOY)).toEqual(render(join(DEPLOY, 'overlays/file-config')));
  });
});

const LISTENER_KINDS = [
  'Namespace',
  'ServiceAccount',
  'CustomResourceDefinition',
  'ConfigMap',
  'Deployment',
  'Service',
  'PodDisruptionBudget',
  'HorizontalPodAutoscaler',
  'NetworkPolicy',
  'ServiceMonitor',
  'PrometheusRule',
];
const RBAC_KINDS = ['Role', 'RoleBinding', 'ClusterRole', 'ClusterRoleBinding'];

describe.each([
  { overlay: 'file-config', kinds: LISTENER_KINDS },
  { overlay: 'kubernetes-config', kinds: [...LISTENER_KINDS, 'Role', 'RoleBinding'] },
])('the $overlay overlay', ({ overlay, kinds }) => {
  const objects = render(join(DEPLOY, 'overlays', overlay));
  const configMap = one(objects, 'ConfigMap');
  const config: Config = parseConfig(configMap.data['meshgate.yaml'] as string, `${overlay}/meshgate.yaml`);
  const deployment = one(objects, 'Deployment', 'meshgate');
  const pod = deployment.spec.template.spec as K8s;
  const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
  const container = (pod.containers as K8s[]).find((c) => c.name === 'meshgate')!;
  const ports = new Map((container.ports as K8s[]).map((p) => [p.name as string, p.containerPort as number]));
  const arg = (flag: string): string => container.args[(container.args as string[]).indexOf(flag) + 1] as string;
  const listenerPorts = Object.values(config.listeners).map((l) => l.port).sort();

  it('has exactly the kinds it needs, all in namespaces it creates', () => {
    expect([...new Set(objects.map((o) => o.kind as string))].sort()).toEqual([...kinds].sort());
    const namespaces = objects.filter((o) => o.kind === 'Namespace').map((o) => o.metadata.name as string);
    for (const o of objects) if (o.metadata.namespace !== undefined) expect(namespaces, `${o.kind} ${o.metadata.name}`).toContain(o.metadata.namespace);
  });

  it('ships a config the schema accepts, with no loopback upstream, mounted where --config reads it', () => {
    expect(config.security.allowLoopbackUpstreams).toBe(false);
    const mount = (container.volumeMounts as K8s[]).find((m) => m.name === 'config')!;
    expect(posix.join(mount.mountPath as string, 'meshgate.yaml')).toBe(arg('--config'));
    // The same name across edits: meshgate reloads the file in place, and no rollout ends streams.
    expect(configMap.metadata.name).toBe('meshgate-config');
    expect((pod.volumes as K8s[]).find((v) => v.name === 'config')?.configMap.name).toBe(configMap.metadata.name);
  });

  it('exposes every listener and the admin port on the container, and probes the admin port', () => {
    expect(ports.get('admin')).toBe(config.admin.port);
    for (const [name, listener] of Object.entries(config.listeners)) expect(ports.get(name)).toBe(listener.port);
    expect(ports.size).toBe(Object.keys(config.listeners).length + 1);
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
    expect(container.startupProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
    // The kubelet probes the pod IP: the admin listener must be bound to it.
    expect(config.admin.host).toBe('0.0.0.0');
  });

  it('serves /metrics and /status to loopback and the bearer token only, the token mounted from the Secret the ServiceMonitor sends', () => {
    const loopback = new BlockList();
    loopback.addSubnet('127.0.0.0', 8, 'ipv4');
    loopback.addAddress('::1', 'ipv6');
    for (const cidr of config.admin.access.sourceCIDRs) {
      const [address = '', bits = ''] = cidr.split('/');
      expect(loopback.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4'), cidr).toBe(true);
      expect(Number(bits), cidr).toBeGreaterThanOrEqual(isIP(address) === 6 ? 128 : 8);
    }
    const tokenFile = posix.resolve(posix.dirname(arg('--config')), config.admin.access.bearerTokenFile ?? '');
    expect(config.admin.access.bearerTokenFile).toBeDefined();
    const mount = (container.volumeMounts as K8s[]).find((m) => tokenFile.startsWith(`${m.mountPath as string}/`) && m.name !== 'config')!;
    const volume = (pod.volumes as K8s[]).find((v) => v.name === mount.name)!;
    const item = (volume.secret.items as K8s[]).find((i) => posix.join(mount.mountPath as string, i.path as string) === tokenFile)!;
    const monitor = one(objects, 'ServiceMonitor');
    const [endpoint] = monitor.spec.endpoints as K8s[];
    expect(endpoint!.authorization).toEqual({ type: 'Bearer', credentials: { name: volume.secret.secretName, key: item.key } });
    expect(endpoint!.path).toBe('/metrics');
  });

  it('drains inside the grace period: preStop sleep, then --drain-seconds, then a margin', () => {
    // Native sleep: meshgate's image needs no shell or sleep binary for it.
    expect(Object.keys(container.lifecycle.preStop as object)).toEqual(['sleep']);
    const sleep = container.lifecycle.preStop.sleep.seconds as number;
    expect(sleep).toBeGreaterThanOrEqual(5);
    const drain = Number(arg('--drain-seconds'));
    expect(drain).toBeGreaterThan(0);
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(sleep + drain + 5);
    expect(deployment.spec.strategy.rollingUpdate).toEqual({ maxUnavailable: 0, maxSurge: 1 });
    // Rollouts paced: one pod's reconnect storm is over before the next pod drains.
    expect(deployment.spec.minReadySeconds).toBeGreaterThanOrEqual(sleep);
  });

  it('requests resources, runs one worker per requested core, and spreads pods over zones and nodes', () => {
    const { requests, limits } = container.resources as K8s;
    expect(requests.memory).toBeDefined();
    expect(limits.memory).toBeDefined();
    const cores = String(requests.cpu).endsWith('m') ? Number.parseInt(String(requests.cpu), 10) / 1000 : Number(requests.cpu);
    expect(Number(arg('--workers'))).toBe(Math.max(1, Math.floor(cores)));
    const spread = pod.topologySpreadConstraints as K8s[];
    expect(spread.map((s) => s.topologyKey).sort()).toEqual(['kubernetes.io/hostname', 'topology.kubernetes.io/zone']);
    for (const s of spread) expect(matches(s.labelSelector.matchLabels as Record<string, string>, podLabels)).toBe(true);
  });

  it('runs as non-root with a read-only root filesystem and no capabilities', () => {
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(container.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
  });

  it('puts the listeners on a LoadBalancer that keeps source addresses, and the admin port only on an in-cluster Service', () => {
    const lb = one(objects, 'Service', 'meshgate');
    expect(lb.spec.type).toBe('LoadBalancer');
    expect(lb.spec.externalTrafficPolicy).toBe('Local');
    const targets = (lb.spec.ports as K8s[]).map((p) => p.targetPort as string);
    expect(targets.sort()).toEqual(Object.keys(config.listeners).sort());
    expect(matches(lb.spec.selector as Record<string, string>, podLabels)).toBe(true);
    const admin = one(objects, 'Service', 'meshgate-admin');
    expect(admin.spec.type ?? 'ClusterIP').toBe('ClusterIP');
    expect((admin.spec.ports as K8s[]).map((p) => p.targetPort)).toEqual(['admin']);
    expect(matches(admin.spec.selector as Record<string, string>, podLabels)).toBe(true);
    // Prometheus scrapes through the admin Service, never the load balancer's.
    const monitor = one(objects, 'ServiceMonitor');
    const selected = objects.filter((o) => o.kind === 'Service' && matches(monitor.spec.selector.matchLabels as Record<string, string>, o.metadata.labels as Record<string, string>));
    expect(selected.map((s) => s.metadata.name)).toEqual(['meshgate-admin']);
    expect((monitor.spec.endpoints as K8s[]).map((e) => e.port)).toEqual(['admin']);
  });

  it('leaves the replica count to an HPA on CPU whose floor keeps the PDB able to evict', () => {
    const hpa = one(objects, 'HorizontalPodAutoscaler');
    const pdb = one(objects, 'PodDisruptionBudget');
    expect(hpa.apiVersion).toBe('autoscaling/v2');
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: 'meshgate' });
    expect(deployment.spec.replicas).toBeUndefined();
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(pdb.spec.minAvailable + 1);
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(2);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    expect((hpa.spec.metrics as K8s[]).map((m) => [m.type, m.resource.name, m.resource.target.type])).toEqual([['Resource', 'cpu', 'Utilization']]);
    // Removing a pod is a reconnect storm for its sidecars: down slower than up.
    expect(hpa.spec.behavior.scaleDown.stabilizationWindowSeconds).toBeGreaterThan(hpa.spec.behavior.scaleUp.stabilizationWindowSeconds);
    expect(matches(pdb.spec.selector.matchLabels as Record<string, string>, podLabels)).toBe(true);
  });

  describe('NetworkPolicy', () => {
    const policy = one(objects, 'NetworkPolicy');
    const ingress = policy.spec.ingress as K8s[];
    const egress = policy.spec.egress as K8s[];
    const portsOf = (rule: K8s): number[] => (rule.ports as K8s[]).map((p) => p.port as number);

    it('selects meshgate and restricts both directions', () => {
      expect(matches(policy.spec.podSelector.matchLabels as Record<string, string>, podLabels)).toBe(true);
      expect(policy.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    });

    it('lets anyone reach the listener ports, and only the monitoring namespace the admin port', () => {
      expect(ingress.flatMap(portsOf).sort()).toEqual([...listenerPorts, config.admin.port].sort());
      for (const rule of ingress) {
        const ports = portsOf(rule);
        if (ports.includes(config.admin.port)) {
          expect(ports).toEqual([config.admin.port]);
          expect(rule.from).toEqual([{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }]);
        } else {
          expect(rule.from).toBeUndefined();
        }
      }
    });

    it("names its peers with their own labels, never meshgate's (kustomize must not write them in)", () => {
      for (const rule of egress) {
        for (const peer of (rule.to ?? []) as K8s[]) {
          const labels = Object.keys((peer.podSelector?.matchLabels ?? {}) as object);
          expect(labels.filter((l) => Object.keys(podLabels).includes(l))).toEqual([]);
        }
      }
    });

    it('allows DNS, and every upstream the tenants name, on its port', () => {
      const allows = (host: string, port: number): boolean =>
        egress.some((rule) => {
          if (!portsOf(rule).includes(port)) return false;
          return ((rule.to ?? []) as K8s[]).some((peer) => {
            if (isIP(host) !== 0) {
              if (peer.ipBlock === undefined) return false;
              const [net = '', bits = ''] = (peer.ipBlock.cidr as string).split('/');
              const block = new BlockList();
              block.addSubnet(net, Number(bits), isIP(net) === 6 ? 'ipv6' : 'ipv4');
              return block.check(host, isIP(host) === 6 ? 'ipv6' : 'ipv4');
            }
            // A Service name (<name>.<namespace>.svc): its pods, in a namespace the provider labels.
            return host.endsWith('.svc') && peer.namespaceSelector !== undefined && peer.podSelector !== undefined;
          });
        });
      expect(egress.some((r) => portsOf(r).includes(53) && (r.ports as K8s[]).some((p) => p.protocol === 'UDP'))).toBe(true);
      const urls = upstreamUrls(overlay === 'file-config' ? config.tenants : [exampleTenant()]);
      expect(urls.length).toBeGreaterThan(3);
      for (const url of urls) {
        const { hostname, port, protocol } = new URL(url);
        const number = Number(port) || (protocol === 'https:' ? 443 : 80);
        expect(allows(hostname.replace(/^\[|\]$/g, ''), number), url).toBe(true);
      }
    });

    if (overlay === 'kubernetes-config') {
      it("allows the API server the tenant source watches (ipBlock, as a policy sees the Service's endpoints)", () => {
        expect(egress.some((r) => portsOf(r).includes(443) && portsOf(r).includes(6443) && ((r.to ?? []) as K8s[]).every((p) => p.ipBlock !== undefined))).toBe(true);
      });
    }
  });

  if (overlay === 'file-config') {
    it('grants no API rights and mounts no service-account token', () => {
      expect(objects.filter((o) => RBAC_KINDS.includes(o.kind as string))).toEqual([]);
      expect(pod.automountServiceAccountToken).toBe(false);
      expect(one(objects, 'ServiceAccount').automountServiceAccountToken).toBe(false);
      expect(config.tenantSource).toBeUndefined();
      expect(config.tenants.map((t) => t.id)).toEqual(['acme']);
    });
  } else {
    it("grants exactly the calls the tenant source makes, in the MeshTenants' namespace only, to meshgate's service account", () => {
      const namespace = config.tenantSource?.kubernetes.namespace;
      expect(namespace).toBeDefined();
      expect(config.tenants).toEqual([]);
      expect(objects.filter((o) => ['ClusterRole', 'ClusterRoleBinding'].includes(o.kind as string))).toEqual([]);
      const role = one(objects, 'Role');
      const binding = one(objects, 'RoleBinding');
      expect(role.metadata.namespace).toBe(namespace);
      expect(binding.metadata.namespace).toBe(namespace);
      expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: deployment.metadata.namespace }]);
      const granted = (role.rules as K8s[]).flatMap((r) =>
        (r.apiGroups as string[]).flatMap((g) => (r.resources as string[]).flatMap((res) => (r.verbs as string[]).map((v) => `${g}/${res}:${v}`))),
      );
      expect(new Set(granted).size).toBe(granted.length);
      expect(granted.sort()).toEqual(callsOfTheTenantSource().sort());
      expect(pod.automountServiceAccountToken).toBe(true);
      expect(objects.some((o) => o.kind === 'Namespace' && o.metadata.name === namespace)).toBe(true);
    });
  }
});

/**
 * What src/tenancy/kubernetes-source.ts asks the API server, as RBAC `group/resource:verb`, read
 * from its client calls through a table stated here: a call the table does not know fails the test,
 * so a new call cannot go unnoticed by the Role.
 */
function callsOfTheTenantSource(): string[] {
  const source = readFileSync(join(ROOT, 'src/tenancy/kubernetes-source.ts'), 'utf8');
  const CALLS: Record<string, string> = {
    listNamespacedCustomObject: 'meshgate.dev/meshtenants:list',
    listNamespacedSecret: '/secrets:list',
    patchNamespacedCustomObjectStatus: 'meshgate.dev/meshtenants/status:patch',
  };
  const called = [...new Set([...source.matchAll(/\.((?:list|watch|read|get|create|patch|replace|delete)\w*)\(\{/g)].map((m) => m[1]!))];
  expect(called.sort()).toEqual(Object.keys(CALLS).sort());
  // Each informer lists with one of those calls, then watches the same resource.
  const informers = [...source.matchAll(/makeInformer\(([\s\S]*?)\n\s*\);/g)].map((m) => m[1]!);
  expect(informers).toHaveLength(2);
  const watched = informers.map((body) => {
    const list = Object.keys(CALLS).find((call) => body.includes(`.${call}(`));
    expect(list, body).toBeDefined();
    return CALLS[list!]!.replace(/:list$/, ':watch');
  });
  return [...Object.values(CALLS), ...watched];
}

const EXAMPLE = join(DEPLOY, 'overlays/kubernetes-config/examples/meshtenant-acme.yaml');
const exampleObject = (): K8s => parse(readFileSync(EXAMPLE, 'utf8')) as K8s;

/** The example MeshTenant as a tenant of the config, validated. */
function exampleTenant(): Config['tenants'][number] {
  const text = readFileSync(join(DEPLOY, 'overlays/kubernetes-config/meshgate.yaml'), 'utf8');
  const tenant = tenantFromMeshTenant(exampleObject());
  return parseConfig(text, 'kubernetes-config', { tenants: [tenant], reader: () => ({ resolve: (f) => f, read: () => '' }) }).tenants[0]!;
}

function upstreamUrls(tenants: readonly Config['tenants'][number][]): string[] {
  return tenants.flatMap((t) => [
    ...[t.istiod.webhook?.url, t.istiod.debug?.url, t.istiod.xds?.url, ...(t.istiod.xds?.replicas ?? [])],
    ...t.clusters.flatMap((c) => [c.apiServer?.url, c.jwks?.url]),
  ]).filter((u): u is string => u !== undefined);
}

describe('the example MeshTenant', () => {
  const crd = one(render(join(DEPLOY, 'base')), 'CustomResourceDefinition');
  const [version] = crd.spec.versions as K8s[];
  const schema = version!.schema.openAPIV3Schema as K8s;
  // strict: false lets the x-kubernetes-* keywords through. Formats as the API server checks them.
  const ajv = new Ajv({ strict: false, allErrors: true, formats: { uri: (s: string) => URL.canParse(s), int64: true, 'date-time': true } });
  const validate = ajv.compile(asDraft7(schema) as object);
  const tmp = mkdtempSync(join(tmpdir(), 'meshgate-deploy-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('is of the CRD and namespace the overlay serves, and is not applied by it', () => {
    const object = exampleObject();
    expect(object.apiVersion).toBe(`${crd.spec.group}/${version!.name}`);
    expect(object.kind).toBe(crd.spec.names.kind);
    const config = parseConfig(readFileSync(join(DEPLOY, 'overlays/kubernetes-config/meshgate.yaml'), 'utf8'));
    expect(object.metadata.namespace).toBe(config.tenantSource?.kubernetes.namespace);
    expect(render(join(DEPLOY, 'overlays/kubernetes-config')).filter((o) => o.kind === 'MeshTenant')).toEqual([]);
  });

  it("passes the CRD's openAPIV3Schema, which refuses a malformed one", () => {
    const object = exampleObject();
    expect(validate(object), JSON.stringify(validate.errors)).toBe(true);
    expect(validate({ ...object, spec: { ...object.spec, hosts: 'acme.mesh.example.com' } })).toBe(false);
    expect(validate({ ...object, spec: { ...object.spec, tls: { cert: { secretKeyRef: { name: 'acme' } } } } })).toBe(false);
  });

  it('is served by meshgate, given a Secret of real files labelled for it, and refused without the label', async () => {
    const object = exampleObject();
    const host = (object.spec.hosts as string[])[0]!;
    const ca = await createCertificateAuthority('acme clients', 30, 'ecdsa');
    const istiodCa = await createCertificateAuthority('acme istiod', 30, 'ecdsa');
    const clusterCa = await createCertificateAuthority('acme-east', 30, 'ecdsa');
    const serving = await issueCertificate(ca, { commonName: host, dnsNames: [host], usage: 'server', keyType: 'ecdsa' });
    const files: Record<string, string> = {
      'tls.crt': serving.cert,
      'tls.key': serving.key,
      'client-ca.crt': ca.cert,
      'istiod-ca.crt': istiodCa.cert,
      'acme-east-jwks.json': JSON.stringify({ keys: [{ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' }), kid: 'k', alg: 'ES256', use: 'sig' }] }),
      'acme-east-cluster-ca.crt': clusterCa.cert,
      'acme-east-meshgate-token': 'eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl',
    };
    const namespace = object.metadata.namespace as string;
    const data = Object.fromEntries(Object.entries(files).map(([k, v]) => [k, Buffer.from(v).toString('base64')]));
    // The overlay's own meshgate.yaml, beside the admin token file it names.
    const configPath = join(tmp, 'meshgate.yaml');
    writeFileSync(configPath, readFileSync(join(DEPLOY, 'overlays/kubernetes-config/meshgate.yaml')));
    const config = parseConfig(readFileSync(configPath, 'utf8'));
    const tokenPath = join(tmp, config.admin.access.bearerTokenFile ?? '');
    mkdirSync(dirname(tokenPath), { recursive: true });
    writeFileSync(tokenPath, 'a-token-for-prometheus');
    const admit = (labels: Record<string, string>) =>
      admitMeshTenants([{ ...object, metadata: { ...object.metadata, creationTimestamp: '2026-01-01T00:00:00Z', generation: 1 } }], (tenants) =>
        loadConfig(configPath, { tenants, reader: (t) => secretReader(namespace, t, (name) => (name === 'acme' ? { metadata: { labels }, data } : undefined)) }),
      );
    const served = admit({ [TENANT_LABEL]: 'acme' });
    expect(served.problems).toEqual(new Map());
    expect(served.accepted.map((a) => a.name)).toEqual(['acme']);
    expect(served.loaded.config.tenants[0]?.limits.requestRate.kube).toEqual({ perSecond: 50, burst: 100 });
    const refused = admit({ [TENANT_LABEL]: 'someone-else' });
    expect(refused.accepted).toEqual([]);
    expect(refused.problems.get('acme')).toMatch(/not labelled meshgate\.dev\/tenant: acme/);
  });

  it('has a CRD schema of only the fields a Kubernetes structural schema has (else the API server refuses the CRD)', () => {
    const unknown: string[] = [];
    const walk = (node: K8s, path: string): void => {
      for (const [key, value] of Object.entries(node)) {
        if (!STRUCTURAL_FIELDS.has(key)) unknown.push(`${path}.${key}`);
        if (key === 'properties') for (const [name, child] of Object.entries(value as K8s)) walk(child as K8s, `${path}.properties.${name}`);
        else if (key === 'items' || key === 'additionalProperties') walk(value as K8s, `${path}.${key}`);
      }
    };
    walk(schema, 'openAPIV3Schema');
    expect(unknown).toEqual([]);
  });
});

describe('the agent (deploy/agent)', () => {
  const objects = render(join(DEPLOY, 'agent'));
  const deployment = one(objects, 'Deployment', 'meshgate-agent');
  const pod = deployment.spec.template.spec as K8s;
  const podLabels = deployment.spec.template.metadata.labels as Record<string, string>;
  const container = (pod.containers as K8s[])[0]!;
  const args = container.args as string[];
  const arg = (flag: string): string => args[args.indexOf(flag) + 1] ?? '';

  it('has exactly the kinds it needs, in its own namespace', () => {
    expect(objects.map((o) => o.kind as string).sort()).toEqual(['Deployment', 'Namespace', 'NetworkPolicy', 'PodDisruptionBudget', 'ServiceAccount']);
    for (const o of objects) if (o.kind !== 'Namespace') expect(o.metadata.namespace).toBe('meshgate-agent');
  });

  it('runs `meshgate agent` with flags it takes, and files from the mounted Secret', () => {
    expect(args[0]).toBe('agent');
    const usage = execFileSync(process.execPath, [join(ROOT, 'dist/cli/main.js'), 'agent', '--help'], { encoding: 'utf8' });
    for (const flag of args.filter((a) => a.startsWith('--'))) expect(usage, flag).toContain(flag);
    expect(arg('--server')).toMatch(/^wss:\/\/[^/]+:\d+$/);
    const mount = (container.volumeMounts as K8s[]).find((m) => m.name === 'tls')!;
    for (const flag of ['--ca', '--cert', '--key']) expect(posix.dirname(arg(flag))).toBe(mount.mountPath);
    expect((pod.volumes as K8s[]).find((v) => v.name === 'tls')?.secret.secretName).toBe('meshgate-agent-tls');
    // Probes on the health port the agent is told to open.
    const health = (container.ports as K8s[]).find((p) => p.name === 'health')!;
    expect(health.containerPort).toBe(Number(arg('--health-port')));
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'health' });
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(Number(arg('--drain-timeout')));
  });

  it('holds no Kubernetes credential: no token mounted, no RBAC', () => {
    expect(pod.automountServiceAccountToken).toBe(false);
    expect(one(objects, 'ServiceAccount').automountServiceAccountToken).toBe(false);
    expect(objects.some((o) => RBAC_KINDS.includes(o.kind as string))).toBe(false);
  });

  it('is selected by its NetworkPolicy: no ingress, egress to DNS and to ports 443 and 6443 only', () => {
    const policy = one(objects, 'NetworkPolicy');
    expect(matches(policy.spec.podSelector.matchLabels, podLabels)).toBe(true);
    expect(policy.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(policy.spec.ingress).toEqual([]);
    const ports = (policy.spec.egress as K8s[]).flatMap((rule) => (rule.ports as K8s[]).map((p) => `${p.protocol as string}/${p.port as number}`));
    expect(ports.sort()).toEqual(['TCP/443', 'TCP/53', 'TCP/6443', 'UDP/53']);
    expect(matches(one(objects, 'PodDisruptionBudget').spec.selector.matchLabels, podLabels)).toBe(true);
  });
});

/**
 * A CRD's schema is OpenAPI 3.0, where `exclusiveMinimum: true` qualifies `minimum`; Ajv reads JSON
 * Schema draft-07, where `exclusiveMinimum` is the bound itself.
 */
function asDraft7(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(asDraft7);
  if (typeof node !== 'object' || node === null) return node;
  const out: K8s = Object.fromEntries(Object.entries(node).map(([k, v]) => [k, k === 'enum' || k === 'required' ? v : asDraft7(v)]));
  for (const [exclusive, bound] of [['exclusiveMinimum', 'minimum'], ['exclusiveMaximum', 'maximum']] as const) {
    if (out[exclusive] === true) {
      out[exclusive] = out[bound];
      Reflect.deleteProperty(out, bound);
    } else if (out[exclusive] === false) Reflect.deleteProperty(out, exclusive);
  }
  return out;
}

/** The fields of apiextensions.k8s.io/v1 JSONSchemaProps that a CRD's schema may use here. */
const STRUCTURAL_FIELDS = new Set([
  'type', 'format', 'title', 'description', 'default', 'maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum',
  'maxLength', 'minLength', 'pattern', 'maxItems', 'minItems', 'uniqueItems', 'multipleOf', 'enum', 'maxProperties',
  'minProperties', 'required', 'items', 'allOf', 'oneOf', 'anyOf', 'not', 'properties', 'additionalProperties',
  'nullable', 'example', 'externalDocs',
  'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-embedded-resource', 'x-kubernetes-int-or-string',
  'x-kubernetes-list-map-keys', 'x-kubernetes-list-type', 'x-kubernetes-map-type', 'x-kubernetes-validations',
]);
