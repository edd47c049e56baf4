/**
 * The self-contained HTML report: per workload, where the modeled kernel time of each path goes
 * (a stacked bar by cost category) and, in a separate chart, the simulator time per op (the
 * model's median and the harness's share); then mapping memory per page, and the results table
 * with ratio columns. Modeled and simulator time never share a chart or an axis: every dataset
 * carries its `timeKind`. Chart.js is inlined, so the file opens from disk with no network.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { COST_CATEGORIES } from './cost-model.js';
import { fmtNs, fmtNum } from './format.js';
import { fmtComparison, fmtRatio } from './measure.js';
import { PATH_LABEL, type PathResult, type RunReport, type WorkloadResult } from './results.js';

const require = createRequire(import.meta.url);

function chartJsSource(): string {
  // the UMD build sits beside the package's main entry (it is not in its exports map)
  return readFileSync(join(dirname(require.resolve('chart.js')), 'chart.umd.min.js'), 'utf8');
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function ratioCell(a: number, b: number): string {
  if (a === 0 && b === 0) return '=';
  if (a === 0) return '∞';
  return fmtRatio(b / a);
}

/** The table rows of one workload: one per path, ratios on the two-step row. */
function tableRows(w: WorkloadResult): string {
  const sg = w.paths.find((p) => p.path === 'sg');
  return w.paths
    .map((p: PathResult) => {
      const cmp = p.path === 'iova' && sg !== undefined;
      const td = (v: string) => `<td>${esc(v)}</td>`;
      return (
        `<tr><td>${esc(w.name)}</td><td>${esc(PATH_LABEL[p.path])}</td>${td(fmtNum(p.ops))}` +
        td(fmtNs(p.simNsPerOp)) +
        td(cmp && w.sim !== undefined ? fmtComparison(w.sim) : '') +
        td(p.harnessNsPerOp === 0 ? 'not timed' : fmtNs(p.harnessNsPerOp)) +
        td(fmtNs(p.modeledNsPerOp)) +
        td(cmp ? ratioCell(sg.modeledNsPerOp, p.modeledNsPerOp) : '') +
        td(fmtNum(p.metaBytesPerOp)) +
        td(fmtNum(p.allocsPerOp)) +
        td(fmtNum(p.iovaAllocsPerOp)) +
        td(fmtNum(p.pteWritesPerOp)) +
        td(fmtNum(p.iotlbInvalidationsPerOp)) +
        td(fmtNum(p.invalidationCmdsPerOp)) +
        td(fmtNum(p.invalidationSyncsPerOp)) +
        td(fmtNum(p.bounceBytesPerOp)) +
        td(p.verified ? 'yes' : 'NO') +
        '</tr>'
      );
    })
    .join('\n');
}

/** Renders the report as one HTML document. */
export function renderReport(r: RunReport): string {
  const rows = r.workloads.map(tableRows).join('\n');
  const charts = r.workloads
    .map(
      (w, i) =>
        `<h3>${esc(w.name)}</h3><div class="pair">` +
        `<div class="box"><canvas id="modeled-${i}"></canvas></div>` +
        `<div class="box"><canvas id="sim-${i}"></canvas></div></div>`,
    )
    .join('\n');
  // JSON inside <script>: escape "<" so no "</script>" can end it early
  const data = JSON.stringify({ report: r, categories: COST_CATEGORIES, labels: PATH_LABEL }).replace(
    /</g,
    '\\u003c',
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}.note{color:#555}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:24px}.box{position:relative;height:210px}
.wide{position:relative;height:${60 + 44 * r.workloads.length}px;max-width:1000px}
</style></head><body>
<h1>${esc(r.title)}</h1>
<p class="note">IOMMU: ${esc(r.iommu)}${r.hw === undefined ? '' : ` · hardware: ${esc(r.hw)}`} · cost model: ${esc(r.costModel)} · seed ${r.seed}.
<b>Modeled kernel time</b> is counted events × the cost model's nanoseconds: a prediction, not a measurement.
<b>Simulator time</b> is how fast this model ran on the machine that made this report: the median over rounds in
which the two paths took turns, with the harness's share (preparing payloads, checking data) apart.
The two are never drawn on one axis: left charts are modeled time by cost category, right charts simulator time.</p>
<h2>Per workload: modeled kernel time by category (left) and simulator time (right), per op</h2>
${charts}
<h2>Mapping memory per 4 KiB page</h2>
<div class="wide"><canvas id="memory"></canvas></div>
<h2>Results</h2>
<p class="note">Per-op counts keep three significant digits, so a small per-op figure (one IOVA allocation per MR
over thousands of requests) never shows as 0. Ratios are two-step / legacy; the simulator-time ratio is the median of
the per-round ratios with a 95% interval, "≈" when the interval includes 1.</p>
<table id="results"><thead><tr><th>workload</th><th>path</th><th>ops</th><th>simulator time/op (median)</th>
<th>simulator two-step / legacy</th><th>harness time/op (simulator)</th><th>modeled time/op</th>
<th>modeled two-step / legacy</th><th>metadata B/op</th><th>allocs/op</th><th>IOVA allocs/op</th><th>PTE writes/op</th>
<th>IOTLB inval/op</th><th>inval commands/op</th><th>inval syncs/op</th><th>bounce B/op</th><th>data verified</th></tr></thead><tbody>
${rows}
</tbody></table>
<script>${chartJsSource()}</script>
<script id="report-data" type="application/json">${data}</script>
<script>
${REPORT_SCRIPT}</script>
</body></html>
`;
}

/**
 * The report's own script: reads the embedded JSON and draws the charts (modeled time by category
 * and simulator time per workload, metadata per page), then marks the body rendered.
 */
const REPORT_SCRIPT = `const { report, categories, labels } = JSON.parse(document.getElementById('report-data').textContent);
const paths = ['sg', 'iova'];
const fmtNs = (ns) => {
  for (const [scale, unit] of [[1e9, 's'], [1e6, 'ms'], [1e3, 'µs']]) if (Math.abs(ns) >= scale) return +(ns / scale).toPrecision(3) + ' ' + unit;
  return +ns.toPrecision(3) + ' ns';
};
const palette = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f'];
const timeAxis = (text) => ({ stacked: true, beginAtZero: true, title: { display: true, text }, ticks: { callback: (v) => fmtNs(v), maxTicksLimit: 6 } });
const hbar = (el, datasets, axis, title) => new Chart(el, {
  type: 'bar',
  data: { labels: paths.map((p) => labels[p]), datasets },
  options: {
    indexAxis: 'y', animation: false, maintainAspectRatio: false,
    plugins: { title: { display: true, text: title }, legend: { position: 'bottom', labels: { boxWidth: 12 } },
      tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + fmtNs(c.raw) } } },
    scales: { x: timeAxis(axis), y: { stacked: true, ticks: { autoSkip: false } } },
  },
});
report.workloads.forEach((w, i) => {
  const by = (p) => w.paths.find((x) => x.path === p);
  const used = categories.filter((c) => paths.some((p) => (by(p)?.modeledNsPerOpByCategory?.[c] ?? 0) > 0));
  hbar(document.getElementById('modeled-' + i), used.map((c) => ({
    label: 'modeled · ' + c, timeKind: 'modeled', backgroundColor: palette[categories.indexOf(c) % palette.length],
    data: paths.map((p) => by(p)?.modeledNsPerOpByCategory?.[c] ?? 0),
  })), 'modeled kernel time per op', 'Modeled kernel time per op, by category');
  hbar(document.getElementById('sim-' + i), [
    { label: 'simulator · model (median)', timeKind: 'simulator', backgroundColor: '#2b7bb9', data: paths.map((p) => by(p)?.simNsPerOp ?? 0) },
    { label: 'simulator · harness (median)', timeKind: 'simulator', backgroundColor: '#bbbbbb', data: paths.map((p) => by(p)?.harnessNsPerOp ?? 0) },
  ], 'simulator time per op', 'Simulator time per op (this machine)');
});
new Chart(document.getElementById('memory'), {
  type: 'bar',
  data: { labels: report.workloads.map((w) => w.name), datasets: paths.map((p, k) => ({
    label: labels[p] + ' · metadata bytes per page', backgroundColor: ['#d9534f', '#2b7bb9'][k],
    data: report.workloads.map((w) => w.paths.find((x) => x.path === p)?.metaBytesPerPage ?? null),
  })) },
  options: { indexAxis: 'y', animation: false, maintainAspectRatio: false,
    plugins: { legend: { position: 'bottom' } },
    scales: { x: { beginAtZero: true, title: { display: true, text: 'bytes per 4 KiB page' } }, y: { ticks: { autoSkip: false } } } },
});
document.body.dataset.rendered = 'yes';
`;
