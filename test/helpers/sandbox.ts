/** The sandbox as a test fixture, plus a second gateway built from its config with changes. */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { buildGateway, type Gateway, type GatewayAddresses } from '../../src/gateway/build.js';
import { createLogger, type Logger } from '../../src/observability/logger.js';
import { expect } from 'vitest';
import { sampleAdmissionReview, startSandbox, type Sandbox, type SandboxTenantInfo } from '../../src/sandbox/sandbox.js';
import type { RecordedRequest } from '../../src/sandbox/standins/istiod.js';

export const silent = (): Logger => createLogger('silent');

/** A logger whose lines are kept, parsed, for assertions. */
export function capturingLogger(): { logger: Logger; lines: Record<string, unknown>[]; raw: string[] } {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const logger = createLogger('info', {
    write(line: string) {
      raw.push(line);
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  });
  return { logger, lines, raw };
}

export function startTestSandbox(logger: Logger = silent()): Promise<Sandbox> {
  return startSandbox({ dir: mkdtempSync(join(tmpdir(), 'meshgate-test-')), portBase: 0, logger });
}

export interface ExtraGateway {
  readonly gateway: Gateway;
  readonly addresses: GatewayAddresses;
  port(listener: string): number;
  close(): Promise<void>;
}

/** A second meshgate over the sandbox's stand-ins, from its config changed by `edit`. */
export async function startGatewayFrom(
  sandbox: Sandbox,
  edit: (config: Record<string, any>) => void,
  { logger = silent(), ...options }: { logger?: Logger; bodyBudgetBytes?: number } = {},
): Promise<ExtraGateway> {
  const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
  edit(config);
  const file = join(mkdtempSync(join(tmpdir(), 'meshgate-config-')), 'meshgate.yaml');
  writeFileSync(file, stringify(config));
  const gateway = buildGateway(loadConfig(file), { logger, ...options });
  const addresses = await gateway.listen();
  return {
    gateway,
    addresses,
    port: (listener) => {
      const address = addresses.listeners[listener];
      if (!address) throw new Error(`no listener ${listener}`);
      return address.port;
    },
    close: () => gateway.close(0),
  };
}

/** A tenant of a raw config (as startGatewayFrom's `edit` gets it) and one of its clusters, to change in place. */
export function configCluster(config: Record<string, any>, tenantId: string, clusterId: string): { tenant: Record<string, any>; cluster: Record<string, any> } {
  const tenant = (config.tenants as Record<string, any>[]).find((t) => t.id === tenantId);
  const cluster = (tenant?.clusters as Record<string, any>[] | undefined)?.find((c) => c.id === clusterId);
  if (!tenant || !cluster) throw new Error(`the config has no cluster ${tenantId}/${clusterId}`);
  return { tenant, cluster };
}

export const admissionReview = (uid: string): string => JSON.stringify(sampleAdmissionReview(uid));

/** Every request the stand-in istiods received, cleared after reading. */
export function drainIstiodRequests(sandbox: Sandbox): Map<string, RecordedRequest[]> {
  const seen = new Map<string, RecordedRequest[]>();
  for (const [tenant, istiod] of sandbox.istiods) seen.set(tenant, istiod.requests.splice(0));
  return seen;
}

/** A sandbox tenant's endpoints and credentials (sandbox.json's `tenants.<id>`). */
export function tenantOf(sandbox: Sandbox, id: 'acme' | 'globex'): SandboxTenantInfo {
  const tenant = sandbox.info.tenants[id];
  if (!tenant) throw new Error(`the sandbox has no tenant ${id}`);
  return tenant;
}

/** Asserts that no stand-in istiod received anything since the last drain. */
export function expectNothingReachedIstiod(sandbox: Sandbox): void {
  expect([...drainIstiodRequests(sandbox).values()].flat().map((r) => `${r.method} ${r.url}`)).toEqual([]);
}
