/**
 * A stand-in for one tenant's istiod :15012, over gRPC with the real protos (grpc-js):
 *  - ADS, State of the World and Delta: every DiscoveryResponse names the tenant's istiod and
 *    echoes the node id (in `control_plane.identifier`), with a Cluster resource for CDS;
 *  - the debug type URL `istio.io/debug/syncz`: the proxies connected to this istiod;
 *  - the CA: CreateCertificate signs the CSR with the tenant's mesh CA, for the SPIFFE identity
 *    of the caller's token (`sub`: system:serviceaccount:<ns>:<sa>).
 * It records every call's metadata, so tests can see what got through.
 */
import { randomUUID } from 'node:crypto';
import {
  Metadata,
  Server,
  ServerCredentials,
  status,
  type ChannelOptions,
  type sendUnaryData,
  type ServerDuplexStream,
  type ServerUnaryCall,
} from '@grpc/grpc-js';
import { decodeJwt } from 'jose';
import { signCertificateRequest, type IssuedCertificate } from '../../pki/certificates.js';
import { TYPE_URL, xdsProtos } from '../xds-protos.js';

export interface RecordedCall {
  readonly method: string;
  readonly metadata: Readonly<Record<string, string | Buffer | (string | Buffer)[]>>;
  readonly nodeId?: string;
}

export interface XdsStandIn {
  readonly tenant: string;
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  readonly calls: RecordedCall[];
  /** Every ADS request received, in order: what each stream asked for. */
  readonly requests: { readonly typeUrl: string; readonly resourceNames: readonly string[] }[];
  /** Node ids with an ADS stream open now. */
  connected(): string[];
  close(): Promise<void>;
}

export interface XdsStandInOptions {
  readonly tenant: string;
  readonly tls: { readonly cert: string; readonly key: string };
  /** The mesh CA that signs workload certificates (istiod's own root, in a default install). */
  readonly meshCa: IssuedCertificate;
  readonly trustDomain: string;
  readonly host?: string;
  readonly onCall?: (call: RecordedCall) => void;
  /** grpc-js server options, for tests (e.g. `grpc.max_connection_age_ms`). */
  readonly serverOptions?: ChannelOptions;
}

interface DiscoveryRequest {
  node?: { id?: string };
  type_url?: string;
  resource_names?: string[];
  resource_names_subscribe?: string[];
  response_nonce?: string;
}

export async function startXdsStandIn(options: XdsStandInOptions): Promise<XdsStandIn> {
  const protos = xdsProtos();
  const calls: RecordedCall[] = [];
  const requests: XdsStandIn['requests'] = [];
  const streams = new Map<string, number>();
  const istiod = `istiod-${options.tenant}`;

  const record = (method: string, metadata: Metadata, nodeId?: string): void => {
    const call: RecordedCall = { method, metadata: metadata.getMap(), ...(nodeId === undefined ? {} : { nodeId }) };
    calls.push(call);
    options.onCall?.(call);
  };

  const controlPlane = (nodeId: string | undefined, metadata: Metadata) => ({
    identifier: JSON.stringify({ tenant: options.tenant, istiod, node: nodeId ?? null, clusterid: metadata.get('clusterid')[0] ?? null }),
  });

  const resources = (typeUrl: string, nodeId: string | undefined): { type_url: string; value: Buffer }[] => {
    if (typeUrl === TYPE_URL.syncz) {
      return [...streams.keys()].map((id) => protos.pack(TYPE_URL.clientConfig, { node: { id } }));
    }
    if (typeUrl === TYPE_URL.cluster) {
      return [protos.pack(TYPE_URL.cluster, { name: `outbound|9080||productpage.bookinfo.svc.cluster.local`, alt_stat_name: `${istiod}/${nodeId ?? ''}` })];
    }
    return [];
  };

  /** One ADS stream, either variant: answers each subscription, never an ACK. */
  const ads = (delta: boolean) => (call: ServerDuplexStream<DiscoveryRequest, object>) => {
    let nodeId: string | undefined;
    const sent = new Map<string, string>();
    const leave = (): void => {
      if (nodeId === undefined) return;
      const count = (streams.get(nodeId) ?? 1) - 1;
      if (count === 0) streams.delete(nodeId);
      else streams.set(nodeId, count);
      nodeId = undefined;
    };
    call.on('data', (request: DiscoveryRequest) => {
      if (nodeId === undefined && request.node?.id) {
        nodeId = request.node.id;
        streams.set(nodeId, (streams.get(nodeId) ?? 0) + 1);
        record(delta ? 'DeltaAggregatedResources' : 'StreamAggregatedResources', call.metadata, nodeId);
      }
      const typeUrl = request.type_url ?? '';
      requests.push({ typeUrl, resourceNames: request.resource_names ?? request.resource_names_subscribe ?? [] });
      if (request.response_nonce && request.response_nonce === sent.get(typeUrl)) return; // an ACK or a NACK
      const nonce = randomUUID();
      sent.set(typeUrl, nonce);
      const found = resources(typeUrl, nodeId);
      call.write(
        delta
          ? {
              system_version_info: '1',
              type_url: typeUrl,
              nonce,
              resources: found.map((resource, i) => ({ name: `${typeUrl}#${i}`, version: '1', resource })),
              control_plane: controlPlane(nodeId, call.metadata),
            }
          : { version_info: '1', type_url: typeUrl, nonce, resources: found, control_plane: controlPlane(nodeId, call.metadata) },
      );
    });
    call.on('end', () => {
      leave();
      call.end();
    });
    call.on('cancelled', leave);
    call.on('error', leave);
  };

  const createCertificate = (call: ServerUnaryCall<{ csr?: string }, object>, callback: sendUnaryData<object>): void => {
    record('CreateCertificate', call.metadata);
    const subject = subjectOf(call.metadata.get('authorization')[0]);
    const [, namespace, serviceAccount] = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(subject ?? '') ?? [];
    if (namespace === undefined || serviceAccount === undefined) {
      callback({ code: status.UNAUTHENTICATED, details: 'no service-account token' });
      return;
    }
    try {
      const leaf = signCertificateRequest(options.meshCa, call.request.csr ?? '', {
        commonName: `${serviceAccount}.${namespace}`,
        uris: [`spiffe://${options.trustDomain}/ns/${namespace}/sa/${serviceAccount}`],
        usage: 'server-and-client',
        validityDays: 1,
      });
      callback(null, { cert_chain: [leaf, options.meshCa.cert] });
    } catch (err) {
      callback({ code: status.INVALID_ARGUMENT, details: err instanceof Error ? err.message : String(err) });
    }
  };

  const server = new Server({ 'grpc.max_send_message_length': -1, 'grpc.max_receive_message_length': -1, ...options.serverOptions });
  server.addService(protos.AggregatedDiscoveryService.service, {
    StreamAggregatedResources: ads(false),
    DeltaAggregatedResources: ads(true),
  });
  server.addService(protos.IstioCertificateService.service, { CreateCertificate: createCertificate });
  const credentials = ServerCredentials.createSsl(null, [{ private_key: Buffer.from(options.tls.key), cert_chain: Buffer.from(options.tls.cert) }], false);
  const host = options.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:0`, credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
  });

  return {
    tenant: options.tenant,
    url: `https://${host}:${port}`,
    calls,
    requests,
    connected: () => [...streams.keys()],
    close: () =>
      new Promise((resolve) => {
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 500).unref();
      }),
  };
}

/** The `sub` of a bearer token, unverified: the stand-in trusts meshgate to have verified it. */
function subjectOf(authorization: string | Buffer | undefined): string | undefined {
  const token = /^Bearer (.+)$/.exec(String(authorization ?? ''))?.[1];
  if (token === undefined) return undefined;
  try {
    return decodeJwt(token).sub;
  } catch {
    return undefined;
  }
}
