/**
 * The configuration schema. It is also the type: `Config` is what zod returns, frozen, and nothing
 * else describes the shape. docs/configuration.md documents every field here.
 */
import { BlockList, isIP } from 'node:net';
import { createSecureContext, getCiphers } from 'node:tls';
import { z } from 'zod';
import { DEFAULT_TLS_PROFILE, tlsServerOptions } from '../listener/tls-profile.js';
import { isForbiddenEndpoint } from '../planes/debug/endpoints.js';
import { parseDuration, parseSize } from './units.js';

const KNOWN_CIPHERS = new Set(getCiphers());

const duration = z.string().transform((text, ctx) => {
  const ms = parseDuration(text);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${text}" is not a duration: use e.g. "500ms", "10s", "5m"` });
    return z.NEVER;
  }
  return ms;
});

const size = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const bytes = parseSize(value);
  if (bytes === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${String(value)}" is not a size: use a byte count or e.g. "64KiB", "6MiB"` });
    return z.NEVER;
  }
  return bytes;
});

/**
 * A path to a file, relative to the config file's folder. src/config/files.ts reads and checks it.
 * Marked, so that the MeshTenant schema (src/tenancy/crd.ts) can make it a Secret key reference.
 */
export const FILE_MARK = 'x-meshgate-file';
const file = z.string().min(1).meta({ [FILE_MARK]: true });

/**
 * 30 minutes: the connection age istiod's Helm chart sets (keepaliveMaxServerConnectionAge), after
 * which istiod itself ends a sidecar's stream. Read from the chart, not exercised by a test.
 */
const DEFAULT_DRAIN_MS = 1_800_000;

const name = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'use lowercase letters, digits and "-" (a DNS label)')
  .max(63);

const clusterId = z
  .string()
  .regex(/^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/, 'use letters, digits, "-", "_" and "."')
  .max(253);

/** `acme.mesh.example.com`, or a wildcard of one label: `*.acme.example.com`. */
const hostPattern = z
  .string()
  .toLowerCase()
  .regex(/^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'not a host name or "*." wildcard');

const port = z.number().int().min(0).max(65535);

/** Who reaches the admin listener's /metrics and /status by default: this host only. */
const ADMIN_LOOPBACK = ['127.0.0.0/8', '::1/128'] as const;

export const PLANES = ['webhook', 'debug', 'xds', 'kube', 'agent'] as const;
export type PlaneName = (typeof PLANES)[number];

export const AUTH_METHODS = ['clientCertificate', 'token', 'pathKey'] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

const upstream = z.strictObject({
  url: z.url({ protocol: /^https?$/ }),
  ca: file.optional(),
  serverName: z.string().optional(),
});

/** meshgate's own istiod token, sent for callers that authenticated with a client certificate. */
const ownToken = z.strictObject({ file, cluster: clusterId });

const debugUpstream = upstream.extend({
  token: ownToken.optional(),
  /**
   * Each istiod replica's own debug port, for the control-plane view: one pod per replica, so that
   * Kiali asks every replica for its proxies. The debug plane's own requests go to `url`.
   */
  replicas: z
    .array(z.url({ protocol: /^https?$/ }))
    .min(1)
    .optional(),
});

const xdsUrl = z.url({ protocol: /^https$/ });

/** istiod's gRPC port (15012): one URL, a list of replicas, or one name resolved to every replica. */
const xdsUpstream = z
  .strictObject({
    url: xdsUrl.optional(),
    replicas: z.array(xdsUrl).min(1).optional(),
    discovery: z.enum(['static', 'dns']).default('static'),
    dnsRefreshInterval: duration.default(30_000),
    ca: file.optional(),
    serverName: z.string().optional(),
    token: ownToken.optional(),
    maxStreamsPerSession: z.number().int().min(1).max(100_000).default(1_000),
    keepaliveInterval: duration.default(30_000),
    keepaliveTimeout: duration.default(10_000),
    connectTimeout: duration.default(2_000),
  })
  .check((ctx) => {
    const { url, replicas, discovery, keepaliveInterval } = ctx.value;
    if ((url === undefined) === (replicas === undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'set either "url" or "replicas"' });
    }
    if (discovery === 'dns' && url === undefined) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'discovery "dns" resolves the host of "url": set "url"' });
    }
    if (keepaliveInterval < 30_000) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        path: ['keepaliveInterval'],
        message: 'istiod answers pings closer than 15 s apart with GOAWAY; use at least "30s"',
      });
    }
  });

const jwks = z
  .strictObject({
    url: z.url({ protocol: /^https?$/ }).optional(),
    file: file.optional(),
    ca: file.optional(),
    tokenFile: file.optional(),
  })
  .check((ctx) => {
    const { url, file: path, ca, tokenFile } = ctx.value;
    if ((url === undefined) === (path === undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'set either "url" or "file"' });
    }
    if (path !== undefined && (ca !== undefined || tokenFile !== undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: '"ca" and "tokenFile" apply only with "url"' });
    }
  });

/** Token checks against the cluster itself, for clusters whose signing keys meshgate cannot have. */
const tokenReview = z.strictObject({
  /** Calls per second to this cluster's TokenReview API, and the burst above that rate. */
  rate: z.number().positive().default(20),
  burst: z.number().int().positive().default(40),
  /** How long an accepted token is taken as valid without asking again (never past its expiry). */
  cacheTtl: duration.default(60_000),
  /** How long a rejected token stays rejected without asking again. */
  negativeTtl: duration.default(10_000),
  timeout: duration.default(5_000),
});

/**
 * What meshgate presents to the cluster's API server: the caller's own token (`passthrough`), or
 * a credential of meshgate's own, with the caller's identity as Impersonate-User/Group.
 */
const apiServerCredentials = z.union([
  z.literal('passthrough'),
  z.strictObject({ tokenFile: file }),
  z.strictObject({ cert: file, key: file }),
]);

/**
 * Where the API server is: its `url`, or `via: agent` for one meshgate cannot dial, reached through
 * the tunnel its cluster's `meshgate agent` keeps open (docs/agent.md). TLS to it is meshgate's own
 * either way, so an agent cluster needs the name its certificate is for.
 */
const apiServer = z
  .strictObject({
    url: z.url({ protocol: /^https$/ }).optional(),
    via: z.literal('agent').optional(),
    ca: file.optional(),
    serverName: z.string().min(1).optional(),
    credentials: apiServerCredentials,
  })
  .check((ctx) => {
    const { url, via, serverName, ca } = ctx.value;
    if ((url === undefined) === (via === undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'set either "url" or "via: agent"' });
    }
    // Through an agent, the API server's certificate is all that keeps the agent from reading the
    // traffic: it is checked against the cluster's own CA, never the system roots.
    if (via !== undefined && ca === undefined) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        path: ['ca'],
        message: 'with "via: agent", set "ca", the API server\'s own CA: a certificate from a public CA for its name would let the agent read the traffic',
      });
    }
    if (via !== undefined && serverName === undefined) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        path: ['serverName'],
        message: 'with "via: agent" there is no URL to take the name from: set the name the API server\'s certificate is for',
      });
    }
  });

const cluster = z
  .strictObject({
    id: clusterId,
    issuer: z.string().min(1),
    jwks: jwks.optional(),
    tokenReview: tokenReview.optional(),
    apiServer: apiServer.optional(),
  })
  .check((ctx) => {
    const { jwks: keys, tokenReview: review, apiServer: server } = ctx.value;
    if ((keys === undefined) === (review === undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'set either "jwks" (the signing keys) or "tokenReview"' });
    }
    if (review !== undefined && server?.via === 'agent') {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        path: ['tokenReview'],
        message: 'meshgate calls TokenReview directly, which an agent cluster cannot take: use "jwks" (a file, or a URL meshgate reaches)',
      });
    }
    if (review !== undefined && (server === undefined || server.credentials === 'passthrough')) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        path: ['tokenReview'],
        message: 'TokenReview calls use meshgate\'s own credential: set "apiServer" with a tokenFile or cert, not passthrough',
      });
    }
  });

const identityMatch = {
  method: z.enum(AUTH_METHODS).optional(),
  subject: z.string().min(1).optional(),
  uri: z.string().min(1).optional(),
  cluster: clusterId.optional(),
};

const accessRule = z
  .strictObject(identityMatch)
  .refine((rule) => Object.keys(rule).length > 0, 'a rule needs at least one of method, subject, uri, cluster');

/** The gRPC methods of the xds plane, by their short names. */
export const XDS_METHOD_NAMES = ['StreamAggregatedResources', 'DeltaAggregatedResources', 'CreateCertificate', 'StreamMetrics'] as const;

/**
 * An xds rule may also say which methods it grants. Without `methods`: ADS and Delta ADS, and
 * CreateCertificate only to callers with a token of their own (istiod signs for that token's
 * account). A certificate caller rides on meshgate's istiod token, so it gets a workload
 * certificate only from a rule that names CreateCertificate.
 */
const xdsAccessRule = z
  .strictObject({ ...identityMatch, methods: z.array(z.enum(XDS_METHOD_NAMES)).min(1).optional() })
  .refine((rule) => Object.keys(rule).some((k) => k !== 'methods'), 'a rule needs at least one of method, subject, uri, cluster');

export const KUBE_PROFILES = ['istiod', 'kiali-readonly'] as const;
export type KubeProfile = (typeof KUBE_PROFILES)[number];

/** A Kubernetes RBAC PolicyRule, plus namespaces: what a kube request may be. */
const kubePolicyRule = z
  .strictObject({
    verbs: z.array(z.string().min(1)).min(1),
    apiGroups: z.array(z.string()).optional(),
    resources: z.array(z.string().min(1)).optional(),
    namespaces: z.array(z.string().min(1)).optional(),
    names: z.array(z.string().min(1)).optional(),
    nonResourceURLs: z.array(z.string().regex(/^(\/|\*$)/, 'a path starting with "/", or "*"')).optional(),
  })
  .check((ctx) => {
    const { apiGroups, resources, nonResourceURLs, namespaces, names } = ctx.value;
    const resourceRule = apiGroups !== undefined || resources !== undefined || namespaces !== undefined || names !== undefined;
    if (resourceRule === (nonResourceURLs !== undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'a rule is either for resources (apiGroups, resources) or for nonResourceURLs' });
    } else if (resourceRule && (apiGroups === undefined || resources === undefined)) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: 'a resource rule needs both "apiGroups" ("" is the core group) and "resources"' });
    }
  });

/** Who (the identity fields, as in other planes' rules) may do what on the kube plane. */
const kubeAccessRule = z
  .strictObject({
    ...identityMatch,
    profiles: z.array(z.enum(KUBE_PROFILES)).optional(),
    allow: z.array(kubePolicyRule).optional(),
    deny: z.array(kubePolicyRule).optional(),
  })
  .refine((rule) => rule.profiles !== undefined || rule.allow !== undefined || rule.deny !== undefined, {
    message: 'a kube rule needs "profiles", "allow" or "deny"',
  });

const webhookSettings = z.strictObject({
  authentication: z.array(z.enum(AUTH_METHODS)).min(1, 'at least one authentication method is required'),
  audiences: z.array(z.string().min(1)).min(1).default(['meshgate-webhook']),
  pathKeyFile: file.optional(),
  sourceCIDRs: z.array(z.union([z.cidrv4(), z.cidrv6()])).optional(),
  maxBodySize: size.default(6 * 1024 * 1024),
  maxBufferedBytes: size.default(64 * 1024 * 1024),
  timeout: duration.default(10_000),
  maxTimeout: duration.default(30_000),
});

const debugSettings = z.strictObject({
  authentication: z
    .array(z.enum(['clientCertificate', 'token']))
    .min(1)
    .default(['token']),
  audiences: z.array(z.string().min(1)).min(1).default(['istio-ca']),
  endpoints: z.array(z.string().min(1)).optional(),
  timeout: duration.default(30_000),
});

const xdsSettings = z.strictObject({
  authentication: z
    .array(z.enum(['clientCertificate', 'token']))
    .min(1)
    .default(['token']),
  audiences: z.array(z.string().min(1)).min(1).default(['istio-ca']),
  /** How long each istiod replica has to answer a per-replica debug request before it is reported missing. */
  debugFanoutTimeout: duration.default(5_000),
});

const kubeSettings = z.strictObject({
  authentication: z
    .array(z.enum(['clientCertificate', 'token']))
    .min(1)
    .default(['token']),
  /** Accepted token audiences; by default each cluster's issuer (the API server's own audience). */
  audiences: z.array(z.string().min(1)).min(1).optional(),
  /** Deadline for requests that are not long-running (watch, exec, attach, port-forward, log, proxy). */
  requestTimeout: duration.default(60_000),
});

const requestRate = z.strictObject({
  perSecond: z.number().positive(),
  burst: z.number().int().positive(),
});

/** What one tenant may hold at once, across listeners and planes, and how fast it may ask. */
const limits = z.strictObject({
  connections: z.number().int().positive().default(10_000),
  streams: z.number().int().positive().default(20_000),
  /** Connections that have not authenticated yet: a budget of their own, so they cannot use up `connections`. */
  unauthenticatedConnections: z.number().int().positive().default(256),
  /** How long a connection may stay open without authenticating a request. */
  authenticationTimeout: duration.default(10_000),
  /**
   * Authenticated requests (on xds: new streams) per second, by plane, in each meshgate process:
   * `burst` at once, refilled at `perSecond`. A plane not named has no rate limit.
   */
  requestRate: z.partialRecord(z.enum(PLANES), requestRate).default({}),
});

/**
 * Sidecar metrics (Envoy's MetricsService on the xds listener, docs/metrics.md): the tenant's own
 * collector, with the same TLS and token options as istiod's xds; and/or meshgate keeping the latest
 * values by proxy, within bounds, for the tenant's Prometheus endpoint on the admin listener.
 */
const metricsSettings = z
  .strictObject({
    collector: xdsUpstream.optional(),
    expose: z
      .strictObject({
        maxProxies: z.number().int().positive().default(1_000),
        maxSeries: z.number().int().positive().default(100_000),
        staleAfter: duration.default(300_000),
      })
      .optional(),
  })
  .refine((m) => m.collector !== undefined || m.expose !== undefined, 'set "collector", "expose", or both');

/**
 * The tenant's istiod as Kiali looks for it (docs/kiali.md): a read-only cluster of meshgate's own at
 * `/clusters/<cluster>` on the kube plane, holding the objects Kiali discovers istiod by, whose
 * istiod pod port-forwards to the tenant's istiod debug port through the debug plane.
 */
const controlPlaneView = z.strictObject({
  /** The name Kiali knows this cluster by (its kubeconfig's); not one of the tenant's own clusters. */
  cluster: clusterId,
  namespace: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a namespace name: lower case letters, digits and "-"')
    .max(63)
    .default('istio-system'),
  /** The `istio.io/rev` of istiod's objects; `default` names the `istio` ConfigMap without a suffix. */
  revision: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a revision name: lower case letters, digits and "-"')
    .max(63)
    .default('default'),
  /** istiod's CLUSTER_ID, as istiod runs with it (the cluster its config comes from). By default the tenant's first cluster. */
  clusterId: clusterId.optional(),
  /** The `mesh` of istiod's `istio` ConfigMap (MeshConfig YAML); by default a minimal one. */
  meshConfig: file.optional(),
});

export const tenantSchema = z.strictObject({
  id: name,
  hosts: z.array(hostPattern).min(1),
  tls: z.strictObject({ cert: file, key: file, clientCA: file.optional() }),
  istiod: z.strictObject({ webhook: upstream.optional(), debug: debugUpstream.optional(), xds: xdsUpstream.optional() }),
  clusters: z.array(cluster).min(1),
  webhook: webhookSettings.optional(),
  debug: debugSettings.default({ authentication: ['token'], audiences: ['istio-ca'], timeout: 30_000 }),
  xds: xdsSettings.default({ authentication: ['token'], audiences: ['istio-ca'], debugFanoutTimeout: 5_000 }),
  kube: kubeSettings.default({ authentication: ['token'], requestTimeout: 60_000 }),
  metrics: metricsSettings.optional(),
  controlPlaneView: controlPlaneView.optional(),
  limits: limits.default({ connections: 10_000, streams: 20_000, unauthenticatedConnections: 256, authenticationTimeout: 10_000, requestRate: {} }),
  access: z
    .strictObject({
      webhook: z.array(accessRule).optional(),
      debug: z.array(accessRule).optional(),
      xds: z.array(xdsAccessRule).optional(),
      kube: z.array(kubeAccessRule).optional(),
      agent: z.array(accessRule).optional(),
    })
    .default({}),
});

/** What TLS a listener speaks (src/listener/tls-profile.ts); `meshgate check` warns of a weak choice. */
const listenerTls = z
  .strictObject({
    minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default(DEFAULT_TLS_PROFILE.minVersion),
    ciphers: z.array(z.string().min(1)).min(1).default([...DEFAULT_TLS_PROFILE.ciphers]),
    curves: z.array(z.string().min(1)).min(1).default([...DEFAULT_TLS_PROFILE.curves]),
  })
  .check((ctx) => {
    // OpenSSL is the judge of names: a context made with them, or the reason it cannot be.
    try {
      createSecureContext(tlsServerOptions(ctx.value));
    } catch (err) {
      ctx.issues.push({ code: 'custom', input: ctx.value, message: `OpenSSL refuses these settings: ${err instanceof Error ? err.message : String(err)}` });
    }
    const unknown = ctx.value.ciphers.filter((c) => !KNOWN_CIPHERS.has(c.toLowerCase()));
    if (unknown.length > 0) {
      ctx.issues.push({ code: 'custom', input: ctx.value, path: ['ciphers'], message: `not a TLS 1.2 suite OpenSSL knows: ${unknown.join(', ')}` });
    }
  });

const listener = z.strictObject({
  host: z.string().default('0.0.0.0'),
  port,
  planes: z.array(z.enum(PLANES)),
  tls: listenerTls.default({ ...DEFAULT_TLS_PROFILE, ciphers: [...DEFAULT_TLS_PROFILE.ciphers], curves: [...DEFAULT_TLS_PROFILE.curves] }),
  defaultCertificate: z.strictObject({ cert: file, key: file }).optional(),
  maxConnections: z.number().int().positive().default(10_000),
  handshakeTimeout: duration.default(10_000),
  headersTimeout: duration.default(30_000),
  requestTimeout: duration.default(60_000),
  keepAliveTimeout: duration.default(5_000),
  idleTimeout: duration.default(300_000),
  maxHeaderSize: size.default(16 * 1024),
  http2: z
    .strictObject({
      maxConcurrentStreams: z.number().int().positive().default(100),
      /** Per-session nghttp2 memory cap, in MiB: beyond it new streams are refused. */
      maxSessionMemory: z.number().int().positive().default(32),
      initialWindowSize: z.number().int().min(65_535).max(2 ** 31 - 1).default(65_535),
    })
    .default({ maxConcurrentStreams: 100, maxSessionMemory: 32, initialWindowSize: 65_535 }),
});

export const configSchema = z
  .strictObject({
    admin: z
      .strictObject({
        host: z.string().default('127.0.0.1'),
        port: port.default(9901),
        /**
         * Who may read what is beyond /healthz and /readyz (/metrics, /status): a caller from one
         * of `sourceCIDRs`, or one that sends the token in `bearerTokenFile`.
         */
        access: z
          .strictObject({
            sourceCIDRs: z.array(z.union([z.cidrv4(), z.cidrv6()])).default([...ADMIN_LOOPBACK]),
            /** Host names a caller admitted by its address may use, besides IP literals and `localhost`. */
            hostNames: z.array(z.string().min(1)).optional(),
            bearerTokenFile: file.optional(),
          })
          .default({ sourceCIDRs: [...ADMIN_LOOPBACK] }),
      })
      .default({ host: '127.0.0.1', port: 9901, access: { sourceCIDRs: [...ADMIN_LOOPBACK] } }),
    logging: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        /**
         * The audit lines (each request's line, each kube long-running start) also to this file,
         * rotated by size: `<file>.1` … `<file>.<maxFiles>` kept. Relative to the config file.
         * With `serve --workers N`, each worker writes `<name>-worker-<k><ext>` of its own.
         */
        audit: z
          .strictObject({
            file: z.string().min(1),
            maxSize: size.refine((bytes) => bytes >= 1024, 'at least 1KiB').default(100 * 1024 * 1024),
            maxFiles: z.number().int().min(0).max(1000).default(5),
          })
          .optional(),
      })
      .default({ level: 'info' }),
    security: z
      .strictObject({ allowLoopbackUpstreams: z.boolean().default(false) })
      .default({ allowLoopbackUpstreams: false }),
    auth: z
      .strictObject({
        clockTolerance: duration.default(30_000),
        tokenCache: z
          .strictObject({ maxEntries: z.number().int().positive().default(10_000), maxTtl: duration.default(300_000) })
          .default({ maxEntries: 10_000, maxTtl: 300_000 }),
        jwks: z
          .strictObject({
            cooldown: duration.default(30_000),
            maxAge: duration.default(600_000),
            timeout: duration.default(5_000),
          })
          .default({ cooldown: 30_000, maxAge: 600_000, timeout: 5_000 }),
      })
      .default({
        clockTolerance: 30_000,
        tokenCache: { maxEntries: 10_000, maxTtl: 300_000 },
        jwks: { cooldown: 30_000, maxAge: 600_000, timeout: 5_000 },
      }),
    reload: z
      .strictObject({
        /**
         * How long work running on a replaced upstream pool (its address, CA or client certificate
         * changed) may go on: long enough for most streams to end on their own.
         */
        drainTimeout: duration.default(DEFAULT_DRAIN_MS),
        /** Re-read the config, and every file it names, when they change (SIGHUP always does). */
        watch: z.boolean().default(true),
        /** How often the files are compared with what is loaded, besides change notifications. */
        pollInterval: duration.default(5_000),
      })
      .default({ drainTimeout: DEFAULT_DRAIN_MS, watch: true, pollInterval: 5_000 }),
    /** Where tenants come from besides this file: MeshTenant resources. */
    tenantSource: z
      .strictObject({
        kubernetes: z.strictObject({
          /** The namespace of the MeshTenants and of the Secrets they name. */
          namespace: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/).max(63),
          /** A kubeconfig file; without it, the in-cluster service account. */
          kubeconfig: file.optional(),
          /** Only MeshTenants with these labels (a Kubernetes label selector). */
          labelSelector: z.string().min(1).optional(),
        }),
      })
      .optional(),
    listeners: z.record(name, listener).refine((l) => Object.keys(l).length > 0, 'at least one listener is required'),
    tenants: z.array(tenantSchema).default([]),
  })
  .check((ctx) => checkCrossReferences(ctx.value, ctx.issues));

export type RawConfig = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type TenantConfig = Config['tenants'][number];
export type RawTenantConfig = z.input<typeof tenantSchema>;
export type ReloadSettings = Config['reload'];
export type KubernetesSourceConfig = NonNullable<Config['tenantSource']>['kubernetes'];
export type ClusterConfig = TenantConfig['clusters'][number];
export type ListenerConfig = Config['listeners'][string];
export type UpstreamConfig = z.output<typeof upstream>;
export type XdsUpstreamConfig = z.output<typeof xdsUpstream>;
export type MetricsSettings = z.output<typeof metricsSettings>;
export type XdsSettings = z.output<typeof xdsSettings>;
export type AccessRule = z.output<typeof accessRule>;
export type XdsAccessRule = z.output<typeof xdsAccessRule>;
export type KubeAccessRule = z.output<typeof kubeAccessRule>;
export type KubePolicyRule = z.output<typeof kubePolicyRule>;
export type KubeSettings = z.output<typeof kubeSettings>;
export type ApiServerConfig = z.output<typeof apiServer>;
export type ControlPlaneViewConfig = z.output<typeof controlPlaneView>;
export type TokenReviewConfig = z.output<typeof tokenReview>;
export type WebhookSettings = z.output<typeof webhookSettings>;
export type DebugSettings = z.output<typeof debugSettings>;

type Issue = { code: 'custom'; message: string; path: PropertyKey[]; input: unknown };

/** Rules that span fields. Each issue carries the path of the field to fix. */
function checkCrossReferences(config: Config, issues: unknown[]): void {
  const report = (path: PropertyKey[], message: string): void => {
    issues.push({ code: 'custom', message, path, input: undefined } satisfies Issue);
  };

  const ports = new Map<number, string>([[config.admin.port, 'admin']]);
  for (const [listenerName, l] of Object.entries(config.listeners)) {
    const owner = ports.get(l.port);
    if (l.port !== 0 && owner !== undefined) report(['listeners', listenerName, 'port'], `port ${l.port} is already used by ${owner}`);
    ports.set(l.port, `listener "${listenerName}"`);
    if (new Set(l.planes).size !== l.planes.length) report(['listeners', listenerName, 'planes'], 'a plane is listed twice');
  }

  if (config.tenantSource === undefined && config.tenants.length === 0) {
    report(['tenants'], 'at least one tenant is required (or tenantSource.kubernetes, for MeshTenant resources)');
  }

  const tenantIds = new Set<string>();
  const hostOwner = new Map<string, string>();
  config.tenants.forEach((t, i) => {
    const at = (...rest: PropertyKey[]): PropertyKey[] => ['tenants', i, ...rest];
    if (tenantIds.has(t.id)) report(at('id'), `tenant id "${t.id}" is used twice`);
    tenantIds.add(t.id);

    t.hosts.forEach((host, h) => {
      const owner = hostOwner.get(host);
      if (owner !== undefined) report(at('hosts', h), `host "${host}" already belongs to tenant "${owner}"`);
      hostOwner.set(host, t.id);
    });

    const clusterIds = new Set<string>();
    t.clusters.forEach((c, j) => {
      if (clusterIds.has(c.id)) report(at('clusters', j, 'id'), `cluster id "${c.id}" is used twice in this tenant`);
      clusterIds.add(c.id);
    });

    if ((t.istiod.webhook === undefined) !== (t.webhook === undefined)) {
      report(at('webhook'), 'set "webhook" (its authentication) and "istiod.webhook" (its upstream) together');
    }
    if (t.webhook) {
      const methods = new Set(t.webhook.authentication);
      if (methods.has('pathKey') !== (t.webhook.pathKeyFile !== undefined)) {
        report(at('webhook', 'pathKeyFile'), 'set "pathKeyFile" exactly when authentication includes "pathKey"');
      }
      if (methods.has('clientCertificate') && t.tls.clientCA === undefined) {
        report(at('tls', 'clientCA'), 'webhook authentication includes "clientCertificate", so a client CA is required');
      }
    }
    // Certificate callers of the planes that talk to istiod need meshgate's own istiod token
    // (istiod sees meshgate, not the caller's certificate), and rules saying who may use it.
    for (const plane of ['debug', 'xds'] as const) {
      if (!t[plane].authentication.includes('clientCertificate')) continue;
      if (t.tls.clientCA === undefined) {
        report(at('tls', 'clientCA'), `${plane} authentication includes "clientCertificate", so a client CA is required`);
      }
      if (t.istiod[plane]?.token === undefined) {
        report(
          at('istiod', plane, 'token'),
          `${plane} authentication includes "clientCertificate": istiod needs a token for such callers, so set istiod.${plane}.token`,
        );
      }
      if (t.access[plane] === undefined) {
        report(
          at('access', plane),
          `${plane} authentication includes "clientCertificate", and such callers use meshgate's istiod token: set access.${plane} rules that say which may`,
        );
      }
    }
    t.debug.endpoints?.forEach((endpoint, e) => {
      if (isForbiddenEndpoint(endpoint)) {
        report(at('debug', 'endpoints', e), `"${endpoint}" changes istiod's state or costs it heavily; meshgate never forwards it`);
      }
    });
    for (const plane of ['debug', 'xds'] as const) {
      const tokenCluster = t.istiod[plane]?.token?.cluster;
      if (tokenCluster !== undefined && !clusterIds.has(tokenCluster)) {
        report(at('istiod', plane, 'token', 'cluster'), `"${tokenCluster}" is not a cluster of this tenant`);
      }
    }
    const kubeClusters = t.clusters.filter((c) => c.apiServer !== undefined);
    if (kubeClusters.length > 0 && t.access.kube === undefined) {
      report(at('access', 'kube'), 'clusters with an apiServer are reached only under access.kube rules: set them (profiles istiod, kiali-readonly)');
    }
    if (t.kube.authentication.includes('clientCertificate') && t.tls.clientCA === undefined && kubeClusters.length > 0) {
      report(at('tls', 'clientCA'), 'kube authentication includes "clientCertificate", so a client CA is required');
    }
    const view = t.controlPlaneView;
    if (view !== undefined) {
      if (clusterIds.has(view.cluster)) {
        report(at('controlPlaneView', 'cluster'), `"${view.cluster}" is a cluster of this tenant; the view needs a name of its own`);
      }
      // Kiali's requests through a port-forward carry no credential: istiod sees meshgate's.
      if (t.istiod.debug?.token === undefined) {
        report(at('istiod', 'debug', 'token'), 'the control-plane view reaches istiod through the debug plane with meshgate\'s own istiod token: set istiod.debug.token');
      }
      if (t.access.kube === undefined || t.access.debug === undefined) {
        report(at('access'), 'the control-plane view is read under access.kube rules and port-forwarded under access.debug rules: set both');
      }
    }
    for (const plane of PLANES) {
      t.access[plane]?.forEach((rule, r) => {
        if (rule.cluster !== undefined && !clusterIds.has(rule.cluster) && !(plane === 'kube' && rule.cluster === view?.cluster)) {
          report(at('access', plane, r, 'cluster'), `"${rule.cluster}" is not a cluster of this tenant`);
        }
      });
    }

    if (!config.security.allowLoopbackUpstreams) {
      const targets: [PropertyKey[], string | undefined][] = [
        [['webhook', 'url'], t.istiod.webhook?.url],
        [['debug', 'url'], t.istiod.debug?.url],
        ...(t.istiod.debug?.replicas ?? []).map((url, r): [PropertyKey[], string] => [['debug', 'replicas', r], url]),
        [['xds', 'url'], t.istiod.xds?.url],
        ...(t.istiod.xds?.replicas ?? []).map((url, r): [PropertyKey[], string] => [['xds', 'replicas', r], url]),
      ];
      for (const [path, url] of targets) {
        if (url !== undefined && isLoopbackHost(new URL(url).hostname)) {
          report(
            at('istiod', ...path),
            'istiod trusts loopback callers fully, so meshgate never reaches it over loopback ' +
              '(security.allowLoopbackUpstreams exists for the sandbox only)',
          );
        }
      }
      t.clusters.forEach((c, j) => {
        if (c.apiServer?.url !== undefined && isLoopbackHost(new URL(c.apiServer.url).hostname)) {
          report(
            at('clusters', j, 'apiServer', 'url'),
            "a cluster's API server is never on meshgate's own host (security.allowLoopbackUpstreams exists for the sandbox only)",
          );
        }
      });
    }
  });

  // A wildcard that covers another tenant's exact host would make routing depend on match order.
  for (const [host, owner] of hostOwner) {
    if (host.startsWith('*.')) continue;
    const wildcard = `*.${host.slice(host.indexOf('.') + 1)}`;
    const wildcardOwner = hostOwner.get(wildcard);
    if (wildcardOwner !== undefined && wildcardOwner !== owner) {
      const i = config.tenants.findIndex((t) => t.id === owner);
      report(['tenants', i, 'hosts'], `host "${host}" is also covered by tenant "${wildcardOwner}"'s "${wildcard}"`);
    }
  }
}

/** Addresses that reach the local host: loopback, and "this host" (0.0.0.0/8, ::), plain or IPv4-mapped. */
const LOCAL_HOST = new BlockList();
LOCAL_HOST.addSubnet('127.0.0.0', 8, 'ipv4');
LOCAL_HOST.addSubnet('0.0.0.0', 8, 'ipv4');
LOCAL_HOST.addAddress('::1', 'ipv6');
LOCAL_HOST.addAddress('::', 'ipv6');
LOCAL_HOST.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');
LOCAL_HOST.addSubnet('::ffff:0.0.0.0', 104, 'ipv6');

/** Whether a host name or address reaches this host: istiod would treat meshgate as itself. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  const family = isIP(host);
  return family !== 0 && LOCAL_HOST.check(host, family === 4 ? 'ipv4' : 'ipv6');
}
