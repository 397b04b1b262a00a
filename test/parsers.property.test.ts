/**
 * Properties of the parsers every request passes through (fast-check, bounded runs), each against
 * an independent statement of what it must do:
 *  - a path meshgate accepts is read the same way by an upstream: WHATWG URL and POSIX path
 *    normalization leave it as it is, and no segment decodes to a dot segment or a separator;
 *  - the kube request attributes are Kubernetes' RequestInfo, for paths generated from its grammar;
 *  - no header an upstream trusts survives the sanitizer, in any case or underscore spelling;
 *  - the config loader throws nothing but a ConfigError, whatever the YAML;
 *  - the webhook path's cluster is the one istiod reads, and no input throws anything else.
 * (The gRPC readers' properties are in src/grpc/readers.property.test.ts.)
 */
import { posix } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError } from '../src/config/issues.js';
import { loadConfigText } from '../src/config/load.js';
import { MeshgateError } from '../src/errors.js';
import { parseRequestTarget } from '../src/http/canonical-path.js';
import { isTrustedByUpstreams, normalizeHeaderName, sanitizeRequestHeaders } from '../src/http/headers.js';
import { parseWebhookPath } from '../src/planes/webhook/paths.js';
import { parseKubeRequest } from '../src/policy/kube-request.js';

const RUNS = { numRuns: 400 };

/** Strings made mostly of what path tricks are made of. */
const trickyPath = fc
  .array(fc.constantFrom('/', '.', '..', '%', '2', 'e', 'E', 'f', 'F', '5', 'c', 'C', '0', '\\', ';', 'a', 'k', 'debug', '?', '#', '%2F', '%2e', '%2E', '%5C', '%00', '%41', '%20', '%F0', '%C4%B1', ' ', '\u0000', 'é'), { maxLength: 24 })
  .map((parts) => `/${parts.join('')}`);

describe('canonical paths', () => {
  it('accepts only paths an upstream reads exactly as meshgate authorizes them', () => {
    fc.assert(
      fc.property(trickyPath, (target) => {
        let path: string;
        try {
          path = parseRequestTarget(target).path;
        } catch (err) {
          expect(err).toBeInstanceOf(MeshgateError);
          return;
        }
        // What a URL parser (Node, browsers, Go's url.Parse keeps the raw path) and a path
        // cleaner (Go's path.Clean, as net/http's mux applies) make of it: nothing to change.
        expect(new URL(`http://upstream${path}`).pathname).toBe(path);
        expect(posix.normalize(path)).toBe(path);
        // Decoded byte by byte, as an upstream may (a byte of 0x80 and above need not be UTF-8).
        for (const segment of path.split('/')) {
          const decoded = percentDecode(segment);
          expect(decoded.equals(Buffer.from('.')) || decoded.equals(Buffer.from('..'))).toBe(false);
          expect(decoded.includes(0x2f) || decoded.includes(0x5c) || decoded.includes(0)).toBe(false);
        }
      }),
      RUNS,
    );
  });
});

/** Percent-decoding to bytes, whatever they spell. */
function percentDecode(segment: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < segment.length; i++) {
    const hex = segment.slice(i + 1, i + 3);
    if (segment[i] === '%' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(segment[i] ?? '', 'utf8'));
    }
  }
  return Buffer.from(bytes);
}

/** A request generated from Kubernetes' URL grammar, with the RequestInfo it must give. */
const kubeRequest = fc
  .record({
    group: fc.constantFrom('', 'apps', 'networking.istio.io', 'meshgate.dev'),
    version: fc.constantFrom('v1', 'v1beta1', 'v1alpha3'),
    namespace: fc.option(fc.constantFrom('default', 'bookinfo', 'istio-system', 'watch', 'namespaces'), { nil: undefined }),
    resource: fc.constantFrom('pods', 'services', 'deployments', 'virtualservices', 'configmaps', 'secrets'),
    name: fc.option(fc.constantFrom('web', 'productpage-v1-abc', 'status', 'watch', 'namespaces'), { nil: undefined }),
    subresource: fc.option(fc.constantFrom('status', 'log', 'exec', 'portforward', 'scale'), { nil: undefined }),
    method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'),
    watchPrefix: fc.boolean(),
    watchQuery: fc.constantFrom(undefined, 'watch=true', 'watch=1', 'watch=false', 'watch=0'),
  })
  .map((r) => {
    const subresource = r.name === undefined ? undefined : r.subresource;
    const segments = [
      ...(r.group === '' ? ['api', r.version] : ['apis', r.group, r.version]),
      ...(r.watchPrefix ? ['watch'] : []),
      ...(r.namespace === undefined ? [] : ['namespaces', r.namespace]),
      r.resource,
      ...(r.name === undefined ? [] : [r.name]),
      ...(subresource === undefined ? [] : [subresource]),
    ];
    // RequestInfo (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go), stated for these inputs:
    let verb = r.watchPrefix ? 'watch' : ({ POST: 'create', GET: 'get', HEAD: 'get', PUT: 'update', PATCH: 'patch', DELETE: 'delete' } as const)[r.method];
    if (r.name === undefined && verb === 'get') verb = ['true', '1'].includes(r.watchQuery?.split('=')[1] ?? '') ? 'watch' : 'list';
    if (r.name === undefined && verb === 'delete') verb = 'deletecollection';
    if (subresource !== undefined && ['exec', 'portforward'].includes(subresource) && r.resource === 'pods') verb = 'create';
    return {
      method: r.method,
      path: `/${segments.join('/')}`,
      query: r.watchQuery,
      expected: {
        resourceRequest: true,
        verb,
        apiGroup: r.group,
        apiVersion: r.version,
        namespace: r.namespace ?? '',
        resource: r.resource,
        name: r.name ?? '',
        subresource: subresource ?? '',
      },
    };
  });

describe('kube request attributes', () => {
  it("are Kubernetes' RequestInfo for every path of its grammar", () => {
    fc.assert(
      fc.property(kubeRequest, ({ method, path, query, expected }) => {
        expect(parseKubeRequest(method, path, query)).toMatchObject(expected);
      }),
      RUNS,
    );
  });

  it('make anything outside /api and /apis a non-resource request, and never throw', () => {
    fc.assert(
      fc.property(fc.constantFrom('GET', 'POST', 'DELETE'), fc.array(fc.constantFrom('healthz', 'version', 'metrics', 'openapi', 'v2', 'api-x', 'apis2', ''), { maxLength: 4 }), (method, parts) => {
        const request = parseKubeRequest(method, `/${parts.join('/')}`, undefined);
        expect(request.resourceRequest).toBe(false);
        expect(request.resource).toBe('');
      }),
      RUNS,
    );
  });
});

const TRUSTED = ['clusterid', 'x-forwarded-client-cert', 'impersonate-user', 'impersonate-group', 'impersonate-extra-scopes', 'impersonate-uid', 'x-forwarded-for', 'x-forwarded-host', 'x-remote-user', 'x-remote-group'];

/** A trusted header's name, spelt some other way: any case, `_` for `-`. */
const respelt = fc.tuple(fc.constantFrom(...TRUSTED), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 }), fc.array(fc.boolean(), { minLength: 40, maxLength: 40 })).map(([name, upper, underscore]) =>
  Array.from(name, (c, i) => (c === '-' && underscore[i] ? '_' : upper[i] ? c.toUpperCase() : c)).join(''),
);

describe('header sanitizer', () => {
  it('leaves no header that upstreams trust, however it is spelt, and keeps every other', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.oneof(respelt, fc.constantFrom('accept', 'user-agent', 'x-request-id', 'content-type', 'x-forwarded', 'impersonate', 'clusterids')), { maxLength: 12, selector: (n) => n.toLowerCase() }), (names) => {
        // Node lowercases header names on receipt; underscores survive.
        const headers: Record<string, string> = Object.fromEntries(names.map((n) => [n.toLowerCase(), 'value']));
        const kept = Object.keys(headers).filter((n) => !isTrustedByUpstreams(normalizeHeaderName(n)));
        sanitizeRequestHeaders(headers);
        for (const name of Object.keys(headers)) expect(isTrustedByUpstreams(normalizeHeaderName(name))).toBe(false);
        for (const name of TRUSTED) expect(Object.keys(headers).map(normalizeHeaderName)).not.toContain(name);
        expect(Object.keys(headers).sort()).toEqual(kept.sort());
      }),
      RUNS,
    );
  });
});

describe('config loader', () => {
  it('throws nothing but a ConfigError, whatever the document', () => {
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), fc.dictionary(fc.constantFrom('listeners', 'tenants', 'admin', 'auth', 'reload', 'tenantSource', 'security', 'x'), fc.jsonValue())), (document) => {
        try {
          loadConfigText(stringify(document), '/nonexistent/meshgate.yaml');
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('throws nothing but a ConfigError on text that is not YAML', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(':', '-', ' ', '\n', '[', ']', '{', '}', '&', '*', '!', '|', '>', '"', "'", 'a', '1', '\t', '#', '%') }), (text) => {
        try {
          loadConfigText(text, '/nonexistent/meshgate.yaml');
        } catch (err) {
          expect(err).toBeInstanceOf(ConfigError);
        }
      }),
      { numRuns: 300 },
    );
  });
});

const clusterId = fc.stringMatching(/^[A-Za-z0-9][-A-Za-z0-9_.]{0,20}$/);

describe('webhook paths', () => {
  it('read the cluster istiod reads, in the path form and the :ENV: form', () => {
    fc.assert(
      fc.property(clusterId, fc.constantFrom('network1', 'net-2'), fc.boolean(), (cluster, network, envForm) => {
        const path = envForm ? `/inject/:ENV:cluster=${cluster}:ENV:net=${network}` : `/inject/cluster/${cluster}/net/${network}`;
        const parsed = parseWebhookPath(path);
        expect(parsed.clusters).toContain(cluster);
        expect(parsed.env.get('ISTIO_META_CLUSTER_ID')).toBe(cluster);
      }),
      RUNS,
    );
  });

  it('throw nothing but a MeshgateError, whatever the path', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom('/', 'inject', 'validate', 'k', 'cluster', 'net', ':ENV:', '=', 'cluster=', 'a', '--slash--', '%2F', ':'), { maxLength: 16 }),
        (parts) => {
          try {
            parseWebhookPath(`/${parts.join('')}`);
          } catch (err) {
            expect(err).toBeInstanceOf(MeshgateError);
          }
        },
      ),
      RUNS,
    );
  });
});
