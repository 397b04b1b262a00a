/** deploy/ stays consistent: its config is valid, and the manifests expose what the config serves. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { ROOT } from './helpers/cli.js';

const read = (file: string): string => readFileSync(join(ROOT, 'deploy', file), 'utf8');

describe('deploy/', () => {
  const kustomization = parse(read('kustomization.yaml')) as { resources: string[]; configMapGenerator: { files: string[] }[] };
  const config = parseConfig(read('meshgate.yaml'));
  interface Container {
    args: string[];
    ports: { name: string; containerPort: number }[];
    readinessProbe: { httpGet: unknown };
    livenessProbe: { httpGet: unknown };
    securityContext: unknown;
  }
  interface Deployment {
    spec: { template: { spec: { containers: Container[]; terminationGracePeriodSeconds: number; securityContext: { runAsNonRoot: boolean } } } };
  }
  const deployment = parse(read('deployment.yaml')) as Deployment;
  const container = deployment.spec.template.spec.containers[0]!;
  const ports = new Map(container.ports.map((p) => [p.name, p.containerPort]));

  it('lists only files that exist', () => {
    const files = [...kustomization.resources, ...kustomization.configMapGenerator.flatMap((g) => g.files)];
    expect(files.filter((f) => !existsSync(join(ROOT, 'deploy', f)))).toEqual([]);
  });

  it('ships a config the schema accepts, with no loopback upstream', () => {
    expect(config.security.allowLoopbackUpstreams).toBe(false);
    expect(config.tenants.map((t) => t.id)).toEqual(['acme']);
  });

  it('exposes every listener and the admin port, and probes the admin port', () => {
    expect(ports.get('admin')).toBe(config.admin.port);
    for (const [name, listener] of Object.entries(config.listeners)) expect(ports.get(name)).toBe(listener.port);
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
    expect(config.admin.host).toBe('0.0.0.0');
  });

  it('keeps the admin port off the Service, and the drain inside the grace period', () => {
    const service = parseAllDocuments(read('service.yaml'))[0]?.toJS() as { spec: { ports: { targetPort: string }[] } };
    const targets = service.spec.ports.map((p) => p.targetPort);
    expect(targets).not.toContain('admin');
    expect(targets.every((t) => ports.has(t))).toBe(true);
    const drain = Number(container.args[container.args.indexOf('--drain-seconds') + 1]);
    expect(deployment.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(drain);
  });

  it('runs as non-root with a read-only root filesystem and no capabilities', () => {
    expect(deployment.spec.template.spec.securityContext.runAsNonRoot).toBe(true);
    expect(container.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
  });
});
