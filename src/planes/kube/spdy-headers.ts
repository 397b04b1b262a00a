/**
 * SPDY/3 header blocks, for the SPDY session in spdy.ts: the uncompressed format (a uint32 count,
 * then uint32-length-prefixed names and values, several values of a name NUL-separated), and the
 * zlib contexts that compress them with the SPDY/3 dictionary. A session keeps one context per
 * direction for its whole life, every block sync-flushed: each block depends on all before it.
 */
import { constants, createDeflate, createInflate, type Deflate, type Inflate } from 'node:zlib';

/** Bad input from the peer; the session ends with GOAWAY. */
export class SpdyProtocolError extends Error {}

/** Largest header block inflated; more ends the session. */
const MAX_HEADER_BLOCK = 1024 * 1024;

const DICTIONARY_WORDS = [
  'options', 'head', 'post', 'put', 'delete', 'trace', 'accept', 'accept-charset', 'accept-encoding', 'accept-language',
  'accept-ranges', 'age', 'allow', 'authorization', 'cache-control', 'connection', 'content-base', 'content-encoding',
  'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type', 'date', 'etag',
  'expect', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since',
  'last-modified', 'location', 'max-forwards', 'pragma', 'proxy-authenticate', 'proxy-authorization', 'range', 'referer',
  'retry-after', 'server', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'user-agent', 'vary', 'via', 'warning',
  'www-authenticate', 'method', 'get', 'status', '200 OK', 'version', 'HTTP/1.1', 'url', 'public', 'set-cookie', 'keep-alive',
  'origin',
];
const DICTIONARY_TAIL =
  '100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505' +
  '203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden' +
  '404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable' +
  'Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT' +
  'chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,' +
  'publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.';

/** The SPDY/3 header compression dictionary: each word after its big-endian uint32 length, then the tail. */
export const SPDY_DICTIONARY: Buffer = Buffer.concat([
  ...DICTIONARY_WORDS.map((word) => uint32Prefixed(Buffer.from(word, 'latin1'))),
  Buffer.from(DICTIONARY_TAIL, 'latin1'),
]);

/** A header block before compression: uint32 count, then uint32-length-prefixed names and values. */
export function encodeHeaderBlock(headers: Readonly<Record<string, string>>): Buffer {
  const entries = Object.entries(headers);
  const parts = [uint32s(entries.length)];
  for (const [name, value] of entries) {
    parts.push(uint32Prefixed(Buffer.from(name.toLowerCase(), 'utf8')), uint32Prefixed(Buffer.from(value, 'utf8')));
  }
  return Buffer.concat(parts);
}

/** Parses an inflated header block; several values of one name (NUL-separated) are joined with ", ". */
export function decodeHeaderBlock(block: Buffer): Record<string, string> {
  const headers: Record<string, string> = {};
  let offset = 0;
  const read = (): string => {
    if (offset + 4 > block.length) throw new SpdyProtocolError('truncated header block');
    const length = block.readUInt32BE(offset);
    if (offset + 4 + length > block.length) throw new SpdyProtocolError('truncated header block');
    const text = block.toString('utf8', offset + 4, offset + 4 + length);
    offset += 4 + length;
    return text;
  };
  if (block.length < 4) throw new SpdyProtocolError('truncated header block');
  const count = block.readUInt32BE(0);
  offset = 4;
  for (let i = 0; i < count; i++) {
    const name = read().toLowerCase();
    headers[name] = read().split('\0').join(', ');
  }
  return headers;
}

export function uint32s(...values: number[]): Buffer {
  const bytes = Buffer.alloc(4 * values.length);
  values.forEach((value, i) => bytes.writeUInt32BE(value >>> 0, 4 * i));
  return bytes;
}

function uint32Prefixed(bytes: Buffer): Buffer {
  return Buffer.concat([uint32s(bytes.length), bytes]);
}

export interface HeaderContext {
  /** Feeds one block through the shared context (sync-flushed) and resolves with what came out. */
  run(input: Buffer): Promise<Buffer>;
  close(): void;
}

/** One direction's compression context, for a whole session: `inflate` reads the peer's blocks, `deflate` writes ours. */
export function createHeaderContext(direction: 'inflate' | 'deflate'): HeaderContext {
  const options = { dictionary: SPDY_DICTIONARY, flush: constants.Z_SYNC_FLUSH };
  return createZlibContext(direction === 'inflate' ? createInflate(options) : createDeflate(options), MAX_HEADER_BLOCK);
}

/**
 * Created with `flush: Z_SYNC_FLUSH`, every write is flushed, and its output is pushed before the
 * write's callback runs; callers run one block at a time.
 */
function createZlibContext(stream: Inflate | Deflate, maxOutput: number): HeaderContext {
  let output: Buffer[] = [];
  let size = 0;
  let failure: Error | undefined;
  let pending: ((error: Error) => void) | undefined;
  stream.on('data', (chunk: Buffer) => {
    size += chunk.length;
    if (size <= maxOutput) output.push(chunk);
  });
  stream.on('error', (error) => {
    failure = error;
    pending?.(error);
  });
  return {
    run: (input) =>
      new Promise((resolve, reject) => {
        if (failure || stream.destroyed) {
          reject(failure ?? new Error('zlib context closed'));
          return;
        }
        output = [];
        size = 0;
        pending = reject;
        stream.write(input, (error) => {
          pending = undefined;
          const problem = error ?? failure;
          if (problem) reject(problem);
          else if (size > maxOutput) reject(new SpdyProtocolError('header block too large'));
          else resolve(Buffer.concat(output));
        });
      }),
    close: () => {
      stream.destroy();
    },
  };
}
