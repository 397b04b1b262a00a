/**
 * The sandbox as a newcomer meets it: `meshgate sandbox` starts, prints commands, and each printed
 * command works when pasted into a shell. sandbox.json keeps its contract. Signals stop it cleanly.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { start, type Running } from './helpers/cli.js';

const sh = (command: string) => promisify(execFile)('bash', ['-c', command], { timeout: 15_000 });

let sandbox: Running;
let dir: string;
let commands: string[];
let kubectlCommands: string[];
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'meshgate-sandbox-'));
  sandbox = start(['sandbox', '--dir', dir, '--port-base', '0']);
  await sandbox.waitFor(/Ctrl-C stops everything/);
  // Every printed command: a line starting "  curl", with its backslash-continued lines.
  commands = [...sandbox.stdout().matchAll(/^ {2}curl (?:.*\\\n)*.*$/gm)].map((m) => m[0].trim());
  kubectlCommands = [...sandbox.stdout().matchAll(/^ {2}kubectl .*$/gm)].map((m) => m[0].trim());
});
afterAll(async () => {
  if (sandbox.child.exitCode === null) await sandbox.stop('SIGTERM');
});

interface AdmissionReview {
  response: { uid: string; allowed: boolean; patchType: string; patch: string };
}

describe('meshgate sandbox', () => {
  it('prints six commands: two injections, a debug read, two isolation checks, and metrics', () => {
    expect(commands).toHaveLength(6);
  });

  it("runs the printed acme injection (client certificate) and gets acme's istiod's AdmissionReview", async () => {
    const { stdout } = await sh(commands[0] ?? '');
    const review = JSON.parse(stdout) as AdmissionReview;
    const sent = JSON.parse(readFileSync(join(dir, 'admission-review.json'), 'utf8')) as { request: { uid: string } };
    expect(review.response).toMatchObject({ uid: sent.request.uid, allowed: true, patchType: 'JSONPatch' });
    const patch = JSON.parse(Buffer.from(review.response.patch, 'base64').toString('utf8')) as { op: string; value: unknown }[];
    expect(patch[0]?.value).toEqual({ 'sandbox.meshgate.io/injected-by': 'istiod-acme', 'sandbox.meshgate.io/cluster': 'acme-east' });
  });

  it("runs the printed globex injection (path key) and reaches globex's istiod", async () => {
    const review = JSON.parse((await sh(commands[1] ?? '')).stdout) as AdmissionReview;
    const patch = JSON.parse(Buffer.from(review.response.patch, 'base64').toString('utf8')) as { value: unknown }[];
    expect(patch[0]?.value).toMatchObject({ 'sandbox.meshgate.io/injected-by': 'istiod-globex' });
  });

  it('runs the printed debug read', async () => {
    const body = JSON.parse((await sh(commands[2] ?? '')).stdout) as { tenant: string; clusterid: string };
    expect(body).toMatchObject({ tenant: 'acme', clusterid: 'acme-east' });
  });

  it('reloads its config on SIGHUP and keeps serving; a broken config is refused and the last good one kept', async () => {
    const configFile = join(dir, 'meshgate.yaml');
    const original = readFileSync(configFile, 'utf8');
    sandbox.child.kill('SIGHUP');
    await sandbox.waitFor(/\[meshgate\] reloaded /);
    writeFileSync(configFile, 'tenants: [');
    try {
      sandbox.child.kill('SIGHUP');
      await sandbox.waitFor(/\[meshgate\] config reload failed; keeping the config in use/);
    } finally {
      writeFileSync(configFile, original);
    }
    expect(sandbox.child.exitCode).toBeNull();
    const body = JSON.parse((await sh(commands[2] ?? '')).stdout) as { tenant: string };
    expect(body.tenant).toBe('acme');
  });

  it('runs the printed isolation checks and is refused, with reasons', async () => {
    expect(JSON.parse((await sh(commands[3] ?? '')).stdout)).toMatchObject({ code: 'MG_ERR_AUTHN_CLIENT_CERT_INVALID' });
    expect(JSON.parse((await sh(commands[4] ?? '')).stdout)).toMatchObject({ code: 'MG_ERR_ROUTE_UNKNOWN_CLUSTER' });
  });

  it('runs the printed kubectl commands: get, whoami, exec, a watch, an isolation check, and the control-plane view', async () => {
    expect(kubectlCommands).toHaveLength(7);
    const [get, whoami, exec, watch, crossing, view, forward] = kubectlCommands;
    expect((await sh(get ?? '')).stdout).toMatch(/^productpage-v1-\S+\s+/m);
    expect((await sh(whoami ?? '')).stdout).toMatch(/^Username\s+acme-mesh-client$/m);
    expect((await sh(exec ?? '')).stdout).toBe('hello from acme-east\n');
    // The watch runs until stopped: its first lines are enough.
    expect((await sh(`timeout 3 ${watch ?? ''} -o name || true`)).stdout).toMatch(/^pod\/productpage-v1-/m);
    const refused = await sh(crossing ?? '').catch((err: unknown) => err as { stderr: string });
    expect(refused.stderr).toMatch(/^Error from server \(Forbidden\): MG_ERR_ROUTE_UNKNOWN_CLUSTER: /m);
    expect((await sh(view ?? '')).stdout).toMatch(/^pod\/istiod-\S+\s+/m);
    // The port-forward runs until stopped: that it forwards is enough here (test/kube-istiod-view.test.ts uses it).
    expect((await sh(`timeout 3 ${forward ?? ''} || true`)).stdout).toMatch(/^Forwarding from 127\.0\.0\.1:\d+ -> 15014$/m);
  });

  it('runs the printed metrics command', async () => {
    const { stdout } = await sh(commands[5] ?? '');
    expect(stdout).toMatch(/^meshgate_http_requests_total\{tenant="acme",plane="webhook",outcome="OK"\} \d+$/m);
    expect(stdout).toMatch(/^meshgate_http_requests_total\{tenant="globex",plane="webhook",outcome="MG_ERR_AUTHN_CLIENT_CERT_INVALID"\} 1$/m);
  });

  it('shows each request as meshgate and the istiods saw it', async () => {
    await sandbox.waitFor(/\[meshgate\] acme webhook POST \/inject\/cluster\/acme-east\/net\/network1\?timeout=10s → 200 OK/);
    expect(sandbox.stdout()).toContain('↳ istiod-acme received POST /inject/cluster/acme-east/net/network1?timeout=10s');
    expect(sandbox.stdout()).toContain('[meshgate] globex webhook POST /k/[redacted]/inject/cluster/globex-main/net/network1');
  });

  it('writes sandbox.json with the contract fields, all paths absolute', () => {
    const info = JSON.parse(readFileSync(join(dir, 'sandbox.json'), 'utf8')) as Record<string, any>;
    expect(Object.keys(info)).toEqual(expect.arrayContaining(['caFile', 'admin', 'listeners', 'tenants']));
    expect(info.admin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    for (const name of ['xds', 'webhook', 'api']) expect(info.listeners[name]).toEqual({ host: '127.0.0.1', port: expect.any(Number) });
    expect(Object.keys(info.tenants)).toEqual(['acme', 'globex']);
    for (const t of Object.values<Record<string, any>>(info.tenants)) {
      expect(t).toMatchObject({ host: expect.any(String), clusters: expect.any(Array), webhook: { inject: expect.any(String), validate: expect.any(String) } });
      expect(Object.keys(t.tokens)).toEqual(expect.arrayContaining(['xds', 'debug', 'kube']));
      for (const path of [t.clientCert, t.clientKey]) expect(path).toMatch(/^\//);
      // tenants.<id>.kubeconfigs: one per cluster, each a file that reaches it through meshgate.
      expect(Object.keys(t.kubeconfigs)).toEqual(t.clusters);
      for (const path of Object.values<string>(t.kubeconfigs)) expect(readFileSync(path, 'utf8')).toMatch(/server: https:\/\/127\.0\.0\.1:\d+\/clusters\//);
    }
    expect(info.caFile).toMatch(/^\//);
  });

  it('stops cleanly on SIGINT', async () => {
    expect(await sandbox.stop('SIGINT')).toBe(0);
    expect(sandbox.stdout()).toContain('stopped.');
  });
});
