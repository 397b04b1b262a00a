/**
 * The real istioctl (`proxy-status --xds-address … --cert-dir …`) through meshgate to a tenant
 * with three istiod replicas: stand-ins (test/helpers/istiod-replicas.ts), each listing only the
 * sidecars connected to it, with sidecars spread across them by meshgate's pool. What is checked
 * is what istioctl prints: every proxy once, each replica in ISTIOD, each proxy's own replica in
 * `-o json`, and a replica that does not answer shown as MISSING.
 *
 * istioctl builds a Kubernetes client even with `--xds-address` and `--cert-dir`, and waits for
 * its informer of MutatingWebhookConfigurations to sync: a minimal API answers that with an empty
 * list, and nothing else.
 */
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '../../src/sandbox/sandbox.js';
import { adsClient, bearer, metadata, TYPE_URL, type AdsCall, type AdsClient } from '../helpers/grpc.js';
import { startIstiodReplicas, type IstiodReplicas } from '../helpers/istiod-replicas.js';
import { startGatewayFrom, startTestSandbox, tenantOf, type ExtraGateway } from '../helpers/sandbox.js';
import { istioctl } from './harness/istio.js';
import { binary, hasBinary } from './harness/processes.js';
import { ensureHostsResolve } from './harness/topology.js';

const SIDECARS = ['a', 'b', 'c', 'd', 'e', 'f'].map((p) => `sidecar~10.0.0.1~pod-${p}.bookinfo~bookinfo.svc.cluster.local`);

let sandbox: Sandbox;
let started: IstiodReplicas;
let gateway: ExtraGateway;
let client: AdsClient;
let kube: Server;
const calls: AdsCall[] = [];
let kubeconfig: string;
let certDir: string;

/** Just enough of a Kubernetes API for istioctl's client to start: no webhook configurations. */
function startMinimalKubeApi(): Promise<Server> {
  const server = createServer((req, res) => {
    const json = (code: number, body: object): void => void res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    const url = req.url ?? '';
    if (url.includes('sendInitialEvents=true')) return json(400, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'BadRequest', code: 400 });
    if (url.includes('watch=true')) return void res.writeHead(200, { 'content-type': 'application/json' }); // a watch with no events
    if (url.startsWith('/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations')) {
      return json(200, { kind: 'MutatingWebhookConfigurationList', apiVersion: 'admissionregistration.k8s.io/v1', metadata: { resourceVersion: '1' }, items: [] });
    }
    return json(404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

beforeAll(async () => {
  if (!hasBinary('istioctl')) throw new Error(`${binary('istioctl')} is missing: run interop/build.sh (npm run test:interop does)`);
  sandbox = await startTestSandbox();
  const acme = tenantOf(sandbox, 'acme');
  ensureHostsResolve([acme.host]);
  started = await startIstiodReplicas('istiod-acme', 3);
  gateway = await startGatewayFrom(
    sandbox,
    (config) => {
      const tenant = (config.tenants as Record<string, any>[]).find((t) => t.id === 'acme');
      if (!tenant) throw new Error('no tenant acme');
      const { url: _single, ...rest } = tenant.istiod.xds;
      tenant.istiod.xds = { ...rest, ...started.xds };
      tenant.xds = { ...tenant.xds, debugFanoutTimeout: '1s' };
    },
  );
  client = adsClient({ port: gateway.port('xds'), host: acme.host, ca: sandbox.info.caFile });
  for (const id of SIDECARS) {
    const call = client.StreamAggregatedResources(metadata(bearer(acme.tokens.xds)));
    call.on('error', () => undefined);
    const first = new Promise((resolve) => call.once('data', resolve));
    call.write({ node: { id }, type_url: TYPE_URL.cluster });
    await first;
    calls.push(call);
  }
  kube = await startMinimalKubeApi();
  const dir = mkdtempSync(join(tmpdir(), 'istioctl-replicas-'));
  certDir = join(dir, 'certs');
  mkdirSync(certDir);
  copyFileSync(acme.clientCert, join(certDir, 'cert-chain.pem'));
  copyFileSync(acme.clientKey, join(certDir, 'key.pem'));
  copyFileSync(sandbox.info.caFile, join(certDir, 'root-cert.pem'));
  kubeconfig = join(dir, 'kubeconfig');
  const port = (kube.address() as AddressInfo).port;
  writeFileSync(
    kubeconfig,
    `apiVersion: v1\nkind: Config\nclusters: [{name: k, cluster: {server: "http://127.0.0.1:${port}"}}]\ncontexts: [{name: k, context: {cluster: k, user: k}}]\ncurrent-context: k\nusers: [{name: k, user: {token: unused}}]\n`,
  );
});

afterAll(async () => {
  for (const call of calls) call.cancel();
  client.close();
  kube.close();
  await gateway.close();
  started.close();
  await sandbox.close();
});

const proxyStatus = (...extra: string[]) =>
  istioctl(['proxy-status', '--xds-address', `${tenantOf(sandbox, 'acme').host}:${gateway.port('xds')}`, '--cert-dir', certDir, '-i', 'istio-system', '--timeout', '20s', ...extra], kubeconfig);

/** The table's rows: NAME and ISTIOD. */
function rows(stdout: string): { name: string; istiod: string }[] {
  const [header, ...lines] = stdout.trim().split('\n');
  const at = header?.indexOf('ISTIOD') ?? -1;
  return lines.map((line) => ({ name: line.split(/\s{2,}/)[0] ?? '', istiod: line.slice(at).split(/\s{2,}/)[0] ?? '' }));
}

describe('istioctl proxy-status through meshgate, with three istiod replicas', () => {
  it('lists every proxy once, every replica as ISTIOD, and each proxy’s own replica in -o json', async () => {
    expect(started.replicas.map((r) => r.connected.size)).toEqual([2, 2, 2]);
    const table = await proxyStatus();
    expect(table.code, table.stderr).toBe(0);
    expect(rows(table.stdout)).toEqual(SIDECARS.map((name) => ({ name, istiod: 'istiod-acme-0,istiod-acme-1,istiod-acme-2' })));

    const json = await proxyStatus('-o', 'json');
    expect(json.code, json.stderr).toBe(0);
    const response = JSON.parse(json.stdout) as { resources: { node: { id: string; metadata: Record<string, string> } }[] };
    const holderOf = (id: string) => started.replicas.find((r) => r.connected.has(id))?.name;
    expect(response.resources.map((r) => [r.node.id, r.node.metadata.MESHGATE_ISTIOD]).sort()).toEqual(SIDECARS.map((id) => [id, holderOf(id)]));
  });

  it('merges istioctl x internal-debug syncz: every proxy once, each with its replica', async () => {
    const syncz = await istioctl(
      ['x', 'internal-debug', 'syncz', '--xds-address', `${tenantOf(sandbox, 'acme').host}:${gateway.port('xds')}`, '--cert-dir', certDir, '-i', 'istio-system'],
      kubeconfig,
    );
    expect(syncz.code, syncz.stderr).toBe(0);
    // istioctl prints the JSON of each Any in the response.
    const listed = JSON.parse(syncz.stdout.slice(syncz.stdout.indexOf('['), syncz.stdout.lastIndexOf(']') + 1)) as { proxy: string; istiod: string }[];
    const holderOf = (id: string) => started.replicas.find((r) => r.connected.has(id))?.name;
    expect(listed.map((e) => [e.proxy, e.istiod]).sort()).toEqual(SIDECARS.map((id) => [id, holderOf(id)]));
  });

  it('shows a replica that does not answer as MISSING, with the others’ proxies', async () => {
    const hung = started.replicas[2];
    if (!hung) throw new Error('three replicas');
    hung.hang = true;
    try {
      const table = await proxyStatus();
      expect(table.code, table.stderr).toBe(0);
      const listed = rows(table.stdout);
      const istiod = 'istiod-acme-0,istiod-acme-1,MISSING(replica 3 of 3)';
      expect(listed[0]).toEqual({ name: 'MISSING: istiod replica 3 of 3 did not answer (no answer within 1000 ms)', istiod });
      const answered = started.replicas.slice(0, 2).flatMap((r) => [...r.connected]).sort();
      expect(listed.slice(1)).toEqual(answered.map((name) => ({ name, istiod })));
    } finally {
      hung.hang = false;
    }
  });
});
