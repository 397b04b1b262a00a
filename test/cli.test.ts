/** `meshgate check`, `meshgate certs` and `meshgate serve`, run as the built binary. */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { Sandbox } from '../src/sandbox/sandbox.js';
import { call } from './helpers/client.js';
import { run, start } from './helpers/cli.js';
import { startTestSandbox, tenantOf } from './helpers/sandbox.js';

const temp = (): string => mkdtempSync(join(tmpdir(), 'meshgate-cli-'));

let sandbox: Sandbox;
beforeAll(async () => {
  sandbox = await startTestSandbox();
});
afterAll(() => sandbox.close());

describe('meshgate check', () => {
  it('accepts a valid config and says what it holds', async () => {
    const { code, stdout } = await run(['check', '--config', sandbox.info.config]);
    expect(code).toBe(0);
    expect(stdout).toContain(': ok');
    expect(stdout).toContain('tenants:   acme, globex');
  });

  it('prints every problem with its path and exits 1', async () => {
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    config.tenants[0].webhook.authentication = [];
    config.tenants[1].clusters[0].jwks = {};
    config.tenants[1].colour = 'blue';
    const file = join(temp(), 'bad.yaml');
    writeFileSync(file, stringify(config));
    const { code, stderr } = await run(['check', '--config', file]);
    expect(code).toBe(1);
    expect(stderr).toContain('3 problems');
    expect(stderr).toContain('tenants[0].webhook.authentication: at least one authentication method is required');
    expect(stderr).toContain('tenants[1].clusters[0].jwks: set either "url" or "file"');
    expect(stderr).toContain('tenants[1]: Unrecognized key: "colour"');
  });

  it('warns of weak TLS settings on a listener, and refuses names OpenSSL does not know', async () => {
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    config.listeners.api.tls = { ciphers: ['ECDHE-RSA-AES128-GCM-SHA256', 'AES128-GCM-SHA256', 'ECDHE-RSA-AES128-SHA'], curves: ['X25519', 'P-256'] };
    const dir = temp();
    writeFileSync(join(dir, 'weak.yaml'), stringify(config));
    const weak = await run(['check', '--config', join(dir, 'weak.yaml')]);
    expect(weak.code).toBe(0);
    expect(weak.stdout).toContain('warning: listeners.api.tls: cipher AES128-GCM-SHA256: no ECDHE key exchange, so no forward secrecy');
    expect(weak.stdout).toContain('warning: listeners.api.tls: cipher ECDHE-RSA-AES128-SHA: not AEAD');
    expect(weak.stdout.match(/^warning:/gm)).toHaveLength(2);

    config.listeners.api.tls = { ciphers: ['ECDHE-RSA-AES128-GCM-SHA256', 'NOT-A-SUITE'], curves: ['no-such-curve'] };
    writeFileSync(join(dir, 'bad.yaml'), stringify(config));
    const bad = await run(['check', '--config', join(dir, 'bad.yaml')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('listeners.api.tls.ciphers: not a TLS 1.2 suite OpenSSL knows: NOT-A-SUITE');
    expect(bad.stderr).toContain('listeners.api.tls: OpenSSL refuses these settings');
  });

  it('reports missing and unreadable files with their paths', async () => {
    const config = parse(readFileSync(sandbox.info.config, 'utf8')) as Record<string, any>;
    config.tenants[0].tls.cert = 'missing.pem';
    config.tenants[1].tls.key = config.tenants[1].tls.cert;
    const dir = temp();
    writeFileSync(join(dir, 'bad.yaml'), stringify(config));
    const { code, stderr } = await run(['check', '--config', join(dir, 'bad.yaml')]);
    expect(code).toBe(1);
    expect(stderr).toContain(`tenants[0].tls.cert: cannot read ${join(dir, 'missing.pem')}: ENOENT`);
    expect(stderr).toMatch(/tenants\[1\]\.tls\.key: .* holds no PEM private key/);
  });

  it('explains usage errors with exit code 2', async () => {
    const { code, stderr } = await run(['check']);
    expect(code).toBe(2);
    expect(stderr).toContain('--config is required');
    expect((await run(['frobnicate'])).code).toBe(2);
  });
});

describe('meshgate certs', () => {
  it('issues a CA, a server certificate and a SPIFFE client certificate, keys mode 0600', async () => {
    const dir = temp();
    expect((await run(['certs', 'ca', '--name', 'tenant-ca', '--out-dir', dir])).code).toBe(0);
    const caArgs = ['--ca-cert', join(dir, 'tenant-ca.pem'), '--ca-key', join(dir, 'tenant-ca-key.pem'), '--out-dir', dir];
    expect((await run(['certs', 'server', ...caArgs, '--host', 'acme.mesh.example.com', '--host', '10.0.0.7'])).code).toBe(0);
    const client = await run(['certs', 'client', ...caArgs, '--tenant', 'acme', '--uri', 'spiffe://acme.example/ns/istio-system/sa/istiod']);
    expect(client.code).toBe(0);

    const ca = new X509Certificate(readFileSync(join(dir, 'tenant-ca.pem')));
    const server = new X509Certificate(readFileSync(join(dir, 'acme.mesh.example.com.pem')));
    const leaf = new X509Certificate(readFileSync(join(dir, 'acme-client.pem')));
    expect(ca.ca).toBe(true);
    for (const cert of [server, leaf]) {
      expect(cert.checkIssued(ca)).toBe(true);
      expect(cert.verify(ca.publicKey)).toBe(true);
      expect(cert.ca).toBe(false);
    }
    expect(server.checkHost('acme.mesh.example.com')).toBe('acme.mesh.example.com');
    expect(server.checkIP('10.0.0.7')).toBe('10.0.0.7');
    expect(leaf.subjectAltName).toBe('URI:spiffe://acme.example/ns/istio-system/sa/istiod');
    expect(leaf.subject).toBe('O=acme\nCN=acme-client');
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    for (const key of ['tenant-ca-key.pem', 'acme.mesh.example.com-key.pem', 'acme-client-key.pem']) {
      expect(statSync(join(dir, key)).mode & 0o777).toBe(0o600);
    }
  });

  it('issues ECDSA P-256 keys with --key-type ecdsa, under an ECDSA or an RSA CA', async () => {
    const dir = temp();
    expect((await run(['certs', 'ca', '--name', 'ec-ca', '--key-type', 'ecdsa', '--out-dir', dir])).code).toBe(0);
    expect((await run(['certs', 'ca', '--name', 'rsa-ca', '--out-dir', dir])).code).toBe(0);
    for (const ca of ['ec-ca', 'rsa-ca']) {
      const caArgs = ['--ca-cert', join(dir, `${ca}.pem`), '--ca-key', join(dir, `${ca}-key.pem`), '--out-dir', dir];
      const issued = await run(['certs', 'server', ...caArgs, '--key-type', 'ecdsa', '--name', `${ca}-leaf`, '--host', 'acme.mesh.example.com']);
      expect(issued.code).toBe(0);
      const leaf = new X509Certificate(readFileSync(join(dir, `${ca}-leaf.pem`)));
      const issuer = new X509Certificate(readFileSync(join(dir, `${ca}.pem`)));
      expect(leaf.publicKey.asymmetricKeyType).toBe('ec');
      expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(leaf.checkIssued(issuer)).toBe(true);
      expect(leaf.verify(issuer.publicKey)).toBe(true);
      expect(leaf.checkHost('acme.mesh.example.com')).toBe('acme.mesh.example.com');
    }
    expect(new X509Certificate(readFileSync(join(dir, 'ec-ca.pem'))).publicKey.asymmetricKeyType).toBe('ec');
    expect((await run(['certs', 'ca', '--name', 'dsa', '--key-type', 'dsa', '--out-dir', dir])).stderr).toContain('--key-type must be rsa or ecdsa');
  });

  it('refuses to overwrite, and refuses a URI that is not SPIFFE', async () => {
    const dir = temp();
    await run(['certs', 'ca', '--name', 'x', '--out-dir', dir]);
    const again = await run(['certs', 'ca', '--name', 'x', '--out-dir', dir]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('pass --force to replace it');
    const caArgs = ['--ca-cert', join(dir, 'x.pem'), '--ca-key', join(dir, 'x-key.pem'), '--out-dir', dir];
    const bad = await run(['certs', 'client', ...caArgs, '--tenant', 'acme', '--uri', 'https://acme.example/']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('is not a spiffe:// URI');
  });
});

describe('meshgate kubeconfig', () => {
  it('writes a kubeconfig from the config that kubectl uses through meshgate, everything inline', async () => {
    const acme = tenantOf(sandbox, 'acme');
    const { code, stdout } = await run([
      'kubeconfig',
      '--config',
      sandbox.info.config,
      '--tenant',
      'acme',
      '--cluster',
      'acme-west',
      '--connect-to',
      '127.0.0.1',
      '--ca',
      sandbox.info.caFile,
      '--client-cert',
      acme.clientCert,
      '--client-key',
      acme.clientKey,
    ]);
    expect(code).toBe(0);
    const config = parse(stdout) as { clusters: { cluster: Record<string, string> }[]; users: { user: Record<string, string> }[] };
    // The sandbox's api listener is on an ephemeral port, which the config it wrote names as 0: use the real one.
    const cluster = config.clusters[0]?.cluster ?? {};
    expect(cluster['tls-server-name']).toBe(acme.host);
    expect(cluster.server).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/clusters\/acme-west$/);
    expect(Object.keys(config.users[0]?.user ?? {})).toEqual(['client-certificate-data', 'client-key-data']);
    cluster.server = `https://127.0.0.1:${sandbox.info.listeners.api.port}/clusters/acme-west`;
    const file = join(temp(), 'kubeconfig.yaml');
    writeFileSync(file, stringify(config));
    const { stdout: pods } = await promisify(execFile)('/usr/bin/kubectl', ['--kubeconfig', file, 'get', 'pods', '-n', 'bookinfo', '-o', 'name']);
    expect(pods).toMatch(/^pod\/productpage-v1-/m);
  });

  it('needs a credential, and a cluster of the tenant with an API server', async () => {
    const base = ['kubeconfig', '--config', sandbox.info.config, '--tenant', 'acme'];
    expect((await run([...base, '--cluster', 'acme-east'])).stderr).toContain('give a credential');
    const wrong = await run([...base, '--cluster', 'globex-main', '--token', sandbox.info.caFile]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('tenant "acme" has no cluster "globex-main" with an apiServer');
  });
});

describe('meshgate serve', () => {
  it('serves a config, reloads it on SIGHUP (keeping the last good one), and drains on SIGTERM', async () => {
    const dir = temp();
    const configFile = join(dir, 'meshgate.yaml');
    const original = readFileSync(sandbox.info.config, 'utf8');
    writeFileSync(configFile, original);
    const server = start(['serve', '--config', configFile, '--drain-seconds', '1']);
    try {
      const [line] = await server.waitFor(/\{[^\n]*"msg":"meshgate is serving"[^\n]*\}/);
      const serving = JSON.parse(line) as { listeners: Record<string, { port: number }> };
      const port = serving.listeners.api?.port ?? 0;
      const acme = tenantOf(sandbox, 'acme');
      const syncz = () =>
        call({ port, servername: acme.host, path: '/debug/syncz', headers: { authorization: `Bearer ${acme.tokens.debug}` }, ca: sandbox.info.caFile });
      expect((await syncz()).status).toBe(200);
      // One request at low traffic: its access-log line is written without waiting for more.
      await server.waitFor(/"msg":"request"[^\n]*"outcome":"OK"|"outcome":"OK"[^\n]*"msg":"request"/, 5_000);

      const narrowed = parse(original) as Record<string, any>;
      narrowed.tenants[0].access = { ...narrowed.tenants[0].access, debug: [] };
      writeFileSync(configFile, stringify(narrowed));
      server.child.kill('SIGHUP');
      await server.waitFor(/"msg":"config reloaded"/);
      expect((await syncz()).json().code).toBe('MG_ERR_AUTHZ_DENIED');

      writeFileSync(configFile, 'tenants: [');
      server.child.kill('SIGHUP');
      await server.waitFor(/"msg":"config reload failed; keeping the config in use"/);
      expect((await syncz()).json().code).toBe('MG_ERR_AUTHZ_DENIED');
    } finally {
      expect(await server.stop('SIGTERM')).toBe(0);
    }
    expect(server.stdout()).toMatch(/"msg":"draining"/);
    expect(server.stdout()).toMatch(/"msg":"stopped"/);
  });

  it('refuses to start on an invalid config', async () => {
    const file = join(temp(), 'bad.yaml');
    writeFileSync(file, 'listeners: {}\n');
    const { code, stderr } = await run(['serve', '--config', file]);
    expect(code).toBe(1);
    expect(stderr).toContain('listeners: at least one listener is required');
  });
});
