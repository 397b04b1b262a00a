/**
 * A tenant as a snapshot holds it: its TLS context (server certificate for its hosts, and its own
 * client-CA bundle), its clusters, and the verifier for its clusters' tokens. Everything a request
 * needs is built here, once per snapshot.
 */
import { constants as cryptoConstants, X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { ClientCertificateTrust } from '../auth/client-cert.js';
import type { Identity } from '../auth/identity.js';
import { createJwksSource, loadJwksFile, loadJwksUrl, type JwksSource } from '../auth/jwks.js';
import { createTokenVerifier, type TokenIssuer, type TokenVerifier } from '../auth/jwt.js';
import { createTokenReviewer } from '../auth/token-review.js';
import type { TokenCache } from '../auth/token-cache.js';
import type { ConfigFiles } from '../config/files.js';
import type { ClusterConfig, Config, TenantConfig } from '../config/schema.js';

/**
 * TLS session resumption is off everywhere. Node/OpenSSL resume a session made under one SNI on a
 * connection with another SNI, without verifying the client certificate against the second
 * tenant's CA (test/tls-isolation.test.ts shows it). Istio's agents do not resume sessions anyway.
 */
export const TLS_SERVER_OPTIONS = {
  minVersion: 'TLSv1.2',
  secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  ciphers: [
    // TLS 1.3: all three of its suites are AEAD with forward secrecy.
    'TLS_AES_128_GCM_SHA256',
    'TLS_AES_256_GCM_SHA384',
    'TLS_CHACHA20_POLY1305_SHA256',
    // TLS 1.2: ECDHE key exchange and AEAD only, as Istio's gateways and Mozilla's "intermediate"
    // profile: no static-RSA key exchange (no forward secrecy), no CBC (LUCKY13), no DHE, no ARIA.
    'ECDHE-ECDSA-AES128-GCM-SHA256',
    'ECDHE-RSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384',
    'ECDHE-RSA-AES256-GCM-SHA384',
    'ECDHE-ECDSA-CHACHA20-POLY1305',
    'ECDHE-RSA-CHACHA20-POLY1305',
  ].join(':'),
  honorCipherOrder: true,
} as const;

export interface TenantCore {
  readonly id: string;
  readonly config: TenantConfig;
  readonly files: ConfigFiles;
  readonly secureContext: SecureContext;
  readonly certificates: ClientCertificateTrust;
  readonly clusters: ReadonlyMap<string, ClusterConfig>;
  readonly tokens: TokenVerifier;
  readonly jwks: ReadonlyMap<string, JwksSource>;
  /** Only the sandbox lets meshgate reach upstreams over loopback. */
  readonly allowLoopbackUpstreams: boolean;
}

export interface TenantEnvironment {
  readonly files: ConfigFiles;
  readonly config: Config;
  readonly tokenCache: TokenCache<Identity>;
  readonly onJwksLoad?: (tenant: string, cluster: string, result: 'success' | 'failure', error?: unknown) => void;
  readonly onTokenReview?: (tenant: string, cluster: string, result: string) => void;
}

export function buildTenantCore(config: TenantConfig, env: TenantEnvironment): TenantCore {
  const { files } = env;
  const anchors: X509Certificate[] = config.tls.clientCA === undefined ? [] : files.certificates(config.tls.clientCA);
  const secureContext = createSecureContext({
    ...TLS_SERVER_OPTIONS,
    cert: files.text(config.tls.cert),
    key: files.text(config.tls.key),
    // An explicit list, even when empty: without `ca`, Node would trust its public roots.
    ca: anchors.map((cert) => cert.toString()),
  });

  const { jwks: jwksSettings } = env.config.auth;
  const jwks = new Map<string, JwksSource>();
  const issuers: TokenIssuer[] = [];
  for (const cluster of config.clusters) {
    const source = cluster.jwks;
    if (source === undefined) {
      // The schema guarantees one of the two, and an apiServer with meshgate's own credential.
      if (cluster.tokenReview === undefined || cluster.apiServer === undefined) continue;
      const review = createTokenReviewer({
        tenant: config.id,
        cluster: cluster.id,
        apiServer: cluster.apiServer,
        settings: cluster.tokenReview,
        files,
        maxEntries: env.config.auth.tokenCache.maxEntries,
        onReview: (result) => env.onTokenReview?.(config.id, cluster.id, result),
      });
      issuers.push({ cluster: cluster.id, issuer: cluster.issuer, review });
      continue;
    }
    jwks.set(
      cluster.id,
      createJwksSource({
        load:
          source.file !== undefined
            ? loadJwksFile(source.file)
            : loadJwksUrl({
                url: source.url ?? '',
                ca: source.ca === undefined ? undefined : files.text(source.ca),
                token: source.tokenFile === undefined ? undefined : files.text(source.tokenFile).trim(),
                timeoutMs: jwksSettings.timeout,
              }),
        cooldownMs: jwksSettings.cooldown,
        maxAgeMs: jwksSettings.maxAge,
        onLoad: (result, error) => env.onJwksLoad?.(config.id, cluster.id, result, error),
      }),
    );
    issuers.push({ cluster: cluster.id, issuer: cluster.issuer, keys: jwks.get(cluster.id) as JwksSource });
  }

  return {
    id: config.id,
    config,
    files,
    secureContext,
    certificates: { tenant: config.id, anchors },
    clusters: new Map(config.clusters.map((c) => [c.id, c])),
    tokens: createTokenVerifier({
      tenant: config.id,
      issuers,
      clockToleranceMs: env.config.auth.clockTolerance,
      cache: env.tokenCache,
    }),
    jwks,
    allowLoopbackUpstreams: env.config.security.allowLoopbackUpstreams,
  };
}
