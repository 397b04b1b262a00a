/**
 * The real protos of the xDS plane, loaded once: Envoy's ADS and CSDS (from the
 * `@grpc/grpc-js-xds` package's `deps/`), and Istio's CA service (`protos/istioca.proto`). The
 * sandbox's stand-in istiod serves them; the `meshgate xds` client and the tests call them.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const require = createRequire(import.meta.url);
/** `@grpc/grpc-js-xds/build/src/index.js` → the package folder. */
const XDS_PACKAGE = join(dirname(require.resolve('@grpc/grpc-js-xds')), '..', '..');
const DEPS = join(XDS_PACKAGE, 'deps');
/** src/sandbox or dist/sandbox → the repository's protos/. */
const OWN = fileURLToPath(new URL('../../protos', import.meta.url));

export const INCLUDE_DIRS = [join(DEPS, 'envoy-api'), join(DEPS, 'googleapis'), join(DEPS, 'protoc-gen-validate'), join(DEPS, 'xds'), OWN];

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
  const definition = loadSync(FILES, { includeDirs: INCLUDE_DIRS, keepCase: true, longs: String, enums: String, defaults: false, oneofs: true });
  const grpc = loadPackageDefinition(definition);
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of INCLUDE_DIRS) {
      const candidate = join(dir, target);
      try {
        require.resolve(candidate);
        return candidate;
      } catch {
        // not in this folder
      }
    }
    return target;
  };
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
