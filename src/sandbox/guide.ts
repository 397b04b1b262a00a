/** The commands `meshgate sandbox` prints: each works when pasted into a shell. */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SandboxInfo } from './sandbox.js';

const quote = (text: string): string => `'${text.replaceAll("'", `'\\''`)}'`;

/** The built CLI beside this module (dist/cli/main.js). */
const MESHGATE = `node ${quote(fileURLToPath(new URL('../cli/main.js', import.meta.url)))}`;

/** `meshgate xds` with the sandbox's CA, dialling 127.0.0.1 for the tenant's host. */
function xds(info: SandboxInfo, host: string, extra: readonly string[]): string {
  return [`${MESHGATE} xds`, `--server ${host}:${info.listeners.xds.port}`, '--connect-to 127.0.0.1', `--ca ${quote(info.caFile)}`, ...extra].join(
    ' \\\n    ',
  );
}

/** curl with the sandbox's CA and a --resolve for the tenant's host (no DNS needed). */
function curl(info: SandboxInfo, host: string, port: number, extra: readonly string[]): string {
  return ['curl -sS', `--resolve ${host}:${port}:127.0.0.1`, `--cacert ${quote(info.caFile)}`, ...extra].join(' \\\n    ');
}

/** kubectl with one of the sandbox's kubeconfigs (they dial 127.0.0.1 with the tenant's host as tls-server-name). */
function kubectl(kubeconfig: string, extra: readonly string[]): string {
  return [`kubectl --kubeconfig ${quote(kubeconfig)}`, ...extra].join(' ');
}

export function sandboxGuide(info: SandboxInfo): string {
  const acme = info.tenants.acme;
  const globex = info.tenants.globex;
  if (!acme || !globex) throw new Error('the sandbox has the tenants acme and globex');
  const webhookPort = info.listeners.webhook.port;
  const apiPort = info.listeners.api.port;
  const review = `--data @${quote(info.admissionReview)}`;
  const json = `-H 'content-type: application/json'`;
  const acmeCert = [`--cert ${quote(acme.clientCert)}`, `--key ${quote(acme.clientKey)}`];
  const globexCluster = globex.clusters[0] ?? '';
  const acmeEast = acme.kubeconfigs['acme-east'] ?? '';
  const globexMain = globex.kubeconfigs[globexCluster] ?? '';

  const lines = [
    'meshgate sandbox is running.',
    `  files:   ${info.dir}  (sandbox.json describes every endpoint; meshgate.yaml is the config in use)`,
    `  status:  ${info.admin}/status  (open it in a browser: tenants, request rates, denials, xDS streams, live)`,
    `  admin:   ${info.admin}/metrics  /healthz  /readyz`,
    `  webhook: 127.0.0.1:${webhookPort}    debug (api): 127.0.0.1:${apiPort}    xds: 127.0.0.1:${info.listeners.xds.port}`,
    '',
    'Tenants (each has its own stand-in istiod):',
    ...Object.entries(info.tenants).map(
      ([id, t]) =>
        `  ${id.padEnd(7)} ${t.host.padEnd(22)} clusters: ${t.clusters.join(', ').padEnd(22)} webhook callers: ${t.webhookAuthentication.join(' or ')}`,
    ),
    '',
    "1. acme's kube-apiserver asks acme's istiod to inject a sidecar, proving itself with a client certificate:",
    `  ${curl(info, acme.host, webhookPort, [...acmeCert, json, review, quote(`${acme.webhook.inject}?timeout=10s`)])}`,
    '',
    "2. globex's kube-apiserver cannot present a credential (managed Kubernetes), so its webhook URL carries a path key:",
    `  ${curl(info, globex.host, webhookPort, [json, review, quote(`${globex.webhook.inject}?timeout=10s`)])}`,
    '',
    "3. Kiali reads acme's istiod debug endpoints with a service-account token (istiod still applies its own rules):",
    `  ${curl(info, acme.host, apiPort, [`-H "authorization: Bearer $(cat ${quote(join(info.dir, 'tokens', 'acme-debug.jwt'))})"`, quote(`https://${acme.host}:${apiPort}/debug/syncz`)])}`,
    '',
    "4. Isolation. acme's certificate on globex's host is refused (401) and never reaches globex's istiod:",
    `  ${curl(info, globex.host, webhookPort, [...acmeCert, json, review, quote(`https://${globex.host}:${webhookPort}/inject/cluster/${globexCluster}/net/network1`)])}`,
    "   …and acme may not inject into a cluster that is not acme's (403):",
    `  ${curl(info, acme.host, webhookPort, [...acmeCert, json, review, quote(`https://${acme.host}:${webhookPort}/inject/cluster/${globexCluster}/net/network1`)])}`,
    '',
    "5. A sidecar of acme's opens an ADS stream with its service-account token (audience istio-ca) and asks for clusters:",
    `  ${xds(info, acme.host, [`--token-file ${quote(join(info.dir, 'tokens', 'acme-xds.jwt'))}`, '--type cds'])}`,
    "   …and istioctl asks acme's istiod which proxies are connected (istio.io/debug/syncz), with a client certificate:",
    `  ${xds(info, acme.host, [...acmeCert, '--type syncz'])}`,
    '',
    "6. istiod and Kiali reach a tenant's clusters' Kubernetes API through meshgate (/clusters/<id>).",
    "   acme's operator certificate, on acme-east (meshgate's own token upstream, the operator impersonated):",
    `  ${kubectl(acmeEast, ['get pods -n bookinfo'])}`,
    `  ${kubectl(acmeEast, ['auth whoami'])}`,
    `  ${kubectl(acmeEast, [`exec -n bookinfo "$(${kubectl(acmeEast, ['get pods -n bookinfo -o name'])} | head -1)" -- echo hello from acme-east`])}`,
    "   …globex's own token, passed through to globex-main; and acme's kubeconfig turned at globex's cluster is refused:",
    `  ${kubectl(globexMain, ['get pods -n bookinfo --watch --output-watch-events'])}`,
    `  ${kubectl(acmeEast, [`--server https://127.0.0.1:${apiPort}/clusters/${globexCluster} --tls-server-name ${acme.host}`, 'get pods -n bookinfo'])}`,
    `   …and Kiali finds acme's istiod in acme's control-plane view, and port-forwards to its debug port (docs/kiali.md):`,
    `  ${kubectl(acme.controlPlaneView.kubeconfig, ['get deploy,pods -n istio-system -l app=istiod'])}`,
    `  ${kubectl(acme.controlPlaneView.kubeconfig, [`port-forward -n istio-system "$(${kubectl(acme.controlPlaneView.kubeconfig, ['get pods -n istio-system -o name'])})" :15014`])}`,
    '',
    '7. What meshgate counted, as the status page shows it (open it in a browser) and as Prometheus reads it:',
    `  ${info.admin}/status`,
    `  curl -sS ${info.admin}/metrics | grep '^meshgate_http_requests_total'`,
    '',
    'Requests appear below as meshgate and the stand-in istiods see them. Ctrl-C stops everything.',
    '',
  ];
  return lines.join('\n');
}
