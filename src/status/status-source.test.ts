import { describe, expect, it } from 'vitest';
import { parseExposition, type MetricReader, type MetricSample } from './metric-reader.js';
import { createStatusSource, type TenantTopology } from './status-source.js';

/** Metrics as the workers' primary sees them: Prometheus text, changed by the test. */
function workersText(): { set(text: string): void; read: (names: ReadonlySet<string>) => Promise<ReturnType<typeof parseExposition>> } {
  let text = '';
  return { set: (t) => (text = t), read: (names) => Promise.resolve(parseExposition(text, names)) };
}

describe('status source', () => {
  it('joins the topology with the metrics: rates, denials, replicas, tenants only the metrics name', async () => {
    const metrics = workersText();
    let now = 1_000_000;
    const source = createStatusSource({
      topology: () => ({ mode: '2 workers', tenants: [{ id: 'acme', hosts: ['acme.example'], clusters: ['east'], istiod: ['istiod.acme:15012'] }] }),
      read: metrics.read,
      now: () => now,
    });
    metrics.set(
      [
        'meshgate_http_requests_total{tenant="acme",plane="debug",outcome="OK"} 10',
        'meshgate_http_requests_total{tenant="-",plane="-",outcome="MG_ERR_ROUTE_UNKNOWN_HOST"} 2',
        'meshgate_denials_total{tenant="-",plane="-",reason="MG_ERR_ROUTE_UNKNOWN_HOST"} 2',
        'meshgate_kube_watches{tenant="removed",cluster="c"} 0',
      ].join('\n'),
    );
    source.start(); // takes the first reading, of the text above
    source.stop();
    await new Promise(setImmediate); // every promise callback (the reading's) runs before this
    now += 10_000;
    metrics.set(
      [
        'meshgate_http_requests_total{tenant="acme",plane="debug",outcome="OK"} 40',
        'meshgate_http_requests_total{tenant="acme",plane="debug",outcome="MG_ERR_AUTHN_TOKEN_INVALID"} 5',
        'meshgate_denials_total{tenant="acme",plane="debug",reason="MG_ERR_AUTHN_TOKEN_INVALID"} 5',
        'meshgate_http_requests_total{tenant="-",plane="-",outcome="MG_ERR_ROUTE_UNKNOWN_HOST"} 7',
        'meshgate_denials_total{tenant="-",plane="-",reason="MG_ERR_ROUTE_UNKNOWN_HOST"} 7',
        'meshgate_upstream_replica_up{tenant="acme",replica="10.0.0.7:15012"} 0',
        'meshgate_xds_upstream_sessions{tenant="acme",replica="10.0.0.7:15012"} 0',
        'meshgate_xds_streams{tenant="acme"} 3',
        'meshgate_kube_tunnels{tenant="acme",cluster="east",protocol="spdy"} 1',
        'meshgate_kube_tunnels{tenant="acme",cluster="east",protocol="websocket"} 2',
        'meshgate_xds_streams{tenant="mesh-tenant-from-crd"} 4',
        'meshgate_kube_watches{tenant="removed",cluster="c"} 0',
        'meshgate_config_snapshot_version 4',
        'meshgate_config_reloads_total{result="failure"} 1',
      ].join('\n'),
    );
    const report = await source.report();
    expect(report.mode).toBe('2 workers');
    expect(report.config).toEqual({ generation: 4, loadedAt: null, reloads: { success: 0, failure: 1 } });
    expect(report.windowSeconds).toBe(10);
    // The tenant removed from the config, whose series linger at 0, is left out.
    expect(report.tenants.map((t) => [t.id, t.inTopology])).toEqual([
      ['acme', true],
      ['mesh-tenant-from-crd', false],
      ['-', false],
    ]);
    expect(report.tenants[0]).toMatchObject({
      hosts: ['acme.example'],
      replicas: [{ replica: '10.0.0.7:15012', up: false, sessions: 0 }],
      xdsStreams: 3,
      tunnels: 3,
      requestRate: 3.5,
      requestRates: [3.5],
      denials: [{ reason: 'MG_ERR_AUTHN_TOKEN_INVALID', count: 5 }],
    });
    expect(report.tenants[2]?.denials).toEqual([{ reason: 'MG_ERR_ROUTE_UNKNOWN_HOST', count: 5 }]);
  });
});

/**
 * `tenants` tenants' worth of samples, each wrapped so that every property read (of the sample or
 * of its labels) is counted: `reads[i]` is how often sample i was looked at.
 */
function countedSamples(tenants: number): { samples: MetricSample[]; reads: number[]; topology: TenantTopology[] } {
  const plain: MetricSample[] = [];
  const topology: TenantTopology[] = [];
  for (let t = 0; t < tenants; t++) {
    const tenant = `tenant-${t}`;
    topology.push({ id: tenant, hosts: [`${tenant}.example`], clusters: ['east'], istiod: ['istiod:15012'] });
    for (const outcome of ['OK', 'MG_ERR_AUTHN_TOKEN_INVALID']) plain.push({ name: 'meshgate_http_requests_total', labels: { tenant, plane: 'debug', outcome }, value: t });
    plain.push({ name: 'meshgate_denials_total', labels: { tenant, plane: 'debug', reason: 'MG_ERR_AUTHN_TOKEN_INVALID' }, value: t });
    plain.push({ name: 'meshgate_xds_streams', labels: { tenant }, value: 3 });
    plain.push({ name: 'meshgate_kube_watches', labels: { tenant, cluster: 'east' }, value: 1 });
    for (const replica of ['10.0.0.1:15012', '10.0.0.2:15012']) {
      plain.push({ name: 'meshgate_upstream_replica_up', labels: { tenant, replica }, value: 1 });
      plain.push({ name: 'meshgate_xds_upstream_sessions', labels: { tenant, replica }, value: 1 });
    }
    plain.push({ name: 'meshgate_certificate_expiry_timestamp_seconds', labels: { tenant, certificate: 'serving' }, value: 2e9 });
  }
  plain.push({ name: 'meshgate_config_snapshot_version', labels: {}, value: 7 });
  const reads = plain.map(() => 0);
  const counted = <T extends object>(target: T, i: number): T =>
    new Proxy(target, {
      get(obj, key, receiver) {
        reads[i] = (reads[i] ?? 0) + 1;
        return Reflect.get(obj, key, receiver) as unknown;
      },
    });
  const samples = plain.map((s, i) => counted({ ...s, labels: counted({ ...s.labels }, i) }, i));
  return { samples, reads, topology };
}

describe('the cost of a status report', () => {
  it('grows with the samples alone: each sample is read as often with 2,000 tenants as with 20', async () => {
    const mostReads = async (tenants: number): Promise<number> => {
      const { samples, reads, topology } = countedSamples(tenants);
      const source = createStatusSource({ topology: () => ({ mode: 'one process', tenants: topology }), read: () => Promise.resolve(samples) });
      const report = await source.report();
      expect(report.tenants).toHaveLength(tenants);
      expect(report.tenants.at(-1)).toMatchObject({
        id: `tenant-${tenants - 1}`,
        xdsStreams: 3,
        watches: 1,
        replicas: [
          { replica: '10.0.0.1:15012', up: true, sessions: 1 },
          { replica: '10.0.0.2:15012', up: true, sessions: 1 },
        ],
        certificates: [{ certificate: 'serving', notAfter: 2e9 }],
      });
      expect(report.config.generation).toBe(7);
      return Math.max(...reads);
    };
    const few = await mostReads(20);
    // A pass per tenant over every sample would read each one at least once per tenant.
    expect(few).toBeLessThan(20);
    expect(await mostReads(2_000)).toBe(few);
  });

  it('is shared by the callers that ask while it is computed or within reuseMs of it, and not kept when it fails', async () => {
    let now = 1_000_000;
    let reads = 0;
    let release: (() => void) | undefined;
    let fail = false;
    const read: MetricReader = () => {
      reads++;
      if (fail) return Promise.reject(new Error('a worker did not answer'));
      return new Promise((resolve) => (release = () => resolve([{ name: 'meshgate_xds_streams', labels: { tenant: 'acme' }, value: reads }])));
    };
    const source = createStatusSource({ topology: () => ({ mode: 'one process', tenants: [] }), read, reuseMs: 1_000, now: () => now });

    // Three open pages asking at once: one reading, one report.
    const asked = [source.report(), source.report(), source.report()];
    release?.();
    const [first, ...others] = await Promise.all(asked);
    expect(reads).toBe(1);
    for (const other of others) expect(other).toBe(first);
    now += 999;
    expect(await source.report()).toBe(first);
    expect(reads).toBe(1);

    // Past reuseMs, a new one.
    now += 1;
    const later = source.report();
    release?.();
    expect((await later).tenants[0]?.xdsStreams).toBe(2);
    expect(reads).toBe(2);

    // A report that failed is not given to the next caller.
    now += 1_000;
    fail = true;
    await expect(Promise.all([source.report(), source.report()])).rejects.toThrow('a worker did not answer');
    expect(reads).toBe(3);
    fail = false;
    const retried = source.report();
    release?.();
    expect((await retried).tenants[0]?.xdsStreams).toBe(4);
  });
});
