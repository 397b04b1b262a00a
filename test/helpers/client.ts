/**
 * Real clients for tests: HTTPS over HTTP/1.1 or HTTP/2 to 127.0.0.1 with any SNI and any Host,
 * optionally with a client certificate; and raw TLS for requests no client library would send.
 */
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';

export type Protocol = 'h1' | 'h2';

export interface CallOptions {
  readonly port: number;
  /** TLS server name; `false` sends none. */
  readonly servername: string | false;
  /** Host / :authority; defaults to the server name. */
  readonly authority?: string;
  readonly path: string;
  readonly method?: string;
  readonly headers?: Readonly<Record<string, string | string[]>>;
  readonly body?: string | Buffer;
  readonly ca: string;
  readonly cert?: string;
  readonly key?: string;
  readonly protocol?: Protocol;
  /** Accept any server certificate (to reach the fallback certificate of an unknown name). */
  readonly insecure?: boolean;
  /** The loopback address to connect from (127.0.0.2, …): another source, as meshgate sees it. */
  readonly localAddress?: string;
}

export interface CallResult {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | number | undefined>>;
  readonly body: string;
  /** The body as JSON (`{code, message}` for meshgate's own errors). */
  json<T = { code?: string; message?: string }>(): T;
}

const files = new Map<string, string>();
const read = (path: string | undefined): string | undefined => {
  if (path === undefined) return undefined;
  let text = files.get(path);
  if (text === undefined) {
    text = readFileSync(path, 'utf8');
    files.set(path, text);
  }
  return text;
};

function tlsOptions(options: CallOptions): ConnectionOptions {
  return {
    ca: read(options.ca),
    cert: read(options.cert),
    key: read(options.key),
    // '' and not undefined: Node's https would otherwise send the Host header as the SNI.
    servername: options.servername === false ? '' : options.servername,
    ...(options.insecure === true ? { rejectUnauthorized: false } : {}),
  };
}

function result(status: number, headers: CallResult['headers'], body: string): CallResult {
  return { status, headers, body, json: <T>() => JSON.parse(body) as T };
}

export function call(options: CallOptions): Promise<CallResult> {
  return (options.protocol ?? 'h1') === 'h2' ? callH2(options) : callH1(options);
}

function callH1(options: CallOptions): Promise<CallResult> {
  const authority = options.authority ?? (options.servername === false ? `127.0.0.1:${options.port}` : options.servername);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        ...tlsOptions(options),
        host: '127.0.0.1',
        port: options.port,
        method: options.method ?? 'GET',
        path: options.path,
        headers: { host: authority, ...options.headers },
        agent: false,
        ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(result(res.statusCode ?? 0, res.headers, Buffer.concat(chunks).toString('utf8'))));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

function callH2(options: CallOptions): Promise<CallResult> {
  const authority = options.authority ?? (options.servername === false ? `127.0.0.1:${options.port}` : options.servername);
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://127.0.0.1:${options.port}`, tlsOptions(options));
    session.on('error', reject);
    const stream = session.request(
      {
        [h2.HTTP2_HEADER_METHOD]: options.method ?? 'GET',
        [h2.HTTP2_HEADER_PATH]: options.path,
        [h2.HTTP2_HEADER_AUTHORITY]: authority,
        ...options.headers,
      },
      // Node ends GET streams with the headers unless told that a body follows.
      { endStream: options.body === undefined },
    );
    let status = 0;
    let headers: CallResult['headers'] = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => {
      status = Number(h[h2.HTTP2_HEADER_STATUS]);
      headers = h;
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      session.close();
      resolve(result(status, headers, Buffer.concat(chunks).toString('utf8')));
    });
    stream.on('error', (err: Error) => {
      session.destroy();
      reject(err);
    });
    stream.end(options.body);
  });
}

/** Writes raw bytes over TLS and returns everything the server sent until it closed. */
export function rawTls(
  options: Pick<CallOptions, 'port' | 'servername' | 'ca' | 'cert' | 'key' | 'insecure'>,
  payload: string | Buffer | ((write: (data: string | Buffer) => void) => void),
  { waitForCloseMs = 10_000 }: { waitForCloseMs?: number } = {},
): Promise<{ text: string; closedByServer: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ ...tlsOptions(options as CallOptions), host: '127.0.0.1', port: options.port, ALPNProtocols: ['http/1.1'] });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString('utf8'), closedByServer: false });
    }, waitForCloseMs);
    socket.on('secureConnect', () => {
      if (typeof payload === 'function') payload((data) => socket.write(data));
      else socket.write(payload);
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ text: Buffer.concat(chunks).toString('utf8'), closedByServer: true });
    });
    socket.on('error', (err: Error) => {
      clearTimeout(timer);
      if (chunks.length > 0) resolve({ text: Buffer.concat(chunks).toString('utf8'), closedByServer: true });
      else reject(err);
    });
  });
}
