/**
 * `meshgate sandbox`: starts the sandbox, prints commands to try, then shows each request as
 * meshgate and the stand-in istiods see it. Full JSON logs go to <dir>/meshgate.log.
 */
import { createWriteStream, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ConfigError } from '../config/issues.js';
import { loadConfig } from '../config/load.js';
import { createLogger } from '../observability/logger.js';
import { sandboxGuide } from '../sandbox/guide.js';
import { startSandbox } from '../sandbox/sandbox.js';
import { UsageError, parse } from './args.js';

const USAGE = 'usage: meshgate sandbox [--dir DIR] [--port-base PORT]   (ports: admin PORT, xds +1, webhook +2, api +3; 0 = ephemeral)';

export async function runSandbox(args: readonly string[]): Promise<number> {
  const values = parse(args, { dir: { type: 'string', default: '.meshgate-sandbox' }, 'port-base': { type: 'string', default: '18000' } }, USAGE);
  const portBase = Number(values['port-base']);
  if (!Number.isInteger(portBase) || portBase < 0 || portBase > 65532) throw new UsageError(`--port-base must be 0 to 65532\n\n${USAGE}`);
  const dir = resolve(values.dir);

  mkdirSync(dir, { recursive: true });
  const logFile = createWriteStream(join(dir, 'meshgate.log'), { flags: 'a' });
  const logger = createLogger('info', {
    write(line: string) {
      logFile.write(line);
      const summary = summarize(line);
      if (summary !== undefined) console.log(summary);
    },
  });

  // Signals are handled from the start: a Ctrl-C while starting still stops everything cleanly.
  const state = { stopping: false };
  const stopped = new Promise<void>((done) => {
    const stop = (): void => {
      state.stopping = true;
      done();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });

  console.log(`starting the meshgate sandbox in ${dir} …`);
  const sandbox = await startSandbox({
    dir,
    portBase,
    logger,
    onIstiodRequest: (tenant, request) =>
      console.log(`  ↳ istiod-${tenant} received ${request.method} ${request.url}${request.headers.clusterid ? ` (clusterid ${String(request.headers.clusterid)})` : ''}`),
    onIstiodCall: (tenant, call) => {
      const clusterid = call.metadata.clusterid;
      console.log(
        `  ↳ istiod-${tenant} received ${call.method}${call.nodeId ? ` from ${call.nodeId}` : ''}${typeof clusterid === 'string' ? ` (clusterid ${clusterid})` : ''}`,
      );
    },
  });
  if (!state.stopping) console.log(`\n${sandboxGuide(sandbox.info)}`);

  // SIGHUP reloads the config the sandbox wrote, as `meshgate serve` does; a bad edit keeps the
  // config in use. (Without a handler, SIGHUP would end the process and its stand-ins with it.)
  const reload = (): void => {
    try {
      sandbox.gateway.reload(() => loadConfig(sandbox.info.config));
      console.log(`[meshgate] reloaded ${sandbox.info.config}`);
    } catch (err) {
      const reason = err instanceof ConfigError ? err.message : String(err);
      logger.error({ err: reason }, 'config reload failed; keeping the config in use');
    }
  };
  process.on('SIGHUP', reload);

  await stopped;
  process.off('SIGHUP', reload);
  console.log('\nstopping the sandbox …');
  await sandbox.close();
  logFile.end();
  console.log('stopped.');
  return 0;
}

/** One readable line per access-log entry; other log lines stay in the log file. */
function summarize(line: string): string | undefined {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (entry.msg !== 'request') return entry.level === 'error' || entry.level === 'warn' ? `[meshgate] ${String(entry.msg)}` : undefined;
  const text = (key: string): string => (typeof entry[key] === 'string' || typeof entry[key] === 'number' ? String(entry[key]) : '-');
  const who = entry.subject === undefined ? 'anonymous' : `${text('auth')} ${text('subject')}`;
  const status = entry.grpcStatus === undefined ? text('status') : `${text('status')} grpc-status ${text('grpcStatus')}`;
  return `[meshgate] ${text('tenant')} ${text('plane')} ${text('method')} ${text('path')} → ${status} ${text('outcome')} (${who}, ${text('durationMs')} ms)`;
}
