/**
 * `meshgate serve` without the process around it (signals aside): the gateway fed by its tenant
 * sources. Tests start it as the CLI does.
 */
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../config/issues.js';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { createFileSource } from '../tenancy/file-source.js';
import { createKubernetesSource, type KubernetesSource } from '../tenancy/kubernetes-source.js';
import type { TenantSource } from '../tenancy/source.js';
import { buildGateway, type Gateway, type GatewayAddresses } from './build.js';

export interface Serving {
  readonly gateway: Gateway;
  readonly addresses: GatewayAddresses;
  /** The MeshTenant source, when the config has one. */
  readonly kubernetes: KubernetesSource | undefined;
  /** Loads the file with every source's tenants and swaps it in (what SIGHUP does). */
  reload(source: string, reason: string): void;
  /** Stops the sources (the gateway is closed by its owner, after its drain). */
  close(): void;
}

/**
 * The gateway, fed by its tenant sources: the file (watched unless `reload.watch` is off) and,
 * when configured, MeshTenant resources. Any change, and SIGHUP, loads the file with every
 * source's tenants; what fails to load is logged and counted, and the config in use stays.
 */
export async function startServing(
  path: string,
  base: LoadedConfig,
  loadOrReport: (load: () => LoadedConfig) => LoadedConfig | undefined,
  options: { readonly logger?: Logger; readonly worker?: boolean } = {},
): Promise<Serving | undefined> {
  const root = options.logger ?? createLogger(base.config.logging.level);
  const logger = options.worker === true ? root.child({ role: 'worker', pid: process.pid }) : root;
  // Changes that arrive before the gateway can take them are remembered, and applied once it can.
  let missed: [string, string] | undefined;
  let changed: (source: string, reason: string) => void = (source, reason) => (missed ??= [source, reason]);
  /** MeshTenants refused are counted in the gateway's metrics, once it exists; before, here. */
  const refusals: { early: number; metrics?: Gateway['metrics'] } = { early: 0 };
  const sources: TenantSource[] = [];
  const kubernetesConfig = base.config.tenantSource?.kubernetes;
  let kubernetes: KubernetesSource | undefined;
  let serving: Gateway | undefined;
  let addresses: GatewayAddresses;
  try {
    if (kubernetesConfig) {
      kubernetes = createKubernetesSource({
        path,
        config: kubernetesConfig,
        kubeconfig: kubernetesConfig.kubeconfig === undefined ? undefined : resolve(dirname(path), kubernetesConfig.kubeconfig),
        logger,
        onInvalid: () => {
          if (refusals.metrics) refusals.metrics.tenantSourceErrors.inc({ source: 'kubernetes' });
          else refusals.early++;
        },
      });
      sources.push(kubernetes);
      await kubernetes.start({ onChange: (reason) => changed('kubernetes', reason) });
    }
    // Watched from before the first load: an edit from here on is loaded, or seen as a change.
    if (base.config.reload.watch) {
      const file = createFileSource({
        path,
        // The files in use, on disk: a MeshTenant's Secret keys are the Kubernetes source's to watch.
        files: () => (serving ? serving.current().files : base.files).paths().filter((p) => !p.startsWith('secret:')),
        pollIntervalMs: base.config.reload.pollInterval,
      });
      sources.push(file);
      await file.start({ onChange: (reason) => changed('file', reason) });
    }
    const loaded = loadOrReport(loadAll);
    if (!loaded) {
      for (const source of sources) source.close();
      return undefined;
    }
    serving = buildGateway(loaded, { logger, worker: options.worker === true });
    addresses = await serving.listen();
  } catch (err) {
    // Open watches would keep the process alive: close them, then fail.
    for (const source of sources) source.close();
    await serving?.close(0);
    throw err;
  }
  const gateway = serving;
  const { metrics } = gateway;
  refusals.metrics = metrics;
  if (refusals.early > 0) metrics.tenantSourceErrors.inc({ source: 'kubernetes' }, refusals.early);

  changed = (source, reason) => {
    // A new config file may change what MeshTenants are valid: judge them again first.
    if (source === 'file') kubernetes?.refresh();
    try {
      gateway.reload(loadAll);
      logger.info({ source, reason }, 'tenants reloaded');
    } catch (err) {
      metrics.tenantSourceErrors.inc({ source });
      logger.error({ source, reason, err: err instanceof ConfigError ? err.message : err }, 'config reload failed; keeping the config in use');
    }
  };
  if (missed) changed(...missed);

  function loadAll(): LoadedConfig {
    const next = loadConfig(path, kubernetes?.overlay());
    // Where tenants come from is decided at start: a file that changed it would otherwise drop
    // every tenant (or ignore every MeshTenant) on reload.
    if (JSON.stringify(next.config.tenantSource ?? null) !== JSON.stringify(base.config.tenantSource ?? null)) {
      throw new ConfigError(path, [{ path: ['tenantSource'], message: 'tenantSource is read at start only: restart meshgate to change it' }]);
    }
    return next;
  }

  const onHangup = (): void => changed('file', 'SIGHUP');
  process.on('SIGHUP', onHangup);
  return {
    gateway,
    addresses,
    kubernetes,
    reload: (source, reason) => changed(source, reason),
    close() {
      process.off('SIGHUP', onHangup);
      for (const source of sources) source.close();
    },
  };
}

