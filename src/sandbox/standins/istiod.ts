/**
 * A stand-in for one tenant's istiod, for the sandbox and the integration tests:
 *  - webhook (HTTPS, like :15017): `/inject…` answers an AdmissionReview with a base64 JSONPatch
 *    and the request's uid; `/validate` allows;
 *  - debug (HTTP, like :15014): `/debug/*` and `/version` answer JSON naming the tenant.
 * It records every request it receives, headers included, so tests can see what got through.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { decodeJwt } from 'jose';
import { listen } from '../../listener/listen.js';

export interface RecordedRequest {
  readonly server: 'webhook' | 'debug';
  readonly method: string;
  readonly url: string;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly rawHeaders: readonly string[];
  readonly bodyBytes: number;
}

export interface IstiodStandIn {
  readonly tenant: string;
  readonly requests: RecordedRequest[];
  readonly webhookUrl: string;
  readonly debugUrl: string;
  close(): Promise<void>;
}

export interface IstiodStandInOptions {
  readonly tenant: string;
  readonly clusters: readonly string[];
  readonly tls: { readonly cert: string; readonly key: string };
  readonly host?: string;
  readonly onRequest?: (request: RecordedRequest) => void;
}

const MAX_BODY = 8 * 1024 * 1024;

export async function startIstiodStandIn(options: IstiodStandInOptions): Promise<IstiodStandIn> {
  const requests: RecordedRequest[] = [];
  const name = `istiod-${options.tenant}`;
  const record = (server: RecordedRequest['server'], req: IncomingMessage, bodyBytes: number): void => {
    const entry: RecordedRequest = {
      server,
      method: req.method ?? '',
      url: req.url ?? '',
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      bodyBytes,
    };
    requests.push(entry);
    options.onRequest?.(entry);
  };

  const webhook = createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, (req, res) => {
    readBody(req).then(
      (body) => {
        record('webhook', req, body.length);
        const path = (req.url ?? '').split('?')[0] ?? '';
        if (req.method !== 'POST' || req.headers['content-type'] !== 'application/json') {
          res.writeHead(415).end('istiod stand-in: POST application/json only\n');
          return;
        }
        let review: AdmissionReview;
        try {
          review = JSON.parse(body.toString('utf8')) as AdmissionReview;
        } catch {
          res.writeHead(400).end('istiod stand-in: body is not JSON\n');
          return;
        }
        const response = path.startsWith('/inject')
          ? injectionResponse(review, options.tenant, clusterOf(path) ?? options.clusters[0] ?? '')
          : { uid: review.request?.uid ?? '', allowed: true };
        res.writeHead(200, { 'content-type': 'application/json', 'x-sandbox-istiod': name });
        res.end(JSON.stringify({ apiVersion: review.apiVersion ?? 'admission.k8s.io/v1', kind: 'AdmissionReview', response }));
      },
      () => res.writeHead(413).end(),
    );
  });

  const debug = createHttpServer((req, res) => {
    record('debug', req, 0);
    req.resume();
    const url = new URL(req.url ?? '/', 'http://istiod');
    const caller = callerOf(req.headers.authorization);
    const payload = {
      tenant: options.tenant,
      istiod: name,
      endpoint: url.pathname === '/version' ? 'version' : url.pathname.replace(/^\/debug\//, ''),
      query: Object.fromEntries(url.searchParams),
      clusterid: req.headers.clusterid ?? null,
      caller,
      ...(url.pathname === '/debug/syncz'
        ? {
            proxies: options.clusters.map((cluster, i) => ({
              proxy: `productpage-v1-${i}.bookinfo`,
              cluster_id: cluster,
              istio_version: 'sandbox',
              cds: 'SYNCED',
              lds: 'SYNCED',
            })),
          }
        : {}),
    };
    res.writeHead(200, { 'content-type': 'application/json', 'x-sandbox-istiod': name });
    res.end(`${JSON.stringify(payload, null, 2)}\n`);
  });

  const host = options.host ?? '127.0.0.1';
  const webhookAddress = await listen(webhook, host);
  const debugAddress = await listen(debug, host);
  return {
    tenant: options.tenant,
    requests,
    webhookUrl: urlOf('https', webhookAddress),
    debugUrl: urlOf('http', debugAddress),
    close: async () => {
      await Promise.all([closeServer(webhook), closeServer(debug)]);
    },
  };
}

interface AdmissionReview {
  apiVersion?: string;
  request?: { uid?: string; object?: { metadata?: { annotations?: Record<string, string> } } };
}

function injectionResponse(review: AdmissionReview, tenant: string, cluster: string): object {
  const annotations = review.request?.object?.metadata?.annotations;
  const stamp = { 'sandbox.meshgate.io/injected-by': `istiod-${tenant}`, 'sandbox.meshgate.io/cluster': cluster };
  const patch = [
    annotations
      ? { op: 'add', path: '/metadata/annotations/sandbox.meshgate.io~1injected-by', value: stamp['sandbox.meshgate.io/injected-by'] }
      : { op: 'add', path: '/metadata/annotations', value: stamp },
    {
      op: 'add',
      path: '/spec/containers/-',
      value: {
        name: 'istio-proxy',
        image: 'sandbox.meshgate.io/istio-proxy',
        env: [{ name: 'ISTIO_META_CLUSTER_ID', value: cluster }],
      },
    },
  ];
  return {
    uid: review.request?.uid ?? '',
    allowed: true,
    patchType: 'JSONPatch',
    patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
  };
}

function clusterOf(path: string): string | undefined {
  return /\/cluster\/([^/]+)/.exec(path)?.[1] ?? /:ENV:cluster=([^:/]+)/.exec(path)?.[1];
}

/** The caller as istiod would see it, from the token's claims (the stand-in does not verify). */
function callerOf(authorization: string | undefined): string | null {
  const token = /^Bearer (.+)$/.exec(authorization ?? '')?.[1];
  if (token === undefined) return null;
  try {
    return String(decodeJwt(token).sub);
  } catch {
    return null;
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) reject(new Error('too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function urlOf(protocol: string, address: AddressInfo): string {
  return `${protocol}://${address.address}:${address.port}`;
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
}
