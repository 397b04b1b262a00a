/**
 * Real Kubernetes control planes on loopback: one etcd, and a kube-apiserver per cluster under
 * its own `--etcd-prefix`, each with its own serving CA, client CA, service-account issuer and
 * signing key, and an audit log of every request it served.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { createCertificateAuthority, issueCertificate, type CertificateAuthority, type IssuedCertificate } from '../../../src/pki/certificates.js';
import { writeFile } from '../../../src/sandbox/pki.js';
import { binary, freePort, start, waitFor, type Program } from './processes.js';

export interface Etcd {
  readonly url: string;
  readonly program: Program;
}

export async function startEtcd(dir: string): Promise<Etcd> {
  const [client, peer] = [await freePort(), await freePort()];
  const url = `http://127.0.0.1:${client}`;
  mkdirSync(join(dir, 'etcd'), { recursive: true });
  const program = start('etcd', binary('etcd'), {
    cwd: dir,
    logDir: dir,
    args: [
      '--data-dir', join(dir, 'etcd'),
      '--listen-client-urls', url, '--advertise-client-urls', url,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `default=http://127.0.0.1:${peer}`,
      '--unsafe-no-fsync', '--log-level', 'warn',
    ],
  });
  await waitFor('etcd /health', async () => ((await fetch(`${url}/health`)).ok ? true : undefined), { program });
  return { url, program };
}

/** Who the API server sends an admission webhook's client credentials to: `host:port` → certificate. */
export type WebhookClients = ReadonlyMap<string, IssuedCertificate>;

export interface KubeClusterOptions {
  readonly id: string;
  readonly dir: string;
  readonly etcd: Etcd;
  readonly webhookClients?: WebhookClients;
}

export interface KubeCluster {
  readonly id: string;
  readonly url: string;
  readonly port: number;
  /** The serving CA, PEM, and its file. */
  readonly ca: string;
  readonly caFile: string;
  readonly issuer: string;
  /** The service-account signing key (PKCS#8 PEM): to mint what a token controller would. */
  readonly serviceAccountKey: string;
  /** A kubeconfig straight to the API server as a cluster admin (system:masters): setup only. */
  readonly adminKubeconfig: string;
  /** The CA whose client certificates this API server accepts (to issue meshgate's own). */
  readonly clientCa: CertificateAuthority;
  readonly auditLog: string;
  readonly program: Program;
  kubectl(args: readonly string[], input?: string): Promise<string>;
  apply(objects: readonly object[]): Promise<string>;
  /** A TokenRequest token for a service account (created if missing). */
  token(namespace: string, serviceAccount: string, options?: { audience?: string; duration?: string }): Promise<string>;
  /** The audit log's events so far. */
  audit(): AuditEvent[];
}

export interface AuditEvent {
  readonly verb: string;
  readonly requestURI: string;
  readonly user: { readonly username?: string; readonly groups?: readonly string[] };
  readonly impersonatedUser?: { readonly username?: string };
  readonly userAgent?: string;
  readonly objectRef?: { readonly resource?: string; readonly namespace?: string; readonly name?: string };
  readonly responseStatus?: { readonly code?: number };
  readonly stage: string;
}

const AUDIT_POLICY = stringify({ apiVersion: 'audit.k8s.io/v1', kind: 'Policy', omitStages: ['RequestReceived'], rules: [{ level: 'Metadata' }] });

export async function startKubeCluster(options: KubeClusterOptions): Promise<KubeCluster> {
  const { id } = options;
  const dir = join(options.dir, id);
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  const issuer = `https://${id}.issuer.interop.test`;

  const [servingCa, clientCa] = await Promise.all([createCertificateAuthority(`${id} serving CA`), createCertificateAuthority(`${id} client CA`)]);
  const [serving, admin] = await Promise.all([
    issueCertificate(servingCa, { commonName: 'kube-apiserver', dnsNames: ['localhost', 'kubernetes.default.svc'], ipAddresses: ['127.0.0.1'], usage: 'server' }),
    issueCertificate(clientCa, { commonName: 'interop-admin', organization: 'system:masters', usage: 'client' }),
  ]);
  const saKeys = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  const file = (name: string, content: string, secret = false): string => writeFile(join(dir, name), content, secret);
  const caFile = file('serving-ca.pem', servingCa.cert);

  const webhookUsers = [...(options.webhookClients ?? new Map<string, IssuedCertificate>())].map(([hostPort, cert]) => ({
    name: hostPort,
    user: { 'client-certificate-data': b64(cert.cert), 'client-key-data': b64(cert.key) },
  }));
  const webhookKubeconfig = file('webhook-kubeconfig.yaml', stringify({ apiVersion: 'v1', kind: 'Config', users: webhookUsers }), true);
  const webhookAdmission = { apiVersion: 'apiserver.config.k8s.io/v1', kind: 'WebhookAdmissionConfiguration', kubeConfigFile: webhookKubeconfig };
  const admissionConfig = file(
    'admission.yaml',
    stringify({
      apiVersion: 'apiserver.config.k8s.io/v1',
      kind: 'AdmissionConfiguration',
      plugins: [
        { name: 'MutatingAdmissionWebhook', configuration: webhookAdmission },
        { name: 'ValidatingAdmissionWebhook', configuration: webhookAdmission },
      ],
    }),
  );
  const auditLog = join(dir, 'audit.log');

  const program = start(`kube-apiserver-${id}`, binary('kube-apiserver'), {
    cwd: dir,
    logDir: options.dir,
    args: [
      `--etcd-servers=${options.etcd.url}`,
      `--etcd-prefix=/${id}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${port}`,
      `--cert-dir=${join(dir, 'generated')}`,
      `--tls-cert-file=${file('serving.pem', serving.cert)}`,
      `--tls-private-key-file=${file('serving-key.pem', serving.key, true)}`,
      `--client-ca-file=${file('client-ca.pem', clientCa.cert)}`,
      `--service-account-issuer=${issuer}`,
      `--service-account-key-file=${file('sa.pub', saKeys.publicKey)}`,
      `--service-account-signing-key-file=${file('sa.key', saKeys.privateKey, true)}`,
      '--service-cluster-ip-range=10.0.0.0/24',
      '--authorization-mode=RBAC',
      // No controller-manager: no default service account to admit pods with.
      '--disable-admission-plugins=ServiceAccount',
      `--admission-control-config-file=${admissionConfig}`,
      '--allow-privileged=true',
      `--audit-log-path=${auditLog}`,
      `--audit-policy-file=${file('audit-policy.yaml', AUDIT_POLICY)}`,
      '--profiling=false',
      '--enable-priority-and-fairness=false',
      '--endpoint-reconciler-type=none',
      '--v=1',
    ],
  });

  const adminKubeconfig = file(
    'admin.kubeconfig',
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: id, cluster: { server: url, 'certificate-authority-data': b64(servingCa.cert) } }],
      users: [{ name: 'admin', user: { 'client-certificate-data': b64(admin.cert), 'client-key-data': b64(admin.key) } }],
      contexts: [{ name: id, context: { cluster: id, user: 'admin' } }],
      'current-context': id,
    }),
    true,
  );

  const kubectl = async (args: readonly string[], input?: string): Promise<string> => {
    const run = promisify(execFile);
    if (input === undefined) return (await run(binary('kubectl'), ['--kubeconfig', adminKubeconfig, ...args], { timeout: 60_000 })).stdout;
    return new Promise((done, fail) => {
      const child = execFile(binary('kubectl'), ['--kubeconfig', adminKubeconfig, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
        if (err) fail(new Error(`kubectl ${args.join(' ')} on ${id}: ${stderr || err.message}`));
        else done(stdout);
      });
      child.stdin?.end(input);
    });
  };

  await waitFor(`${id} kube-apiserver /readyz`, () => httpsGet(`${url}/readyz`, servingCa.cert).then((r) => (r.status === 200 ? true : undefined)), {
    program,
    timeoutMs: 120_000,
  });

  const cluster: KubeCluster = {
    id,
    url,
    port,
    ca: servingCa.cert,
    caFile,
    issuer,
    serviceAccountKey: saKeys.privateKey,
    adminKubeconfig,
    clientCa,
    auditLog,
    program,
    kubectl,
    apply: (objects) => kubectl(['apply', '--server-side', '--force-conflicts', '-f', '-'], objects.map((o) => JSON.stringify(o)).join('\n')),
    async token(namespace, serviceAccount, tokenOptions = {}) {
      await kubectl(['create', 'namespace', namespace]).catch(() => undefined);
      await kubectl(['create', 'serviceaccount', serviceAccount, '-n', namespace]).catch(() => undefined);
      const args = ['create', 'token', serviceAccount, '-n', namespace, '--duration', tokenOptions.duration ?? '24h'];
      if (tokenOptions.audience !== undefined) args.push('--audience', tokenOptions.audience);
      return (await kubectl(args)).trim();
    },
    audit: () =>
      readFileSync(auditLog, 'utf8')
        .split('\n')
        .filter((line) => line !== '')
        .map((line) => JSON.parse(line) as AuditEvent),
  };
  return cluster;
}

function b64(text: string): string {
  return Buffer.from(text).toString('base64');
}

export function httpsGet(url: string, ca: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((done, fail) => {
    const req = request(url, { ca, headers, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => done({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', fail);
    req.end();
  });
}
