/**
 * The status page: HTML rendered here, with every value escaped, and a small inline script that
 * polls /status.json and renders the same structure again with DOM calls (text only through text
 * nodes, never as markup). A strict Content-Security-Policy admits exactly this script and this
 * style, by hash, and nothing from anywhere else.
 */
import { createHash } from 'node:crypto';
import type { StatusReport, TenantStatus } from './status-source.js';

/** How often the page asks for fresh numbers. */
export const POLL_MS = 3_000;

const STYLE = `
:root { color-scheme: light dark; --muted: #6b7280; --ok: #15803d; --bad: #b91c1c; --warn: #b45309; --line: #d1d5db; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
header { position: sticky; top: 0; background: Canvas; padding: .75rem 0; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.25rem; margin: 0 0 .25rem; }
header p { margin: 0; color: var(--muted); }
header b { color: CanvasText; }
.stale { color: var(--bad); font-weight: 600; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(26rem, 1fr)); gap: 1rem; margin-top: 1rem; }
section { border: 1px solid var(--line); border-radius: 6px; padding: .75rem 1rem; }
h2 { font-size: 1.1rem; margin: 0 0 .25rem; }
.tag { font-size: .75rem; font-weight: 400; color: var(--warn); margin-left: .5rem; }
.meta { margin: 0; color: var(--muted); overflow-wrap: anywhere; }
.meta span { display: inline-block; min-width: 6rem; }
.figures { display: flex; flex-wrap: wrap; gap: 1.25rem; margin: .75rem 0 .25rem; }
.figure b { display: block; font-size: 1.4rem; font-variant-numeric: tabular-nums; }
.figure span { color: var(--muted); font-size: .8rem; }
.trend span { color: var(--muted); font-size: .8rem; }
.spark { width: 100%; height: 32px; display: block; border-bottom: 1px solid var(--line); }
.spark polyline { fill: none; stroke: #2563eb; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
table { border-collapse: collapse; width: 100%; margin-top: .75rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: .25rem; }
th, td { text-align: left; padding: .15rem .5rem .15rem 0; border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
th { color: var(--muted); font-weight: 400; }
.up { color: var(--ok); font-weight: 600; }
.down, .expired { color: var(--bad); font-weight: 600; }
.soon { color: var(--warn); font-weight: 600; }
.none { color: var(--muted); }
`;

/** The page's script: plain JavaScript, served inline; the functions mirror the server's below. */
const SCRIPT = `
(() => {
  'use strict';
  const POLL_MS = ${POLL_MS};
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    for (const child of children) node.append(child instanceof Node ? child : String(child));
    return node;
  };
  const rate = (n) => (n === null ? '\\u2013' : n < 10 ? n.toFixed(1) : String(Math.round(n)));
  const date = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
  const span = (seconds) => (seconds < 60 ? seconds + ' s' : Math.floor(seconds / 60) + ' min');
  const days = (seconds, now) => Math.floor((seconds * 1000 - now) / 86400000);
  const expiryClass = (d) => (d < 0 ? 'expired' : d < 30 ? 'soon' : '');
  const points = (values) => {
    const rates = values.length > 1 ? values : [values[0] ?? 0, values[0] ?? 0];
    const max = Math.max(1, ...rates);
    const step = 240 / Math.max(1, rates.length - 1);
    return rates.map((r, i) => (i * step).toFixed(1) + ',' + (31 - (r / max) * 29).toFixed(1)).join(' ');
  };
  const table = (cls, caption, head, rows, empty) =>
    el('table', { class: cls }, el('caption', {}, caption), el('thead', {}, el('tr', {}, ...head.map((h) => el('th', {}, h)))),
      el('tbody', {}, ...(rows.length > 0 ? rows : [el('tr', {}, el('td', { colspan: head.length, class: 'none' }, empty))])));
  const figure = (key, value, label) => el('div', { class: 'figure', 'data-figure': key }, el('b', {}, value), el('span', {}, label));
  const meta = (label, values) => el('p', { class: 'meta' }, el('span', {}, label), values.length > 0 ? values.join(', ') : '\\u2013');
  const tenant = (t, report) => {
    const title = el('h2', {}, t.id === '-' ? 'no tenant' : t.id);
    if (t.id === '-') title.append(el('span', { class: 'tag' }, 'unknown or missing server name'));
    else if (!t.inTopology) title.append(el('span', { class: 'tag' }, 'not in this process\\u2019s config'));
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 240 32');
    svg.setAttribute('preserveAspectRatio', 'none');
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', points(t.requestRates));
    svg.append(line);
    const denied = t.denials.reduce((sum, d) => sum + d.count, 0);
    return el('section', { class: 'tenant', 'data-tenant': t.id }, title,
      meta('hosts', t.hosts), meta('clusters', t.clusters), meta('istiod xDS', t.istiod),
      el('div', { class: 'figures' },
        figure('requestRate', rate(t.requestRate), 'requests/s (' + report.rateSeconds + ' s)'),
        figure('denials', denied, 'denials, last ' + span(report.windowSeconds)),
        figure('xdsStreams', t.xdsStreams, 'xDS streams'),
        figure('watches', t.watches, 'kube watches'),
        figure('tunnels', t.tunnels, 'kube tunnels')),
      el('div', { class: 'trend' }, el('span', {}, 'requests/s, last ' + span(report.windowSeconds)), svg),
      table('replicas', 'istiod replicas', ['replica', 'health', 'sessions'],
        t.replicas.map((r) => el('tr', { 'data-replica': r.replica }, el('td', {}, r.replica),
          el('td', { class: r.up === null ? 'none' : r.up ? 'up' : 'down' }, r.up === null ? 'unknown' : r.up ? 'up' : 'down'),
          el('td', {}, r.sessions === null ? '\\u2013' : r.sessions))),
        'no session opened yet'),
      table('denials', 'denials by reason, last ' + span(report.windowSeconds), ['reason', 'count'],
        t.denials.map((d) => el('tr', { 'data-reason': d.reason }, el('td', {}, d.reason), el('td', {}, d.count))), 'none'),
      table('certificates', 'certificate expiry', ['certificate', 'not after', 'days left'],
        t.certificates.map((c) => {
          const d = days(c.notAfter, report.generatedAt);
          return el('tr', { 'data-certificate': c.certificate }, el('td', {}, c.certificate), el('td', {}, date(c.notAfter)),
            el('td', { class: expiryClass(d) }, d));
        }), 'none known'));
  };
  const text = (id, value) => { document.getElementById(id).textContent = String(value); };
  const render = (report) => {
    text('generation', report.config.generation === null ? '\\u2013' : report.config.generation);
    text('loaded', report.config.loadedAt === null ? '\\u2013' : date(report.config.loadedAt));
    text('reloads', report.config.reloads.success + ' ok, ' + report.config.reloads.failure + ' failed');
    text('mode', report.mode);
    text('updated', new Date(report.generatedAt).toISOString().slice(11, 19) + ' UTC');
    document.getElementById('freshness').className = '';
    document.getElementById('tenants').replaceChildren(...report.tenants.map((t) => tenant(t, report)));
  };
  const poll = async () => {
    try {
      const res = await fetch('/status.json', { cache: 'no-store', credentials: 'same-origin' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      render(await res.json());
    } catch {
      document.getElementById('freshness').className = 'stale';
    } finally {
      setTimeout(poll, POLL_MS);
    }
  };
  setTimeout(poll, POLL_MS);
})();
`;

const hash = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/** Headers for the page: only its own script and style run, and it talks to its own origin only. */
export const STATUS_PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': [
    "default-src 'none'",
    `script-src ${hash(SCRIPT)}`,
    `style-src ${hash(STYLE)}`,
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; '),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

export function escapeHtml(value: string | number): string {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

type Child = string | { readonly html: string };
/** An element; attribute values and text children are escaped, `{ html }` children are markup built here. */
function el(tag: string, attrs: Record<string, string | number>, ...children: Child[]): { html: string } {
  const attributes = Object.entries(attrs).map(([key, value]) => ` ${key}="${escapeHtml(value)}"`).join('');
  const inner = children.map((c) => (typeof c === 'string' ? escapeHtml(c) : c.html)).join('');
  return { html: `<${tag}${attributes}>${inner}</${tag}>` };
}

const rate = (n: number | null): string => (n === null ? '\u2013' : n < 10 ? n.toFixed(1) : String(Math.round(n)));
const date = (seconds: number): string => `${new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
const span = (seconds: number): string => (seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min`);
const days = (seconds: number, now: number): number => Math.floor((seconds * 1000 - now) / 86_400_000);
const expiryClass = (d: number): string => (d < 0 ? 'expired' : d < 30 ? 'soon' : '');
/** A line across the box (a flat one until there are two rates to join). */
const points = (values: readonly number[]): string => {
  const rates = values.length > 1 ? values : [values[0] ?? 0, values[0] ?? 0];
  const max = Math.max(1, ...rates);
  const step = 240 / Math.max(1, rates.length - 1);
  return rates.map((r, i) => `${(i * step).toFixed(1)},${(31 - (r / max) * 29).toFixed(1)}`).join(' ');
};

function table(cls: string, caption: string, head: readonly string[], rows: readonly { html: string }[], empty: string): { html: string } {
  return el(
    'table',
    { class: cls },
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, ...head.map((h) => el('th', {}, h)))),
    el('tbody', {}, ...(rows.length > 0 ? rows : [el('tr', {}, el('td', { colspan: head.length, class: 'none' }, empty))])),
  );
}

const figure = (key: string, value: string | number, label: string): { html: string } =>
  el('div', { class: 'figure', 'data-figure': key }, el('b', {}, String(value)), el('span', {}, label));
const meta = (label: string, values: readonly string[]): { html: string } =>
  el('p', { class: 'meta' }, el('span', {}, label), values.length > 0 ? values.join(', ') : '\u2013');

function tenant(t: TenantStatus, report: StatusReport): { html: string } {
  const tag =
    t.id === '-'
      ? [el('span', { class: 'tag' }, 'unknown or missing server name')]
      : t.inTopology
        ? []
        : [el('span', { class: 'tag' }, 'not in this process\u2019s config')];
  const denied = t.denials.reduce((sum, d) => sum + d.count, 0);
  return el(
    'section',
    { class: 'tenant', 'data-tenant': t.id },
    el('h2', {}, t.id === '-' ? 'no tenant' : t.id, ...tag),
    meta('hosts', t.hosts),
    meta('clusters', t.clusters),
    meta('istiod xDS', t.istiod),
    el(
      'div',
      { class: 'figures' },
      figure('requestRate', rate(t.requestRate), `requests/s (${report.rateSeconds} s)`),
      figure('denials', denied, `denials, last ${span(report.windowSeconds)}`),
      figure('xdsStreams', t.xdsStreams, 'xDS streams'),
      figure('watches', t.watches, 'kube watches'),
      figure('tunnels', t.tunnels, 'kube tunnels'),
    ),
    el(
      'div',
      { class: 'trend' },
      el('span', {}, `requests/s, last ${span(report.windowSeconds)}`),
      el('svg', { class: 'spark', viewBox: '0 0 240 32', preserveAspectRatio: 'none' }, el('polyline', { points: points(t.requestRates) })),
    ),
    table(
      'replicas',
      'istiod replicas',
      ['replica', 'health', 'sessions'],
      t.replicas.map((r) =>
        el(
          'tr',
          { 'data-replica': r.replica },
          el('td', {}, r.replica),
          el('td', { class: r.up === null ? 'none' : r.up ? 'up' : 'down' }, r.up === null ? 'unknown' : r.up ? 'up' : 'down'),
          el('td', {}, r.sessions === null ? '\u2013' : String(r.sessions)),
        ),
      ),
      'no session opened yet',
    ),
    table(
      'denials',
      `denials by reason, last ${span(report.windowSeconds)}`,
      ['reason', 'count'],
      t.denials.map((d) => el('tr', { 'data-reason': d.reason }, el('td', {}, d.reason), el('td', {}, String(d.count)))),
      'none',
    ),
    table(
      'certificates',
      'certificate expiry',
      ['certificate', 'not after', 'days left'],
      t.certificates.map((c) => {
        const d = days(c.notAfter, report.generatedAt);
        return el('tr', { 'data-certificate': c.certificate }, el('td', {}, c.certificate), el('td', {}, date(c.notAfter)), el('td', { class: expiryClass(d) }, String(d)));
      }),
      'none known',
    ),
  );
}

export function renderStatusPage(report: StatusReport): string {
  const { config } = report;
  const header = el(
    'header',
    {},
    el('h1', {}, 'meshgate status'),
    el(
      'p',
      {},
      'config generation ',
      el('b', { id: 'generation' }, config.generation === null ? '\u2013' : String(config.generation)),
      ' \u00b7 loaded ',
      el('b', { id: 'loaded' }, config.loadedAt === null ? '\u2013' : date(config.loadedAt)),
      ' \u00b7 reloads ',
      el('b', { id: 'reloads' }, `${config.reloads.success} ok, ${config.reloads.failure} failed`),
      ' \u00b7 ',
      el('span', { id: 'mode' }, report.mode),
    ),
    el('p', { id: 'freshness' }, 'updated ', el('span', { id: 'updated' }, `${new Date(report.generatedAt).toISOString().slice(11, 19)} UTC`), ` \u00b7 every ${POLL_MS / 1000} s`),
  );
  const main = el('main', { id: 'tenants' }, ...report.tenants.map((t) => tenant(t, report)));
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshgate status</title>
<style>${STYLE}</style>
</head>
<body>
${header.html}
${main.html}
<script>${SCRIPT}</script>
</body>
</html>
`;
}
