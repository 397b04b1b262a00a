/**
 * `meshgate kubeconfig`: a kubeconfig that reaches one tenant cluster through meshgate. Its server
 * is `https://<host>:<port>/clusters/<cluster>` (client-go treats a server path as a prefix for
 * every request, upgrades included) and its tls-server-name is the tenant's host, so the same file
 * works when the address dialled is not that name. Everything is inline (`*-data`, `token`):
 * istiod refuses file paths in remote-secret kubeconfigs.
 */
import { readFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { loadConfig } from '../config/load.js';
import { UsageError, parse, required } from './args.js';

const USAGE = `usage: meshgate kubeconfig --tenant T --cluster C
                           [--config FILE | --server HOST:PORT] [--connect-to ADDRESS] [--ca FILE]
                           [--client-cert FILE --client-key FILE] [--token FILE]

--config reads the tenant's host and the port of the listener serving the kube plane, and checks
that the cluster is the tenant's; --server names them instead. --connect-to dials another address
(an IP, a load balancer) with the tenant's host kept as tls-server-name. --ca embeds the CA that
signed meshgate's certificate. The credential is the caller's: a client certificate issued with
\`meshgate certs client\`, a service-account token of that cluster, or both.`;

export interface KubeconfigOptions {
  readonly tenant: string;
  readonly cluster: string;
  /** The tenant's host (TLS server name) and meshgate's port. */
  readonly host: string;
  readonly port: number;
  /** Dial this address instead of `host`. */
  readonly connectTo?: string | undefined;
  readonly ca?: string | undefined;
  readonly clientCert?: { readonly cert: string; readonly key: string } | undefined;
  readonly token?: string | undefined;
}

export function runKubeconfig(args: readonly string[]): number {
  const values = parse(
    args,
    {
      tenant: { type: 'string' },
      cluster: { type: 'string' },
      config: { type: 'string' },
      server: { type: 'string' },
      'connect-to': { type: 'string' },
      ca: { type: 'string' },
      'client-cert': { type: 'string' },
      'client-key': { type: 'string' },
      token: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    USAGE,
  );
  if (values.help === true) {
    console.log(USAGE);
    return 0;
  }
  const tenant = required(values.tenant, '--tenant', USAGE);
  const cluster = required(values.cluster, '--cluster', USAGE);
  if ((values['client-cert'] === undefined) !== (values['client-key'] === undefined)) {
    throw new UsageError(`--client-cert and --client-key go together\n\n${USAGE}`);
  }
  if (values['client-cert'] === undefined && values.token === undefined) {
    throw new UsageError(`give a credential: --client-cert and --client-key, or --token\n\n${USAGE}`);
  }
  const { host, port } =
    values.server !== undefined ? parseServer(values.server) : serverFromConfig(required(values.config, '--config or --server', USAGE), tenant, cluster);
  const text = (path: string): string => readFileSync(path, 'utf8');
  process.stdout.write(
    kubeconfig({
      tenant,
      cluster,
      host,
      port,
      connectTo: values['connect-to'],
      ca: values.ca === undefined ? undefined : text(values.ca),
      clientCert:
        values['client-cert'] === undefined || values['client-key'] === undefined
          ? undefined
          : { cert: text(values['client-cert']), key: text(values['client-key']) },
      token: values.token === undefined ? undefined : text(values.token).trim(),
    }),
  );
  return 0;
}

export function kubeconfig(options: KubeconfigOptions): string {
  const b64 = (pem: string): string => Buffer.from(pem).toString('base64');
  const address = options.connectTo ?? options.host;
  const user = `${options.tenant}-${options.cluster}`;
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: options.cluster,
        cluster: {
          server: `https://${address.includes(':') ? `[${address}]` : address}:${options.port}/clusters/${options.cluster}`,
          'tls-server-name': options.host,
          ...(options.ca === undefined ? {} : { 'certificate-authority-data': b64(options.ca) }),
        },
      },
    ],
    users: [
      {
        name: user,
        user: {
          ...(options.clientCert === undefined
            ? {}
            : { 'client-certificate-data': b64(options.clientCert.cert), 'client-key-data': b64(options.clientCert.key) }),
          ...(options.token === undefined ? {} : { token: options.token }),
        },
      },
    ],
    contexts: [{ name: options.cluster, context: { cluster: options.cluster, user } }],
    'current-context': options.cluster,
  });
}

function parseServer(server: string): { host: string; port: number } {
  const match = /^(?:https:\/\/)?([^:/]+):(\d+)\/?$/.exec(server);
  if (!match?.[1] || !match[2]) throw new UsageError(`--server takes HOST:PORT, not "${server}"\n\n${USAGE}`);
  return { host: match[1], port: Number(match[2]) };
}

function serverFromConfig(path: string, tenantId: string, clusterId: string): { host: string; port: number } {
  const { config } = loadConfig(path);
  const tenant = config.tenants.find((t) => t.id === tenantId);
  if (!tenant) throw new UsageError(`${path} has no tenant "${tenantId}"`);
  const cluster = tenant.clusters.find((c) => c.id === clusterId);
  const view = tenant.controlPlaneView?.cluster === clusterId;
  if (cluster?.apiServer === undefined && !view) {
    throw new UsageError(`tenant "${tenantId}" has no cluster "${clusterId}" with an apiServer, and no control-plane view of that name`);
  }
  const host = tenant.hosts.find((h) => !h.startsWith('*.'));
  if (host === undefined) throw new UsageError(`tenant "${tenantId}" has only wildcard hosts: name one with --server`);
  const listener = Object.values(config.listeners).find((l) => l.planes.includes('kube'));
  if (!listener) throw new UsageError(`${path} has no listener serving the kube plane`);
  return { host, port: listener.port };
}
