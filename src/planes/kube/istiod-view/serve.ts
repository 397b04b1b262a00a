/**
 * Reads of a control-plane view, answered by meshgate as a Kubernetes API server would: discovery,
 * `/version`, get, list (label and field selectors) and watch of the view's objects, and
 * SelfSubjectAccessReviews answered with meshgate's own decision. Nothing in the view can be
 * written: any other verb is a `405 MethodNotAllowed` Status.
 */
import type { KubeRequest } from '../../../policy/kube-request.js';
import { MeshgateError } from '../../../errors.js';
import type { Exchange } from '../../../listener/exchange.js';
import { forEachField } from '../../../grpc/protobuf-wire.js';
import { readBody } from '../../../http/body.js';
import { resourceKey, viewDiscovery, viewResource, type ViewContents, type ViewObject } from './objects.js';

/** A watch with no `timeoutSeconds` ends after this long, as the API server's do (its minimum request timeout). */
const DEFAULT_WATCH_SECONDS = 1_800;
/** A SelfSubjectAccessReview is a few hundred bytes. */
const MAX_REVIEW_BYTES = 64 * 1024;
const REVIEW_DEADLINE_MS = 10_000;

/** Whether the caller may make this request in the view (meshgate's decision, for SelfSubjectAccessReviews). */
export type ViewCanI = (request: KubeRequest) => boolean;

export interface ViewRequestContext {
  readonly exchange: Exchange;
  readonly request: KubeRequest;
  readonly query: string | undefined;
  readonly contents: ViewContents;
  readonly canI: ViewCanI;
  /** Watches running on this view: each one's clean end, for when the view is replaced. */
  readonly watches: Set<() => void>;
}

const JSON_TYPE = { 'content-type': 'application/json' };

export async function serveViewRequest(context: ViewRequestContext): Promise<void> {
  const { exchange, request, query, contents } = context;
  if (!request.resourceRequest) {
    if (request.verb !== 'get' && request.verb !== 'head') throw readOnly();
    const document = request.path === '/version' ? versionInfo() : viewDiscovery(request.path);
    if (document !== undefined) return respond(exchange, 200, document);
    if (['/healthz', '/readyz', '/livez'].includes(request.path)) {
      exchange.respond(200, { 'content-type': 'text/plain; charset=utf-8' }, 'ok');
      return;
    }
    throw notFound('the server could not find the requested resource');
  }

  if (request.apiGroup === 'authorization.k8s.io' && request.resource === 'selfsubjectaccessreviews' && request.verb === 'create') {
    return answerReview(context);
  }
  const resource = request.subresource === '' ? viewResource(request.apiGroup, request.apiVersion, request.resource) : undefined;
  if (!resource) throw notFound('the server could not find the requested resource');
  if (!['get', 'list', 'watch'].includes(request.verb)) throw readOnly();

  const params = new URLSearchParams(query ?? '');
  const all = contents.objects.get(resourceKey(resource.groupVersion, resource.name)) ?? [];
  const inNamespace = all.filter((o) => request.namespace === '' || o.metadata.namespace === request.namespace || !resource.namespaced);
  if (request.verb === 'get') {
    const found = inNamespace.find((o) => o.metadata.name === request.name);
    if (!found) throw notFound(`${resource.name} "${request.name}" not found`);
    return respond(exchange, 200, found);
  }
  const matches = selector(params.get('labelSelector'), params.get('fieldSelector'));
  const items = inNamespace.filter((o) => request.name === '' || o.metadata.name === request.name).filter(matches);
  if (request.verb === 'list') {
    const [group, version] = resource.groupVersion.includes('/') ? resource.groupVersion.split('/') : ['', resource.groupVersion];
    return respond(exchange, 200, {
      kind: `${resource.kind}List`,
      apiVersion: group === '' ? version : resource.groupVersion,
      metadata: { resourceVersion: contents.resourceVersion },
      items,
    });
  }
  watch(context, params, items);
}

function respond(exchange: Exchange, status: number, body: object): void {
  exchange.respond(status, JSON_TYPE, JSON.stringify(body));
}

function readOnly(): MeshgateError {
  return new MeshgateError('MG_ERR_KUBE_VIEW_READ_ONLY', { message: 'the control-plane view is read-only: it answers get, list and watch, and port-forwards to istiod' });
}

function notFound(message: string): MeshgateError {
  return new MeshgateError('MG_ERR_ROUTE_NOT_FOUND', { message });
}

/**
 * A watch of objects that change only when meshgate's config does. From no resourceVersion (or
 * "0"), it starts with an ADDED event per object; from the view's own, with nothing; from any other,
 * with `410 Expired`, which sends client-go back to list. `sendInitialEvents` ends its ADDED events
 * with the bookmark the API server sends. It then stays open, silent, until `timeoutSeconds`, the
 * caller leaves, or the view is replaced (a reload that changed it): then it ends cleanly, and the
 * caller's next list sees the new view.
 */
function watch(context: ViewRequestContext, params: URLSearchParams, items: readonly ViewObject[]): void {
  const { exchange, contents } = context;
  const since = params.get('resourceVersion') ?? '';
  const stream = openStream(exchange);
  const send = (event: object): void => stream.write(`${JSON.stringify(event)}\n`);
  if (since !== '' && since !== '0' && since !== contents.resourceVersion) {
    send({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${since} (${contents.resourceVersion})`, reason: 'Expired', code: 410 } });
    stream.end();
    return;
  }
  if (since === '' || since === '0' || params.get('sendInitialEvents') === 'true') {
    for (const object of items) send({ type: 'ADDED', object });
  }
  if (params.get('sendInitialEvents') === 'true') {
    send({
      type: 'BOOKMARK',
      object: { kind: 'Status', apiVersion: 'v1', metadata: { resourceVersion: contents.resourceVersion, annotations: { 'k8s.io/initial-events-end': 'true' } } },
    });
  }
  const seconds = Number(params.get('timeoutSeconds') ?? DEFAULT_WATCH_SECONDS);
  const end = (): void => {
    clearTimeout(timer);
    context.watches.delete(end);
    stream.end();
  };
  const timer = setTimeout(end, (Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, DEFAULT_WATCH_SECONDS) : DEFAULT_WATCH_SECONDS) * 1000);
  timer.unref();
  context.watches.add(end);
  exchange.onClose(end);
}

interface ResponseStream {
  write(text: string): void;
  end(): void;
}

/** A 200 whose body is written as events happen (HTTP/1.1 chunked, or HTTP/2 DATA frames). */
function openStream(exchange: Exchange): ResponseStream {
  const headers = { ...JSON_TYPE, 'cache-control': 'no-cache, private' };
  if (exchange.protocol === 'http/1.1') {
    const { res } = exchange;
    res.writeHead(200, headers);
    res.flushHeaders();
    return {
      write: (text) => {
        if (!res.writableEnded) res.write(text);
      },
      end: () => {
        if (!res.writableEnded) res.end();
      },
    };
  }
  if (exchange.protocol === 'h2') {
    const { stream } = exchange;
    if (!stream.destroyed) stream.respond({ ':status': 200, ...headers });
    return {
      write: (text) => {
        if (stream.writable) stream.write(text);
      },
      end: () => {
        if (stream.writable) stream.end();
      },
    };
  }
  throw new MeshgateError('MG_ERR_REQUEST_UPGRADE', { message: 'upgrades are for pods portforward only' });
}

/** meshgate's own answer: may the caller do this in the view. */
async function answerReview(context: ViewRequestContext): Promise<void> {
  const { exchange } = context;
  const { body, release } = await readBody(exchange.body, { maxBytes: MAX_REVIEW_BYTES, budgets: [], deadlineMs: REVIEW_DEADLINE_MS });
  release();
  const contentType = exchange.headers['content-type'] ?? 'application/json';
  let review: ReviewBody;
  try {
    review = contentType.startsWith(PROTOBUF) ? reviewFromProtobuf(body) : (JSON.parse(body.toString('utf8')) as ReviewBody);
  } catch {
    throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'a SelfSubjectAccessReview must be JSON or Kubernetes protobuf' });
  }
  const resource = attributes(review, 'resourceAttributes');
  const nonResource = attributes(review, 'nonResourceAttributes');
  if (!resource && !nonResource) throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'a SelfSubjectAccessReview needs resourceAttributes or nonResourceAttributes' });
  const asked: KubeRequest = resource
    ? {
        resourceRequest: true,
        verb: resource.verb ?? '',
        path: '',
        apiGroup: resource.group ?? '',
        apiVersion: resource.version ?? '',
        namespace: resource.namespace ?? '',
        resource: resource.resource ?? '',
        subresource: resource.subresource ?? '',
        name: resource.name ?? '',
      }
    : { resourceRequest: false, verb: nonResource?.verb ?? '', path: nonResource?.path ?? '', apiGroup: '', apiVersion: '', namespace: '', resource: '', subresource: '', name: '' };
  // What meshgate lets through and the view can do: reads of its kinds, and a port-forward.
  const viewCan =
    asked.resourceRequest &&
    (((asked.verb === 'get' || asked.verb === 'list' || asked.verb === 'watch') && asked.subresource === '' && viewResource(asked.apiGroup, asked.apiVersion || 'v1', asked.resource) !== undefined) ||
      (asked.verb === 'create' && asked.resource === 'pods' && asked.subresource === 'portforward'));
  const allowed = viewCan && context.canI(asked);
  respond(exchange, 201, {
    kind: 'SelfSubjectAccessReview',
    apiVersion: 'authorization.k8s.io/v1',
    metadata: {},
    spec: review.spec,
    status: allowed ? { allowed: true, reason: 'meshgate: allowed by an access.kube rule' } : { allowed: false, reason: 'meshgate: the control-plane view does not allow this' },
  });
}

type Attributes = Record<string, string>;

/** A review's `spec.<field>`: an object of strings, or undefined when absent. Anything else is malformed. */
function attributes(review: unknown, field: 'resourceAttributes' | 'nonResourceAttributes'): Attributes | undefined {
  const malformed = (): MeshgateError => new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: `a SelfSubjectAccessReview's spec.${field} must be an object of strings` });
  if (typeof review !== 'object' || review === null) throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'a SelfSubjectAccessReview must be an object' });
  const spec = (review as { spec?: unknown }).spec;
  if (spec === undefined) return undefined;
  if (typeof spec !== 'object' || spec === null) throw malformed();
  const value = (spec as Record<string, unknown>)[field];
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed();
  const entries = Object.entries(value as Record<string, unknown>);
  // Kubernetes' own newer fields (fieldSelector, labelSelector) are objects: not meshgate's to judge.
  if (entries.some(([key, v]) => typeof v !== 'string' && !['fieldSelector', 'labelSelector'].includes(key))) throw malformed();
  return Object.fromEntries(entries.filter(([, v]) => typeof v === 'string')) as Attributes;
}
interface ReviewBody {
  spec?: { resourceAttributes?: Attributes; nonResourceAttributes?: Attributes };
}

const PROTOBUF = 'application/vnd.kubernetes.protobuf';
/** Kubernetes' protobuf envelope: these four bytes, then a runtime.Unknown whose field 2 is the object. */
const PROTOBUF_MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);
const RESOURCE_FIELDS = ['namespace', 'verb', 'group', 'version', 'resource', 'subresource', 'name'];
const NON_RESOURCE_FIELDS = ['path', 'verb'];

/**
 * A SelfSubjectAccessReview as kubectl sends it (protobuf, since kubectl 1.32): its spec's
 * resourceAttributes (fields 1–7: namespace, verb, group, version, resource, subresource, name) or
 * nonResourceAttributes (1–2: path, verb). Other fields are skipped.
 */
function reviewFromProtobuf(bytes: Buffer): ReviewBody {
  if (!bytes.subarray(0, 4).equals(PROTOBUF_MAGIC)) throw new Error('not a Kubernetes protobuf object');
  const unknown = bytes.subarray(4);
  const raw = fieldBytes(unknown, 2);
  const spec = raw && fieldBytes(raw, 2);
  if (!spec) return {};
  const strings = (message: Buffer | undefined, names: readonly string[]): Attributes | undefined => {
    if (!message) return undefined;
    const out: Attributes = {};
    forEachField(message, (field, wireType, start, end) => {
      const name = names[field - 1];
      if (name !== undefined && wireType === 2) out[name] = message.subarray(start, end).toString('utf8');
    });
    return out;
  };
  const resourceAttributes = strings(fieldBytes(spec, 1), RESOURCE_FIELDS);
  const nonResourceAttributes = strings(fieldBytes(spec, 2), NON_RESOURCE_FIELDS);
  return { spec: { ...(resourceAttributes ? { resourceAttributes } : {}), ...(nonResourceAttributes ? { nonResourceAttributes } : {}) } };
}

/** The bytes of a message's first length-delimited field `number`, or undefined. */
function fieldBytes(message: Buffer, number: number): Buffer | undefined {
  let found: Buffer | undefined;
  forEachField(message, (field, wireType, start, end) => {
    if (found === undefined && field === number && wireType === 2) found = message.subarray(start, end);
  });
  return found;
}

/** Equality and set-based label selectors, and `metadata.name` / `metadata.namespace` field selectors. */
function selector(labelSelector: string | null, fieldSelector: string | null): (o: ViewObject) => boolean {
  const tests: ((o: ViewObject) => boolean)[] = [];
  for (const term of splitTerms(labelSelector ?? '')) tests.push(labelTest(term));
  for (const term of splitTerms(fieldSelector ?? '')) tests.push(fieldTest(term));
  return (o) => tests.every((test) => test(o));
}

/** Splits on commas outside parentheses: `a in (x,y),b` is two terms. */
function splitTerms(text: string): string[] {
  const terms: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = text[i];
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if ((c === ',' && depth === 0) || i === text.length) {
      const term = text.slice(start, i).trim();
      if (term !== '') terms.push(term);
      start = i + 1;
    }
  }
  return terms;
}

function badSelector(term: string): MeshgateError {
  return new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: `unable to parse selector requirement "${term.slice(0, 100)}"` });
}

function labelTest(term: string): (o: ViewObject) => boolean {
  const labels = (o: ViewObject): Readonly<Record<string, string>> => o.metadata.labels ?? {};
  const set = /^([^\s!=()]+)\s+(in|notin)\s+\(([^()]*)\)$/.exec(term);
  if (set) {
    const [, key = '', op, list = ''] = set;
    const values = list.split(',').map((v) => v.trim());
    return op === 'in' ? (o) => values.includes(labels(o)[key] ?? '\0') : (o) => !values.includes(labels(o)[key] ?? '\0');
  }
  const compare = /^([^\s!=()]+)\s*(==|=|!=)\s*([^\s!=(),]*)$/.exec(term);
  if (compare) {
    const [, key = '', op, value = ''] = compare;
    return op === '!=' ? (o) => labels(o)[key] !== value : (o) => labels(o)[key] === value;
  }
  const exists = /^(!?)([^\s!=(),]+)$/.exec(term);
  if (exists) {
    const [, not, key = ''] = exists;
    return not === '!' ? (o) => !(key in labels(o)) : (o) => key in labels(o);
  }
  throw badSelector(term);
}

function fieldTest(term: string): (o: ViewObject) => boolean {
  const compare = /^([a-zA-Z.]+)\s*(==|=|!=)\s*([^\s,]*)$/.exec(term);
  const field = compare?.[1];
  if (!compare || (field !== 'metadata.name' && field !== 'metadata.namespace')) throw badSelector(term);
  const value = compare[3] ?? '';
  const read = (o: ViewObject): string => (field === 'metadata.name' ? o.metadata.name : (o.metadata.namespace ?? ''));
  return compare[2] === '!=' ? (o) => read(o) !== value : (o) => read(o) === value;
}

/** The view answers `/version` for itself; Kiali reads a Kubernetes version from it. */
function versionInfo(): object {
  return {
    major: '1',
    minor: '33',
    gitVersion: 'v1.33.0+meshgate-view',
    gitCommit: '',
    gitTreeState: 'clean',
    buildDate: '2025-01-01T00:00:00Z',
    goVersion: '',
    compiler: 'meshgate',
    platform: 'linux/amd64',
  };
}
