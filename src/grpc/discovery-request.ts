/**
 * The two fields of an xDS request that decide what it asks istiod for: its type URL and the
 * resources it names. Read straight from the protobuf wire format, skipping every other field, so
 * that no message costs more than one pass over its bytes.
 *
 *   envoy.service.discovery.v3.DiscoveryRequest       resource_names = 3, type_url = 4
 *   envoy.service.discovery.v3.DeltaDiscoveryRequest  type_url = 2, resource_names_subscribe = 3
 */
import { MeshgateError } from '../errors.js';
import { forEachField, WireFormatError } from './protobuf-wire.js';

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
  try {
    forEachField(message, (field, wireType, start, end) => {
      if (wireType !== 2) return;
      if (field === fields.typeUrl) typeUrl = message.toString('utf8', start, end);
      else if (field === fields.names) resourceNames.push(message.toString('utf8', start, end));
    });
  } catch (err) {
    if (err instanceof WireFormatError) throw malformed(err.message);
    throw err;
  }
  return { typeUrl, resourceNames };
}

function malformed(detail: string): MeshgateError {
  return new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'an xDS request is not a valid DiscoveryRequest', detail });
}
