/**
 * A stand-in for a mesh cluster's service-account token issuer: a signing key, its JWKS, and
 * tokens shaped like Kubernetes' (RS256 or ES256, `sub` system:serviceaccount:<ns>:<sa>, the
 * `kubernetes.io` claim).
 */
import { randomUUID } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, type JSONWebKeySet, type JWK } from 'jose';

export type SigningAlgorithm = 'RS256' | 'ES256';

export interface TokenClaims {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly audience: string | readonly string[];
  /** Lifetime in seconds; negative makes an already-expired token. */
  readonly lifetimeSeconds?: number;
  /** Seconds from now before which the token is not valid (nbf); default: valid now. */
  readonly notBeforeSeconds?: number;
  readonly issuer?: string;
}

export interface Issuer {
  readonly issuer: string;
  readonly cluster: string;
  readonly kid: string;
  jwks(): JSONWebKeySet;
  mint(claims: TokenClaims): Promise<string>;
  /** Replaces the signing key (a rotation); the JWKS then holds only the new key. */
  rotate(): Promise<void>;
}

export async function createIssuer(cluster: string, issuer: string, algorithm: SigningAlgorithm): Promise<Issuer> {
  let key = await newKey(algorithm);
  return {
    issuer,
    cluster,
    get kid() {
      return key.kid;
    },
    jwks: () => ({ keys: [key.publicJwk] }),
    async mint(claims) {
      const now = Math.floor(Date.now() / 1000);
      const lifetime = claims.lifetimeSeconds ?? 86_400;
      return new SignJWT({
        'kubernetes.io': {
          namespace: claims.namespace,
          serviceaccount: { name: claims.serviceAccount, uid: randomUUID() },
        },
      })
        .setProtectedHeader({ alg: algorithm, kid: key.kid, typ: 'JWT' })
        .setIssuer(claims.issuer ?? issuer)
        .setSubject(`system:serviceaccount:${claims.namespace}:${claims.serviceAccount}`)
        .setAudience([...(typeof claims.audience === 'string' ? [claims.audience] : claims.audience)])
        .setIssuedAt(Math.min(now, now + lifetime))
        .setNotBefore(claims.notBeforeSeconds === undefined ? Math.min(now, now + lifetime) - 1 : now + claims.notBeforeSeconds)
        .setExpirationTime(now + lifetime)
        .setJti(randomUUID())
        .sign(key.privateKey);
    },
    async rotate() {
      key = await newKey(algorithm);
    },
  };
}

type PrivateKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

async function newKey(algorithm: SigningAlgorithm): Promise<{ kid: string; privateKey: PrivateKey; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(algorithm, { extractable: true });
  const kid = randomUUID();
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: algorithm, use: 'sig' };
  return { kid, privateKey, publicJwk };
}
