/**
 * istiod replicas for the per-replica debug requests (test/xds-debug-fanout.test.ts and the
 * interop suite's istioctl run): grpc-js servers sharing one certificate, each listing in
 * `istio.io/debug/syncz` (and in `istio.io/debug` `syncz`'s JSON) only the sidecars whose ADS stream
 * it holds, as istiod's debugSyncz does, and answering `istio.io/debug/config_dump` only for those.
 */
import { randomUUID } from 'node:crypto';
import { Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { xdsProtos } from '../../src/sandbox/xds-protos.js';
import { TYPE_URL, upstreamTls } from './grpc.js';

export interface AskedRequest {
  readonly typeUrl: string;
  readonly authorization: string;
  readonly clusterid: string;
  readonly node: string | undefined;
}

/** One istiod replica: lists only the sidecars whose ADS stream it holds. */
export interface Replica {
  readonly name: string;
  readonly url: string;
  readonly connected: Set<string>;
  /** Debug requests asked of this replica. */
  readonly asked: AskedRequest[];
  /** Sidecar streams opened on this replica. */
  readonly streams: string[];
  /** Never answers debug requests while set. */
  hang: boolean;
  /** Proxies it also lists, as if a sidecar had just moved here. */
  readonly alsoLists: string[];
}

export interface IstiodReplicas {
  readonly replicas: Replica[];
  /** The tenant's `istiod.xds` settings for them. */
  readonly xds: { readonly replicas: string[]; readonly ca: string; readonly serverName: string };
  close(): void;
}

interface Request {
  node?: { id?: string };
  type_url?: string;
  resource_names?: string[];
}

export async function startIstiodReplicas(prefix: string, count: number): Promise<IstiodReplicas> {
  const tls = await upstreamTls();
  const protos = xdsProtos();
  const servers: Server[] = [];
  const replicas = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const server = new Server();
      const replica: Replica = { name: `${prefix}-${i}`, url: '', connected: new Set(), asked: [], streams: [], hang: false, alsoLists: [] };
      const identifier = JSON.stringify({ Component: 'istiod', ID: replica.name, Info: { version: '1.32-dev' } });
      const clientConfig = (id: string) => protos.pack(TYPE_URL.clientConfig, { node: { id, metadata: { fields: { CLUSTER_ID: { stringValue: 'acme-east' } } } } });
      server.addService(protos.AggregatedDiscoveryService.service, {
        StreamAggregatedResources: (call: ServerDuplexStream<Request, object>) => {
          let node: string | undefined;
          call.on('data', (request: Request) => {
            const typeUrl = request.type_url ?? '';
            if (typeUrl.startsWith('istio.io/debug')) {
              replica.asked.push({ typeUrl, authorization: String(call.metadata.get('authorization')[0]), clusterid: String(call.metadata.get('clusterid')[0]), node: request.node?.id });
              if (replica.hang) return;
              const listed = [...replica.connected, ...replica.alsoLists];
              // `istioctl x internal-debug syncz`: the HTTP endpoint's JSON (istiod's SyncStatus list) in one Any.
              if (typeUrl === 'istio.io/debug' && request.resource_names?.[0] === 'syncz') {
                const json = JSON.stringify(listed.map((id) => ({ cluster_id: 'acme-east', proxy: id, istio_version: '1.32-dev' })));
                const value = { type_url: typeUrl, value: Buffer.from(json) };
                call.write({ version_info: 'v1', type_url: typeUrl, nonce: randomUUID(), resources: [value], control_plane: { identifier } });
                return;
              }
              const resources =
                typeUrl === TYPE_URL.syncz
                  ? listed.map(clientConfig)
                  : listed.filter((id) => request.resource_names?.[0] === id).map((id) => protos.pack(TYPE_URL.cluster, { name: `dump of ${id} by ${replica.name}` }));
              call.write({ version_info: 'v1', type_url: typeUrl, nonce: randomUUID(), resources, control_plane: { identifier } });
              return;
            }
            if (node === undefined && request.node?.id) {
              node = request.node.id;
              replica.connected.add(node);
              replica.streams.push(node);
            }
            call.write({ version_info: 'v1', type_url: typeUrl, nonce: randomUUID(), resources: [] });
          });
          const leave = (): void => {
            if (node !== undefined) replica.connected.delete(node);
          };
          call.on('end', () => {
            leave();
            call.end();
          });
          call.on('cancelled', leave);
          call.on('error', leave);
        },
      });
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync(
          '127.0.0.1:0',
          ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }], false),
          (err, p) => (err ? reject(err) : resolve(p)),
        ),
      );
      servers.push(server);
      return Object.assign(replica, { url: `https://127.0.0.1:${port}` });
    }),
  );
  return {
    replicas,
    xds: { replicas: replicas.map((r) => r.url), ca: tls.caFile, serverName: tls.serverName },
    close: () => {
      for (const server of servers) server.forceShutdown();
    },
  };
}

