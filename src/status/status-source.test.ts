import { describe, expect, it } from 'vitest';
import { parseExposition } from './metric-reader.js';
import { createStatusSource } from './status-source.js';

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
