import { describe, expect, it } from 'vitest';
import { createMetricsStore } from './store.js';

const counter = (name: string, value: number, labels: Record<string, string> = {}) => ({
  name,
  type: 'COUNTER' as const,
  metric: [{ label: Object.entries(labels).map(([n, v]) => ({ name: n, value: v })), counter: { value } }],
});
const pod = (name: string) => ({ pod: name, namespace: 'bookinfo' });

describe('the store of latest sidecar values', () => {
  it("replaces a proxy's values with its latest message, and labels them by pod and namespace", () => {
    const store = createMetricsStore({ maxProxies: 10, maxSeries: 10, staleAfter: 60_000 });
    store.record('a', pod('a'), [counter('envoy_rq_total', 1), counter('envoy_gone_total', 1)]);
    store.record('a', pod('a'), [counter('envoy_rq_total', 4, { namespace: 'spoofed', code: '200' })]);
    expect(store.render()).toBe('# TYPE envoy_rq_total counter\nenvoy_rq_total{pod="a",namespace="bookinfo",code="200"} 4\n');
    expect(store.stats()).toEqual({ proxies: 1, series: 1 });
  });

  it('drops and counts a proxy over maxProxies, and series over maxSeries, never storing them', () => {
    const store = createMetricsStore({ maxProxies: 1, maxSeries: 2, staleAfter: 60_000 });
    expect(store.record('a', pod('a'), [counter('x_total', 1), counter('y_total', 1), counter('z_total', 1)])).toEqual({ max_series: 1 });
    expect(store.record('b', pod('b'), [counter('x_total', 1)])).toEqual({ max_proxies: 1 });
    expect(store.stats()).toEqual({ proxies: 1, series: 2 });
  });

  it('renders histograms with buckets, sum and count, counted as series, and drops invalid names', () => {
    const store = createMetricsStore({ maxProxies: 1, maxSeries: 4, staleAfter: 60_000 });
    const dropped = store.record('sidecar~x', {}, [
      { name: 'envoy_rq_time', type: 'HISTOGRAM', metric: [{ histogram: { sample_count: 2, sample_sum: 3, bucket: [{ upper_bound: 1, cumulative_count: 1 }, { upper_bound: 5, cumulative_count: 2 }] } }] },
      { name: 'bad name', type: 'GAUGE', metric: [{ gauge: { value: 1 } }] },
      { name: 'envoy_g', type: 'GAUGE', metric: [{ label: [{ name: 'bad-label', value: 'x' }], gauge: { value: 1 } }] },
    ]);
    expect(dropped).toEqual({ invalid: 2 });
    expect(store.render()).toBe(
      [
        '# TYPE envoy_rq_time histogram',
        'envoy_rq_time_bucket{node="sidecar~x",le="1"} 1',
        'envoy_rq_time_bucket{node="sidecar~x",le="5"} 2',
        'envoy_rq_time_sum{node="sidecar~x"} 3',
        'envoy_rq_time_count{node="sidecar~x"} 2',
        '',
      ].join('\n'),
    );
  });

  it('forgets a proxy silent for staleAfter, giving back its series', () => {
    let now = 0;
    const store = createMetricsStore({ maxProxies: 1, maxSeries: 10, staleAfter: 1_000 }, () => now);
    store.record('a', pod('a'), [counter('x_total', 1)]);
    now = 1_001;
    expect(store.record('b', pod('b'), [counter('x_total', 2)])).toEqual({});
    expect(store.render()).toBe('# TYPE x_total counter\nx_total{pod="b",namespace="bookinfo"} 2\n');
  });
});
