/**
 * `meshgate xds`: a small xDS client for trying the xds plane (the sandbox prints it) and for
 * operators: one ADS request (State of the World or Delta), or one CSR, through meshgate, with a
 * token or a client certificate, and the answer printed as JSON.
 */
import { readFileSync } from 'node:fs';
import { credentials, Metadata, type Client, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import forge from 'node-forge';
import { parseDuration } from '../config/units.js';
import { createCertificateRequest } from '../pki/certificates.js';
import { TYPE_URL, xdsProtos } from '../sandbox/xds-protos.js';
import { UsageError, parse, required } from './args.js';

const USAGE = `usage: meshgate xds --server HOST:PORT [--connect-to ADDRESS] [--ca FILE]
                    [--token-file FILE | --cert FILE --key FILE] [--cluster-id ID]
                    [--type syncz|cds|TYPE_URL] [--delta] [--node-id ID] [--timeout 10s]
       meshgate xds --csr … (the same connection options): request a workload certificate

--server names the host meshgate serves the tenant under (it is the TLS server name); --connect-to
dials another address instead, as curl's --resolve does.`;

/** The generated clients, typed as far as this command uses them. */
type CaClient = Client & {
  CreateCertificate(req: object, md: Metadata, opts: object, cb: (err: ServiceError | null, res?: { cert_chain: string[] }) => void): void;
};
type AdsClient = Client & {
  StreamAggregatedResources(md: Metadata, opts: object): ClientDuplexStream<object, DiscoveryResponse>;
  DeltaAggregatedResources(md: Metadata, opts: object): ClientDuplexStream<object, DiscoveryResponse>;
};

interface DiscoveryResponse {
  version_info?: string;
  system_version_info?: string;
  type_url?: string;
  nonce?: string;
  control_plane?: { identifier?: string };
  resources?: ({ type_url: string; value: Buffer } | { name?: string; resource?: { type_url: string; value: Buffer } })[];
}

export async function runXds(args: readonly string[]): Promise<number> {
  try {
    return await request(args);
  } catch (err) {
    const { code, details } = err as Partial<ServiceError>;
    if (code === undefined) throw err;
    // A gRPC status: meshgate's code is at the start of the details.
    console.error(`meshgate xds: grpc-status ${code}: ${details ?? ''}`);
    return 1;
  }
}

async function request(args: readonly string[]): Promise<number> {
  const v = parse(
    args,
    {
      server: { type: 'string' },
      'connect-to': { type: 'string' },
      ca: { type: 'string' },
      'token-file': { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'cluster-id': { type: 'string' },
      type: { type: 'string', default: 'syncz' },
      delta: { type: 'boolean', default: false },
      csr: { type: 'boolean', default: false },
      'node-id': { type: 'string', default: 'sidecar~10.0.0.1~meshgate-xds.default~default.svc.cluster.local' },
      timeout: { type: 'string', default: '10s' },
    },
    USAGE,
  );
  const server = required(v.server, '--server', USAGE);
  const [host, port] = server.split(/:(?=\d+$)/);
  if (host === undefined || port === undefined) throw new UsageError(`--server must be HOST:PORT\n\n${USAGE}`);
  const timeoutMs = parseDuration(v.timeout) ?? 10_000;
  if ((v.cert === undefined) !== (v.key === undefined)) throw new UsageError(`--cert and --key go together\n\n${USAGE}`);

  const protos = xdsProtos();
  const tls = credentials.createSsl(
    v.ca === undefined ? null : readFileSync(v.ca),
    v.key === undefined ? null : readFileSync(v.key),
    v.cert === undefined ? null : readFileSync(v.cert),
  );
  const target = `${v['connect-to'] ?? host}:${port}`;
  const channel = { 'grpc.ssl_target_name_override': host, 'grpc.default_authority': server, 'grpc.max_receive_message_length': -1 };
  const metadata = new Metadata();
  if (v['token-file'] !== undefined) metadata.set('authorization', `Bearer ${readFileSync(v['token-file'], 'utf8').trim()}`);
  if (v['cluster-id'] !== undefined) metadata.set('clusterid', v['cluster-id']);
  const deadline = Date.now() + timeoutMs;

  if (v.csr) {
    const { csr } = await createCertificateRequest('meshgate xds client');
    const client = new protos.IstioCertificateService(target, tls, channel) as unknown as CaClient;
    const response = await new Promise<{ cert_chain: string[] }>((resolve, reject) => {
      client.CreateCertificate({ csr, validity_duration: 3600 }, metadata, { deadline }, (err, res) =>
        err || !res ? reject(err ?? new Error('no response')) : resolve(res),
      );
    }).finally(() => client.close());
    console.log(JSON.stringify({ cert_chain: response.cert_chain.map((pem) => forge.pki.certificateFromPem(pem).subject.attributes.map((a) => `${String(a.shortName)}=${String(a.value)}`).join(',')) }, null, 2));
    return 0;
  }

  const typeUrl = v.type === 'syncz' ? TYPE_URL.syncz : v.type === 'cds' ? TYPE_URL.cluster : v.type;
  const client = new protos.AggregatedDiscoveryService(target, tls, channel) as unknown as AdsClient;
  const call = v.delta ? client.DeltaAggregatedResources(metadata, { deadline }) : client.StreamAggregatedResources(metadata, { deadline });
  const response = await new Promise<DiscoveryResponse>((resolve, reject) => {
    call.once('data', resolve);
    call.once('error', reject);
    call.write(
      v.delta
        ? { node: { id: v['node-id'] }, type_url: typeUrl, resource_names_subscribe: ['*'] }
        : { node: { id: v['node-id'] }, type_url: typeUrl },
    );
  }).finally(() => {
    call.cancel();
    client.close();
  });
  console.log(JSON.stringify(describe(response, (any) => protos.unpack(any)), null, 2));
  return 0;
}

function describe(response: DiscoveryResponse, unpack: (any: { type_url: string; value: Buffer }) => unknown): object {
  const identifier = response.control_plane?.identifier;
  let controlPlane: unknown = identifier;
  try {
    controlPlane = identifier === undefined ? undefined : JSON.parse(identifier);
  } catch {
    // not JSON: print it as it is
  }
  return {
    type_url: response.type_url,
    version: response.version_info ?? response.system_version_info,
    control_plane: controlPlane,
    resources: (response.resources ?? []).map((r) => ('type_url' in r ? unpack(r) : r.resource ? { name: r.name, ...(unpack(r.resource) as object) } : r)),
  };
}
