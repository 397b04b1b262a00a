/**
 * A cluster's signing keys, from a JWKS URL or file. Keys are loaded lazily and kept for `maxAge`.
 * A token with an unknown `kid` triggers at most one reload per `cooldown`, and concurrent callers
 * share one reload, so a flood of made-up key ids cannot turn into a flood of fetches. Without
 * keys there is no verification: failure is closed.
 */
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { createLocalJWKSet, type FlattenedJWSInput, type JSONWebKeySet, type JWSHeaderParameters } from 'jose';
import { MeshgateError } from '../errors.js';

type KeyResolver = ReturnType<typeof createLocalJWKSet>;
export type ResolvedKey = Awaited<ReturnType<KeyResolver>>;

export interface JwksSource {
  getKey(header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<ResolvedKey>;
  /** Loads keys now unless they are fresh; never throws. */
  warm(): Promise<void>;
}

export interface JwksSourceOptions {
  readonly load: () => Promise<JSONWebKeySet>;
  readonly cooldownMs: number;
  readonly maxAgeMs: number;
  readonly now?: () => number;
  readonly onLoad?: (result: 'success' | 'failure', error?: unknown) => void;
}

export function createJwksSource(options: JwksSourceOptions): JwksSource {
  const now = options.now ?? Date.now;
  let resolver: KeyResolver | undefined;
  let loadedAt = Number.NEGATIVE_INFINITY;
  let attemptedAt = Number.NEGATIVE_INFINITY;
  let pending: Promise<void> | undefined;

  const isFresh = (): boolean => resolver !== undefined && now() - loadedAt <= options.maxAgeMs;
  const mayReload = (): boolean => now() - attemptedAt >= options.cooldownMs;

  const reload = (): Promise<void> => {
    pending ??= (async () => {
      attemptedAt = now();
      try {
        const jwks = await options.load();
        resolver = createLocalJWKSet(jwks);
        loadedAt = now();
        options.onLoad?.('success');
      } catch (err) {
        options.onLoad?.('failure', err);
      } finally {
        pending = undefined;
      }
    })();
    return pending;
  };

  const unavailable = (): MeshgateError =>
    new MeshgateError('MG_ERR_AUTHN_JWKS_UNAVAILABLE', { detail: 'no fresh signing keys and the reload cooldown is running' });

  return {
    async getKey(header, token) {
      if (pending) await pending;
      if (!isFresh() && mayReload()) await reload();
      if (!resolver || !isFresh()) throw unavailable();
      try {
        return await resolver(header, token);
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err;
        // An unknown key id: join a reload under way, or start one if the cooldown allows.
        if (pending) await pending;
        else if (mayReload()) await reload();
        else throw err;
        return resolver(header, token);
      }
    },
    async warm() {
      if (!isFresh() && mayReload()) await reload();
    },
  };
}

const MAX_JWKS_BYTES = 1024 * 1024;

/**
 * Keys from a JWKS document already read (a file, or a Secret key): the loader checked it when the
 * config was loaded; a change to it is a reload, which makes a new source.
 */
export function loadJwksText(text: string): () => Promise<JSONWebKeySet> {
  return () => Promise.resolve().then(() => parseJwks(text));
}

export interface JwksUrlOptions {
  readonly url: string;
  readonly ca?: string;
  /** Sent as a bearer token: API servers often serve their JWKS to authenticated callers only. */
  readonly token?: string;
  readonly timeoutMs: number;
}

/** Fetches a JWKS over HTTP(S), verified against `ca` (or the system roots), bounded in size and time. */
export function loadJwksUrl(options: JwksUrlOptions): () => Promise<JSONWebKeySet> {
  const url = new URL(options.url);
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return () =>
    new Promise<JSONWebKeySet>((resolve, reject) => {
      const req = request(
        url,
        {
          method: 'GET',
          ca: options.ca,
          timeout: options.timeoutMs,
          headers: {
            accept: 'application/jwk-set+json, application/json',
            ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
          },
        },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            reject(new Error(`JWKS ${url.href} answered ${res.statusCode ?? 'no status'}`));
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_JWKS_BYTES) {
              req.destroy(new Error(`JWKS ${url.href} is larger than ${MAX_JWKS_BYTES} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () => {
            try {
              resolve(parseJwks(Buffer.concat(chunks).toString('utf8')));
            } catch (err) {
              reject(err instanceof Error ? err : new Error(String(err)));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`JWKS ${url.href} timed out after ${options.timeoutMs} ms`)));
      req.on('error', reject);
      req.end();
    });
}

function parseJwks(text: string): JSONWebKeySet {
  const parsed = JSON.parse(text) as unknown;
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray((parsed as { keys?: unknown }).keys)) {
    throw new Error('not a JWKS: no "keys" array');
  }
  return parsed as JSONWebKeySet;
}
