/**
 * gRPC for tests: real grpc-js clients of the ADS and CA services through meshgate (to 127.0.0.1
 * with any TLS server name), and upstreams that stand in for istiod with scripted behaviour.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createSecureServer, type Http2SecureServer, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type ChannelOptions,
  type Client,
  type ClientDuplexStream,
  type ServerDuplexStream,
  type ServiceError,
  type StatusObject,
} from '@grpc/grpc-js';
import { createCertificateAuthority, issueCertificate } from '../../src/pki/certificates.js';
import { TYPE_URL, xdsProtos } from '../../src/sandbox/xds-protos.js';

export { Metadata, status, TYPE_URL };

export interface DiscoveryResponse {
  version_info?: string;
  type_url?: string;
  nonce?: string;
  control_plane?: { identifier?: string };
  resources?: { type_url: string; value: Buffer }[];
}

export type AdsCall = ClientDuplexStream<object, DiscoveryResponse>;

export interface AdsClient extends Client {
  StreamAggregatedResources(metadata: Metadata, options?: object): AdsCall;
  DeltaAggregatedResources(metadata: Metadata, options?: object): AdsCall;
}

export interface CaClient extends Client {
  CreateCertificate(
    request: object,
    metadata: Metadata,
    options: object,
    callback: (err: ServiceError | null, response?: { cert_chain: string[] }) => void,
  ): void;
}

export interface ClientTarget {
  readonly port: number;
  /** The tenant host: TLS server name and :authority. */
  readonly host: string;
  readonly ca: string;
  readonly cert?: string;
  readonly key?: string;
  /** Extra channel options; `grpc.use_local_subchannel_pool` gives each client its own connection. */
  readonly channel?: ChannelOptions;
}

function channelOf(target: ClientTarget) {
  return {
    tls: credentials.createSsl(
      readFileSync(target.ca),
      target.key === undefined ? null : readFileSync(target.key),
      target.cert === undefined ? null : readFileSync(target.cert),
    ),
    options: {
      'grpc.ssl_target_name_override': target.host,
      'grpc.default_authority': `${target.host}:${target.port}`,
      'grpc.max_receive_message_length': -1,
      ...target.channel,
    },
  };
}

export function adsClient(target: ClientTarget): AdsClient {
  const { tls, options } = channelOf(target);
  return new (xdsProtos().AggregatedDiscoveryService)(`127.0.0.1:${target.port}`, tls, options) as unknown as AdsClient;
}

export function caClient(target: ClientTarget): CaClient {
  const { tls, options } = channelOf(target);
  return new (xdsProtos().IstioCertificateService)(`127.0.0.1:${target.port}`, tls, options) as unknown as CaClient;
}

export function metadata(entries: Record<string, string | Buffer> = {}): Metadata {
  const md = new Metadata();
  for (const [key, value] of Object.entries(entries)) md.set(key, value);
  return md;
}

export const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

export interface AdsOutcome {
  readonly response?: DiscoveryResponse;
  readonly headers?: Metadata;
  readonly status: StatusObject;
}

/**
 * One DiscoveryRequest on a new ADS stream: resolves with the first response (then cancels), or
 * with the status the stream ended with.
 */
export function adsOnce(client: AdsClient, md: Metadata, request: object, { delta = false, deadlineMs = 10_000 } = {}): Promise<AdsOutcome> {
  return new Promise((resolve) => {
    const call = delta
      ? client.DeltaAggregatedResources(md, { deadline: Date.now() + deadlineMs })
      : client.StreamAggregatedResources(md, { deadline: Date.now() + deadlineMs });
    let headers: Metadata | undefined;
    let response: DiscoveryResponse | undefined;
    call.on('metadata', (m: Metadata) => (headers = m));
    call.on('data', (r: DiscoveryResponse) => {
      response = r;
      call.cancel();
    });
    call.on('error', () => undefined);
    call.on('status', (s: StatusObject) => resolve({ ...(response ? { response } : {}), ...(headers ? { headers } : {}), status: s }));
    call.write(request);
  });
}

/** An ADS stream held open: each `ask` is answered on the same stream, until it ends. */
export interface HeldStream {
  ask(id: string): Promise<Record<string, unknown>>;
  readonly ended: Promise<StatusObject>;
  cancel(): void;
}

/** Opens an ADS stream on `client` with `md`, and keeps it open for the test to ask on. */
export function holdAdsStream(client: AdsClient, md: Metadata): HeldStream {
  const call = client.StreamAggregatedResources(md);
  call.on('error', () => undefined);
  const ended = new Promise<StatusObject>((resolve) => call.on('status', resolve));
  return {
    ended,
    cancel: () => call.cancel(),
    ask: (id) =>
      Promise.race([
        new Promise<Record<string, unknown>>((resolve) => {
          call.once('data', (response: DiscoveryResponse) => resolve(identifierOf(response)));
          call.write({ node: { id }, type_url: TYPE_URL.cluster });
        }),
        ended.then((s) => Promise.reject(new Error(`the stream ended: ${s.code} ${s.details}`))),
      ]),
  };
}

export function identifierOf(response: DiscoveryResponse | undefined): Record<string, unknown> {
  return JSON.parse(response?.control_plane?.identifier ?? '{}') as Record<string, unknown>;
}

// ---- upstreams ---------------------------------------------------------------------------------

export interface TestIstiod {
  readonly url: string;
  readonly caFile: string;
  readonly serverName: string;
  close(): Promise<void>;
}

/** A CA and a server certificate for a test istiod, with the CA written to a file meshgate can read. */
export async function upstreamTls(serverName = 'istiod.test-cp.svc') {
  const ca = await createCertificateAuthority('test istiod CA');
  const leaf = await issueCertificate(ca, { commonName: serverName, dnsNames: [serverName], ipAddresses: ['127.0.0.1'], usage: 'server' });
  const caFile = join(mkdtempSync(join(tmpdir(), 'meshgate-grpc-')), 'istiod-ca.pem');
  writeFileSync(caFile, ca.cert);
  return { caFile, serverName, cert: leaf.cert, key: leaf.key };
}

type AdsHandler = (call: ServerDuplexStream<{ node?: { id?: string }; type_url?: string }, DiscoveryResponse>) => void;

/** A grpc-js istiod whose ADS streams run `handler`. */
export async function startGrpcIstiod(handler: AdsHandler, options: ChannelOptions = {}): Promise<TestIstiod> {
  const tls = await upstreamTls();
  const server = new Server({ 'grpc.max_send_message_length': -1, 'grpc.max_receive_message_length': -1, ...options });
  server.addService(xdsProtos().AggregatedDiscoveryService.service, { StreamAggregatedResources: handler, DeltaAggregatedResources: handler });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      '127.0.0.1:0',
      ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], false),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  return {
    url: `https://127.0.0.1:${port}`,
    caFile: tls.caFile,
    serverName: tls.serverName,
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}

export interface RawIstiod extends TestIstiod {
  readonly sessions: ServerHttp2Session[];
  /** Every stream the upstream saw, with how it ended. */
  readonly streams: { path: string; headers: Record<string, unknown>; rstCode?: number; stream: ServerHttp2Stream }[];
}

/** A raw node:http2 istiod: `onStream` decides everything, frame by frame. */
export async function startRawIstiod(onStream: (stream: ServerHttp2Stream, headers: Record<string, unknown>) => void): Promise<RawIstiod> {
  const tls = await upstreamTls();
  const sessions: ServerHttp2Session[] = [];
  const streams: RawIstiod['streams'] = [];
  const server: Http2SecureServer = createSecureServer({ cert: tls.cert, key: tls.key, allowHTTP1: false });
  server.on('session', (session) => {
    sessions.push(session);
    session.on('error', () => undefined);
  });
  server.on('stream', (stream, headers) => {
    const entry: RawIstiod['streams'][number] = { path: String(headers[':path']), headers, stream };
    streams.push(entry);
    stream.on('error', () => undefined);
    stream.on('close', () => (entry.rstCode = stream.rstCode));
    onStream(stream, headers);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    caFile: tls.caFile,
    serverName: tls.serverName,
    sessions,
    streams,
    close: () =>
      new Promise((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A gRPC message frame: a 0 (uncompressed) flag, a 4-byte length, the bytes. */
export function grpcFrame(payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}
