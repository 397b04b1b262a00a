/**
 * Who may read the admin listener beyond /healthz and /readyz: a caller whose socket address is in
 * one of `admin.access.sourceCIDRs`, or one that sends `Authorization: Bearer <token>` with the
 * token in `admin.access.bearerTokenFile`. The token is compared in constant time (both sides
 * hashed first, so that neither the content nor the length leaks through timing).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { LoadedConfig } from '../config/load.js';
import { createSourceCheck } from '../policy/source-address.js';

export interface AdminAccessSettings {
  readonly sourceCIDRs: readonly string[];
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
  return (req) => {
    if (isFromAllowedSource(req.socket.remoteAddress)) return true;
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
  const { sourceCIDRs, bearerTokenFile } = loaded.config.admin.access;
  if (bearerTokenFile === undefined) return { sourceCIDRs };
  return { sourceCIDRs, bearerToken: loaded.files.text(bearerTokenFile).trim() };
}

function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer +(\S+) *$/i.exec(header ?? '');
  return match?.[1];
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}
