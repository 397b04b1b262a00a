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
  options: { readonly logger?: Logger } = {},
): Promise<Serving | undefined> {
  const logger = options.logger ?? createLogger(base.config.logging.level);
  let changed: (source: string, reason: string) => void = () => undefined;
  /** MeshTenants refused are counted in the gateway's metrics, once it exists; before, here. */
  const refusals: { early: number; metrics?: Gateway['metrics'] } = { early: 0 };
  const kubernetesConfig = base.config.tenantSource?.kubernetes;
  let kubernetes: KubernetesSource | undefined;
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
    await kubernetes.start({ onChange: (reason) => changed('kubernetes', reason) });
  }
  const loadAll = (): LoadedConfig => loadConfig(path, kubernetes?.overlay());
  const loaded = loadOrReport(loadAll);
  if (!loaded) {
    kubernetes?.close();
    return undefined;
  }

  const serving = buildGateway(loaded, { logger });
  const { metrics } = serving;
  refusals.metrics = metrics;
  if (refusals.early > 0) metrics.tenantSourceErrors.inc({ source: 'kubernetes' }, refusals.early);
  const addresses = await serving.listen();

  changed = (source, reason) => {
    try {
      serving.reload(loadAll);
      logger.info({ source, reason }, 'tenants reloaded');
    } catch (err) {
      metrics.tenantSourceErrors.inc({ source });
      logger.error({ source, reason, err: err instanceof ConfigError ? err.message : err }, 'config reload failed; keeping the config in use');
    }
  };
  const sources: TenantSource[] = kubernetes ? [kubernetes] : [];
  if (loaded.config.reload.watch) {
    const file = createFileSource({
      path,
      // The files in use, on disk: a MeshTenant's Secret keys are the Kubernetes source's to watch.
      files: () => serving.current().files.paths().filter((p) => !p.startsWith('secret:')),
      pollIntervalMs: loaded.config.reload.pollInterval,
    });
    await file.start({ onChange: (reason) => changed('file', reason) });
    sources.push(file);
  }
  const onHangup = (): void => changed('file', 'SIGHUP');
  process.on('SIGHUP', onHangup);
  return {
    gateway: serving,
    addresses,
    kubernetes,
    reload: (source, reason) => changed(source, reason),
    close() {
      process.off('SIGHUP', onHangup);
      for (const source of sources) source.close();
    },
  };
}

