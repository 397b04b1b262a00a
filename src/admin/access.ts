/**
 * Who may read the admin listener beyond /healthz and /readyz: a caller whose socket address is in
 * one of `admin.access.sourceCIDRs` and whose Host is an IP, `localhost` or one of
 * `admin.access.hostNames`, or one that sends `Authorization: Bearer <token>` with the
 * token in `admin.access.bearerTokenFile`. The token is compared in constant time (both sides
 * hashed first, so that neither the content nor the length leaks through timing).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { LoadedConfig } from '../config/load.js';
import { createSourceCheck } from '../policy/source-address.js';

export interface AdminAccessSettings {
  readonly sourceCIDRs: readonly string[];
  /** Host names (besides IP literals and `localhost`) a caller admitted by its address may use. */
  readonly hostNames?: readonly string[] | undefined;
  /** The bearer token's text, already trimmed; undefined: no token is accepted. */
  readonly bearerToken?: string | undefined;
}

/** Whether a request may read the protected admin paths. */
export type AdminAccess = (req: IncomingMessage) => boolean;

export function createAdminAccess(settings: AdminAccessSettings): AdminAccess {
  const checkSource = createSourceCheck(settings.sourceCIDRs);
  const isFromAllowedSource = (address: string | undefined): boolean => {
    try {
      checkSource?.(address);
      return checkSource !== undefined;
    } catch {
      return false;
    }
  };
  const expected = settings.bearerToken === undefined ? undefined : digest(settings.bearerToken);
  const names = new Set(['localhost', ...(settings.hostNames ?? []).map((n) => n.toLowerCase())]);
  return (req) => {
    // An address is trusted only under a name that is not the caller's to choose: a web page the
    // operator visits can point its own name at 127.0.0.1 (DNS rebinding) and read through a
    // `kubectl port-forward`, but it cannot send this listener's IP or `localhost` as its Host.
    if (isFromAllowedSource(req.socket.remoteAddress) && isTrustedHost(req.headers.host, names)) return true;
    if (expected === undefined) return false;
    const presented = bearerToken(req.headers.authorization);
    return presented !== undefined && timingSafeEqual(digest(presented), expected);
  };
}

/**
 * The admin access of a loaded config. The loader read and checked the token file with the rest
 * (`meshgate check` reports a missing or empty one); it is taken once, here: a rotated token takes
 * a restart (a reload does not change admin settings).
 */
export function adminAccessSettings(loaded: LoadedConfig): AdminAccessSettings {
  const { sourceCIDRs, hostNames, bearerTokenFile } = loaded.config.admin.access;
  return { sourceCIDRs, hostNames, ...(bearerTokenFile === undefined ? {} : { bearerToken: loaded.files.text(bearerTokenFile).trim() }) };
}

/** Whether the Host header is an IP literal, `localhost` or a configured name (any port). */
function isTrustedHost(header: string | undefined, names: ReadonlySet<string>): boolean {
  if (header === undefined) return false;
  const host = /^\[([^\]]+)\](?::\d+)?$/.exec(header)?.[1] ?? /^([^:]+)(?::\d+)?$/.exec(header)?.[1];
  if (host === undefined) return false;
  return isIP(host) !== 0 || names.has(host.toLowerCase());
}

function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer +(\S+) *$/i.exec(header ?? '');
  return match?.[1];
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
