/** `meshgate serve`, `meshgate check` and `meshgate crd`. */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';
import { ConfigError } from '../config/issues.js';
import { loadConfig, loadConfigText, type LoadedConfig } from '../config/load.js';
import { startServing } from '../gateway/serve.js';
import { defaultWorkers, isWorker, reportServing, runPrimary, WORKER_SLOT_ENV } from '../gateway/workers.js';
import { checkAuditFile, createAuditFile, workerAuditFile, type AuditFile } from '../observability/audit-file.js';
import { createLogger } from '../observability/logger.js';
import { weaknesses } from '../listener/tls-profile.js';
import { meshTenantCrd } from '../tenancy/crd.js';
import { admitMeshTenants, MESH_TENANT, secretReader, type MeshTenantObject } from '../tenancy/mesh-tenant.js';
import { parse, required } from './args.js';

const SERVE_USAGE = 'usage: meshgate serve --config FILE [--drain-seconds N] [--workers N]';
const CHECK_USAGE = 'usage: meshgate check --config FILE | --tenants MESHTENANTS.yaml [--config FILE]';

export async function runServe(args: readonly string[]): Promise<number> {
  const values = parse(
    args,
    {
      config: { type: 'string', short: 'c' },
      'drain-seconds': { type: 'string', default: '10' },
      workers: { type: 'string', default: String(defaultWorkers()) },
    },
    SERVE_USAGE,
  );
  const path = resolve(required(values.config, '--config', SERVE_USAGE));
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1 || workers > 256) {
    console.error(`--workers: a whole number from 1 to 256, not "${values.workers}"\n${SERVE_USAGE}`);
    return 2;
  }
  const drainMs = Number(values['drain-seconds']) * 1000;
  const base = loadOrReport(() => loadConfig(path));
  if (!base) return 1;

  // One process, one audit file: each worker rotates a file of its own (src/observability/audit-file.ts).
  const auditConfig = base.config.logging.audit;
  const auditPath = auditConfig === undefined ? undefined : resolve(dirname(path), auditConfig.file);
  if (workers > 1 && !isWorker()) {
    if (auditPath !== undefined) {
      try {
        for (let slot = 1; slot <= workers; slot++) checkAuditFile(workerAuditFile(auditPath, slot));
      } catch (err) {
        console.error((err as Error).message);
        return 1;
      }
    }
    const logger = createLogger(base.config.logging.level).child({ role: 'primary' });
    return runPrimary({ workers, base, logger, drainMs });
  }

  let audit: AuditFile | undefined;
  if (auditConfig !== undefined && auditPath !== undefined) {
    const slot = Number(process.env[WORKER_SLOT_ENV]);
    try {
      audit = createAuditFile({
        file: isWorker() && Number.isInteger(slot) ? workerAuditFile(auditPath, slot) : auditPath,
        maxSize: auditConfig.maxSize,
        maxFiles: auditConfig.maxFiles,
        onError: (err) => console.error(`meshgate: audit file: ${err.message}`),
      });
    } catch (err) {
      console.error((err as Error).message);
      return 1;
    }
  }
  const root = audit === undefined ? undefined : createLogger(base.config.logging.level, undefined, undefined, audit);
  const running = await startServing(path, base, loadOrReport, { worker: isWorker(), ...(root ? { logger: root } : {}) });
  if (!running) {
    await audit?.close();
    return 1;
  }
  const { gateway } = running;
  const { logger } = gateway;
  if (isWorker()) reportServing(gateway.metrics.registry, running.addresses.listeners);

  await new Promise<void>((resolveStop) => {
    let stopping = false;
    // Once: a second signal, or the disconnect a worker makes itself on its way out, is not a second drain.
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal, drainMs }, 'draining');
      resolveStop();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    // A worker whose primary is gone has no one to answer to.
    if (isWorker()) process.once('disconnect', () => stop('disconnect'));
  });
  running.close();
  await gateway.close(Number.isFinite(drainMs) ? drainMs : 10_000);
  logger.info('stopped');
  logger.flush();
  await audit?.close();
  // The channel to the primary would keep a worker alive.
  if (isWorker()) process.disconnect();
  return 0;
}

export function runCheck(args: readonly string[]): number {
  const values = parse(args, { config: { type: 'string', short: 'c' }, tenants: { type: 'string' } }, CHECK_USAGE);
  if (values.tenants !== undefined) return checkMeshTenants(values.tenants, values.config);
  const loaded = loadOrReport(() => loadConfig(required(values.config, '--config', CHECK_USAGE)));
  if (!loaded) return 1;
  const { config } = loaded;
  const listeners = Object.entries(config.listeners).map(([name, l]) => `${name} ${l.host}:${l.port} [${l.planes.join(', ')}]`);
  console.log(`${loaded.source}: ok`);
  const kubernetes = config.tenantSource?.kubernetes;
  console.log(
    kubernetes
      ? `  tenants:   MeshTenant resources in namespace ${kubernetes.namespace} (check them with --tenants)`
      : `  tenants:   ${config.tenants.map((t) => t.id).join(', ')}`,
  );
  console.log(`  listeners: ${listeners.join('; ')}`);
  console.log(`  admin:     ${config.admin.host}:${config.admin.port}`);
  // Weak but valid choices are the operator's to make: said, not refused.
  for (const [name, listener] of Object.entries(config.listeners)) {
    for (const weakness of weaknesses(listener.tls)) console.log(`warning: listeners.${name}.tls: ${weakness}`);
  }
  return 0;
}

/** A config for checking MeshTenants without one: every setting at its default. */
const DEFAULT_CONFIG = stringify({
  listeners: { xds: { port: 15012, planes: ['xds'] }, webhook: { port: 15017, planes: ['webhook'] }, api: { port: 6443, planes: ['debug', 'kube'] } },
  tenantSource: { kubernetes: { namespace: 'meshgate' } },
});

/**
 * Checks MeshTenant YAML as meshgate would serve it: each alone, then together. Secrets in the
 * same YAML are used for the references; a reference to a Secret that is not there is reported.
 */
function checkMeshTenants(tenantsFile: string, configFile: string | undefined): number {
  let documents: unknown[];
  try {
    documents = parseAllDocuments(readFileSync(tenantsFile, 'utf8')).map((doc) => doc.toJS() as unknown);
  } catch (err) {
    console.error(`${tenantsFile}: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  const objects = documents.filter(isObject);
  const tenants = objects.filter((o) => o.kind === MESH_TENANT.kind) as MeshTenantObject[];
  const secrets = new Map(
    objects
      .filter((o) => o.kind === 'Secret')
      .map((o) => {
        const metadata = (o.metadata ?? {}) as { name?: unknown; labels?: Record<string, string> };
        return [String(metadata.name), { metadata: { labels: metadata.labels ?? {} }, data: secretData(o) }] as const;
      }),
  );
  const namespace = tenants[0]?.metadata?.namespace ?? 'meshgate';
  const reader = (tenant: unknown) => secretReader(namespace, tenant, (name) => secrets.get(name));
  const source = configFile === undefined ? resolve('meshgate-defaults.yaml') : resolve(configFile);
  const text = configFile === undefined ? DEFAULT_CONFIG : readFileSync(source, 'utf8');
  if (tenants.length === 0) {
    console.error(`${tenantsFile}: no ${MESH_TENANT.kind} in it`);
    return 1;
  }
  let problems = 0;
  try {
    const { accepted, problems: refused } = admitMeshTenants(tenants, (list) => loadConfigText(text, source, { tenants: list, reader }));
    for (const tenant of tenants) {
      const name = tenant.metadata?.name ?? '';
      const problem = refused.get(name);
      if (problem === undefined) console.log(`${MESH_TENANT.kind} ${name}: ok`);
      else {
        problems++;
        console.log(`${MESH_TENANT.kind} ${name}: invalid\n  ${problem.split('; ').join('\n  ')}`);
      }
    }
    console.log(`${accepted.length} of ${tenants.length} would be served`);
  } catch (err) {
    console.error(err instanceof ConfigError ? err.message : String(err));
    return 1;
  }
  return problems === 0 ? 0 : 1;
}

export function runCrd(): number {
  process.stdout.write(`# The MeshTenant CustomResourceDefinition (meshgate crd)\n${stringify(meshTenantCrd(), { aliasDuplicateObjects: false, lineWidth: 0 })}`);
  return 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A Secret's keys as the API server stores them: `data` in base64, `stringData` folded in. */
function secretData(secret: Record<string, unknown>): Record<string, string> {
  const data = { ...(secret.data as Record<string, string> | undefined) };
  for (const [key, value] of Object.entries((secret.stringData as Record<string, string> | undefined) ?? {})) {
    data[key] = Buffer.from(value, 'utf8').toString('base64');
  }
  return data;
}

function loadOrReport(load: () => LoadedConfig): LoadedConfig | undefined {
  try {
    return load();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      return undefined;
    }
    throw err;
  }
}
