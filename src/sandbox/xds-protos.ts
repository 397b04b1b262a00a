/**
 * The real protos of the xDS plane, loaded once: Envoy's ADS and CSDS (from the
 * `@grpc/grpc-js-xds` package's `deps/`), and Istio's CA service (`protos/istioca.proto`). The
 * sandbox's stand-in istiod serves them; the `meshgate xds` client and the tests call them.
 */
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type protobuf from 'protobufjs';
import { PROTO_INCLUDE_DIRS, protoRoot } from '../grpc/proto-root.js';

const FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/status/v3/csds.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'istioca.proto',
];

export const TYPE_URL = {
  cluster: 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  clientConfig: 'type.googleapis.com/envoy.service.status.v3.ClientConfig',
  syncz: 'istio.io/debug/syncz',
} as const;

export const METHOD = {
  sotw: '/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources',
  delta: '/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources',
  csr: '/istio.v1.auth.IstioCertificateService/CreateCertificate',
} as const;

export interface XdsProtos {
  readonly AggregatedDiscoveryService: ServiceClientConstructor;
  readonly IstioCertificateService: ServiceClientConstructor;
  /** Packs a message into a google.protobuf.Any (`{type_url, value}`). */
  pack(typeUrl: string, message: object): { type_url: string; value: Buffer };
  /** Unpacks a google.protobuf.Any into a plain object. */
  unpack(any: { type_url: string; value: Buffer | Uint8Array }): Record<string, unknown>;
}

let loaded: XdsProtos | undefined;

export function xdsProtos(): XdsProtos {
  if (loaded) return loaded;
  const definition = loadSync(FILES, { includeDirs: PROTO_INCLUDE_DIRS, keepCase: true, longs: String, enums: String, defaults: false, oneofs: true });
  const grpc = loadPackageDefinition(definition);
  const root = protoRoot();
  root.loadSync(FILES, { keepCase: true });
  const typeOf = (typeUrl: string): protobuf.Type => root.lookupType(typeUrl.slice(typeUrl.lastIndexOf('/') + 1));

  loaded = {
    AggregatedDiscoveryService: service(grpc, 'envoy.service.discovery.v3.AggregatedDiscoveryService'),
    IstioCertificateService: service(grpc, 'istio.v1.auth.IstioCertificateService'),
    pack(typeUrl, message) {
      const type = typeOf(typeUrl);
      return { type_url: typeUrl, value: Buffer.from(type.encode(type.fromObject(message)).finish()) };
    },
    unpack(any) {
      const type = typeOf(any.type_url);
      return type.toObject(type.decode(any.value), { longs: String, enums: String });
    },
  };
  return loaded;
}

function service(grpc: GrpcObject, name: string): ServiceClientConstructor {
  let node: unknown = grpc;
  for (const part of name.split('.')) node = (node as Record<string, unknown>)[part];
  if (typeof node !== 'function') throw new Error(`proto service ${name} not loaded`);
  return node as ServiceClientConstructor;
}
