/**
 * A pod's streaming subresources on a stand-in Kubernetes API server: `exec`, `attach` and
 * `portforward`, over SPDY/3.1 (an HTTP upgrade, `X-Stream-Protocol-Version` negotiated) and over
 * WebSocket: the channel protocols (v5, v4, v1) for exec and attach; for port-forward, SPDY tunnelled
 * in binary messages (`SPDY/3.1+portforward.k8s.io`, kubectl ≥ 1.31's default) and the older
 * channel protocol (data and error channels per `ports` entry, each opened with its port number).
 *
 * The containers are toys: exec prints its arguments after the first (`echo hello world` prints
 * `hello world`), `cat` echoes stdin until it closes, `false` exits 1; attach is `cat`; every
 * forwarded connection reaches an echo.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough, type Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';
import { createSpdyServerSession, type SpdyStream, type SpdyTransport } from '../../planes/kube/spdy.js';

export type StreamKind = 'exec' | 'attach' | 'portforward';

export interface StreamTarget {
  readonly kind: StreamKind;
  readonly namespace: string;
  readonly pod: string;
  readonly query: URLSearchParams;
}

const TUNNELLED_PORT_FORWARD = 'SPDY/3.1+portforward.k8s.io';
const WEBSOCKET_PROTOCOLS: Readonly<Record<StreamKind, readonly string[]>> = {
  exec: ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'channel.k8s.io'],
  attach: ['v5.channel.k8s.io', 'v4.channel.k8s.io', 'channel.k8s.io'],
  portforward: [TUNNELLED_PORT_FORWARD, 'v4.channel.k8s.io', 'portforward.k8s.io', 'channel.k8s.io'],
};
const SPDY_PROTOCOLS: Readonly<Record<StreamKind, readonly string[]>> = {
  exec: ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'],
  attach: ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io'],
  portforward: ['portforward.k8s.io'],
};
/** How long a SPDY exec waits for the streams its query asks for before running with what it has. */
const STREAMS_GRACE_MS = 5_000;

/** The WebSocket subprotocol to answer with: the first the client offers that `kind` supports. */
export function chooseWebSocketProtocol(kind: StreamKind, offered: Iterable<string>): string | false {
  return [...offered].find((p) => WEBSOCKET_PROTOCOLS[kind].includes(p)) ?? false;
}

/** Answers a SPDY/3.1 upgrade (101 and the negotiated protocol), then runs a SPDY session on the socket. */
export function serveSpdy(req: IncomingMessage, socket: Duplex, head: Buffer, target: StreamTarget): void {
  const offered = String(req.headers['x-stream-protocol-version'] ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  const supported = SPDY_PROTOCOLS[target.kind];
  const protocol = offered.length === 0 ? 'channel.k8s.io' : offered.find((p) => supported.includes(p));
  if (protocol === undefined) {
    const body = `unable to upgrade: unable to negotiate protocol: client supports [${offered.join(' ')}], server accepts [${supported.join(' ')}]\n`;
    const accepted = supported.map((p) => `X-Accepted-Stream-Protocol-Versions: ${p}\r\n`).join('');
    socket.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n${accepted}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    return;
  }
  const version = offered.length === 0 ? '' : `X-Stream-Protocol-Version: ${protocol}\r\n`;
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n${version}\r\n`);
  const transport: SpdyTransport = {
    write: (bytes) => !socket.writable || socket.write(bytes),
    end: () => socket.end(),
  };
  const session = createSpdyServerSession(transport, streamHandler(target, protocol));
  socket.on('drain', () => session.drained());
  socket.on('data', (chunk: Buffer) => session.receive(chunk));
  socket.on('close', () => session.close());
  socket.on('end', () => session.close());
  if (head.length > 0) session.receive(head);
}

/** Serves an accepted WebSocket whose subprotocol (`protocol`) came from chooseWebSocketProtocol. */
export function serveWebSocket(ws: WebSocket, target: StreamTarget, protocol: string): void {
  ws.on('error', () => ws.terminate());
  if (protocol === TUNNELLED_PORT_FORWARD) {
    const session = createSpdyServerSession(
      {
        write: (bytes) => {
          ws.send(bytes, { binary: true });
          return true;
        },
        end: () => ws.close(1000),
      },
      streamHandler(target, 'portforward.k8s.io'),
    );
    ws.on('message', (data) => session.receive(toBuffer(data)));
    ws.on('close', () => session.close());
  } else if (target.kind === 'portforward') {
    portForwardChannels(ws, target);
  } else {
    execChannels(ws, target, protocol);
  }
}

function streamHandler(target: StreamTarget, protocol: string): (stream: SpdyStream) => void {
  return target.kind === 'portforward' ? portForwardStreams() : execStreams(target, protocol);
}

interface ToyIo {
  readonly stdin?: NodeJS.ReadableStream;
  stdout(data: Buffer): void;
  exit(code: number): void;
}

const commandOf = (target: StreamTarget): string[] => (target.kind === 'attach' ? ['cat'] : target.query.getAll('command'));

/** Runs the toy container's command: `cat` echoes stdin, `false` fails, anything else echoes its arguments. */
function run(command: readonly string[], io: ToyIo): void {
  const [program, ...args] = command;
  const { stdin } = io;
  if (program === 'cat' && stdin) {
    stdin.on('data', (data: Buffer) => io.stdout(data));
    stdin.on('end', () => io.exit(0));
    return;
  }
  stdin?.resume();
  if (program !== 'cat' && program !== 'false') io.stdout(Buffer.from(`${args.join(' ')}\n`));
  io.exit(program === 'false' ? 1 : 0);
}

/** What the error channel carries at exit: a metav1.Status from v4 on, text before (nothing on success). */
function exitMessage(protocol: string, command: readonly string[], code: number): string {
  const message = `command terminated with non-zero exit code: error executing command [${command.join(' ')}], exit code ${code}`;
  if (!/^v[45]\./.test(protocol)) return code === 0 ? '' : message;
  if (code === 0) return JSON.stringify({ metadata: {}, status: 'Success' });
  const details = { causes: [{ reason: 'ExitCode', message: String(code) }] };
  return JSON.stringify({ metadata: {}, status: 'Failure', message, reason: 'NonZeroExitCode', details });
}

const isTrue = (query: URLSearchParams, name: string): boolean => ['true', '1'].includes(query.get(name) ?? '');

/** Exec over SPDY: waits for the streams the query asks for (by `streamtype`), then runs. */
function execStreams(target: StreamTarget, protocol: string): (stream: SpdyStream) => void {
  const { query } = target;
  const tty = isTrue(query, 'tty');
  const expected = ['error'];
  if (isTrue(query, 'stdin')) expected.push('stdin');
  if (isTrue(query, 'stdout')) expected.push('stdout');
  if (isTrue(query, 'stderr') && !tty) expected.push('stderr');
  if (tty && /^v[34]\./.test(protocol)) expected.push('resize');
  const streams = new Map<string, SpdyStream>();
  let started = false;
  const start = (): void => {
    if (started) return;
    started = true;
    clearTimeout(grace);
    const command = commandOf(target);
    run(command, {
      ...(streams.has('stdin') ? { stdin: streams.get('stdin') } : {}),
      stdout: (data) => streams.get('stdout')?.write(data),
      exit: (code) => {
        const message = exitMessage(protocol, command, code);
        for (const [type, stream] of streams) {
          if (type === 'error' && message !== '') stream.end(message);
          else stream.end();
        }
      },
    });
  };
  const grace = setTimeout(start, STREAMS_GRACE_MS);
  grace.unref();
  return (stream) => {
    const type = stream.headers.streamtype ?? '';
    if (streams.has(type) || !['error', 'stdin', 'stdout', 'stderr', 'resize'].includes(type)) {
      stream.reset();
      return;
    }
    streams.set(type, stream);
    if (type !== 'stdin') stream.resume();
    if (expected.every((t) => streams.has(t))) start();
  };
}

/** Port-forward over SPDY: per `requestid`, an error stream and a data stream that echoes. */
function portForwardStreams(): (stream: SpdyStream) => void {
  const errors = new Map<string, SpdyStream>();
  return (stream) => {
    const requestId = stream.headers.requestid ?? '';
    if (stream.headers.streamtype === 'error') {
      errors.set(requestId, stream);
      stream.resume();
      return;
    }
    if (stream.headers.streamtype !== 'data') {
      stream.reset();
      return;
    }
    const error = errors.get(requestId);
    errors.delete(requestId);
    const port = Number(stream.headers.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      error?.end(`invalid port ${stream.headers.port ?? '(none)'}`);
      stream.end();
      return;
    }
    const finish = (): void => {
      if (!stream.writableEnded) stream.end();
      if (error && !error.writableEnded) error.end();
    };
    stream.on('data', (data: Buffer) => stream.write(data));
    stream.on('end', finish);
    stream.on('close', finish);
  };
}

/** Exec and attach over the WebSocket channel protocols: one byte of channel, then the data. */
function execChannels(ws: WebSocket, target: StreamTarget, protocol: string): void {
  const stdin = isTrue(target.query, 'stdin') ? new PassThrough() : undefined;
  const send = (channel: number, data: Buffer): void => {
    if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.from([channel]), data]), { binary: true });
  };
  ws.on('message', (data) => {
    const bytes = toBuffer(data);
    if (bytes[0] === 0) stdin?.write(bytes.subarray(1));
    // v5's CLOSE signal: [255, channel].
    else if (protocol.startsWith('v5.') && bytes[0] === 255 && bytes[1] === 0) stdin?.end();
  });
  ws.on('close', () => stdin?.end());
  const command = commandOf(target);
  run(command, {
    ...(stdin ? { stdin } : {}),
    stdout: (data) => send(1, data),
    exit: (code) => {
      const message = exitMessage(protocol, command, code);
      if (message !== '') send(3, Buffer.from(message));
      if (ws.readyState === ws.OPEN) ws.close(1000);
    },
  });
}

/** Port-forward over the channel protocol: channels 2i (data) and 2i+1 (error) for the i-th of `ports`. */
function portForwardChannels(ws: WebSocket, target: StreamTarget): void {
  const ports = target.query.getAll('ports').flatMap((p) => p.split(',')).map(Number);
  if (ports.length === 0 || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    ws.close(1008, 'query parameter "ports" must name ports');
    return;
  }
  ports.forEach((port, i) => {
    for (const channel of [2 * i, 2 * i + 1]) ws.send(Buffer.from([channel, port & 0xff, port >> 8]), { binary: true });
  });
  ws.on('message', (data) => {
    const bytes = toBuffer(data);
    const channel = bytes[0];
    if (channel !== undefined && channel % 2 === 0 && channel < 2 * ports.length && bytes.length > 1) ws.send(bytes, { binary: true });
  });
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  return Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}
