// The reference "bare Node" proxy for bench/http-planes.mjs: the same stack meshgate uses (a TLS
// server handing connections to an HTTP/1.1 server, http-proxy-3, a keep-alive TLS pool to the
// upstream) with none of meshgate's work: no routing, authentication, checks, logs or metrics.
// It shows how much of meshgate's cost is Node's HTTP and TLS machinery.
//
//   node node-proxy.mjs PORT CERT KEY UPSTREAM_HTTPS UPSTREAM_HTTP CA SERVERNAME
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, createServer } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { createServer as createTlsServer } from 'node:tls';
import { createProxyServer } from 'http-proxy-3';

const [port, cert, key, upstreamHttps, upstreamHttp, ca, servername] = process.argv.slice(2);
const pool = { keepAlive: true, maxSockets: 256, maxFreeSockets: 256 };
const tlsAgent = new HttpsAgent({ ...pool, ca: readFileSync(ca), servername });
const plainAgent = new HttpAgent(pool);
const webhook = new URL(upstreamHttps);
const debug = new URL(upstreamHttp);
const proxy = createProxyServer({ changeOrigin: true, secure: true });
proxy.on('error', (_err, _req, res) => res.destroy());

const http = createServer((req, res) => {
  const isDebug = req.url.startsWith('/debug/');
  proxy.web(req, res, { target: isDebug ? debug : webhook, agent: isDebug ? plainAgent : tlsAgent });
});
createTlsServer({ cert: readFileSync(cert), key: readFileSync(key), ALPNProtocols: ['http/1.1'] }, (socket) => http.emit('connection', socket)).listen(
  Number(port),
  '127.0.0.1',
);
process.on('SIGTERM', () => process.exit(0));
