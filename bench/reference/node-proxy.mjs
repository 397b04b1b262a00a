// The reference "bare Node" proxy for bench/http-planes.mjs: the same stack meshgate uses (a TLS
// server handing connections to an HTTP/1.1 server; towards the origin, an HTTP/2 session for
// HTTPS and a keep-alive pool for plain HTTP; the response piped back) with none of meshgate's
// work: no routing, authentication, checks, logs or metrics. It shows how much of meshgate's cost
// is Node's HTTP and TLS machinery.
//
//   node node-proxy.mjs PORT CERT KEY UPSTREAM_HTTPS UPSTREAM_HTTP CA SERVERNAME
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:http2';
import { createServer as createTlsServer } from 'node:tls';

const [port, cert, key, upstreamHttps, upstreamHttp, ca, servername] = process.argv.slice(2);
const plainAgent = new HttpAgent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256 });
const debug = new URL(upstreamHttp);
const webhook = new URL(upstreamHttps);
const authority = `${servername}:${webhook.port}`;
let session;
const h2Session = () => {
  if (session && !session.closed && !session.destroyed) return session;
  const opened = connect(upstreamHttps, { ca: readFileSync(ca), servername });
  opened.on('error', () => undefined);
  // After a GOAWAY the session takes no new streams: the next request opens another.
  opened.on('goaway', () => {
    if (session === opened) session = undefined;
  });
  session = opened;
  return session;
};
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'host', 'upgrade', 'te', 'proxy-connection']);

const http = createServer((req, res) => {
  const fail = () => res.destroy();
  if (req.url.startsWith('/debug/')) {
    const up = httpRequest({ host: debug.hostname, port: debug.port, method: req.method, path: req.url, headers: req.headers, agent: plainAgent }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    up.on('error', fail);
    req.pipe(up);
    return;
  }
  const headers = { ':method': req.method, ':path': req.url, ':authority': authority, ':scheme': 'https' };
  for (const [name, value] of Object.entries(req.headers)) if (!HOP.has(name)) headers[name] = value;
  const up = h2Session().request(headers);
  up.on('error', fail);
  up.on('response', (answer) => {
    const out = {};
    for (const [name, value] of Object.entries(answer)) if (!name.startsWith(':')) out[name] = value;
    res.writeHead(answer[':status'], out);
    up.pipe(res);
  });
  req.pipe(up);
});
createTlsServer({ cert: readFileSync(cert), key: readFileSync(key), ALPNProtocols: ['http/1.1'] }, (socket) => http.emit('connection', socket)).listen(
  Number(port),
  '127.0.0.1',
);
process.on('SIGTERM', () => process.exit(0));
