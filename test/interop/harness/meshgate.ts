/**
 * meshgate in the interop topology: `meshgate serve` as its own process, with a config written
 * here from the real clusters and istiods, its own provider CA for the tenants' hosts, and a
 * client CA per tenant.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority, type IssuedCertificate } from '../../../src/pki/certificates.js';
import { writeFile } from '../../../src/sandbox/pki.js';
import type { KubeCluster } from './kube.js';
import { freePort, start, waitFor, type Program } from './processes.js';

const CLI = resolve(import.meta.dirname, '../../../dist/cli/main.js');

export interface MeshgatePorts {
  readonly webhook: number;
  readonly api: number;
  readonly xds: number;
  readonly admin: number;
}

export async function meshgatePorts(): Promise<MeshgatePorts> {
  return { webhook: await freePort(), api: await freePort(), xds: await freePort(), admin: await freePort() };
}

export interface MeshgateTenant {
  readonly id: string;
  readonly host: string;
  /** istiod's namespace: where its service accounts live in every mesh cluster. */
  readonly namespace: string;
  readonly clusters: readonly KubeCluster[];
  /** How its mesh API servers authenticate their webhook calls. */
  readonly webhookAuth: 'clientCertificate' | 'pathKey';
  readonly istiod: {
    readonly xds: number;
    readonly webhook: number;
    readonly monitoring: number;
    /** The root of istiod's serving certificates (its CA's root), and the name in them. */
    readonly rootCertFile: string;
    readonly serverName: string;
  };
  /** meshgate's own istiod credential for certificate callers (istioctl --cert-dir): a token of this cluster. */
  readonly xdsTokenFile: string;
  readonly xdsTokenCluster: string;
  /** istiod's own CLUSTER_ID, which the control-plane view shows Kiali. */
  readonly istiodClusterId: string;
}

export interface TenantCredentials {
  readonly clientCa: CertificateAuthority;
  /** What the tenant's mesh API servers present to meshgate's webhook listener. */
  readonly apiServerWebhookClient: IssuedCertificate;
  /** An operator's certificate for istioctl --cert-dir. */
  readonly operator: IssuedCertificate;
  /** The path key in the tenant's webhook URLs, when it uses one. */
  readonly pathKey: string;
}

export interface Meshgate {
  readonly ports: MeshgatePorts;
  readonly providerCa: CertificateAuthority;
  readonly providerCaFile: string;
  readonly credentials: ReadonlyMap<string, TenantCredentials>;
  readonly program: Program;
  readonly configFile: string;
  metrics(): Promise<string>;
}

export async function createMeshgatePki(tenants: readonly { id: string; host: string }[]): Promise<{ providerCa: CertificateAuthority; servers: Map<string, IssuedCertificate>; credentials: Map<string, TenantCredentials> }> {
  const providerCa = await createCertificateAuthority('interop provider CA');
  const servers = new Map<string, IssuedCertificate>();
  const credentials = new Map<string, TenantCredentials>();
  for (const { id, host } of tenants) {
    servers.set(id, await issueCertificate(providerCa, { commonName: host, dnsNames: [host], usage: 'server' }));
    const clientCa = await createCertificateAuthority(`${id} clients CA`);
    credentials.set(id, {
      clientCa,
      apiServerWebhookClient: await issueCertificate(clientCa, {
        commonName: `${id}-kube-apiserver`,
        uris: [`spiffe://${host}/ns/kube-system/sa/kube-apiserver`],
        usage: 'client',
      }),
      operator: await issueCertificate(clientCa, { commonName: `${id}-operator`, organization: id, usage: 'client' }),
      pathKey: `${id}-${Buffer.from(crypto.getRandomValues(new Uint8Array(18))).toString('base64url')}`,
    });
  }
  return { providerCa, servers, credentials };
}

export async function startMeshgate(
  dir: string,
  ports: MeshgatePorts,
  tenants: readonly MeshgateTenant[],
  pki: Awaited<ReturnType<typeof createMeshgatePki>>,
  jwksFiles: ReadonlyMap<string, string>,
): Promise<Meshgate> {
  const home = join(dir, 'meshgate');
  mkdirSync(home, { recursive: true });
  const file = (name: string, content: string, secret = false): string => writeFile(join(home, name), content, secret);

  const config = {
    admin: { host: '127.0.0.1', port: ports.admin },
    logging: { level: 'info' },
    // istiod listens on loopback here, so it trusts meshgate's debug requests as local ones
    // (docs/interop.md): only the interop suite and the sandbox allow it.
    security: { allowLoopbackUpstreams: true },
    listeners: {
      webhook: { host: '127.0.0.1', port: ports.webhook, planes: ['webhook'] },
      api: { host: '127.0.0.1', port: ports.api, planes: ['debug', 'kube'] },
      xds: { host: '127.0.0.1', port: ports.xds, planes: ['xds'] },
    },
    tenants: tenants.map((tenant) => {
      const server = pki.servers.get(tenant.id)!;
      const credentials = pki.credentials.get(tenant.id)!;
      const istiod = tenant.istiod;
      return {
        id: tenant.id,
        hosts: [tenant.host],
        tls: {
          cert: file(`${tenant.id}-server.pem`, server.cert),
          key: file(`${tenant.id}-server-key.pem`, server.key, true),
          clientCA: file(`${tenant.id}-clients-ca.pem`, credentials.clientCa.cert),
        },
        istiod: {
          webhook: { url: `https://127.0.0.1:${istiod.webhook}`, ca: istiod.rootCertFile, serverName: istiod.serverName },
          // The control-plane view's port-forwards carry no credential: istiod sees this token.
          debug: { url: `http://127.0.0.1:${istiod.monitoring}`, token: { file: tenant.xdsTokenFile, cluster: tenant.xdsTokenCluster } },
          xds: {
            url: `https://127.0.0.1:${istiod.xds}`,
            ca: istiod.rootCertFile,
            serverName: istiod.serverName,
            token: { file: tenant.xdsTokenFile, cluster: tenant.xdsTokenCluster },
          },
        },
        clusters: tenant.clusters.map((cluster) => ({
          id: cluster.id,
          issuer: cluster.issuer,
          jwks: { file: jwksFiles.get(cluster.id) },
          apiServer: { url: cluster.url, ca: cluster.caFile, credentials: 'passthrough' },
        })),
        // The tenant's istiod as Kiali finds it (docs/kiali.md).
        controlPlaneView: { cluster: `${tenant.id}-istiod`, clusterId: tenant.istiodClusterId },
        webhook:
          tenant.webhookAuth === 'pathKey'
            ? { authentication: ['pathKey'], pathKeyFile: file(`${tenant.id}-path-key`, credentials.pathKey, true) }
            : { authentication: ['clientCertificate'] },
        xds: { authentication: ['token', 'clientCertificate'] },
        debug: { authentication: ['token'] },
        kube: { authentication: ['token'] },
        access: {
          ...(tenant.webhookAuth === 'clientCertificate'
            ? { webhook: [{ method: 'clientCertificate', uri: `spiffe://${tenant.host}/ns/kube-system/sa/kube-apiserver` }] }
            : {}),
          xds: [{ method: 'token' }, { method: 'clientCertificate', subject: `${tenant.id}-operator` }],
          kube: [
            { subject: `system:serviceaccount:${tenant.namespace}:istiod`, profiles: ['istiod'] },
            { subject: 'system:serviceaccount:kiali:kiali', profiles: ['kiali-readonly'] },
            {
              subject: 'system:serviceaccount:kiali:kiali',
              cluster: `${tenant.id}-istiod`,
              allow: [{ verbs: ['create'], apiGroups: [''], resources: ['pods/portforward'], namespaces: ['istio-system'] }],
            },
          ],
          debug: [{ subject: 'system:serviceaccount:kiali:kiali' }],
        },
      };
    }),
  };
  const configFile = file('meshgate.yaml', stringify(config));
  const program = start('meshgate', process.execPath, { cwd: home, logDir: dir, args: [CLI, 'serve', '--config', configFile] });
  const admin = `http://127.0.0.1:${ports.admin}`;
  await waitFor('meshgate /readyz', async () => ((await fetch(`${admin}/readyz`)).ok ? true : undefined), { program });
  return {
    ports,
    providerCa: pki.providerCa,
    providerCaFile: file('provider-ca.pem', pki.providerCa.cert),
    credentials: pki.credentials,
    program,
    configFile,
    metrics: async () => (await fetch(`${admin}/metrics`)).text(),
  };
}
