/** The sandbox's certificates, written to its folder (keys mode 0600). */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createCertificateAuthority, issueCertificate, type IssuedCertificate } from '../pki/certificates.js';

export interface PemFiles {
  readonly cert: string;
  readonly key: string;
}

export interface TenantPki {
  /** meshgate's server certificate for the tenant's host. */
  readonly server: PemFiles;
  /** The tenant's client CA (its key too, to issue more with `meshgate certs client`), and one client certificate it issued. */
  readonly clientCa: string;
  readonly clientCaKey: string;
  readonly client: PemFiles;
  /** istiod's own CA and its serving certificate (what the stand-in presents on :15017). */
  readonly istiodCa: string;
  /** istiod's root, which also signs workload certificates (the mesh CA), as in a default install. */
  readonly meshCa: IssuedCertificate;
  readonly istiod: IssuedCertificate;
}

export interface SandboxPki {
  /** The CA of meshgate's server certificates: what clients trust. */
  readonly ca: string;
  /** The CA of the clusters' API servers (and their OIDC endpoints), and of meshgate's client certificate to them. */
  readonly clusterCa: string;
  readonly clusterCaCert: string;
  /** The stand-in API servers' serving certificate (127.0.0.1). */
  readonly apiServer: IssuedCertificate;
  /** meshgate's own client certificate for API servers that take one (CN meshgate). */
  readonly meshgateClient: PemFiles;
  readonly tenants: ReadonlyMap<string, TenantPki>;
}

export function writeFile(path: string, content: string, secret = false): string {
  writeFileSync(path, content, { mode: secret ? 0o600 : 0o644 });
  if (secret) chmodSync(path, 0o600);
  return path;
}

function writePair(dir: string, name: string, pair: IssuedCertificate): PemFiles {
  return { cert: writeFile(join(dir, `${name}.pem`), pair.cert), key: writeFile(join(dir, `${name}-key.pem`), pair.key, true) };
}

export async function createSandboxPki(dir: string, tenants: readonly { id: string; host: string }[]): Promise<SandboxPki> {
  const certs = join(dir, 'certs');
  mkdirSync(certs, { recursive: true });

  const [serverCa, clusterCa] = await Promise.all([
    createCertificateAuthority('meshgate sandbox server CA'),
    createCertificateAuthority('meshgate sandbox cluster CA'),
  ]);
  const [apiServer, meshgateClient] = await Promise.all([
    // kubernetes.default.svc too, as a real API server's: the name meshgate checks through an agent (docs/agent.md).
    issueCertificate(clusterCa, { commonName: '127.0.0.1', dnsNames: ['kubernetes.default.svc'], ipAddresses: ['127.0.0.1'], usage: 'server' }),
    issueCertificate(clusterCa, { commonName: 'meshgate', organization: 'meshgate', usage: 'client' }),
  ]);

  const perTenant = await Promise.all(
    tenants.map(async ({ id, host }): Promise<[string, TenantPki]> => {
      const [clientCa, istiodCa] = await Promise.all([
        createCertificateAuthority(`${id} client CA`),
        createCertificateAuthority(`${id} istiod CA`),
      ]);
      const [server, client, istiod] = await Promise.all([
        issueCertificate(serverCa, { commonName: host, dnsNames: [host], usage: 'server' }),
        issueCertificate(clientCa, {
          commonName: `${id}-mesh-client`,
          organization: id,
          uris: [`spiffe://${host}/ns/istio-system/sa/meshgate-client`],
          usage: 'client',
        }),
        issueCertificate(istiodCa, {
          commonName: `istiod.${id}-cp.svc`,
          dnsNames: [`istiod.${id}-cp.svc`],
          ipAddresses: ['127.0.0.1'],
          usage: 'server',
        }),
      ]);
      return [
        id,
        {
          server: writePair(certs, `${id}-server`, server),
          clientCa: writeFile(join(certs, `${id}-client-ca.pem`), clientCa.cert),
          clientCaKey: writeFile(join(certs, `${id}-client-ca-key.pem`), clientCa.key, true),
          client: writePair(certs, `${id}-client`, client),
          istiodCa: writeFile(join(certs, `${id}-istiod-ca.pem`), istiodCa.cert),
          meshCa: istiodCa,
          istiod,
        },
      ];
    }),
  );
  return {
    ca: writeFile(join(certs, 'ca.pem'), serverCa.cert),
    clusterCa: writeFile(join(certs, 'cluster-ca.pem'), clusterCa.cert),
    clusterCaCert: clusterCa.cert,
    apiServer,
    meshgateClient: writePair(certs, 'meshgate-cluster-client', meshgateClient),
    tenants: new Map(perTenant),
  };
}
