/** A meshgate over the sandbox's stand-ins whose clusters acme-east and globex-main are `via: agent`. */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { TunnelTimings } from '../../src/forward/agent-tunnels.js';
import { buildGateway, type Gateway } from '../../src/gateway/build.js';
import { issueCertificate } from '../../src/pki/certificates.js';
import type { Sandbox } from '../../src/sandbox/sandbox.js';
import { capturingLogger, configCluster, tenantOf } from './sandbox.js';

type RawConfig = Record<string, any>;

/** The name the stand-in API servers' certificate is for, besides 127.0.0.1. */
export const API_SERVER_NAME = 'kubernetes.default.svc';

/**
 * The sandbox's config with the agent plane on the api listener, and acme-east and globex-main
 * reached through agents: no URL, their keys from files (their OIDC endpoint is the API server,
 * which meshgate cannot reach either).
 */
export function agentConfig(sandbox: Sandbox, dir: string): (config: RawConfig) => void {
  const jwksFile = (cluster: string): string => {
    const file = join(dir, `${cluster}-jwks.json`);
    writeFileSync(file, JSON.stringify(sandbox.issuers.get(cluster)?.jwks()));
    return file;
  };
  const files = { 'acme-east': jwksFile('acme-east'), 'globex-main': jwksFile('globex-main') };
  return (config) => {
    config.listeners.api.planes = ['debug', 'kube', 'agent'];
    config.reload = { drainTimeout: '300ms', watch: false };
    for (const [tenant, id] of [
      ['acme', 'acme-east'],
      ['globex', 'globex-main'],
    ] as const) {
      const { cluster } = configCluster(config, tenant, id);
      cluster.jwks = { file: files[id] };
      const { ca, credentials } = cluster.apiServer as RawConfig;
      cluster.apiServer = { via: 'agent', serverName: API_SERVER_NAME, ca, credentials };
    }
  };
}

export interface AgentGateway {
  readonly gateway: Gateway;
  /** Its log lines, parsed. */
  readonly lines: Record<string, unknown>[];
  port(listener: string): number;
  /** Rewrites the config: the sandbox's, `base` applied, then `edit`; and reloads it. */
  reload(edit?: (config: RawConfig) => void): void;
  close(): Promise<void>;
}

export async function startAgentGateway(
  sandbox: Sandbox,
  base: (config: RawConfig) => void,
  agentTimings?: Partial<TunnelTimings>,
): Promise<AgentGateway> {
  const original = parse(readFileSync(sandbox.info.config, 'utf8')) as RawConfig;
  const file = join(mkdtempSync(join(tmpdir(), 'meshgate-agent-config-')), 'meshgate.yaml');
  const write = (edit: (config: RawConfig) => void): void => {
    const config = structuredClone(original);
    base(config);
    edit(config);
    writeFileSync(file, stringify(config));
  };
  write(() => undefined);
  const capture = capturingLogger();
  const gateway = buildGateway(loadConfig(file), { logger: capture.logger, ...(agentTimings ? { agentTimings } : {}) });
  const addresses = await gateway.listen();
  return {
    gateway,
    lines: capture.lines,
    port: (listener) => addresses.listeners[listener]?.port ?? 0,
    reload(edit = () => undefined) {
      write(edit);
      gateway.reload(() => loadConfig(file));
    },
    close: () => gateway.close(0),
  };
}

/** A client certificate of a sandbox tenant's client CA, written to `dir`: its file paths. */
export async function tenantCertificate(
  sandbox: Sandbox,
  dir: string,
  tenant: 'acme' | 'globex',
  commonName: string,
): Promise<{ cert: string; key: string }> {
  const info = tenantOf(sandbox, tenant);
  const issued = await issueCertificate(
    { cert: readFileSync(info.clientCa, 'utf8'), key: readFileSync(info.clientCaKey, 'utf8') },
    { commonName, organization: tenant, usage: 'client' },
  );
  const name = commonName.replaceAll(':', '_');
  const paths = { cert: join(dir, `${tenant}-${name}.pem`), key: join(dir, `${tenant}-${name}-key.pem`) };
  writeFileSync(paths.cert, issued.cert);
  writeFileSync(paths.key, issued.key, { mode: 0o600 });
  return paths;
}
