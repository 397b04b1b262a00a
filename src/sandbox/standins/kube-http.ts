/**
 * The HTTP side of the stand-in kube-apiserver: errors that answer as a `metav1.Status` (on a
 * response, or on a socket that asked for an upgrade), JSON bodies in and out with a size limit,
 * and watches streamed one JSON event per line, as they happen.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { kubeStatus } from './kube-documents.js';
import type { KubeObject, KubeResource, KubeStore, WatchEvent } from './kube-objects.js';

const MAX_BODY = 8 * 1024 * 1024;

/** Thrown by a handler; answered with its code and Status. */
export class RequestError extends Error {
  constructor(
    readonly code: number,
    readonly status: object,
  ) {
    super(`request error ${code}`);
  }
}

/** The request's URL; 400 when it cannot be parsed. */
export function parseUrl(url: string | undefined): URL {
  try {
    return new URL(url ?? '/', 'https://kube-apiserver');
  } catch {
    throw new RequestError(400, kubeStatus(400, 'BadRequest', 'the request URL is malformed'));
  }
}

/**
 * A watch: one JSON event per line, written as it happens, ended after `timeoutSeconds`. From a
 * `resourceVersion` the history still holds, it replays what changed since; otherwise it starts
 * with ADDED for every matching object. A watch-list (`sendInitialEvents=true`, client-go's
 * informers since 1.32) then gets the BOOKMARK that ends the initial events, as the real API
 * server sends it: the kind, the resourceVersion, and the `k8s.io/initial-events-end` annotation.
 */
export function serveWatch(
  res: ServerResponse,
  store: KubeStore,
  resource: KubeResource,
  kind: string,
  namespace: string | undefined,
  selector: (object: KubeObject) => boolean,
  query: URLSearchParams,
): void {
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-cache, private' });
  res.flushHeaders();
  const send = (event: WatchEvent): void => {
    if ((namespace === undefined || event.object.metadata.namespace === namespace) && selector(event.object)) {
      res.write(`${JSON.stringify(event)}\n`);
    }
  };
  const from = query.get('resourceVersion') ?? '';
  const replay = /^[1-9]\d*$/.test(from) ? store.eventsSince(resource, Number(from)) : undefined;
  for (const event of replay ?? store.list(resource, namespace).map((object): WatchEvent => ({ type: 'ADDED', object }))) send(event);
  if (query.get('sendInitialEvents') === 'true' && query.get('allowWatchBookmarks') === 'true') {
    const bookmark = { kind, apiVersion: 'v1', metadata: { resourceVersion: store.resourceVersion(), annotations: { 'k8s.io/initial-events-end': 'true' } } };
    res.write(`${JSON.stringify({ type: 'BOOKMARK', object: bookmark })}\n`);
  }
  const unsubscribe = store.subscribe((changed, event) => {
    if (changed === resource) send(event);
  });
  const timeoutSeconds = Number(query.get('timeoutSeconds') ?? '0');
  const timer = timeoutSeconds > 0 ? setTimeout(() => res.end(), Math.min(timeoutSeconds, 86_400) * 1000) : undefined;
  timer?.unref();
  res.on('close', () => {
    unsubscribe();
    clearTimeout(timer);
  });
}

/** A JSON body, as the API server sends it. */
export function sendJson(res: ServerResponse, code: number, body: object, contentType = 'application/json'): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-cache, private' });
  res.end(text);
}

/** Answers an upgrade request that will not be upgraded, on its raw socket, and closes it. */
export function rejectUpgrade(socket: Duplex, failure: RequestError): void {
  const body = JSON.stringify(failure.status);
  const head = [
    `HTTP/1.1 ${failure.code} ${STATUS_CODES[failure.code] ?? 'Error'}`,
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
  ];
  socket.end(`${head.join('\r\n')}\r\n\r\n${body}`);
}

/** The request body; 413 past 8 MiB. */
export function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new RequestError(413, kubeStatus(413, 'RequestEntityTooLarge', 'the request body is too large')));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** The request body as a JSON object; 415 for another content type, 400 for anything but an object. */
export async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  if (!/^application\/json\b/.test(req.headers['content-type'] ?? 'application/json')) {
    throw new RequestError(415, kubeStatus(415, 'UnsupportedMediaType', 'the sandbox reads this resource as application/json only'));
  }
  const text = (await readBody(req)).toString('utf8');
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // Answered below.
  }
  throw new RequestError(400, kubeStatus(400, 'BadRequest', 'the request body is not a JSON object'));
}
