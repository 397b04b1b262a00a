/**
 * Structured logs (pino). Credentials are redacted by the logger itself, so that a careless log
 * call cannot leak one: Authorization and cookie headers, tokens, keys.
 */
import { pino, type Logger, type DestinationStream } from 'pino';
import type { AuditFile } from './audit-file.js';

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
 * What stdout may hold back before lines are dropped: a reader that stops reading (a stuck log
 * shipper, a full pipe) must cost a bounded amount of memory, and never stall requests.
 */
const MAX_BUFFERED_LOG_BYTES = 16 * 1024 * 1024;

let droppedLines = 0;
/** Log lines dropped because stdout was not being read: meshgate_log_lines_dropped_total. */
export function droppedLogLines(): number {
  return droppedLines;
}

/**
 * Without a destination, logs go to stdout through a 4 KiB buffer written asynchronously: one
 * write for many lines instead of a blocking write per line. The buffer is also written every
 * 250 ms, so that at low traffic a line never waits for the buffer to fill. When 16 MiB are
 * waiting, new lines are dropped and counted. `flush()` before exiting.
 *
 * With an audit file, the audit lines (see `isAuditLine`) also go to that file, whatever the
 * level: an audit trail does not depend on how talkative the rest of the log is set to be.
 */
export function createLogger(level: string, destination?: DestinationStream, maxBufferedBytes = MAX_BUFFERED_LOG_BYTES, audit?: AuditFile): Logger {
  let target = destination;
  let flushTarget: ((callback: (err?: Error) => void) => void) | undefined;
  if (target === undefined) {
    const stdout = pino.destination({ dest: 1, sync: false, minLength: 4096, maxLength: maxBufferedBytes });
    stdout.on('drop', () => droppedLines++);
    setInterval(() => stdout.flush(), FLUSH_INTERVAL_MS).unref();
    target = stdout;
    flushTarget = (callback) => stdout.flush(callback);
  }
  const options = {
    level,
    base: { service: 'meshgate' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (audit === undefined) return pino(options, target);
  return pino({ ...options, level: lowerLevel(level, 'info') }, teeAudit(target, level, audit, flushTarget));
}

/**
 * The messages that make the audit trail: one line per request when it is over (access-log.ts),
 * and the start of each kube long-running request (watch, exec, attach, port-forward), whose end
 * is its request line, possibly hours later.
 */
export const AUDIT_MESSAGES = ['request', 'request failed inside meshgate', 'kube long-running request started'] as const;
const AUDIT_ENDINGS = AUDIT_MESSAGES.map((message) => `"msg":${JSON.stringify(message)}}\n`);

/**
 * Whether a line pino wrote is an audit line. pino writes the message last, and anything a client
 * sent is escaped inside a JSON string before it, so the line's ending says which message it is.
 */
export function isAuditLine(line: string): boolean {
  return AUDIT_ENDINGS.some((ending) => line.endsWith(ending));
}

function lowerLevel(a: string, b: string): string {
  const value = (label: string): number => (label === 'silent' ? Infinity : (pino.levels.values[label] ?? 30));
  return value(a) <= value(b) ? a : b;
}

/** The log's own stream at the configured level, and the audit file for audit lines at any level. */
function teeAudit(
  target: DestinationStream,
  level: string,
  audit: AuditFile,
  flushTarget: ((callback: (err?: Error) => void) => void) | undefined,
): DestinationStream & { flush(callback?: (err?: Error) => void): void } {
  const threshold = level === 'silent' ? Infinity : (pino.levels.values[level] ?? 30);
  return {
    write(line: string) {
      if (levelOfLine(line) >= threshold) target.write(line);
      if (isAuditLine(line)) audit.write(line);
    },
    flush(callback) {
      const done = (): void => audit.flush(callback);
      if (flushTarget) flushTarget(() => done());
      else done();
    },
  };
}

/** The numeric level of a line written with the `{"level":"<label>"` formatter above. */
function levelOfLine(line: string): number {
  const start = '{"level":"'.length;
  const end = line.indexOf('"', start);
  return pino.levels.values[line.slice(start, end)] ?? Infinity;
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
 * A request target as it may be logged: every credential in it replaced by `[redacted]`, wherever
 * it stands and however it is spelled, since a refused request is logged as it was sent.
 *  - A path key: the segment after any segment that means `k` (`/k/<key>`, `//k/<key>`,
 *    `/./k/<key>`, `/%6B/<key>`, `\k\<key>`, `%2Fk%2F<key>`, and every one of several).
 *  - A token: anything shaped like a JWT, in the path or the query.
 *  - A query parameter named like a credential (`access_token`, `token`, `key`, …): its value.
 */
export function redactTarget(target: string): string {
  const query = target.search(/[?#]/);
  const path = query === -1 ? target : target.slice(0, query);
  const rest = query === -1 ? '' : target.slice(query);
  return redactTokens(redactPathKeys(path) + redactQuery(rest));
}

/** Anything shaped like a JWT (a base64url JSON header, a payload, a signature) in free text. */
export function redactTokens(text: string): string {
  return text.replace(JWT_SHAPE, '[redacted]');
}

const JWT_SHAPE = /ey[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/g;
const SEPARATOR = /(\/|\\|%2f|%5c)/i;
const CREDENTIAL_PARAMS = new Set(['accesstoken', 'token', 'idtoken', 'jwt', 'bearer', 'key', 'apikey', 'password', 'secret', 'authorization', 'auth', 'k']);

function redactPathKeys(path: string): string {
  // Separators are kept as their own parts, so that the path is put back together as it came.
  const parts = path.split(SEPARATOR);
  let afterK = false;
  for (let i = 0; i < parts.length; i += 2) {
    const segment = decodeLoosely(parts[i] ?? '');
    if (afterK && segment !== '' && segment !== '.') {
      parts[i] = '[redacted]';
      afterK = false;
    } else if (segment.toLowerCase() === 'k') {
      afterK = true;
    }
  }
  return parts.join('');
}

function redactQuery(query: string): string {
  return query.replace(/([?&;#])([^=&;#]*)=([^&;#]*)/g, (whole, lead: string, name: string) =>
    CREDENTIAL_PARAMS.has(decodeLoosely(name).toLowerCase().replace(/[-_]/g, '')) ? `${lead}${name}=[redacted]` : whole,
  );
}

/** Percent-decoding that never throws: a malformed escape stays as it is. */
function decodeLoosely(text: string): string {
  if (!text.includes('%')) return text;
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
