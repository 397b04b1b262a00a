/**
 * The authentication stage of one plane of one tenant: which credentials it accepts, checked in a
 * fixed order. Every credential the caller presents for an accepted method must verify; a bad one
 * fails the request even when another is good. A client certificate must verify whatever the
 * plane accepts.
 */
import type { TLSSocket } from 'node:tls';
import type { AuthMethod } from '../config/schema.js';
import { MeshgateError } from '../errors.js';
import { clientCertificateIdentity, type ClientCertificateTrust } from './client-cert.js';
import type { Identity } from './identity.js';
import { bearerToken, type TokenVerifier } from './jwt.js';
import { pathKeyIdentity, type PathKey } from './path-key.js';

export interface Presented {
  readonly socket: TLSSocket;
  readonly authorization: string | string[] | undefined;
  /** The key from a `/k/<key>/…` path, when the path had one. */
  readonly pathKey?: string | undefined;
}

export interface Authenticated {
  /** The identity the plane authorizes: certificate, else token, else path key. */
  readonly identity: Identity;
  /** A verified bearer token, when one was presented: planes that pass the caller's token on use it. */
  readonly bearer?: { readonly token: string; readonly identity: Identity };
}

export interface AuthenticatorOptions {
  readonly methods: readonly AuthMethod[];
  readonly audiences: readonly string[];
  readonly certificates: ClientCertificateTrust;
  readonly tokens: TokenVerifier;
  readonly pathKey?: PathKey | undefined;
}

export type Authenticator = (presented: Presented) => Promise<Authenticated>;

const METHOD_NAMES: Record<AuthMethod, string> = {
  clientCertificate: 'a client certificate',
  token: 'a bearer token',
  pathKey: 'a path key',
};

export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  const accepts = new Set(options.methods);
  const required = new MeshgateError('MG_ERR_AUTHN_REQUIRED', {
    message: `authentication required: present ${options.methods.map((m) => METHOD_NAMES[m]).join(' or ')}`,
  });

  return async ({ socket, authorization, pathKey }) => {
    const certificate = clientCertificateIdentity(socket, options.certificates);

    let bearer: Authenticated['bearer'];
    if (accepts.has('token')) {
      const token = bearerToken(authorization);
      if (token !== undefined) bearer = { token, identity: await options.tokens(token, options.audiences, socket.remoteAddress) };
    }

    let keyed: Identity | undefined;
    if (pathKey !== undefined) {
      keyed = accepts.has('pathKey') && options.pathKey ? pathKeyIdentity(pathKey, options.pathKey) : undefined;
      if (!keyed) throw new MeshgateError('MG_ERR_AUTHN_PATH_KEY_INVALID');
    }

    const identity = (accepts.has('clientCertificate') ? certificate : undefined) ?? bearer?.identity ?? keyed;
    if (!identity) throw required;
    return bearer ? { identity, bearer } : { identity };
  };
}
