/**
 * TLS handshake failures, logged at info: which listener, the server name the client asked for,
 * where it came from, and why OpenSSL (or the socket) gave up. A scanner or a misconfigured client
 * can fail thousands of handshakes a second, so the lines are rate-limited per listener with a
 * token bucket; what is left out is counted and said in one line per interval
 * ("TLS handshake failures not logged", `suppressed`). meshgate_tls_handshake_errors_total counts
 * every failure, logged or not.
 */
import { createTokenBucket } from '../policy/token-bucket.js';
import { redactTokens, type Logger } from './logger.js';

export interface HandshakeFailure {
  /** The SNI the client sent, if it got that far. */
  readonly sni: string | undefined;
  readonly remote: string | undefined;
  readonly err: Error & { code?: string; reason?: string };
}

export interface HandshakeLogOptions {
  /** Lines per second, after the burst. */
  readonly rate?: number;
  readonly burst?: number;
  /** How often the count of lines left out is logged, while there is one. */
  readonly reportMs?: number;
}

export interface HandshakeLog {
  failed(failure: HandshakeFailure): void;
  /** Logs the count left out so far, if any, and stops the timer. */
  close(): void;
}

export const HANDSHAKE_LOG_RATE = 10;
export const HANDSHAKE_LOG_BURST = 20;

export function createHandshakeLog(listener: string, logger: Logger, options: HandshakeLogOptions = {}): HandshakeLog {
  const bucket = createTokenBucket(options.rate ?? HANDSHAKE_LOG_RATE, options.burst ?? HANDSHAKE_LOG_BURST);
  const reportMs = options.reportMs ?? 1_000;
  let suppressed = 0;
  let timer: NodeJS.Timeout | undefined;
  const report = (): void => {
    timer = undefined;
    if (suppressed === 0) return;
    logger.info({ listener, suppressed }, 'TLS handshake failures not logged');
    suppressed = 0;
  };
  return {
    failed({ sni, remote, err }) {
      if (!bucket.take()) {
        suppressed++;
        timer ??= setTimeout(report, reportMs).unref();
        return;
      }
      // The SNI is the client's own text: nothing token-shaped in it reaches the log either.
      logger.info({ listener, sni: sni === undefined ? undefined : redactTokens(sni), remote, reason: describe(err), code: err.code }, 'TLS handshake failed');
    },
    close() {
      clearTimeout(timer);
      report();
    },
  };
}

/**
 * OpenSSL's reason ("no shared cipher", "unsupported protocol", "tlsv1 alert unknown ca"), or the
 * socket's ("socket hang up", the handshake timeout). Never the whole OpenSSL error string: it
 * carries addresses and source lines, and nothing the client sent.
 */
function describe(err: HandshakeFailure['err']): string {
  if (typeof err.reason === 'string' && err.reason !== '') return err.reason;
  return err.message.split('\n')[0] ?? err.message;
}
