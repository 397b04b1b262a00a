// The istiod of the xds benchmark: TLS, HTTP/2, gRPC framing, no protobuf. Each stream is answered
// with a small first message as soon as its first request message arrives, then held open. On
// {cmd: 'push', bytes} it writes one message of that size to every held stream at once.
//
//   node bench/xds/upstream.mjs PORT CERT KEY     (driven over IPC by bench/xds.mjs)
import { readFileSync } from 'node:fs';
import { createSecureServer } from 'node:http2';

const [port, certFile, keyFile] = process.argv.slice(2);
const frame = (payload) => Buffer.concat([Buffer.from([0, ...u32(payload.length)]), payload]);
const u32 = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
const FIRST = frame(Buffer.alloc(200, 1));

const held = new Set();
const server = createSecureServer({
  cert: readFileSync(certFile),
  key: readFileSync(keyFile),
  settings: { maxConcurrentStreams: 100_000, initialWindowSize: 1 << 20 },
  maxSessionMemory: 1024,
});
server.on('session', (session) => {
  session.on('error', () => undefined);
  session.setLocalWindowSize(16 << 20);
});
server.on('stream', (stream) => {
  stream.on('error', () => undefined);
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
  stream.once('data', () => {
    stream.write(FIRST);
    held.add(stream);
  });
  stream.on('data', () => undefined);
  stream.on('close', () => held.delete(stream));
});
// The same accept backlog as meshgate's listeners and the benchmark's nginx, for reconnect storms.
server.listen({ port: Number(port), host: '127.0.0.1', backlog: 4096 }, () => process.send?.({ ready: true }));

process.on('message', (message) => {
  if (message.cmd === 'push') {
    const push = frame(Buffer.alloc(message.bytes, 7));
    for (const stream of held) stream.write(push);
    process.send({ pushed: held.size });
  } else if (message.cmd === 'held') {
    process.send({ held: held.size });
  }
});
process.on('disconnect', () => process.exit(0));
