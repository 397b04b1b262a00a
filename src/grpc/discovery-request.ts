/**
 * The two fields of an xDS request that decide what it asks istiod for: its type URL and the
 * resources it names. Read straight from the protobuf wire format, skipping every other field, so
 * that no message costs more than one pass over its bytes.
 *
 *   envoy.service.discovery.v3.DiscoveryRequest       resource_names = 3, type_url = 4
 *   envoy.service.discovery.v3.DeltaDiscoveryRequest  type_url = 2, resource_names_subscribe = 3
 */
import { MeshgateError } from '../errors.js';

export interface DiscoveryRequestFields {
  readonly typeUrl: string;
  readonly resourceNames: readonly string[];
}

const FIELDS = {
  sotw: { typeUrl: 4, names: 3 },
  delta: { typeUrl: 2, names: 3 },
} as const;

export function readDiscoveryRequest(message: Buffer, kind: 'sotw' | 'delta'): DiscoveryRequestFields {
  const fields = FIELDS[kind];
  let typeUrl = '';
  const resourceNames: string[] = [];
  let at = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; shift < 64; shift += 7) {
      const byte = message[at++];
      if (byte === undefined) throw malformed('a varint runs past the end');
      // Lengths and field numbers fit in 2^53; anything longer is skipped as a value, never used as one.
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
    }
    throw malformed('a varint longer than ten bytes');
  };
  while (at < message.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    switch (key % 8) {
      case 0:
        varint();
        break;
      case 1:
        at += 8;
        break;
      case 5:
        at += 4;
        break;
      case 2: {
        const length = varint();
        if (at + length > message.length) throw malformed('a field runs past the end');
        if (field === fields.typeUrl) typeUrl = message.toString('utf8', at, at + length);
        else if (field === fields.names) resourceNames.push(message.toString('utf8', at, at + length));
        at += length;
        break;
      }
      default:
        throw malformed(`wire type ${key % 8}`);
    }
    if (at > message.length) throw malformed('a field runs past the end');
  }
  return { typeUrl, resourceNames };
}

function malformed(detail: string): MeshgateError {
  return new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'an xDS request is not a valid DiscoveryRequest', detail });
}
