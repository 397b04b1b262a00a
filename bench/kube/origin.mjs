// The API server of the kube-watch benchmark: the sandbox's stand-in kube-apiserver (HTTPS/1.1),
// changing one bookinfo pod every INTERVAL ms, so that every watch on bookinfo pods receives a
// MODIFIED event each time. Reports over IPC its URL, its issuer's JWKS and a token it accepts.
//   argv: certFile keyFile caFile intervalMs
import { readFileSync } from 'node:fs';
import { createIssuer } from '../../dist/sandbox/issuer.js';
import { startKubeApiServerStandIn } from '../../dist/sandbox/standins/kube-apiserver.js';

const [certFile, keyFile, caFile, intervalMs] = process.argv.slice(2);
const issuer = await createIssuer('bench-main', 'https://kubernetes.default.svc.cluster.local', 'ES256');
const server = await startKubeApiServerStandIn({
  cluster: 'bench-main',
  tls: { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') },
  clientCa: readFileSync(caFile, 'utf8'),
  issuer,
  impersonators: [],
  podChangeIntervalMs: Number(intervalMs),
});
// The stand-in records every request; a benchmark's thousands of watches need not be kept.
setInterval(() => server.requests.splice(0), 1000).unref();
const token = await issuer.mint({ namespace: 'istio-system', serviceAccount: 'istiod', audience: issuer.issuer, lifetimeSeconds: 4 * 3600 });
process.send({ url: server.url, jwks: issuer.jwks(), issuer: issuer.issuer, token });
