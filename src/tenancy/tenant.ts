/**
 * A tenant as a snapshot holds it: its TLS context (server certificate for its hosts, and its own
 * client-CA bundle), its clusters, and the verifier for its clusters' tokens. What a request needs
 * is assembled here once per snapshot; what lives longer (the TLS context, JWKS sources, TokenReview
 * clients, the token cache) comes from the registry, reused while its inputs are unchanged.
 */
import { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { ClientCertificateTrust } from '../auth/client-cert.js';
import type { Identity } from '../auth/identity.js';
import { createJwksSource, loadJwksText, loadJwksUrl, type JwksSource } from '../auth/jwks.js';
import { createTokenVerifier, type TokenIssuer, type TokenVerifier } from '../auth/jwt.js';
import { createTokenReviewer } from '../auth/token-review.js';
import { createTokenCache } from '../auth/token-cache.js';
import type { ConfigFiles } from '../config/files.js';
import { tlsServerOptions } from '../listener/tls-profile.js';
import type { ClusterConfig, Config, TenantConfig } from '../config/schema.js';
import type { Generation, Lease, Owned } from './registry.js';

export interface TenantCore {
  readonly id: string;
  readonly config: TenantConfig;
  readonly files: ConfigFiles;
  /** Its TLS context on each listener (server certificate, client CAs, the listener's TLS profile). */
  readonly secureContexts: ReadonlyMap<string, SecureContext>;
  readonly certificates: ClientCertificateTrust;
  readonly clusters: ReadonlyMap<string, ClusterConfig>;
  readonly tokens: TokenVerifier;
  readonly jwks: ReadonlyMap<string, JwksSource>;
  /** Only the sandbox lets meshgate reach upstreams over loopback. */
  readonly allowLoopbackUpstreams: boolean;
  /** This tenant's long-lived resources in the registry, for the planes to build theirs with. */
  readonly resources: TenantResources;
}

/** A tenant's corner of a registry generation: keys are prefixed with the tenant's id. */
export interface TenantResources {
  use<T>(name: string, inputs: unknown, create: () => Owned<T>): Lease<T>;
}

export interface TenantEnvironment {
  readonly files: ConfigFiles;
  readonly config: Config;
  readonly generation: Generation;
  /** The listeners running, as started: a reload does not change them, so contexts are made for these. */
  readonly listeners: Config['listeners'];
  readonly onTokenCacheLookup?: (hit: boolean) => void;
  readonly onJwksLoad?: (tenant: string, cluster: string, result: 'success' | 'failure', error?: unknown) => void;
  readonly onTokenReview?: (tenant: string, cluster: string, result: string) => void;
}

/** A resource with nothing to release: caches and key sets, dropped with their last reference. */
export function plain<T>(value: T): Owned<T> {
  return { value, close: () => undefined };
}

export function buildTenantCore(config: TenantConfig, env: TenantEnvironment): TenantCore {
  const { files } = env;
  const text = (path: string | undefined): string | undefined => (path === undefined ? undefined : files.text(path));
  const resources: TenantResources = {
    use: (name, inputs, create) => env.generation.use(`${config.id}/${name}`, inputs, create),
  };
  const anchors: X509Certificate[] = config.tls.clientCA === undefined ? [] : files.certificates(config.tls.clientCA);
  const secureContexts = new Map<string, SecureContext>();
  for (const [listener, { tls }] of Object.entries(env.listeners)) {
    const tlsInputs = { cert: text(config.tls.cert), key: text(config.tls.key), ca: text(config.tls.clientCA), tls };
    const context = resources.use(`tls/${listener}`, tlsInputs, () =>
      plain(
        createSecureContext({
          ...tlsServerOptions(tls),
          cert: tlsInputs.cert,
          key: tlsInputs.key,
          // An explicit list, even when empty: without `ca`, Node would trust its public roots.
          ca: anchors.map((cert) => cert.toString()),
        }),
      ),
    ).value;
    secureContexts.set(listener, context);
  }

  const { jwks: jwksSettings } = env.config.auth;
  const jwks = new Map<string, JwksSource>();
  const issuers: TokenIssuer[] = [];
  for (const cluster of config.clusters) {
    const source = cluster.jwks;
    if (source === undefined) {
      // The schema guarantees one of the two, and an apiServer with meshgate's own credential.
      if (cluster.tokenReview === undefined || cluster.apiServer === undefined) continue;
      const { apiServer, tokenReview } = cluster;
      const credentials = apiServer.credentials;
      const inputs = {
        apiServer,
        ca: text(apiServer.ca),
        credentials:
          credentials === 'passthrough'
            ? undefined
            : 'tokenFile' in credentials
              ? text(credentials.tokenFile)
              : [text(credentials.cert), text(credentials.key)],
        tokenReview,
        maxEntries: env.config.auth.tokenCache.maxEntries,
      };
      const review = resources.use(`tokenreview/${cluster.id}`, inputs, () =>
        plain(
          createTokenReviewer({
            tenant: config.id,
            cluster: cluster.id,
            apiServer,
            settings: tokenReview,
            files,
            maxEntries: inputs.maxEntries,
            onReview: (result) => env.onTokenReview?.(config.id, cluster.id, result),
          }),
        ),
      ).value;
      issuers.push({ cluster: cluster.id, issuer: cluster.issuer, review });
      continue;
    }
    const inputs = {
      source,
      file: text(source.file),
      ca: text(source.ca),
      token: text(source.tokenFile),
      settings: jwksSettings,
    };
    const keys = resources.use(`jwks/${cluster.id}`, inputs, () =>
      plain(
        createJwksSource({
          load:
            source.file !== undefined
              ? loadJwksText(inputs.file ?? '')
              : loadJwksUrl({
                  url: source.url ?? '',
                  ca: inputs.ca,
                  token: inputs.token?.trim(),
                  timeoutMs: jwksSettings.timeout,
                }),
          cooldownMs: jwksSettings.cooldown,
          maxAgeMs: jwksSettings.maxAge,
          onLoad: (result, error) => env.onJwksLoad?.(config.id, cluster.id, result, error),
        }),
      ),
    ).value;
    jwks.set(cluster.id, keys);
    issuers.push({ cluster: cluster.id, issuer: cluster.issuer, keys });
  }

  // A cached identity was verified under this tenant's trust settings: when any of them changes
  // (a cluster, an issuer, a key file), the cache starts empty.
  const cacheInputs = {
    clusters: config.clusters.map((c) => ({
      id: c.id,
      issuer: c.issuer,
      jwks: c.jwks,
      file: text(c.jwks?.file),
      tokenReview: c.tokenReview,
      // The API server that reviewed a cached token, for clusters that review.
      reviewer: c.tokenReview === undefined ? undefined : { url: c.apiServer?.url, ca: text(c.apiServer?.ca) },
    })),
    clockTolerance: env.config.auth.clockTolerance,
    tokenCache: env.config.auth.tokenCache,
  };
  const cache = resources.use('token-cache', cacheInputs, () =>
    plain(
      createTokenCache<Identity>({
        maxEntries: env.config.auth.tokenCache.maxEntries,
        maxTtlMs: env.config.auth.tokenCache.maxTtl,
        onLookup: env.onTokenCacheLookup,
      }),
    ),
  ).value;

  return {
    id: config.id,
    config,
    files,
    secureContexts,
    certificates: { tenant: config.id, anchors },
    clusters: new Map(config.clusters.map((c) => [c.id, c])),
    tokens: createTokenVerifier({
      tenant: config.id,
      issuers,
      clockToleranceMs: env.config.auth.clockTolerance,
      cache,
    }),
    jwks,
    allowLoopbackUpstreams: env.config.security.allowLoopbackUpstreams,
    resources,
  };
}
