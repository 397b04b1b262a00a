/**
 * Real Istio in the interop topology: one istiod per tenant, run outside any cluster against the
 * provider's config cluster, with `EXTERNAL_ISTIOD` and remote secrets whose kubeconfigs point at
 * meshgate; proxyless istio-agents with Istio's echo server as their workload; and istioctl.
 * Every value set here is one that docs/interop.md lists.
 */
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import type { CertificateAuthority } from '../../../src/pki/certificates.js';
import { writeFile } from '../../../src/sandbox/pki.js';
import type { KubeCluster } from './kube.js';
import { binary, freePort, start, waitFor, type Program } from './processes.js';

export interface IstiodPorts {
  readonly http: number;
  readonly grpc: number;
  readonly xds: number;
  readonly monitoring: number;
  readonly webhook: number;
  readonly ctrlz: number;
}

export async function istiodPorts(): Promise<IstiodPorts> {
  return { http: await freePort(), grpc: await freePort(), xds: await freePort(), monitoring: await freePort(), webhook: await freePort(), ctrlz: await freePort() };
}

/** The name in istiod's serving certificate that meshgate checks (istiod.<namespace>.svc). */
export const istiodServerName = (namespace: string): string => `istiod.${namespace}.svc`;

/**
 * What `istioctl manifest generate` renders for a tenant's istiod: the CRDs, the mesh config and
 * the injector's template and values, as the Helm charts embedded in istioctl make them.
 */
export interface IstioManifests {
  readonly crds: readonly object[];
  readonly configMaps: readonly object[];
}

export async function renderIstioManifests(namespace: string, discoveryAddress: string): Promise<IstioManifests> {
  const { stdout } = await promisify(execFile)(
    binary('istioctl'),
    [
      'manifest', 'generate',
      '--set', 'profile=default',
      '--set', `values.global.istioNamespace=${namespace}`,
      '--set', `meshConfig.rootNamespace=${namespace}`,
      '--set', `meshConfig.defaultConfig.discoveryAddress=${discoveryAddress}`,
    ],
    { maxBuffer: 64 * 1024 * 1024, timeout: 120_000, env: { PATH: process.env.PATH ?? '', HOME: '/tmp' } },
  );
  const objects = parseAllDocuments(stdout)
    .map((doc) => doc.toJSON() as { kind?: string; metadata?: { name?: string } } | null)
    .filter((o): o is { kind: string; metadata: { name: string } } => o?.kind !== undefined && o.metadata?.name !== undefined);
  return {
    crds: objects.filter((o) => o.kind === 'CustomResourceDefinition'),
    configMaps: objects.filter((o) => o.kind === 'ConfigMap' && ['istio', 'istio-sidecar-injector'].includes(o.metadata.name)),
  };
}

export interface IstiodOptions {
  readonly tenant: string;
  readonly dir: string;
  readonly configCluster: KubeCluster;
  /** istiod's own cluster ID: the config cluster's, as istiod calls it. */
  readonly clusterId: string;
  readonly namespace: string;
  readonly ports: IstiodPorts;
  /** The tenant's mesh CA, plugged into istiod (`./etc/cacerts`). */
  readonly meshCa: CertificateAuthority;
}

export interface Istiod {
  readonly tenant: string;
  readonly namespace: string;
  readonly clusterId: string;
  readonly ports: IstiodPorts;
  readonly rootCertFile: string;
  readonly program: Program;
}

export async function startIstiod(options: IstiodOptions): Promise<Istiod> {
  const home = join(options.dir, `istiod-${options.tenant}`);
  const cacerts = join(home, 'etc', 'cacerts');
  mkdirSync(cacerts, { recursive: true });
  const { meshCa } = options;
  // A plugged-in CA: the root signs workload certificates and istiod's own serving certificate.
  const rootCertFile = writeFile(join(cacerts, 'root-cert.pem'), meshCa.cert);
  writeFile(join(cacerts, 'ca-cert.pem'), meshCa.cert);
  writeFile(join(cacerts, 'cert-chain.pem'), meshCa.cert);
  writeFile(join(cacerts, 'ca-key.pem'), meshCa.key, true);

  const { ports } = options;
  const program = start(`istiod-${options.tenant}`, binary('pilot-discovery'), {
    cwd: home,
    logDir: options.dir,
    args: [
      'discovery',
      `--kubeconfig=${options.configCluster.adminKubeconfig}`,
      `--httpAddr=127.0.0.1:${ports.http}`,
      `--grpcAddr=127.0.0.1:${ports.grpc}`,
      `--secureGRPCAddr=127.0.0.1:${ports.xds}`,
      `--monitoringAddr=127.0.0.1:${ports.monitoring}`,
      `--httpsAddr=127.0.0.1:${ports.webhook}`,
      `--ctrlz_port=${ports.ctrlz}`,
      '--ctrlz_address=127.0.0.1',
      '--log_output_level=default:info',
    ],
    env: {
      POD_NAMESPACE: options.namespace,
      POD_NAME: `istiod-${options.tenant}-0`,
      REVISION: 'default',
      CLUSTER_ID: options.clusterId,
      EXTERNAL_ISTIOD: 'true',
      // Empty: istiod must not rewrite the webhooks' caBundle, which is meshgate's CA.
      INJECTION_WEBHOOK_CONFIG_NAME: '',
      VALIDATION_WEBHOOK_CONFIG_NAME: '',
      ISTIOD_CUSTOM_HOST: istiodServerName(options.namespace),
      PILOT_ENABLE_ANALYSIS: 'false',
    },
  });
  await waitFor(`istiod ${options.tenant} /ready`, async () => ((await fetch(`http://127.0.0.1:${ports.http}/ready`)).ok ? true : undefined), {
    program,
    timeoutMs: 120_000,
  });
  return { tenant: options.tenant, namespace: options.namespace, clusterId: options.clusterId, ports, rootCertFile, program };
}

/** A remote secret, as `istioctl create-remote-secret` makes it, with meshgate's kubeconfig. */
export function remoteSecret(namespace: string, clusterId: string, kubeconfig: string): object {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: `istio-remote-secret-${clusterId}`,
      namespace,
      labels: { 'istio/multiCluster': 'true' },
      annotations: { 'networking.istio.io/cluster': clusterId },
    },
    stringData: { [clusterId]: kubeconfig },
  };
}

export interface AgentOptions {
  readonly name: string;
  readonly dir: string;
  readonly cluster: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly token: string;
  /** meshgate's xds address as host:port, and the CA of its serving certificate. */
  readonly discoveryAddress: string;
  readonly rootCaFile: string;
  readonly serverName: string;
}

export interface Agent {
  readonly program: Program;
  readonly certDir: string;
  readonly statusPort: number;
  readonly bootstrap: string;
}

/** pilot-agent without Envoy (Istio's grpc-agent settings), its token in its own ./var/run/secrets. */
export async function startAgent(options: AgentOptions): Promise<Agent> {
  const home = join(options.dir, `agent-${options.name}`);
  const configPath = join(home, 'etc', 'istio', 'proxy');
  const certDir = join(home, 'certs');
  const tokens = join(home, 'var', 'run', 'secrets', 'tokens');
  for (const d of [configPath, certDir, tokens]) mkdirSync(d, { recursive: true });
  writeFile(join(tokens, 'istio-token'), options.token, true);
  const statusPort = await freePort();
  const bootstrap = join(configPath, 'grpc-bootstrap.json');
  const podName = `${options.name}-0`;
  const program = start(`agent-${options.name}`, binary('pilot-agent'), {
    cwd: home,
    logDir: options.dir,
    args: ['proxy', 'sidecar', '--log_output_level=default:info'],
    env: {
      DISABLE_ENVOY: 'true',
      PROXY_CONFIG: JSON.stringify({ discoveryAddress: options.discoveryAddress, configPath, statusPort }),
      // Unset CA_ADDR: the CA is the discovery address, and ISTIOD_SAN names both.
      ISTIOD_SAN: options.serverName,
      XDS_ROOT_CA: options.rootCaFile,
      CA_ROOT_CA: options.rootCaFile,
      OUTPUT_CERTS: certDir,
      GRPC_XDS_BOOTSTRAP: bootstrap,
      ISTIO_META_GENERATOR: 'grpc',
      ISTIO_META_CLUSTER_ID: options.cluster,
      POD_NAME: podName,
      POD_NAMESPACE: options.namespace,
      SERVICE_ACCOUNT: options.serviceAccount,
      INSTANCE_IP: '127.0.0.1',
      CLOUD_PLATFORM: 'none',
    },
  });
  return { program, certDir, statusPort, bootstrap };
}

/** Istio's echo server as a proxyless gRPC workload: its xDS goes to the agent's socket. */
export async function startEcho(name: string, dir: string, bootstrap: string): Promise<Program> {
  const grpc = await freePort();
  return start(`echo-${name}`, binary('echo-server'), {
    cwd: dir,
    logDir: dir,
    args: ['--grpc', String(grpc), `--xds-grpc-server=${grpc}`, '--port', String(await freePort()), '--tcp', String(await freePort()), '--metrics', '0'],
    env: { GRPC_XDS_BOOTSTRAP: bootstrap, GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT: 'true' },
  });
}

export interface IstioctlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function istioctl(args: readonly string[], kubeconfig: string): Promise<IstioctlResult> {
  return new Promise((done) => {
    execFile(binary('istioctl'), ['--kubeconfig', kubeconfig, ...args], { timeout: 90_000, env: { PATH: process.env.PATH ?? '', HOME: '/tmp' } }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      done({ code, stdout, stderr });
    });
  });
}
