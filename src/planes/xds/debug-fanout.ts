/**
 * istioctl's per-replica debug requests, asked of every istiod replica of the tenant.
 *
 * Each istiod knows only the proxies connected to it, and the pool sends a stream to one replica.
 * So for the debug type URLs whose answer is per replica, meshgate answers the stream itself:
 *
 *   - `istio.io/debug/syncz` (`istioctl proxy-status`): every replica is asked, and the answers are
 *     merged into one DiscoveryResponse, each proxy once (the first replica, in pool order, that
 *     lists it). Each proxy's ClientConfig carries its replica's id in its node metadata
 *     (`MESHGATE_ISTIOD`); the response's `control_plane` names every replica that answered,
 *     comma-separated, and `MISSING(replica i of n)` for each that did not, which is what
 *     istioctl's ISTIOD column shows. A replica that did not answer also gets a ClientConfig of
 *     its own, whose node id says so: a row in istioctl's table, even when no proxy is listed.
 *   - `istio.io/debug` with the one resource `syncz` (`istioctl x internal-debug syncz`): each
 *     replica's JSON list of proxies merged into one, each proxy once, with `istiod` naming its
 *     replica; a replica that did not answer is an entry of its own, `MISSING(replica i of n)`.
 *   - `istio.io/debug/config_dump` (`istioctl proxy-status <pod>`): the proxy is connected to one
 *     replica; the first answer with resources is passed on as it is. None, with a replica
 *     missing: UNAVAILABLE, saying how many did not answer.
 *
 * Each replica sees the caller's own headers (token, clusterid) and message; streams stay on the
 * tenant's pool. Every request on the stream passes the debug allowlist; a request of any other
 * kind ends the stream (INVALID_ARGUMENT), since a stream meshgate answers reaches no istiod.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { MeshgateError, toMeshgateError } from '../../errors.js';
import type { H2Pool } from '../../forward/h2-pool.js';
import type { H2Exchange } from '../../listener/exchange.js';
import { readDiscoveryRequest, type DiscoveryRequestFields } from '../../grpc/discovery-request.js';
import { forEachField } from '../../grpc/protobuf-wire.js';
import { grpcStatusHeaders, GRPC_STATUS, respondTrailersOnly } from '../../grpc/status.js';
import { checkDebugRequest } from './requests.js';

export type FanoutMode = 'merge' | 'merge-json' | 'first';

/** The debug type URLs whose answer depends on the replica asked, and how answers combine. */
export const FANOUT_TYPES: ReadonlyMap<string, FanoutMode> = new Map([
  ['istio.io/debug/syncz', 'merge'],
  ['istio.io/debug/config_dump', 'first'],
]);

/**
 * `istio.io/debug` names an HTTP debug endpoint as its one resource (`istioctl x internal-debug
 * syncz`); istiod answers with that endpoint's JSON as the value of one Any. These are per replica.
 */
const DEBUG_TYPE = 'istio.io/debug';
const JSON_FANOUT_ENDPOINTS: ReadonlyMap<string, FanoutMode> = new Map([['syncz', 'merge-json']]);

/** The node metadata key that names the replica a proxy is connected to. */
export const ISTIOD_METADATA_KEY = 'MESHGATE_ISTIOD';

const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/**
 * One replica's answer: a syncz lists every proxy connected to it (a few hundred bytes each), so
 * this is larger than a request may be. A replica whose answer is larger is reported missing.
 */
const MAX_ANSWER_BYTES = 32 * 1024 * 1024;

export interface FanoutOutcome {
  readonly replicas: number;
  readonly missing: number;
  /** complete: every replica answered; partial: some did; failed: none did, or the stream failed. */
  readonly outcome: 'complete' | 'partial' | 'failed';
}

// ---- reading the first message ------------------------------------------------------------------

/**
 * Reads the stream's first gRPC message, and puts every byte back (`unshift`), so the stream can
 * still be forwarded as it came. Undefined when the stream ends, or the message is compressed or
 * too large, before one is whole: the forwarder then deals with it as before.
 */
export function peekFirstMessage(stream: ServerHttp2Stream): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const done = (message: Buffer | undefined): void => {
      stream.off('readable', onReadable);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      if (length > 0 && !stream.readableEnded) stream.unshift(Buffer.concat(chunks, length));
      resolve(message);
    };
    const onEnd = (): void => done(undefined);
    const onReadable = (): void => {
      for (let chunk = stream.read() as Buffer | null; chunk !== null; chunk = stream.read() as Buffer | null) {
        chunks.push(chunk);
        length += chunk.length;
        if (length < 5) continue;
        const all = Buffer.concat(chunks, length);
        const size = all.readUInt32BE(1);
        if (all[0] !== 0 || size > MAX_MESSAGE_BYTES) return done(undefined);
        if (length >= 5 + size) return done(Buffer.from(all.subarray(5, 5 + size)));
      }
    };
    stream.on('readable', onReadable);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
  });
}

/** The fan-out mode of a request, or undefined for one that goes to a single replica. */
export function fanoutModeOf(request: DiscoveryRequestFields): FanoutMode | undefined {
  if (request.typeUrl === DEBUG_TYPE) {
    const [name, ...more] = request.resourceNames;
    return name === undefined || more.length > 0 ? undefined : JSON_FANOUT_ENDPOINTS.get(name);
  }
  return FANOUT_TYPES.get(request.typeUrl);
}

// ---- protobuf, just the fields needed -----------------------------------------------------------

interface Field {
  readonly number: number;
  /** Length-delimited fields only; others are kept as raw bytes. */
  readonly bytes: Buffer;
  readonly raw: Buffer;
}

function readFields(message: Buffer): Field[] {
  const fields: Field[] = [];
  forEachField(message, (number, wireType, valueStart, end, start) => {
    fields.push({ number, bytes: wireType === 2 ? message.subarray(valueStart, end) : Buffer.alloc(0), raw: message.subarray(start, end) });
  });
  return fields;
}

function varintBytes(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

function lengthDelimited(number: number, value: Buffer | string): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value) : value;
  return Buffer.concat([varintBytes(number * 8 + 2), varintBytes(bytes.length), bytes]);
}

const text = (fields: Field[], number: number): string | undefined => fields.find((f) => f.number === number)?.bytes.toString('utf8');

/** DiscoveryResponse: version_info 1, resources 2 (Any: type_url 1, value 2), type_url 4, nonce 5, control_plane 6 (identifier 1). */
interface Answer {
  readonly versionInfo: string | undefined;
  readonly resources: Buffer[];
  readonly identifier: Record<string, unknown> | undefined;
  readonly raw: Buffer;
}

function readAnswer(message: Buffer): Answer {
  const fields = readFields(message);
  const plane = fields.find((f) => f.number === 6);
  let identifier: Record<string, unknown> | undefined;
  try {
    const json = plane === undefined ? undefined : text(readFields(plane.bytes), 1);
    identifier = json === undefined ? undefined : (JSON.parse(json) as Record<string, unknown>);
  } catch {
    identifier = undefined;
  }
  return { versionInfo: text(fields, 1), resources: fields.filter((f) => f.number === 2).map((f) => f.bytes), identifier, raw: message };
}

/** ClientConfig's node id: Any.value (2) → ClientConfig.node (1) → Node.id (1). */
function nodeIdOf(any: Buffer): string | undefined {
  const value = readFields(any).find((f) => f.number === 2);
  const node = value === undefined ? undefined : readFields(value.bytes).find((f) => f.number === 1);
  return node === undefined ? undefined : text(readFields(node.bytes), 1);
}

/**
 * The Any (a ClientConfig) with one more node metadata entry, re-encoded in place: Any.value (2) →
 * ClientConfig.node (1) → Node.metadata (3), a Struct whose map entries (1) add up.
 */
function withMetadata(any: Buffer, key: string, value: string): Buffer {
  const entry = lengthDelimited(1, Buffer.concat([lengthDelimited(1, key), lengthDelimited(2, lengthDelimited(3, value))]));
  /** `message` with its field `number` (a message) passed through `edit`; added when absent. */
  const editField = (message: Buffer, number: number, edit: (inner: Buffer) => Buffer): Buffer => {
    const fields = readFields(message);
    const found = fields.some((f) => f.number === number);
    return Buffer.concat([
      ...fields.map((f) => (f.number === number ? lengthDelimited(number, edit(f.bytes)) : f.raw)),
      ...(found ? [] : [lengthDelimited(number, edit(Buffer.alloc(0)))]),
    ]);
  };
  return editField(any, 2, (config) => editField(config, 1, (node) => editField(node, 3, (struct) => Buffer.concat([struct, entry]))));
}

const CLIENT_CONFIG = 'type.googleapis.com/envoy.service.status.v3.ClientConfig';

function missingClientConfig(label: string, reason: string): Buffer {
  const node = lengthDelimited(1, `MISSING: istiod ${label} did not answer (${reason})`);
  return Buffer.concat([lengthDelimited(1, CLIENT_CONFIG), lengthDelimited(2, lengthDelimited(1, node))]);
}

// ---- asking one replica -------------------------------------------------------------------------

type ReplicaAnswer = { readonly ok: true; readonly answer: Answer } | { readonly ok: false; readonly reason: string };

function frame(message: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

/** Sends `message` on a new stream to `replica` and resolves with its first answer, then cancels the stream. */
function askReplica(pool: H2Pool, replica: string, headers: OutgoingHttpHeaders, message: Buffer, timeoutMs: number, cancel: AbortSignal): Promise<ReplicaAnswer> {
  const abort = new AbortController();
  const onCancel = (): void => abort.abort();
  cancel.addEventListener('abort', onCancel, { once: true });
  return new Promise<ReplicaAnswer>((resolve) => {
    let settled = false;
    const settle = (result: ReplicaAnswer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      cancel.removeEventListener('abort', onCancel);
      abort.abort();
      resolve(result);
    };
    const timer = setTimeout(() => settle({ ok: false, reason: `no answer within ${timeoutMs} ms` }), timeoutMs);
    pool.open(headers, { endStream: false, signal: abort.signal, replica }).then(
      (up) => {
        // Chunks kept as they come and joined once: a large answer is not copied chunk by chunk.
        const chunks: Buffer[] = [];
        let length = 0;
        let size: number | undefined;
        up.on('error', () => undefined);
        up.on('response', (response) => {
          const code = response['grpc-status'];
          if (typeof code === 'string' && code !== '0') settle({ ok: false, reason: `grpc-status ${code}: ${String(response['grpc-message'] ?? '')}` });
        });
        up.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          length += chunk.length;
          if (size === undefined) {
            if (length < 5) return;
            size = Buffer.concat(chunks, length).readUInt32BE(1);
            if (size > MAX_ANSWER_BYTES) return settle({ ok: false, reason: `answer larger than ${MAX_ANSWER_BYTES} bytes` });
          }
          if (length < 5 + size) return;
          try {
            settle({ ok: true, answer: readAnswer(Buffer.concat(chunks, length).subarray(5, 5 + size)) });
          } catch (err) {
            settle({ ok: false, reason: `malformed answer: ${err instanceof Error ? err.message : String(err)}` });
          }
        });
        up.on('trailers', (trailers: IncomingHttpHeaders) => settle({ ok: false, reason: `grpc-status ${String(trailers['grpc-status'])}: ${String(trailers['grpc-message'] ?? '')}` }));
        up.on('close', () => settle({ ok: false, reason: `stream closed (HTTP/2 code ${up.rstCode})` }));
        if (!settled) up.write(frame(message));
      },
      (err: unknown) => settle({ ok: false, reason: toMeshgateError(err).message }),
    );
  });
}

// ---- combining the answers ----------------------------------------------------------------------

function replicaId(answer: Answer, replica: string): string {
  const id = answer.identifier?.ID;
  return typeof id === 'string' && id !== '' ? id : replica;
}

export interface Combined {
  readonly message: Buffer;
  readonly missing: number;
}

/** The answers of every replica (in pool order) as one DiscoveryResponse. Throws when none could answer. */
export function combine(mode: FanoutMode, typeUrl: string, replicas: readonly string[], answers: readonly ReplicaAnswer[]): Combined {
  const missing = answers.filter((a) => !a.ok).length;
  const label = (i: number): string => `replica ${i + 1} of ${replicas.length}`;
  const answered = answers.flatMap((a, i) => (a.ok ? [{ answer: a.answer, replica: replicas[i] ?? '' }] : []));
  if (mode === 'first') {
    const found = answered.find((a) => a.answer.resources.length > 0) ?? (missing === 0 ? answered[0] : undefined);
    if (found) return { message: found.answer.raw, missing };
    throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', {
      message: `no replica that answered knows this proxy, and ${missing} of ${replicas.length} istiod replicas did not answer`,
    });
  }
  const [first] = answered;
  if (!first) {
    throw new MeshgateError('MG_ERR_UPSTREAM_UNAVAILABLE', { message: `none of ${replicas.length} istiod replicas answered` });
  }
  if (mode === 'merge-json') return combineJson(typeUrl, replicas, answers, first.answer);
  const seen = new Set<string>();
  const resources: Buffer[] = [];
  const ids: string[] = [];
  answers.forEach((a, i) => {
    if (!a.ok) {
      ids.push(`MISSING(${label(i)})`);
      resources.push(withMetadata(missingClientConfig(label(i), a.reason), ISTIOD_METADATA_KEY, `MISSING(${label(i)})`));
      return;
    }
    const id = replicaId(a.answer, replicas[i] ?? '');
    ids.push(id);
    for (const any of a.answer.resources) {
      const node = nodeIdOf(any);
      if (node !== undefined) {
        if (seen.has(node)) continue;
        seen.add(node);
      }
      resources.push(withMetadata(any, ISTIOD_METADATA_KEY, id));
    }
  });
  const identifier = JSON.stringify({ ...first.answer.identifier, Component: 'istiod', ID: ids.join(',') });
  const message = Buffer.concat([
    ...(first.answer.versionInfo === undefined ? [] : [lengthDelimited(1, first.answer.versionInfo)]),
    ...resources.map((r) => lengthDelimited(2, r)),
    lengthDelimited(4, typeUrl),
    lengthDelimited(5, randomUUID()),
    lengthDelimited(6, lengthDelimited(1, identifier)),
  ]);
  return { message, missing };
}

/**
 * `istio.io/debug` syncz: each replica's JSON list of proxies (istiod's SyncStatus), merged into one
 * list, each proxy once (by `cluster_id` and `proxy`, the first replica in pool order), each with
 * `istiod` naming its replica; a replica that did not answer is an entry of its own, with `istiod`
 * `MISSING(replica i of n)` and `error` saying why. A replica whose answer is not a JSON list is
 * reported missing too: its answer cannot be merged.
 */
function combineJson(typeUrl: string, replicas: readonly string[], answers: readonly ReplicaAnswer[], first: Answer): Combined {
  const label = (i: number): string => `replica ${i + 1} of ${replicas.length}`;
  const seen = new Set<string>();
  const merged: Record<string, unknown>[] = [];
  const ids: string[] = [];
  let missing = 0;
  answers.forEach((a, i) => {
    const entries = a.ok ? jsonEntries(a.answer) : undefined;
    if (!a.ok || entries === undefined) {
      missing++;
      ids.push(`MISSING(${label(i)})`);
      merged.push({ istiod: `MISSING(${label(i)})`, error: a.ok ? 'its answer is not a JSON list' : `did not answer (${a.reason})` });
      return;
    }
    const id = replicaId(a.answer, replicas[i] ?? '');
    ids.push(id);
    for (const entry of entries) {
      const key = JSON.stringify([entry.cluster_id, entry.proxy]);
      if (typeof entry.proxy === 'string') {
        if (seen.has(key)) continue;
        seen.add(key);
      }
      merged.push({ ...entry, istiod: id });
    }
  });
  const any = Buffer.concat([lengthDelimited(1, DEBUG_TYPE), lengthDelimited(2, JSON.stringify(merged))]);
  const identifier = JSON.stringify({ ...first.identifier, Component: 'istiod', ID: ids.join(',') });
  const message = Buffer.concat([
    ...(first.versionInfo === undefined ? [] : [lengthDelimited(1, first.versionInfo)]),
    lengthDelimited(2, any),
    lengthDelimited(4, typeUrl),
    lengthDelimited(5, randomUUID()),
    lengthDelimited(6, lengthDelimited(1, identifier)),
  ]);
  return { message, missing };
}

/** The JSON list in an `istio.io/debug` answer's one Any (value, field 2), or undefined. */
function jsonEntries(answer: Answer): Record<string, unknown>[] | undefined {
  const [any] = answer.resources;
  if (any === undefined) return [];
  const value = readFields(any).find((f) => f.number === 2)?.bytes;
  try {
    const parsed: unknown = JSON.parse(value?.toString('utf8') ?? 'null');
    return Array.isArray(parsed) ? parsed.filter((e): e is Record<string, unknown> => typeof e === 'object' && e !== null) : undefined;
  } catch {
    return undefined;
  }
}

// ---- the stream ---------------------------------------------------------------------------------

export interface FanoutStream {
  readonly stream: ServerHttp2Stream;
  readonly pool: H2Pool;
  /** The headers each replica gets: the caller's credential, as for one replica. */
  readonly headers: OutgoingHttpHeaders;
  readonly first: DiscoveryRequestFields;
  readonly firstMessage: Buffer;
  readonly debugEndpoints: ReadonlySet<string>;
  readonly timeoutMs: number;
  readonly onOutcome?: (outcome: FanoutOutcome) => void;
}

/** Answers the stream from every replica, request by request, until the client ends it. Resolves with the grpc-status sent. */
export async function serveFanout(request: FanoutStream): Promise<{ grpcStatus: string; error?: MeshgateError }> {
  const { stream, pool } = request;
  const cancel = new AbortController();
  stream.once('close', () => cancel.abort());

  const answer = async (fields: DiscoveryRequestFields, message: Buffer): Promise<void> => {
    const mode = fanoutModeOf(fields);
    if (mode === undefined) {
      throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', {
        message: 'a stream meshgate answers from every istiod replica carries per-replica debug requests only',
        detail: fields.typeUrl,
      });
    }
    const replicas = await pool.replicas();
    const answers = await Promise.all(replicas.map((r) => askReplica(pool, r, request.headers, message, request.timeoutMs, cancel.signal)));
    let combined: Combined;
    try {
      combined = combine(mode, fields.typeUrl, replicas, answers);
    } catch (err) {
      request.onOutcome?.({ replicas: replicas.length, missing: answers.filter((a) => !a.ok).length, outcome: 'failed' });
      throw err;
    }
    request.onOutcome?.({ replicas: replicas.length, missing: combined.missing, outcome: combined.missing === 0 ? 'complete' : 'partial' });
    if (stream.closed || stream.destroyed) return;
    if (!stream.headersSent) stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.write(frame(combined.message));
  };

  const end = (code: number, message: string): void => {
    if (stream.closed || stream.destroyed) return;
    if (!stream.headersSent) {
      respondTrailersOnly(stream, code, message);
      return;
    }
    stream.once('wantTrailers', () => stream.sendTrailers(grpcStatusHeaders(code, message)));
    if (!stream.writableEnded) stream.end();
  };

  const node = readFields(request.firstMessage).find((f) => f.number === 2)?.raw ?? Buffer.alloc(0);
  try {
    checkDebugRequest(request.first, request.debugEndpoints);
    await answer(request.first, request.firstMessage);
    // Later requests on the same stream, one at a time, until the client ends it.
    let buffered = Buffer.alloc(0);
    // Not destroyed when the loop throws: the client is sent its status first.
    for await (const chunk of stream.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 5) {
        const size = buffered.readUInt32BE(1);
        if (buffered[0] !== 0 || size > MAX_MESSAGE_BYTES) throw new MeshgateError('MG_ERR_REQUEST_MALFORMED', { message: 'a compressed or oversized debug request' });
        if (buffered.length < 5 + size) break;
        const message = Buffer.from(buffered.subarray(5, 5 + size));
        buffered = buffered.subarray(5 + size);
        const fields = readDiscoveryRequest(message, 'sotw');
        checkDebugRequest(fields, request.debugEndpoints);
        // Each replica gets it on a new stream, whose first request must name the node (2), as
        // the stream's first request did: istioctl's adsc names it there only.
        const named = readFields(message).some((f) => f.number === 2);
        await answer(fields, named ? message : Buffer.concat([node, message]));
      }
    }
    if (cancel.signal.aborted) {
      return { grpcStatus: String(GRPC_STATUS.CANCELLED), error: new MeshgateError('MG_ERR_UPSTREAM_RESET', { detail: 'the client cancelled' }) };
    }
    end(GRPC_STATUS.OK, '');
    return { grpcStatus: '0' };
  } catch (err) {
    const error = toMeshgateError(err);
    end(error.grpcStatus, `${error.code}: ${error.message}`);
    return { grpcStatus: String(error.grpcStatus), error };
  } finally {
    cancel.abort();
  }
}

export interface FanoutRequest {
  readonly fields: DiscoveryRequestFields;
  readonly message: Buffer;
}

export interface PeekedStream {
  /** The stream's first request if it is one to ask of every replica; undefined: forward the stream. */
  readonly fanout: Promise<FanoutRequest | undefined>;
  /** For the forwarder: hands out the upstream stream opened at once, as for any stream. */
  readonly pool: Pick<H2Pool, 'open'>;
  /** Cancels that upstream stream (RST_STREAM(CANCEL)): the request is answered here, or the client left. */
  cancel(): void;
}

/**
 * Opens the stream upstream at once, as the forwarder always has (istiod holds a sidecar's stream
 * from its HEADERS on), while the first request is read to see whether it is a per-replica one.
 */
export function openWhilePeeking(exchange: H2Exchange, pool: H2Pool, headers: OutgoingHttpHeaders): PeekedStream {
  const abort = new AbortController();
  const up = pool.open(headers, { endStream: !exchange.hasBody, signal: abort.signal });
  // The forwarder sees a failure, if it gets the stream; a stream cancelled here ends in an error
  // (the abort) that nobody needs.
  up.then((stream) => stream.on('error', () => undefined)).catch(() => undefined);
  return {
    fanout: takeFanoutRequest(exchange),
    pool: {
      open: (_headers, { signal }) => {
        if (signal?.aborted === true) abort.abort();
        signal?.addEventListener('abort', () => abort.abort(), { once: true });
        return up;
      },
    },
    cancel: () => abort.abort(),
  };
}

/**
 * The stream's first request, when it is one to ask of every replica; otherwise undefined, with
 * the stream as it was (what was read is put back), to be forwarded to one replica.
 */
async function takeFanoutRequest(exchange: H2Exchange): Promise<{ readonly fields: DiscoveryRequestFields; readonly message: Buffer } | undefined> {
  if (!exchange.hasBody) return undefined;
  const message = await peekFirstMessage(exchange.stream);
  if (message === undefined) return undefined;
  let fields: DiscoveryRequestFields;
  try {
    fields = readDiscoveryRequest(message, 'sotw');
  } catch {
    return undefined; // the forwarder's check refuses it, as for any stream
  }
  if (fanoutModeOf(fields) === undefined) return undefined;
  // Taken off the stream: it is answered here, not forwarded.
  exchange.stream.read(5 + message.length);
  return { fields, message };
}
