import { describe, expect, it } from 'vitest';
import { MeshgateError } from '../errors.js';
import { xdsProtos } from '../sandbox/xds-protos.js';
import { readDiscoveryRequest } from './discovery-request.js';

describe('readDiscoveryRequest', () => {
  const protos = xdsProtos();

  it('reads type URL and resource names of a DiscoveryRequest encoded by protobufjs, skipping the rest', () => {
    const message = protos.pack('type.googleapis.com/envoy.service.discovery.v3.DiscoveryRequest', {
      version_info: 'v1',
      node: { id: 'sidecar~10.0.0.1~x.ns~ns.svc.cluster.local', metadata: { fields: { CLUSTER_ID: { string_value: 'acme-east' } } } },
      resource_names: ['syncz', 'adsz?push=true'],
      type_url: 'istio.io/debug',
      response_nonce: 'n',
    }).value;
    expect(readDiscoveryRequest(message, 'sotw')).toEqual({ typeUrl: 'istio.io/debug', resourceNames: ['syncz', 'adsz?push=true'] });
  });

  it('reads a DeltaDiscoveryRequest by its own field numbers', () => {
    const message = protos.pack('type.googleapis.com/envoy.service.discovery.v3.DeltaDiscoveryRequest', {
      node: { id: 'n' },
      type_url: 'istio.io/debug/syncz',
      resource_names_subscribe: ['a'],
      resource_names_unsubscribe: ['b'],
    }).value;
    expect(readDiscoveryRequest(message, 'delta')).toEqual({ typeUrl: 'istio.io/debug/syncz', resourceNames: ['a'] });
  });

  it.each([
    ['a truncated field', Buffer.from([0x22, 0x05, 0x61])],
    ['a truncated varint', Buffer.from([0x08, 0xff])],
    ['an unknown wire type', Buffer.from([0x0f])],
  ])('refuses %s as malformed', (_name, bytes) => {
    expect(() => readDiscoveryRequest(bytes, 'sotw')).toThrow(MeshgateError);
  });
});
