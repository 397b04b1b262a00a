/**
 * Structured logs (pino). Credentials are redacted by the logger itself, so that a careless log
 * call cannot leak one: Authorization and cookie headers, tokens, keys.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const REDACTED_PATHS = [
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

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'meshgate' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/** `/k/<key>/inject/…` → `/k/[redacted]/inject/…`: a path key is a credential. */
export function redactPath(target: string): string {
  return target.replace(/^\/k\/[^/?]+/, '/k/[redacted]');
}
