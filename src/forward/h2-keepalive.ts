/**
 * HTTP/2 keepalive: a PING every `intervalMs`; a session whose peer has not answered within
 * `timeoutMs` is destroyed (a dead peer, or a middlebox that dropped the connection). Stops by
 * itself when the session closes. Used by the istiod and API server pools, by meshgate's end of an
 * agent tunnel, and by the agent's end.
 */
import type { Http2Session } from 'node:http2';

export interface KeepaliveOptions {
  readonly intervalMs: number;
  readonly timeoutMs: number;
  /** Skips a round while true (a pooled session with no streams is left to its idle timer). */
  readonly idle?: () => boolean;
  /** Called before a session that missed its PING is destroyed. */
  readonly onTimeout?: () => void;
}

export function keepSessionAlive(session: Http2Session, options: KeepaliveOptions): void {
  const keepalive = setInterval(() => {
    if (session.closed || session.destroyed || options.idle?.() === true) return;
    const deadline = setTimeout(() => {
      options.onTimeout?.();
      session.destroy();
    }, options.timeoutMs);
    deadline.unref();
    session.ping(() => clearTimeout(deadline));
  }, options.intervalMs);
  keepalive.unref();
  session.once('close', () => clearInterval(keepalive));
}
