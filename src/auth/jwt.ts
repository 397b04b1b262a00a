/**
 * Bearer JWTs, verified offline with jose against the keys of the tenant's own clusters. The
 * issuer picks the candidate clusters, but only a valid signature with that cluster's keys makes a
 * token that cluster's: issuer strings are not unique (kind and kubeadm share a default), keys are.
 * A cluster without keys is asked instead (TokenReview), after every cluster with keys said no.
 */
import { decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';
import { MeshgateError } from '../errors.js';
import type { Identity } from './identity.js';
import type { JwksSource } from './jwks.js';
import type { TokenReviewer } from './token-review.js';
import { tokenCacheKey, type TokenCache } from './token-cache.js';

/** Kubernetes service-account tokens are RS256, or ES256 with an EC signing key. Nothing else. */
export const TOKEN_ALGORITHMS = ['RS256', 'ES256'] as const;

export type TokenIssuer =
  | { readonly cluster: string; readonly issuer: string; readonly keys: JwksSource }
  | { readonly cluster: string; readonly issuer: string; readonly review: TokenReviewer };

export interface TokenVerifierOptions {
  readonly tenant: string;
  readonly issuers: readonly TokenIssuer[];
  readonly clockToleranceMs: number;
  readonly cache: TokenCache<Identity>;
}

/** `source`: the caller's address, so that one source cannot spend a cluster's TokenReview budget. */
export type TokenVerifier = (token: string, audiences: readonly string[], source?: string) => Promise<Identity>;

export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  const clockTolerance = Math.ceil(options.clockToleranceMs / 1000);

  return async (token, audiences, source) => {
    const key = tokenCacheKey(options.tenant, audiences.join('\n'), token);
    const cached = options.cache.get(key);
    if (cached) return cached;

    const unverified = readUnverified(token);
    const { issuer } = unverified;
    // Offline checks first: a cluster's API server is asked only when no keys answered.
    const candidates = options.issuers.filter((i) => i.issuer === issuer).sort((a, b) => Number('review' in a) - Number('review' in b));
    if (candidates.length === 0) {
      throw new MeshgateError('MG_ERR_AUTHN_TOKEN_ISSUER', { detail: `issuer ${JSON.stringify(issuer)} is not one of tenant ${options.tenant}'s clusters` });
    }

    let failure: MeshgateError | undefined;
    for (const candidate of candidates) {
      if ('review' in candidate) {
        try {
          // A review costs the cluster a call: what can be refused without one is refused first.
          refuseBeforeReview(unverified, audiences, options.clockToleranceMs);
          const reviewed = await candidate.review(token, audiences, source);
          const identity: Identity = {
            tenant: options.tenant,
            method: 'token',
            subject: reviewed.username,
            uris: [],
            groups: reviewed.groups.filter((g) => g !== 'system:authenticated'),
            cluster: candidate.cluster,
            ...(reviewed.expiresAt === undefined ? {} : { expiresAt: reviewed.expiresAt }),
          };
          options.cache.set(key, identity, reviewed.validUntil);
          return identity;
        } catch (err) {
          const mapped = mapJoseError(err);
          if (mapped.code !== 'MG_ERR_AUTHN_TOKEN_INVALID') throw mapped;
          failure ??= mapped;
          continue;
        }
      }
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, (header, input) => candidate.keys.getKey(header, input), {
          issuer: candidate.issuer,
          audience: [...audiences],
          algorithms: [...TOKEN_ALGORITHMS],
          clockTolerance,
          requiredClaims: ['exp', 'sub'],
        }));
      } catch (err) {
        const mapped = mapJoseError(err);
        // Another cluster with the same issuer string may hold the key: keep looking. If some
        // cluster's keys could not be had, the answer is "unavailable", never "invalid".
        if (mapped.code === 'MG_ERR_AUTHN_TOKEN_INVALID' || mapped.code === 'MG_ERR_AUTHN_JWKS_UNAVAILABLE') {
          if (!failure || mapped.code === 'MG_ERR_AUTHN_JWKS_UNAVAILABLE') failure = mapped;
          continue;
        }
        throw mapped;
      }
      const identity: Identity = {
        tenant: options.tenant,
        method: 'token',
        subject: String(payload.sub),
        uris: [],
        groups: serviceAccountGroups(String(payload.sub)),
        cluster: candidate.cluster,
        expiresAt: (payload.exp ?? 0) * 1000,
      };
      options.cache.set(key, identity, identity.expiresAt ?? 0);
      return identity;
    }
    throw failure ?? new MeshgateError('MG_ERR_AUTHN_TOKEN_INVALID');
  };
}

/** The groups Kubernetes gives a service account: `system:serviceaccounts` and that of its namespace. */
function serviceAccountGroups(subject: string): string[] {
  const match = /^system:serviceaccount:([^:]+):[^:]+$/.exec(subject);
  return match?.[1] === undefined ? [] : ['system:serviceaccounts', `system:serviceaccounts:${match[1]}`];
}

/** A token's header algorithm and claims, decoded once and not yet verified: they pick the candidate clusters and spare reviews. */
interface UnverifiedToken {
  readonly alg: unknown;
  readonly claims: JWTPayload;
  readonly issuer: string;
}

function readUnverified(token: string): UnverifiedToken {
  let alg: unknown;
  let claims: JWTPayload;
  try {
    alg = decodeProtectedHeader(token).alg;
    claims = decodeJwt(token);
  } catch (err) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { cause: err });
  }
  if (typeof claims.iss !== 'string') throw new MeshgateError('MG_ERR_AUTHN_TOKEN_ISSUER', { message: 'bearer token has no issuer' });
  return { alg, claims, issuer: claims.iss };
}

function mapJoseError(err: unknown): MeshgateError {
  if (err instanceof MeshgateError) return err;
  const { code, claim } = err as { code?: string; claim?: string };
  switch (code) {
    case 'ERR_JWT_EXPIRED':
      return new MeshgateError('MG_ERR_AUTHN_TOKEN_EXPIRED', { cause: err });
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if (claim === 'aud') return new MeshgateError('MG_ERR_AUTHN_TOKEN_AUDIENCE', { cause: err });
      if (claim === 'nbf' || claim === 'iat') return new MeshgateError('MG_ERR_AUTHN_TOKEN_EXPIRED', { cause: err });
      return new MeshgateError('MG_ERR_AUTHN_TOKEN_INVALID', { detail: `claim ${String(claim)} failed`, cause: err });
    case 'ERR_JWT_INVALID':
    case 'ERR_JWS_INVALID':
      return new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { cause: err });
    default:
      // Bad signature, unknown key id, disallowed algorithm, unusable key.
      return new MeshgateError('MG_ERR_AUTHN_TOKEN_INVALID', { detail: code, cause: err });
  }
}

/** The token of an `Authorization: Bearer …` header, or undefined when there is none. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  if (Array.isArray(header)) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { message: 'more than one Authorization header' });
  }
  const match = /^Bearer[ ]+([A-Za-z0-9._~+/-]+=*)[ ]*$/i.exec(header);
  if (!match?.[1]) throw new MeshgateError('MG_ERR_AUTHN_TOKEN_MALFORMED', { message: 'Authorization is not a bearer token' });
  return match[1];
}

/**
 * What a TokenReview would refuse anyway, checked on the token's own (unverified) claims before one
 * is spent: a JWT of a service-account key type, not expired, for one of the audiences. A flood of
 * forged tokens that fail these costs the cluster nothing. Legacy service-account tokens carry no
 * `exp` or `aud`; those claims are checked only when present.
 */
function refuseBeforeReview({ alg, claims: payload }: UnverifiedToken, audiences: readonly string[], clockToleranceMs: number): void {
  if (!TOKEN_ALGORITHMS.includes(alg as (typeof TOKEN_ALGORITHMS)[number])) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_INVALID', { detail: `algorithm ${JSON.stringify(alg)} is not a service-account key's` });
  }
  if (payload.exp !== undefined && payload.exp * 1000 + clockToleranceMs < Date.now()) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_EXPIRED');
  }
  const aud = payload.aud === undefined ? undefined : Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (aud !== undefined && audiences.length > 0 && !aud.some((a) => audiences.includes(a))) {
    throw new MeshgateError('MG_ERR_AUTHN_TOKEN_AUDIENCE', { detail: `token audiences ${JSON.stringify(aud)}` });
  }
}
