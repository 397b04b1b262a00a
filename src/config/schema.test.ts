import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError, formatIssues } from './issues.js';
import { loadConfigText, parseConfig } from './load.js';
import { isLoopbackHost } from './schema.js';

const tenant = (id: string, overrides: Record<string, unknown> = {}) => ({
  id,
  hosts: [`${id}.mesh.example.com`],
  tls: { cert: `${id}.pem`, key: `${id}-key.pem`, clientCA: `${id}-clients.pem` },
  istiod: {
    webhook: { url: `https://istiod.${id}-cp.svc:15017`, ca: `${id}-istiod-ca.pem` },
    debug: { url: `http://istiod.${id}-cp.svc:15014` },
  },
  clusters: [{ id: `${id}-east`, issuer: 'https://kubernetes.default.svc.cluster.local', jwks: { file: `${id}-east-jwks.json` } }],
  webhook: { authentication: ['clientCertificate'] },
  ...overrides,
});

const base = (overrides: Record<string, unknown> = {}) => ({
  listeners: { webhook: { port: 15017, planes: ['webhook'] }, api: { port: 8443, planes: ['debug'] } },
  tenants: [tenant('acme'), tenant('globex')],
  ...overrides,
});

function problems(doc: unknown): string[] {
  try {
    parseConfig(stringify(doc));
  } catch (err) {
    if (err instanceof ConfigError) return formatIssues(err.issues).split('\n');
    throw err;
  }
  return [];
}

describe('parseConfig', () => {
  it('accepts a valid config and fills in defaults', () => {
    const config = parseConfig(stringify(base()));
    expect(config.admin).toEqual({ host: '127.0.0.1', port: 9901, access: { sourceCIDRs: ['127.0.0.0/8', '::1/128'] } });
    expect(config.auth.jwks).toEqual({ cooldown: 30_000, maxAge: 600_000, timeout: 5_000 });
    expect(config.tenants[0]?.webhook?.maxBodySize).toBe(6 * 1024 * 1024);
    expect(config.tenants[0]?.webhook?.audiences).toEqual(['meshgate-webhook']);
    expect(config.tenants[0]?.debug.audiences).toEqual(['istio-ca']);
    expect(config.listeners.webhook?.handshakeTimeout).toBe(10_000);
  });

  it('reports every problem at once, each with its path, unknown keys included', () => {
    const doc = base({ surprise: true });
    const [acme] = doc.tenants;
    Object.assign(acme ?? {}, { hots: ['x'] });
    Object.assign(doc.listeners.webhook, { port: 'fifteen' });
    expect(problems(doc)).toEqual([
      'listeners.webhook.port: Invalid input: expected number, received string',
      'tenants[0]: Unrecognized key: "hots"',
      '(root): Unrecognized key: "surprise"',
    ]);
  });

  it('explains mutually exclusive JWKS sources', () => {
    const both = tenant('acme', { clusters: [{ id: 'c', issuer: 'i', jwks: { file: 'f', url: 'https://x/jwks' } }] });
    const neither = tenant('globex', { clusters: [{ id: 'c', issuer: 'i', jwks: {} }] });
    expect(problems(base({ tenants: [both, neither] }))).toEqual([
      'tenants[0].clusters[0].jwks: set either "url" or "file"',
      'tenants[1].clusters[0].jwks: set either "url" or "file"',
    ]);
  });

  it('takes an API server by url or via an agent, the agent needing a serverName, its own CA and keys meshgate holds', () => {
    const cluster = (id: string, apiServer: Record<string, unknown>, more: Record<string, unknown> = { jwks: { file: 'k.json' } }) => ({ id, issuer: 'i', ...more, apiServer: { credentials: { tokenFile: 't' }, ...apiServer } });
    const acme = tenant('acme', {
      clusters: [
        cluster('ok', { via: 'agent', serverName: 'kubernetes.default.svc', ca: 'ca.pem' }),
        cluster('both', { url: 'https://10.0.0.1:6443', via: 'agent', serverName: 'x', ca: 'ca.pem' }),
        cluster('neither', {}),
        cluster('unnamed', { via: 'agent', ca: 'ca.pem' }),
        cluster('reviewed', { via: 'agent', serverName: 'x', ca: 'ca.pem' }, { tokenReview: {} }),
        cluster('public', { via: 'agent', serverName: 'x' }),
      ],
      access: { kube: [{ method: 'token', profiles: ['istiod'] }], agent: [{ cluster: 'ok' }] },
    });
    expect(problems(base({ tenants: [acme] }))).toEqual([
      'tenants[0].clusters[1].apiServer: set either "url" or "via: agent"',
      'tenants[0].clusters[2].apiServer: set either "url" or "via: agent"',
      'tenants[0].clusters[3].apiServer.serverName: with "via: agent" there is no URL to take the name from: set the name the API server\'s certificate is for',
      'tenants[0].clusters[4].tokenReview: meshgate calls TokenReview directly, which an agent cluster cannot take: use "jwks" (a file, or a URL meshgate reaches)',
      'tenants[0].clusters[5].apiServer.ca: with "via: agent", set "ca", the API server\'s own CA: a certificate from a public CA for its name would let the agent read the traffic',
    ]);
  });

  it('requires at least one webhook authentication method', () => {
    expect(problems(base({ tenants: [tenant('acme', { webhook: { authentication: [] } })] }))).toEqual([
      'tenants[0].webhook.authentication: at least one authentication method is required',
    ]);
  });

  it('ties a path key file to the pathKey method, and client certificates to a client CA', () => {
    const noKeyFile = tenant('acme', { webhook: { authentication: ['pathKey'] } });
    const noCa = tenant('globex', { tls: { cert: 'c', key: 'k' } });
    expect(problems(base({ tenants: [noKeyFile, noCa] }))).toEqual([
      'tenants[0].webhook.pathKeyFile: set "pathKeyFile" exactly when authentication includes "pathKey"',
      'tenants[1].tls.clientCA: webhook authentication includes "clientCertificate", so a client CA is required',
    ]);
  });

  it('refuses duplicate tenants, hosts, clusters and ports', () => {
    const dup = tenant('acme', {
      clusters: [
        { id: 'c', issuer: 'i', jwks: { file: 'f' } },
        { id: 'c', issuer: 'i', jwks: { file: 'f' } },
      ],
    });
    expect(
      problems(base({ tenants: [dup, tenant('acme')], listeners: { a: { port: 9901, planes: [] }, b: { port: 443, planes: ['webhook', 'webhook'] } } })),
    ).toEqual([
      'listeners.a.port: port 9901 is already used by admin',
      'listeners.b.planes: a plane is listed twice',
      'tenants[0].clusters[1].id: cluster id "c" is used twice in this tenant',
      'tenants[1].id: tenant id "acme" is used twice',
      'tenants[1].hosts[0]: host "acme.mesh.example.com" already belongs to tenant "acme"',
    ]);
  });

  it("refuses a wildcard that covers another tenant's host", () => {
    expect(
      problems(base({ tenants: [tenant('acme', { hosts: ['*.mesh.example.com'] }), tenant('globex', { hosts: ['globex.mesh.example.com'] })] })),
    ).toEqual(['tenants[1].hosts: host "globex.mesh.example.com" is also covered by tenant "acme"\'s "*.mesh.example.com"']);
  });

  it('refuses loopback istiod upstreams: istiod trusts loopback callers fully', () => {
    const loopback = tenant('acme', { istiod: { webhook: { url: 'https://127.0.0.1:15017' }, debug: { url: 'http://localhost:15014' } } });
    expect(problems(base({ tenants: [loopback] }))).toHaveLength(2);
    for (const url of ['https://[::ffff:127.0.0.1]:15017', 'https://0.0.0.0:15017', 'https://[::]:15017', 'https://127.1:15017']) {
      const local = tenant('acme', { istiod: { webhook: { url } } });
      expect(problems(base({ tenants: [local] })), url).toHaveLength(1);
    }
    expect(problems(base({ tenants: [loopback], security: { allowLoopbackUpstreams: true } }))).toEqual([]);
  });

  it('never lets a tenant allow state-changing debug endpoints', () => {
    expect(problems(base({ tenants: [tenant('acme', { debug: { endpoints: ['syncz', 'force_disconnect', 'pprof/heap'] } })] }))).toEqual([
      'tenants[0].debug.endpoints[1]: "force_disconnect" changes istiod\'s state or costs it heavily; meshgate never forwards it',
      'tenants[0].debug.endpoints[2]: "pprof/heap" changes istiod\'s state or costs it heavily; meshgate never forwards it',
    ]);
  });

  it('requires istiod.debug.token, and rules, when certificate callers may use the debug plane', () => {
    expect(problems(base({ tenants: [tenant('acme', { debug: { authentication: ['token', 'clientCertificate'] } })] }))).toEqual([
      'tenants[0].istiod.debug.token: debug authentication includes "clientCertificate": istiod needs a token for such callers, so set istiod.debug.token',
      'tenants[0].access.debug: debug authentication includes "clientCertificate", and such callers use meshgate\'s istiod token: set access.debug rules that say which may',
    ]);
  });

  it("checks the xds upstream: one of url or replicas, https only, keepalive no closer than istiod's ping policy allows", () => {
    const xds = (upstream: Record<string, unknown>) =>
      tenant('acme', { istiod: { webhook: { url: 'https://istiod.acme-cp.svc:15017' }, xds: upstream } });
    expect(problems(base({ tenants: [xds({ url: 'https://istiod.acme-cp.svc:15012' })] }))).toEqual([]);
    expect(problems(base({ tenants: [xds({ replicas: ['https://10.0.0.1:15012', 'https://10.0.0.2:15012'] })] }))).toEqual([]);
    expect(problems(base({ tenants: [xds({})] }))).toEqual(['tenants[0].istiod.xds: set either "url" or "replicas"']);
    expect(problems(base({ tenants: [xds({ url: 'http://istiod.acme-cp.svc:15012' })] }))).toHaveLength(1);
    expect(problems(base({ tenants: [xds({ replicas: ['https://10.0.0.1:15012'], discovery: 'dns' })] }))).toEqual([
      'tenants[0].istiod.xds: discovery "dns" resolves the host of "url": set "url"',
    ]);
    expect(problems(base({ tenants: [xds({ url: 'https://istiod.acme-cp.svc:15012', keepaliveInterval: '10s' })] }))).toEqual([
      'tenants[0].istiod.xds.keepaliveInterval: istiod answers pings closer than 15 s apart with GOAWAY; use at least "30s"',
    ]);
    expect(problems(base({ tenants: [xds({ url: 'https://127.0.0.1:15012' })] }))).toHaveLength(1);
  });

  it('requires istiod.xds.token, and rules, when certificate callers may use the xds plane', () => {
    const upstream = { webhook: { url: 'https://istiod.acme-cp.svc:15017' }, xds: { url: 'https://istiod.acme-cp.svc:15012' } };
    expect(problems(base({ tenants: [tenant('acme', { istiod: upstream, xds: { authentication: ['token', 'clientCertificate'] } })] }))).toEqual([
      'tenants[0].istiod.xds.token: xds authentication includes "clientCertificate": istiod needs a token for such callers, so set istiod.xds.token',
      'tenants[0].access.xds: xds authentication includes "clientCertificate", and such callers use meshgate\'s istiod token: set access.xds rules that say which may',
    ]);
  });

  it('parses durations and sizes, and says what it expected', () => {
    expect(problems(base({ auth: { clockTolerance: 'soon' } }))).toEqual([
      'auth.clockTolerance: "soon" is not a duration: use e.g. "500ms", "10s", "5m"',
    ]);
    const sized = tenant('acme', { webhook: { authentication: ['clientCertificate'], maxBodySize: '1MiB', timeout: '2s' } });
    const config = parseConfig(stringify(base({ tenants: [sized] })));
    expect(config.tenants[0]?.webhook).toMatchObject({ maxBodySize: 1024 * 1024, timeout: 2000 });
  });

  it('reports YAML syntax errors and duplicate keys', () => {
    expect(() => parseConfig('tenants: [\n')).toThrow(ConfigError);
    expect(() => parseConfig('listeners: {}\nlisteners: {}\n')).toThrow(/Map keys must be unique/);
  });

  it('freezes nothing it parses in place (the loader freezes the result)', () => {
    expect(Object.isFrozen(parseConfig(stringify(base())))).toBe(false);
  });
});

describe('isLoopbackHost', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.1.2.3', true],
    ['::1', true],
    ['[::1]', true],
    ['::ffff:127.0.0.1', true],
    ['::ffff:7f00:1', true],
    ['[::ffff:7f00:1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['0.0.0.0', true],
    ['::', true],
    ['[::]', true],
    ['::ffff:0.0.0.0', true],
    ['localhost', true],
    ['istiod.localhost', true],
    ['10.0.0.1', false],
    ['istiod.acme-cp.svc', false],
    ['::ffff:10.0.0.1', false],
    ['::ffff:a00:1', false],
    ['fe80::1', false],
  ])('%s → %s', (host, loopback) => {
    expect(isLoopbackHost(host)).toBe(loopback);
  });
});

describe('YAML that fails only when read', () => {
  it.each([
    ['an alias to no anchor', '*missing:\n'],
    ['a billion laughs', ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(10).fill(`*${String.fromCharCode(97 + i)}`).join(', ')}]`)].join('\n')],
  ])('is a ConfigError, never a crash: %s', (_name, text) => {
    expect(() => loadConfigText(text, '/nonexistent/meshgate.yaml')).toThrow(ConfigError);
  });
});
