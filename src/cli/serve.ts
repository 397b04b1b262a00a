/** `meshgate serve` and `meshgate check`. */
import { ConfigError } from '../config/issues.js';
import { loadConfig, type LoadedConfig } from '../config/load.js';
import { buildGateway } from '../gateway/build.js';
import { parse, required } from './args.js';

const SERVE_USAGE = 'usage: meshgate serve --config FILE [--drain-seconds N]';
const CHECK_USAGE = 'usage: meshgate check --config FILE';

export async function runServe(args: readonly string[]): Promise<number> {
  const values = parse(
    args,
    { config: { type: 'string', short: 'c' }, 'drain-seconds': { type: 'string', default: '10' } },
    SERVE_USAGE,
  );
  const path = required(values.config, '--config', SERVE_USAGE);
  const loaded = loadOrReport(path);
  if (!loaded) return 1;

  const gateway = buildGateway(loaded);
  const { logger } = gateway;
  await gateway.listen();

  process.on('SIGHUP', () => {
    try {
      gateway.reload(() => loadConfig(path));
    } catch (err) {
      logger.error({ err: err instanceof ConfigError ? err.message : err }, 'config reload failed; keeping the config in use');
    }
  });
  const drainMs = Number(values['drain-seconds']) * 1000;
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal, drainMs }, 'draining');
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await gateway.close(Number.isFinite(drainMs) ? drainMs : 10_000);
  logger.info('stopped');
  logger.flush();
  return 0;
}

export function runCheck(args: readonly string[]): number {
  const values = parse(args, { config: { type: 'string', short: 'c' } }, CHECK_USAGE);
  const loaded = loadOrReport(required(values.config, '--config', CHECK_USAGE));
  if (!loaded) return 1;
  const { config } = loaded;
  const listeners = Object.entries(config.listeners).map(([name, l]) => `${name} ${l.host}:${l.port} [${l.planes.join(', ')}]`);
  console.log(`${loaded.source}: ok`);
  console.log(`  tenants:   ${config.tenants.map((t) => t.id).join(', ')}`);
  console.log(`  listeners: ${listeners.join('; ')}`);
  console.log(`  admin:     ${config.admin.host}:${config.admin.port}`);
  return 0;
}

function loadOrReport(path: string): LoadedConfig | undefined {
  try {
    return loadConfig(path);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      return undefined;
    }
    throw err;
  }
}
