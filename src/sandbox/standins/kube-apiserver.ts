/**
 * A stand-in for one mesh cluster's kube-apiserver, for the sandbox and the tests: enough of the
 * real thing for `kubectl` (1.32) and client libraries to work against it over HTTPS/1.1.
 *  - authentication: a client certificate signed by the cluster's client CA, or a bearer token
 *    signed by the cluster's issuer; `Impersonate-*` for the configured impersonators only;
 *  - legacy discovery, `/version`, OIDC discovery and the issuer's JWKS (counted);
 *  - namespaces, pods and services: get, list and watch, with field and label selectors; a timer
 *    changes a bookinfo pod every `podChangeIntervalMs` so watches see MODIFIED events;
 *  - TokenReview and SelfSubjectReview (`kubectl auth whoami`);
 *  - configmaps that echo what is written, and one (`bookinfo/blob`) served as protobuf bytes, so
 *    tests can check binary bodies both ways;
 *  - secrets and meshgate.dev MeshTenants, stored: create, replace, delete, get, list and watch,
 *    and a MeshTenant's status subresource (JSON or merge patch), as a config cluster serves them;
 *  - exec, attach and port-forward over SPDY/3.1 and WebSocket (see kube-streams.ts).
 * It records every request, with the user it ran as, before answering.
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createSecureServer } from 'node:http2';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import type { Issuer } from '../issuer.js';
import { listen } from '../../listener/listen.js';
import { authenticate, impersonate, reviewToken, selfSubjectReview, type KubeUser } from './kube-auth.js';
import {
  discoveryDocument,
  kubeStatus,
  notFound,
  openIdConfiguration,
  pathNotFound,
  unauthorized,
  versionInfo,
} from './kube-documents.js';
import { RequestError, parseUrl, readBody, readJson, rejectUpgrade, sendJson, serveWatch } from './kube-http.js';
import { createKubeStore, createSelector, type KubeObject, type KubeResource } from './kube-objects.js';
import { chooseWebSocketProtocol, serveSpdy, serveWebSocket, type StreamKind, type StreamTarget } from './kube-streams.js';

export interface KubeApiServerOptions {
  /** The cluster's name, e.g. 'acme-east'; object names and uids derive from it. */
  readonly cluster: string;
  /** The server certificate (valid for 127.0.0.1) and its key. */
  readonly tls: { readonly cert: string; readonly key: string };
  /** PEM: client certificates signed by it authenticate as user = CN, groups = O values. */
  readonly clientCa: string;
  /** Its keys sign this cluster's service-account tokens. */
  readonly issuer: Issuer;
  /** Usernames allowed to send Impersonate-* headers. */
  readonly impersonators: readonly string[];
  /** How often a bookinfo pod changes, so watches see MODIFIED events; default 2,000 ms. */
  readonly podChangeIntervalMs?: number;
  readonly host?: string;
  readonly onRequest?: (request: RecordedKubeRequest) => void;
}

export interface RecordedKubeRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly rawHeaders: readonly string[];
  /** The user the request ran as, after impersonation; undefined when unauthenticated. */
  readonly user?: { readonly username: string; readonly groups: readonly string[] };
  /** 'websocket' or 'SPDY/3.1' when the request was an upgrade. */
  readonly upgrade?: string;
}

export interface KubeApiServerStandIn {
  readonly cluster: string;
  /** https://127.0.0.1:<port> */
  readonly url: string;
  readonly requests: RecordedKubeRequest[];
  /** Bytes served for a GET of /api/v1/namespaces/bookinfo/configmaps/blob when Accept asks for application/vnd.kubernetes.protobuf. */
  readonly protobufBlob: Buffer;
  /** How many times /openid/v1/jwks was fetched. */
  jwksFetches(): number;
  /** How many TokenReviews were answered. */
  tokenReviews(): number;
  close(): Promise<void>;
}

const PROTOBUF = 'application/vnd.kubernetes.protobuf';
const KINDS: Readonly<Record<KubeResource, string>> = {
  namespaces: 'Namespace',
  pods: 'Pod',
  services: 'Service',
  secrets: 'Secret',
  meshtenants: 'MeshTenant',
};
const API_VERSIONS: Readonly<Record<KubeResource, string>> = {
  namespaces: 'v1',
  pods: 'v1',
  services: 'v1',
  secrets: 'v1',
  meshtenants: 'meshgate.dev/v1alpha1',
};
/** Resources written through the API and kept: what a config cluster holds for meshgate's tenant source. */
const WRITABLE = new Set<KubeResource>(['secrets', 'meshtenants']);
const PUBLIC_PATHS = new Set(['/version', '/healthz', '/livez', '/readyz', '/.well-known/openid-configuration', '/openid/v1/jwks']);

export async function startKubeApiServerStandIn(options: KubeApiServerOptions): Promise<KubeApiServerStandIn> {
  const store = createKubeStore(options.cluster);
  const protobufBlob = createProtobufBlob(options.cluster);
  const requests: RecordedKubeRequest[] = [];
  const counts = { jwks: 0, tokenReviews: 0 };
  const upgraded = new Set<Duplex>();
  let url = '';

  const identify = async (req: IncomingMessage): Promise<{ user?: KubeUser; denial?: RequestError }> => {
    const authenticated = await authenticate(req, options.issuer);
    if (!authenticated) return {};
    const result = impersonate(req, authenticated, options.impersonators);
    return 'user' in result ? { user: result.user } : { user: authenticated, denial: new RequestError(result.code, result.status) };
  };
  const record = (req: IncomingMessage, user: KubeUser | undefined, upgrade?: string): void => {
    const entry: RecordedKubeRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      ...(user ? { user: { username: user.username, groups: [...user.groups] } } : {}),
      ...(upgrade === undefined ? {} : { upgrade }),
    };
    requests.push(entry);
    options.onRequest?.(entry);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = parseUrl(req.url);
    const path = target.pathname.length > 1 ? target.pathname.replace(/\/+$/, '') : target.pathname;
    const { user, denial } = await identify(req);
    record(req, user);
    if (PUBLIC_PATHS.has(path) && req.method === 'GET') {
      servePublic(res, path);
      return;
    }
    if (!user) throw new RequestError(401, unauthorized());
    if (denial) throw denial;
    await route(req, res, path, target.searchParams, user);
  };

  const servePublic = (res: ServerResponse, path: string): void => {
    if (path === '/version') sendJson(res, 200, versionInfo());
    else if (path === '/.well-known/openid-configuration') {
      const algorithms = [...new Set(options.issuer.jwks().keys.map((k) => k.alg ?? 'RS256'))];
      sendJson(res, 200, openIdConfiguration(options.issuer.issuer, `${url}/openid/v1/jwks`, algorithms));
    } else if (path === '/openid/v1/jwks') {
      counts.jwks++;
      sendJson(res, 200, options.issuer.jwks(), 'application/jwk-set+json');
    } else res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end('ok');
  };

  const route = async (req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams, user: KubeUser): Promise<void> => {
    const method = req.method ?? 'GET';
    const discovery = method === 'GET' ? discoveryDocument(path, new URL(url).host) : undefined;
    if (discovery) {
      sendJson(res, 200, discovery);
      return;
    }
    if (method === 'POST' && path === '/apis/authentication.k8s.io/v1/tokenreviews') {
      counts.tokenReviews++;
      sendJson(res, 201, await reviewToken(options.issuer, await readJson(req)));
      return;
    }
    if (method === 'POST' && path === '/apis/authentication.k8s.io/v1/selfsubjectreviews') {
      // kubectl sends this one as protobuf; its body says nothing the caller's credentials don't.
      await readBody(req);
      sendJson(res, 201, selfSubjectReview(user));
      return;
    }
    const custom = /^\/apis\/meshgate\.dev\/v1alpha1(?:\/namespaces\/([^/]+))?\/(meshtenants)(?:\/([^/]+))?(?:\/(status))?$/.exec(path);
    const core = custom ?? /^\/api\/v1(?:\/namespaces\/([^/]+))?\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(path);
    if (!core) throw new RequestError(404, pathNotFound());
    const [, namespace, resource = '', name, subresource] = core;
    if (isResource(resource) && WRITABLE.has(resource) && method !== 'GET') {
      await serveWrite(req, res, resource, namespace, name, subresource);
      return;
    }
    if (resource === 'configmaps' && subresource === undefined) {
      await serveConfigMaps(req, res, namespace, name);
      return;
    }
    if (!isResource(resource) || (resource === 'namespaces' && namespace !== undefined)) throw new RequestError(404, pathNotFound());
    if (subresource !== undefined) {
      const pod = resource === 'pods' && name !== undefined ? store.get('pods', namespace, name) : undefined;
      if (!pod) throw new RequestError(404, name !== undefined && resource === 'pods' ? notFound('pods', name) : pathNotFound());
      if (subresource === 'log' && method === 'GET') {
        const line = `${pod.metadata.creationTimestamp} ${pod.metadata.name} started on ${options.cluster}\n`;
        res.writeHead(200, { 'content-type': 'text/plain' }).end(line);
        return;
      }
      if (!['exec', 'attach', 'portforward'].includes(subresource)) throw new RequestError(404, pathNotFound());
      throw new RequestError(400, kubeStatus(400, 'BadRequest', 'Upgrade request required'));
    }
    if (method !== 'GET') throw new RequestError(405, kubeStatus(405, 'MethodNotAllowed', `${method} is not supported by the sandbox`));
    if (name !== undefined) {
      const object = store.get(resource, namespace, name);
      if (!object) throw new RequestError(404, notFound(resource, name));
      sendJson(res, 200, object);
      return;
    }
    let selector: (object: KubeObject) => boolean;
    try {
      selector = createSelector(query.get('fieldSelector'), query.get('labelSelector'));
    } catch (error) {
      throw new RequestError(400, kubeStatus(400, 'BadRequest', error instanceof Error ? error.message : 'bad selector'));
    }
    if (['1', 'true'].includes(query.get('watch') ?? '')) {
      serveWatch(res, store, resource, KINDS[resource], namespace, selector, query);
      return;
    }
    const items = store.list(resource, namespace).filter(selector);
    sendJson(res, 200, { kind: `${KINDS[resource]}List`, apiVersion: API_VERSIONS[resource], metadata: { resourceVersion: store.resourceVersion() }, items });
  };

  const serveWrite = async (
    req: IncomingMessage,
    res: ServerResponse,
    resource: KubeResource,
    namespace: string | undefined,
    name: string | undefined,
    subresource: string | undefined,
  ): Promise<void> => {
    const method = req.method ?? '';
    const kind = KINDS[resource];
    if (namespace === undefined) throw new RequestError(405, kubeStatus(405, 'MethodNotAllowed', `${kind}s are written in a namespace`));
    if (method === 'DELETE' && name !== undefined && subresource === undefined) {
      const gone = store.remove(resource, namespace, name);
      if (!gone) throw new RequestError(404, notFound(resource, name));
      sendJson(res, 200, gone);
      return;
    }
    if (method === 'PATCH' && name !== undefined && subresource === 'status') {
      const body: unknown = JSON.parse((await readBody(req)).toString('utf8') || 'null');
      const status = statusFromPatch(body);
      if (status === undefined) throw new RequestError(422, kubeStatus(422, 'Invalid', 'the sandbox patches /status only'));
      const patched = store.patchStatus(resource, namespace, name, status);
      if (!patched) throw new RequestError(404, notFound(resource, name));
      sendJson(res, 200, patched);
      return;
    }
    if ((method === 'POST' && name === undefined) || (method === 'PUT' && name !== undefined && subresource === undefined)) {
      const body = await readJson(req);
      const metadata = (typeof body.metadata === 'object' && body.metadata !== null ? body.metadata : {}) as Record<string, unknown>;
      const objectName = typeof metadata.name === 'string' ? metadata.name : name;
      if (objectName === undefined || (name !== undefined && objectName !== name)) {
        throw new RequestError(422, kubeStatus(422, 'Invalid', `${kind} "${String(objectName)}" is invalid: metadata.name: Required value`, { kind }));
      }
      const exists = store.get(resource, namespace, objectName) !== undefined;
      if (method === 'POST' && exists) throw new RequestError(409, kubeStatus(409, 'AlreadyExists', `${resource} "${objectName}" already exists`, { kind }));
      if (method === 'PUT' && !exists) throw new RequestError(404, notFound(resource, objectName));
      const stored = store.apply(resource, {
        ...body,
        apiVersion: API_VERSIONS[resource],
        kind,
        metadata: { ...metadata, name: objectName, namespace } as KubeObject['metadata'],
      });
      sendJson(res, method === 'POST' ? 201 : 200, stored);
      return;
    }
    throw new RequestError(405, kubeStatus(405, 'MethodNotAllowed', `${method} is not supported by the sandbox`));
  };

  const blob: KubeObject = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: 'blob', namespace: 'bookinfo', ...store.stamp('bookinfo', 'blob') },
    binaryData: { blob: protobufBlob.toString('base64') },
  };
  const serveConfigMaps = async (req: IncomingMessage, res: ServerResponse, namespace?: string, name?: string): Promise<void> => {
    const method = req.method ?? 'GET';
    if (method === 'GET' && name === 'blob' && namespace === 'bookinfo') {
      if ((req.headers.accept ?? '').includes(PROTOBUF)) res.writeHead(200, { 'content-type': PROTOBUF }).end(protobufBlob);
      else sendJson(res, 200, blob);
    } else if (method === 'GET' && name !== undefined) {
      throw new RequestError(404, notFound('configmaps', name));
    } else if (method === 'GET') {
      const items = namespace === undefined || namespace === 'bookinfo' ? [blob] : [];
      sendJson(res, 200, { kind: 'ConfigMapList', apiVersion: 'v1', metadata: { resourceVersion: store.resourceVersion() }, items });
    } else if (namespace !== undefined && ((method === 'POST' && name === undefined) || (method === 'PUT' && name !== undefined))) {
      const code = method === 'POST' ? 201 : 200;
      const contentType = req.headers['content-type'] ?? '';
      if (contentType.startsWith(PROTOBUF)) {
        res.writeHead(code, { 'content-type': PROTOBUF }).end(await readBody(req));
        return;
      }
      const body = await readJson(req);
      const metadata = typeof body.metadata === 'object' && body.metadata !== null ? (body.metadata as Record<string, unknown>) : {};
      const objectName = typeof metadata.name === 'string' ? metadata.name : name;
      if (objectName === undefined) {
        const message = 'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required';
        throw new RequestError(422, kubeStatus(422, 'Invalid', message, { kind: 'ConfigMap' }));
      }
      const stamped = { ...metadata, name: objectName, namespace, ...store.stamp(namespace, objectName) };
      sendJson(res, code, { ...body, apiVersion: 'v1', kind: 'ConfigMap', metadata: stamped });
    } else {
      throw new RequestError(405, kubeStatus(405, 'MethodNotAllowed', `${method} is not supported by the sandbox`));
    }
  };

  const upgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> => {
    const protocol = req.headers.upgrade ?? '';
    const isWebSocket = protocol.toLowerCase() === 'websocket';
    const { user, denial } = await identify(req);
    record(req, user, isWebSocket ? 'websocket' : protocol);
    const problem = !user ? new RequestError(401, unauthorized()) : denial;
    const target = streamTargetOf(req.url);
    if (problem ?? !target) {
      rejectUpgrade(socket, problem ?? new RequestError(404, pathNotFound()));
    } else if (!store.get('pods', target.namespace, target.pod)) {
      rejectUpgrade(socket, new RequestError(404, notFound('pods', target.pod)));
    } else if (isWebSocket) {
      // Chosen here, not by ws: ws refuses `SPDY/3.1+portforward.k8s.io` as a subprotocol ("/" is
      // not a token character), which kubectl sends and the API server accepts. The answer goes
      // out through the 'headers' event.
      const offered = (req.headers['sec-websocket-protocol'] ?? '')
        .split(',')
        .map((p) => p.trim())
        .filter((p) => p !== '');
      const chosen = chooseWebSocketProtocol(target.kind, offered);
      delete req.headers['sec-websocket-protocol'];
      if (chosen !== false) chosenProtocols.set(req, chosen);
      wss.handleUpgrade(req, socket, head, (ws) => serveWebSocket(ws, target, chosen === false ? '' : chosen));
    } else if (protocol.toLowerCase() === 'spdy/3.1') {
      serveSpdy(req, socket, head, target);
    } else {
      rejectUpgrade(socket, new RequestError(400, kubeStatus(400, 'BadRequest', `unsupported upgrade: ${protocol}`)));
    }
  };

  const chosenProtocols = new WeakMap<IncomingMessage, string>();
  const wss = new WebSocketServer({ noServer: true, maxPayload: 32 * 1024 * 1024 });
  wss.on('headers', (headers: string[], request: IncomingMessage) => {
    const chosen = chosenProtocols.get(request);
    if (chosen !== undefined) headers.push(`Sec-WebSocket-Protocol: ${chosen}`);
  });
  // HTTP/2 and HTTP/1.1 on one port, as kube-apiserver offers them (upgrades are HTTP/1.1).
  const server = createSecureServer(
    { cert: options.tls.cert, key: options.tls.key, ca: options.clientCa, requestCert: true, rejectUnauthorized: false, allowHTTP1: true },
    // The compatibility API's request and response stand in for HTTP/1.1's.
    (request, response) => {
      const req = request as unknown as IncomingMessage;
      const res = response as unknown as ServerResponse;
      handle(req, res).catch((error: unknown) => {
        const failure = error instanceof RequestError ? error : new RequestError(500, kubeStatus(500, 'InternalError', 'internal error'));
        if (res.headersSent) res.destroy();
        else sendJson(res, failure.code, failure.status);
      });
    },
  );
  const connections = new Set<Duplex>();
  server.on('secureConnection', (socket: Duplex) => {
    connections.add(socket);
    socket.on('close', () => connections.delete(socket));
  });
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgraded.add(socket);
    socket.on('close', () => upgraded.delete(socket));
    socket.on('error', () => socket.destroy());
    upgrade(req, socket, head).catch((error: unknown) => {
      if (error instanceof RequestError && socket.writable) rejectUpgrade(socket, error);
      else socket.destroy();
    });
  });

  const address = await listen(server, options.host ?? '127.0.0.1');
  url = `https://${address.address}:${address.port}`;
  const changer = setInterval(() => store.touchNextPod(), Math.max(10, options.podChangeIntervalMs ?? 2_000));
  changer.unref();
  return {
    cluster: options.cluster,
    url,
    requests,
    protobufBlob,
    jwksFetches: () => counts.jwks,
    tokenReviews: () => counts.tokenReviews,
    close: async () => {
      clearInterval(changer);
      for (const ws of wss.clients) ws.terminate();
      wss.close();
      for (const socket of upgraded) socket.destroy();
      for (const socket of connections) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function streamTargetOf(url: string | undefined): StreamTarget | undefined {
  const target = parseUrl(url);
  const match = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/(exec|attach|portforward)$/.exec(target.pathname);
  if (!match?.[1] || !match[2]) return undefined;
  return { namespace: match[1], pod: match[2], kind: match[3] as StreamKind, query: target.searchParams };
}

/** The status a JSON patch (`add` or `replace` of /status) or a merge patch (`{status}`) sets. */
function statusFromPatch(body: unknown): unknown {
  if (Array.isArray(body)) {
    const op = body.find((o: { op?: string; path?: string }) => (o.op === 'add' || o.op === 'replace') && o.path === '/status') as { value?: unknown } | undefined;
    return op?.value;
  }
  return typeof body === 'object' && body !== null ? (body as { status?: unknown }).status : undefined;
}

function isResource(name: string): name is KubeResource {
  return Object.hasOwn(KINDS, name);
}

/** `k8s\0` and 64 KiB of bytes from a SHA-256 chain seeded by the cluster's name; the first 256 cover every value. */
function createProtobufBlob(cluster: string): Buffer {
  const payload = Buffer.alloc(64 * 1024);
  let block = createHash('sha256').update(`meshgate-sandbox-protobuf/${cluster}`).digest();
  for (let offset = 0; offset < payload.length; offset += block.length) {
    block.copy(payload, offset);
    block = createHash('sha256').update(block).digest();
  }
  const shift = payload.readUInt8(0);
  for (let i = 0; i < 256; i++) payload.writeUInt8((i * 167 + shift) & 0xff, i);
  return Buffer.concat([Buffer.from('k8s\0', 'latin1'), payload]);
}
