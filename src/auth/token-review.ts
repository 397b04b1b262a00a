/**
 * The TokenReview fallback: for a cluster whose signing keys meshgate cannot have, the cluster's
 * own API server says whether a token is valid (POST authentication.k8s.io/v1 tokenreviews, with
 * @kubernetes/client-node and meshgate's own credential for that cluster).
 *
 * A reviewer protects the API server from meshgate's callers: answers are cached (an accepted
 * token for `cacheTtl`, never past its expiry; a rejected one for `negativeTtl`), both caches are
 * bounded, identical lookups in flight share one call, and calls beyond a token-bucket rate fail at
 * once instead of queueing. Failure is closed: no answer is never a yes.
 */
import { AuthenticationV1Api, KubeConfig, V1TokenReview, V1TokenReviewSpec } from '@kubernetes/client-node';
import { decodeJwt } from 'jose';
import type { ConfigFiles } from '../config/files.js';
import type { ApiServerConfig, TokenReviewConfig } from '../config/schema.js';
import { MeshgateError } from '../errors.js';
import { createTokenBucket } from '../policy/token-bucket.js';
import { createTokenCache, tokenCacheKey } from './token-cache.js';

export interface ReviewedToken {
  readonly username: string;
  readonly groups: readonly string[];
  /** Epoch milliseconds until which the answer may be reused. */
  readonly validUntil: number;
  /** The token's own expiry (its `exp`), when it has one. */
  readonly expiresAt?: number;
}

export type TokenReviewer = (token: string, audiences: readonly string[], source?: string) => Promise<ReviewedToken>;

export interface TokenReviewerOptions {
  readonly tenant: string;
  readonly cluster: string;
  readonly apiServer: ApiServerConfig;
  readonly settings: TokenReviewConfig;
  readonly files: ConfigFiles;
  readonly maxEntries: number;
  readonly onReview?: (result: 'authenticated' | 'rejected' | 'error' | 'limited') => void;
  readonly now?: () => number;
}

export function createTokenReviewer(options: TokenReviewerOptions): TokenReviewer {
  const { settings, tenant, cluster } = options;
  const now = options.now ?? Date.now;
  const accepted = createTokenCache<ReviewedToken>({ maxEntries: options.maxEntries, maxTtlMs: settings.cacheTtl, now });
  const rejected = createTokenCache<MeshgateError>({ maxEntries: options.maxEntries, maxTtlMs: settings.negativeTtl, now });
  const inFlight = new Map<string, Promise<ReviewedToken>>();
  const bucket = createTokenBucket(settings.rate, settings.burst, now);
  const sources = createSourceBuckets(settings, now);
  const api = reviewClient(options.apiServer, options.files, cluster);

  const review = async (token: string, audiences: readonly string[]): Promise<ReviewedToken> => {
    let answer;
    try {
      const body = new V1TokenReview();
      body.apiVersion = 'authentication.k8s.io/v1';
      body.kind = 'TokenReview';
      body.spec = new V1TokenReviewSpec();
      body.spec.token = token;
      body.spec.audiences = [...audiences];
      answer = await withTimeout(api.createTokenReview({ body }), settings.timeout);
    } catch (err) {
      options.onReview?.('error');
      throw new MeshgateError('MG_ERR_AUTHN_TOKENREVIEW_UNAVAILABLE', { detail: `cluster ${cluster}: ${describe(err)}`, cause: err });
    }
    const status = answer.status;
    const username = status?.user?.username;
    if (status?.authenticated !== true || username === undefined) {
      options.onReview?.('rejected');
      throw new MeshgateError('MG_ERR_AUTHN_TOKEN_INVALID', { detail: `cluster ${cluster} TokenReview: ${status?.error ?? 'not authenticated'}` });
    }
    if (audiences.length > 0 && !(status.audiences ?? []).some((a) => audiences.includes(a))) {
      options.onReview?.('rejected');
      throw new MeshgateError('MG_ERR_AUTHN_TOKEN_AUDIENCE', { detail: `cluster ${cluster} TokenReview audiences ${JSON.stringify(status.audiences)}` });
    }
    options.onReview?.('authenticated');
    const expiry = expiryOf(token);
    return {
      username,
      groups: status.user?.groups ?? [],
      validUntil: Math.min(expiry, now() + settings.cacheTtl),
      ...(Number.isFinite(expiry) ? { expiresAt: expiry } : {}),
    };
  };

  return async (token, audiences, source) => {
    const key = tokenCacheKey(tenant, `tokenreview\n${cluster}\n${audiences.join('\n')}`, token);
    const hit = accepted.get(key);
    if (hit) return hit;
    const refusal = rejected.get(key);
    if (refusal) throw refusal;
    const pending = inFlight.get(key);
    if (pending) return pending;
    // One source may spend half of the cluster's budget at most, so that a flood from one address
    // leaves the other half to everyone else; answers already cached above cost nothing.
    if (!sources.take(source) || !bucket.take()) {
      options.onReview?.('limited');
      throw new MeshgateError('MG_ERR_AUTHN_TOKENREVIEW_LIMITED', { detail: `cluster ${cluster}`, headers: { 'retry-after': '1' } });
    }
    const call = review(token, audiences).then(
      (result) => {
        accepted.set(key, result, result.validUntil);
        return result;
      },
      (err: unknown) => {
        // Only the cluster's "no" is remembered; an outage must not turn valid tokens away for long.
        if (err instanceof MeshgateError && err.code !== 'MG_ERR_AUTHN_TOKENREVIEW_UNAVAILABLE') {
          rejected.set(key, err, now() + settings.negativeTtl);
        }
        throw err;
      },
    );
    inFlight.set(key, call);
    try {
      return await call;
    } finally {
      inFlight.delete(key);
    }
  };
}

/** Half of a cluster's review rate and burst per source address, for at most 4,096 sources at once. */
const MAX_SOURCES = 4096;

function createSourceBuckets(settings: TokenReviewConfig, now: () => number): { take(source: string | undefined): boolean } {
  const buckets = new Map<string, ReturnType<typeof createTokenBucket>>();
  const rate = settings.rate / 2;
  const burst = Math.max(1, Math.floor(settings.burst / 2));
  return {
    take(source) {
      if (source === undefined) return true;
      let bucket = buckets.get(source);
      if (bucket === undefined) {
        // The oldest source makes room: a new one starts with a full half, as it would have anyway.
        if (buckets.size >= MAX_SOURCES) buckets.delete(buckets.keys().next().value as string);
        bucket = createTokenBucket(rate, burst, now);
        buckets.set(source, bucket);
      }
      return bucket.take();
    },
  };
}

function reviewClient(apiServer: ApiServerConfig, files: ConfigFiles, cluster: string): AuthenticationV1Api {
  const credentials = apiServer.credentials;
  if (credentials === 'passthrough') throw new Error(`cluster ${cluster}: TokenReview needs meshgate's own credential`);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [
      {
        name: cluster,
        server: apiServer.url,
        skipTLSVerify: false,
        ...(apiServer.ca === undefined ? {} : { caData: Buffer.from(files.text(apiServer.ca)).toString('base64') }),
        ...(apiServer.serverName === undefined ? {} : { tlsServerName: apiServer.serverName }),
      },
    ],
    users: [
      'tokenFile' in credentials
        ? { name: 'meshgate', token: files.text(credentials.tokenFile).trim() }
        : {
            name: 'meshgate',
            certData: Buffer.from(files.text(credentials.cert)).toString('base64'),
            keyData: Buffer.from(files.text(credentials.key)).toString('base64'),
          },
    ],
    contexts: [{ name: cluster, cluster, user: 'meshgate' }],
    currentContext: cluster,
  });
  return kubeConfig.makeApiClient(AuthenticationV1Api);
}

/** A token's own expiry (unverified: the cluster has just vouched for it), or +∞ for opaque tokens. */
function expiryOf(token: string): number {
  try {
    const { exp } = decodeJwt(token);
    return exp === undefined ? Number.POSITIVE_INFINITY : exp * 1000;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${(err as { code?: string }).code ?? err.name}: ${err.message}`;
  return String(err);
}
