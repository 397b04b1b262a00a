/**
 * Structured logs (pino). Credentials are redacted by the logger itself, so that a careless log
 * call cannot leak one: Authorization and cookie headers, tokens, keys.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

const REDACTED_PATHS = [
  'authorization',
  'token',
  'key',
  'cookie',
  '*.authorization',
  '*.token',
  '*.key',
  '*.cookie',
  'headers.authorization',
  'headers.cookie',
  '*.headers.authorization',
  '*.headers.cookie',
];

/** How long a log line may wait in the buffer before it is written. */
const FLUSH_INTERVAL_MS = 250;

/**
 * Without a destination, logs go to stdout through a 4 KiB buffer written asynchronously: one
 * write for many lines instead of a blocking write per line. The buffer is also written every
 * 250 ms, so that at low traffic a line never waits for the buffer to fill. `flush()` before exiting.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  let target = destination;
  if (target === undefined) {
    const stdout = pino.destination({ dest: 1, sync: false, minLength: 4096 });
    setInterval(() => stdout.flush(), FLUSH_INTERVAL_MS).unref();
    target = stdout;
  }
  return pino(
    {
      level,
      base: { service: 'meshgate' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    target,
  );
}

/**
 * The access log: one line per request, written from fields meshgate computes itself (the path
 * with any key redacted, the subject, codes), so it skips the generic redaction walk.
 * test/observability.test.ts checks that no credential reaches it.
 */
export function accessLogger(logger: Logger): Logger {
  return logger.child({}, { redact: [] });
}

/**
 * `/k/<key>/inject/…` → `/k/[redacted]/inject/…`: a path key is a credential. Absolute-form
 * targets (`https://host/k/<key>/…`) are refused, but logged, so they are redacted too.
 */
export function redactPath(target: string): string {
  return target.replace(/^((?:[a-z][a-z0-9+.-]*:\/\/[^/]*)?\/k\/)[^/?#]*/i, '$1[redacted]');
}
