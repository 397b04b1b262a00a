/**
 * One pass over a protobuf message's top-level fields, straight from the wire format: for each
 * field, its number and where its bytes lie. Varints, fixed 32- and 64-bit values are skipped;
 * a length-delimited value (a string, bytes, a nested message) spans `[valueStart, end)`. Nothing
 * is allocated per field, so the xDS request path can afford it.
 */

/** The message is not valid protobuf; `message` says where it went wrong. */
export class WireFormatError extends Error {}

/** `start` is where the field's key begins, so `[start, end)` is the whole field, as it came. */
export type FieldVisitor = (field: number, wireType: number, valueStart: number, end: number, start: number) => void;

export function forEachField(message: Uint8Array, visit: FieldVisitor): void {
  let at = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; shift < 64; shift += 7) {
      const byte = message[at++];
      if (byte === undefined) throw new WireFormatError('a varint runs past the end');
      // Lengths and field numbers fit in 2^53; anything longer is skipped as a value, never used as one.
      value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
    }
    throw new WireFormatError('a varint longer than ten bytes');
  };
  while (at < message.length) {
    const start = at;
    const key = varint();
    const wireType = key % 8;
    let valueStart = at;
    switch (wireType) {
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
        valueStart = at;
        at += length;
        break;
      }
      default:
        throw new WireFormatError(`wire type ${wireType}`);
    }
    if (at > message.length) throw new WireFormatError('a field runs past the end');
    visit(Math.floor(key / 8), wireType, valueStart, at, start);
  }
}
