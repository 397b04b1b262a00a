/**
 * The alerts (deploy/base/prometheusrule.yaml) and the Grafana dashboard (deploy/grafana/meshgate.json)
 * query only what meshgate exports: every metric name and label in every expression, parsed with
 * Prometheus' own PromQL grammar. Prometheus' promtool checks the rules and proves, on synthetic
 * series, that each alert fires when it should and stays quiet when it should not.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parser } from '@prometheus-io/lezer-promql';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { createMetrics } from '../src/observability/metrics.js';
import { ROOT } from './helpers/cli.js';

const KUBECTL = '/usr/bin/kubectl';
const PROMTOOL = '/usr/bin/promtool';

/** Labels Prometheus adds to every series it scrapes through the ServiceMonitor (target labels). */
const TARGET_LABELS = ['namespace', 'pod', 'service', 'endpoint', 'container', 'instance', 'job'];

/** Every series name meshgate exports, with its labels (histograms: _bucket with le, _sum, _count). */
function exported(): Map<string, Set<string>> {
  const series = new Map<string, Set<string>>();
  for (const metric of createMetrics().registry.getMetricsAsArray()) {
    const { name, type, labelNames } = metric as unknown as { name: string; type: string; labelNames: readonly string[] };
    if (type === 'histogram') {
      series.set(`${name}_bucket`, new Set([...labelNames, 'le']));
      series.set(`${name}_sum`, new Set(labelNames));
      series.set(`${name}_count`, new Set(labelNames));
    } else if (type === 'summary') {
      series.set(name, new Set([...labelNames, 'quantile']));
      series.set(`${name}_sum`, new Set(labelNames));
      series.set(`${name}_count`, new Set(labelNames));
    } else {
      series.set(name, new Set(labelNames));
    }
  }
  return series;
}
const EXPORTED = exported();

interface Query {
  readonly metrics: string[];
  /** Labels a selector matches on, by metric. */
  readonly matched: [string, string][];
  /** Labels of by (…), without (…), on (…), ignoring (…) and group_left/right (…). */
  readonly grouped: string[];
  readonly errors: number;
}

/** The metric names and labels of a PromQL expression, from Prometheus' own grammar (lezer-promql). */
function readQuery(expr: string): Query {
  const tree = parser.parse(expr);
  const text = (from: number, to: number): string => expr.slice(from, to);
  const metrics: string[] = [];
  const matched: [string, string][] = [];
  const grouped: string[] = [];
  let errors = 0;
  tree.iterate({
    enter(node) {
      if (node.type.isError) errors += 1;
      if (node.name === 'VectorSelector') {
        const id = node.node.getChild('Identifier');
        const name = id ? text(id.from, id.to) : '';
        metrics.push(name);
        const matchers = node.node.getChild('LabelMatchers');
        for (const label of matchers?.getChildren('UnquotedLabelMatcher') ?? []) {
          const labelName = label.getChild('LabelName');
          if (labelName) matched.push([name, text(labelName.from, labelName.to)]);
        }
      }
      if (node.name === 'GroupingLabels') {
        for (const label of node.node.getChildren('LabelName')) grouped.push(text(label.from, label.to));
      }
    },
  });
  return { metrics, matched, grouped, errors };
}

/** What in a query meshgate does not export; empty when all is well. */
function unknownIn(expr: string): string[] {
  const { metrics, matched, grouped, errors } = readQuery(expr);
  const problems: string[] = [];
  if (errors > 0) problems.push(`does not parse: ${expr}`);
  if (metrics.length === 0) problems.push(`queries no metric: ${expr}`);
  for (const name of metrics) if (!EXPORTED.has(name)) problems.push(`metric ${name || '(none)'} is not exported`);
  for (const [name, label] of matched) {
    if (EXPORTED.has(name) && !EXPORTED.get(name)?.has(label) && !TARGET_LABELS.includes(label)) problems.push(`${name} has no label ${label}`);
  }
  const available = new Set([...metrics.flatMap((m) => [...(EXPORTED.get(m) ?? [])]), ...TARGET_LABELS]);
  for (const label of grouped) if (!available.has(label)) problems.push(`no metric of "${expr}" has the label ${label}`);
  return problems;
}

describe('the query checker', () => {
  // The checks below are only as good as this: it must see what is wrong.
  it.each([
    ['sum by (tenant) (rate(meshgate_denials_totl[5m]))', 'metric meshgate_denials_totl is not exported'],
    ['sum(rate(meshgate_denials_total{cluster="x"}[5m]))', 'meshgate_denials_total has no label cluster'],
    ['sum by (verb) (rate(meshgate_denials_total[5m]))', 'has the label verb'],
    ['histogram_quantile(0.9, sum by (le) (rate(meshgate_xds_streams_bucket[5m])))', 'meshgate_xds_streams_bucket is not exported'],
    ['sum by (tenant (rate(meshgate_denials_total[5m]))', 'does not parse'],
  ])('refuses %s', (expr, problem) => {
    expect(unknownIn(expr).join('\n')).toContain(problem);
  });

  it('accepts histogram series, target labels and grouping on what the metrics carry', () => {
    expect(unknownIn('histogram_quantile(0.99, sum by (le, plane) (rate(meshgate_http_request_duration_seconds_bucket{tenant=~"a"}[5m])))')).toEqual([]);
    expect(unknownIn('max by (pod) (meshgate_config_snapshot_version)')).toEqual([]);
  });
});

function renderedRules(): { groups: { name: string; rules: Record<string, unknown>[] }[] } {
  const out = execFileSync(KUBECTL, ['kustomize', join(ROOT, 'deploy/base')], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const rule = parseAllDocuments(out)
    .map((d) => d.toJS() as { kind?: string; spec?: unknown } | null)
    .find((o) => o?.kind === 'PrometheusRule');
  expect(rule).toBeDefined();
  return rule!.spec as { groups: { name: string; rules: Record<string, unknown>[] }[] };
}

describe('the PrometheusRule', () => {
  const spec = renderedRules();
  const rules = spec.groups.flatMap((g) => g.rules) as { alert: string; expr: string; labels: Record<string, string>; annotations: Record<string, string> }[];
  const tmp = mkdtempSync(join(tmpdir(), 'meshgate-rules-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('has the alerts issues 13 and 14 ask for, each with a severity, a summary and a description', () => {
    expect(rules.map((r) => r.alert).sort()).toEqual([
      'MeshgateAgentTunnelLost',
      'MeshgateAgentUnavailable',
      'MeshgateCertificateExpiringSoon',
      'MeshgateCertificateExpiringVerySoon',
      'MeshgateConfigReloadFailing',
      'MeshgateDenialsSpiking',
      'MeshgateIstiodReplicaDown',
      'MeshgateIstiodUnavailable',
      'MeshgateTenantLimitHit',
      'MeshgateTenantSourceErrors',
    ]);
    for (const r of rules) {
      expect(['warning', 'critical'], r.alert).toContain(r.labels.severity);
      expect(r.annotations.summary, r.alert).toBeTruthy();
      expect(r.annotations.description, r.alert).toBeTruthy();
    }
  });

  it.each(rules.map((r) => [r.alert, r] as const))('%s queries only what meshgate exports, and names only labels it keeps', (_, rule) => {
    expect(unknownIn(rule.expr)).toEqual([]);
    const { grouped } = readQuery(rule.expr);
    const used = [...`${rule.annotations.summary} ${rule.annotations.description}`.matchAll(/\$labels\.(\w+)/g)].map((m) => m[1]!);
    for (const label of used) expect(grouped, `${rule.alert}: $labels.${label}`).toContain(label);
  });

  it('passes promtool check rules', () => {
    const file = join(tmp, 'check.yaml');
    writeFileSync(file, stringify(spec));
    const result = spawnSync(PROMTOOL, ['check', 'rules', file], { encoding: 'utf8' });
    expect(result.stdout + result.stderr).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(result.status).toBe(0);
  });

  it('fires each alert on series that call for it, and not otherwise (promtool test rules)', () => {
    // Annotations are templates that promtool compares verbatim; what fires is expr, for and labels.
    const bare = { groups: spec.groups.map((g) => ({ ...g, rules: g.rules.map(({ annotations: _, ...r }) => r) })) };
    writeFileSync(join(tmp, 'rules.yaml'), stringify(bare));
    writeFileSync(join(tmp, 'tests.yaml'), stringify({ rule_files: ['rules.yaml'], evaluation_interval: '1m', tests: ALERT_TESTS }));
    const tested = new Set(ALERT_TESTS.flatMap((t) => t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    expect([...tested].sort()).toEqual(rules.map((r) => r.alert).sort());
    const result = spawnSync(PROMTOOL, ['test', 'rules', join(tmp, 'tests.yaml')], { encoding: 'utf8' });
    expect(result.stdout + result.stderr).toContain('SUCCESS');
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });
});

const at = { namespace: 'meshgate' };
const series = (name: string, labels: Record<string, string>, values: string) => ({
  series: `${name}{${Object.entries({ ...at, ...labels }).map(([k, v]) => `${k}="${v}"`).join(',')}}`,
  values,
});
const alert = (alertname: string, evalTime: string, ...firing: Record<string, string>[]) => ({
  alertname,
  eval_time: evalTime,
  exp_alerts: firing.map((labels) => ({ exp_labels: { ...at, ...labels } })),
});

/** Series in one-minute steps; `_` is no sample (the series does not exist yet). */
const ALERT_TESTS = [
  {
    // Replica .1 goes down for both meshgate pods at minute 2; .2 stays up. Then, a tenant whose
    // only replica is down.
    interval: '1m',
    input_series: [
      series('meshgate_upstream_replica_up', { pod: 'meshgate-a', tenant: 'acme', replica: '10.0.0.1:15012' }, '1 1 0x20'),
      series('meshgate_upstream_replica_up', { pod: 'meshgate-b', tenant: 'acme', replica: '10.0.0.1:15012' }, '1 1 0x20'),
      series('meshgate_upstream_replica_up', { pod: 'meshgate-a', tenant: 'acme', replica: '10.0.0.2:15012' }, '1x22'),
      series('meshgate_upstream_replica_up', { pod: 'meshgate-b', tenant: 'acme', replica: '10.0.0.2:15012' }, '1 0x21'),
      series('meshgate_upstream_replica_up', { pod: 'meshgate-a', tenant: 'beta', replica: '10.0.1.1:15012' }, '1 1 0x20'),
    ],
    alert_rule_test: [
      alert('MeshgateIstiodReplicaDown', '5m'),
      alert(
        'MeshgateIstiodReplicaDown',
        '10m',
        { severity: 'warning', tenant: 'acme', replica: '10.0.0.1:15012' },
        { severity: 'warning', tenant: 'beta', replica: '10.0.1.1:15012' },
      ),
      alert('MeshgateIstiodUnavailable', '3m'),
      alert('MeshgateIstiodUnavailable', '10m', { severity: 'critical', tenant: 'beta' }),
    ],
  },
  {
    // acme's agent cluster: requests refused for want of an agent from minute 10 on (a new series:
    // the first such refusal), and none after minute 30. beta: served all along.
    interval: '1m',
    input_series: [
      series('meshgate_http_requests_total', { pod: 'meshgate-a', tenant: 'acme', plane: 'kube', outcome: 'MG_ERR_UPSTREAM_AGENT_UNAVAILABLE' }, '_x10 1+2x20 41x40'),
      series('meshgate_http_requests_total', { pod: 'meshgate-a', tenant: 'beta', plane: 'kube', outcome: 'OK' }, '0+100x70'),
    ],
    alert_rule_test: [
      alert('MeshgateAgentUnavailable', '8m'),
      alert('MeshgateAgentUnavailable', '20m', { severity: 'warning', tenant: 'acme' }),
      alert('MeshgateAgentUnavailable', '50m'),
    ],
  },
  {
    // acme-east's agent is connected to two pods, and lost by both at minute 5; acme-west's by one pod only.
    interval: '1m',
    input_series: [
      series('meshgate_agent_tunnels', { pod: 'meshgate-a', tenant: 'acme', cluster: 'acme-east' }, '1x5 0x30'),
      series('meshgate_agent_tunnels', { pod: 'meshgate-b', tenant: 'acme', cluster: 'acme-east' }, '2x5 0x30'),
      series('meshgate_agent_tunnels', { pod: 'meshgate-a', tenant: 'acme', cluster: 'acme-west' }, '1x5 0x30'),
      series('meshgate_agent_tunnels', { pod: 'meshgate-b', tenant: 'acme', cluster: 'acme-west' }, '1x35'),
    ],
    alert_rule_test: [
      alert('MeshgateAgentTunnelLost', '10m'),
      alert('MeshgateAgentTunnelLost', '20m', { severity: 'warning', tenant: 'acme', cluster: 'acme-east' }),
    ],
  },
  {
    // acme: 0.1 denial/s for two hours, then 5/s for an hour. beta: a steady 2/s. gamma: none at all, then 5/s.
    // "-" (no tenant: scans, unknown names) is never a tenant's spike.
    interval: '1m',
    input_series: [
      series('meshgate_denials_total', { pod: 'meshgate-a', tenant: 'acme', plane: 'kube', reason: 'MG_ERR_AUTHZ_DENIED' }, '0+6x120 720+300x60'),
      series('meshgate_denials_total', { pod: 'meshgate-a', tenant: 'beta', plane: 'kube', reason: 'MG_ERR_AUTHZ_DENIED' }, '0+120x180'),
      series('meshgate_denials_total', { pod: 'meshgate-a', tenant: 'gamma', plane: 'xds', reason: 'MG_ERR_AUTHN_TOKEN' }, '_x120 0+300x60'),
      series('meshgate_denials_total', { pod: 'meshgate-a', tenant: '-', plane: '-', reason: 'MG_ERR_TENANT_UNKNOWN' }, '0+3000x180'),
    ],
    alert_rule_test: [
      alert('MeshgateDenialsSpiking', '110m'),
      alert('MeshgateDenialsSpiking', '124m'),
      alert('MeshgateDenialsSpiking', '135m', { severity: 'warning', tenant: 'acme' }, { severity: 'warning', tenant: 'gamma' }),
      // Half an hour into the spike it still is one; after 40 minutes it is the baseline.
      alert('MeshgateDenialsSpiking', '155m', { severity: 'warning', tenant: 'acme' }, { severity: 'warning', tenant: 'gamma' }),
      alert('MeshgateDenialsSpiking', '175m'),
    ],
  },
  {
    // acme hits its kube rate limit all the time; beta once, long ago.
    interval: '1m',
    input_series: [
      series('meshgate_limits_hit_total', { pod: 'meshgate-a', tenant: 'acme', plane: 'kube', limit: 'rate' }, '0+60x40'),
      series('meshgate_limits_hit_total', { pod: 'meshgate-a', tenant: 'beta', plane: 'xds', limit: 'streams' }, '0 1x40'),
    ],
    alert_rule_test: [
      alert('MeshgateTenantLimitHit', '10m'),
      alert('MeshgateTenantLimitHit', '30m', { severity: 'warning', tenant: 'acme', plane: 'kube', limit: 'rate' }),
    ],
  },
  {
    // Expiry times from Unix time 0, where promtool's clock starts: 10 days, 2 days, 100 days.
    interval: '1m',
    input_series: [
      series('meshgate_certificate_expiry_timestamp_seconds', { pod: 'meshgate-a', tenant: 'acme', certificate: 'serving' }, `${10 * 86_400}x120`),
      series('meshgate_certificate_expiry_timestamp_seconds', { pod: 'meshgate-a', tenant: 'acme', certificate: 'istiod-ca' }, `${2 * 86_400}x120`),
      series('meshgate_certificate_expiry_timestamp_seconds', { pod: 'meshgate-a', tenant: 'beta', certificate: 'serving' }, `${100 * 86_400}x120`),
    ],
    alert_rule_test: [
      alert('MeshgateCertificateExpiringVerySoon', '5m'),
      alert('MeshgateCertificateExpiringVerySoon', '20m', { severity: 'critical', tenant: 'acme', certificate: 'istiod-ca' }),
      alert('MeshgateCertificateExpiringSoon', '30m'),
      alert(
        'MeshgateCertificateExpiringSoon',
        '90m',
        { severity: 'warning', tenant: 'acme', certificate: 'serving' },
        { severity: 'warning', tenant: 'acme', certificate: 'istiod-ca' },
      ),
    ],
  },
  {
    // a: a reload refused at minute 30, and nothing good after it: fires from 31 on, hours later too.
    // b: refused at 30, a good reload at 40: fires between, quiet after.
    // c: a pod with two series (two scrape targets, say), one refused at 20: the pod fires.
    interval: '1m',
    input_series: [
      series('meshgate_config_last_reload_successful', { pod: 'meshgate-a' }, '1x30 0x200'),
      series('meshgate_config_last_reload_successful', { pod: 'meshgate-b' }, '1x30 0x10 1x190'),
      series('meshgate_config_last_reload_successful', { pod: 'meshgate-c', instance: 'w1' }, '1x230'),
      series('meshgate_config_last_reload_successful', { pod: 'meshgate-c', instance: 'w2' }, '1x20 0x210'),
    ],
    alert_rule_test: [
      alert('MeshgateConfigReloadFailing', '15m'),
      alert('MeshgateConfigReloadFailing', '35m', { severity: 'warning', pod: 'meshgate-a' }, { severity: 'warning', pod: 'meshgate-b' }, { severity: 'warning', pod: 'meshgate-c' }),
      alert('MeshgateConfigReloadFailing', '180m', { severity: 'warning', pod: 'meshgate-a' }, { severity: 'warning', pod: 'meshgate-c' }),
    ],
  },
  {
    // A MeshTenant refused at minute 10 (the counter's first sample), another at 40.
    interval: '1m',
    input_series: [series('meshgate_tenant_source_errors_total', { pod: 'meshgate-a', source: 'kubernetes' }, '_x10 1x30 2x30')],
    alert_rule_test: [
      alert('MeshgateTenantSourceErrors', '5m'),
      alert('MeshgateTenantSourceErrors', '12m', { severity: 'warning', pod: 'meshgate-a', source: 'kubernetes' }),
      alert('MeshgateTenantSourceErrors', '30m'),
      alert('MeshgateTenantSourceErrors', '45m', { severity: 'warning', pod: 'meshgate-a', source: 'kubernetes' }),
    ],
  },
];

interface Panel {
  readonly type: string;
  readonly title: string;
  readonly targets?: { expr: string }[];
  readonly panels?: Panel[];
}

describe('the Grafana dashboard', () => {
  const dashboard = JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/meshgate.json'), 'utf8')) as {
    panels: Panel[];
    templating: { list: { name: string; type: string; query?: { query: string } | string; includeAll?: boolean; allValue?: string }[] };
  };
  const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row');
  /** Grafana's variables, as Prometheus would see them once substituted. */
  const substitute = (expr: string): string => expr.replaceAll('$__rate_interval', '5m').replaceAll('$tenant', '.*');

  it('has a tenant variable of the tenants meshgate reports, and a Prometheus data source variable', () => {
    const tenant = dashboard.templating.list.find((v) => v.name === 'tenant');
    const query = typeof tenant?.query === 'string' ? tenant.query : tenant?.query?.query;
    const [, metric = '', label = ''] = /^label_values\((\w+),\s*(\w+)\)$/.exec(query ?? '') ?? [];
    expect(EXPORTED.get(metric)?.has(label)).toBe(true);
    expect(label).toBe('tenant');
    expect(tenant?.includeAll).toBe(true);
    expect(tenant?.allValue).toBe('.*');
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')?.type).toBe('datasource');
  });

  it('shows streams, requests, latency, denials, upstream sessions and health, reloads, certificate expiry and limits hit', () => {
    const queried = new Set(panels.flatMap((p) => (p.targets ?? []).flatMap((t) => readQuery(substitute(t.expr)).metrics)));
    for (const metric of [
      'meshgate_xds_streams',
      'meshgate_http_requests_total',
      'meshgate_http_request_duration_seconds_bucket',
      'meshgate_denials_total',
      'meshgate_xds_upstream_sessions',
      'meshgate_upstream_replica_up',
      'meshgate_config_reloads_total',
      'meshgate_certificate_expiry_timestamp_seconds',
      'meshgate_limits_hit_total',
    ]) {
      expect(queried, metric).toContain(metric);
    }
  });

  it.each(panels.map((p) => [p.title, p] as const))('panel "%s" queries only what meshgate exports, filtered by tenant where it has one', (_, panel) => {
    expect(panel.targets?.length).toBeGreaterThan(0);
    for (const { expr } of panel.targets ?? []) {
      expect(unknownIn(substitute(expr))).toEqual([]);
      const { metrics } = readQuery(substitute(expr));
      // A per-tenant metric follows the tenant picker.
      if (metrics.some((m) => EXPORTED.get(m)?.has('tenant'))) expect(expr).toContain('tenant=~"$tenant"');
    }
  });
});
