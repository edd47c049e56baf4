/**
 * The self-contained HTML report: the results table and charts of per-op cost by request size and
 * path, and mapping memory per page by subsystem and path. Chart.js is inlined, so the file opens
 * from disk with no network.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { PATH_LABEL, type RunReport } from './results.js';

const require = createRequire(import.meta.url);

function chartJsSource(): string {
  // the UMD build sits beside the package's main entry (it is not in its exports map)
  return readFileSync(join(dirname(require.resolve('chart.js')), 'chart.umd.min.js'), 'utf8');
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Renders the report as one HTML document. */
export function renderReport(r: RunReport): string {
  const rows = r.workloads
    .flatMap((w) =>
      w.paths.map(
        (p) =>
          `<tr><td>${esc(w.name)}</td><td>${esc(PATH_LABEL[p.path])}</td><td>${p.ops}</td>` +
          `<td>${p.simNsPerOp.toFixed(0)}</td><td>${p.modeledNsPerOp.toFixed(0)}</td>` +
          `<td>${p.metaBytesPerOp.toFixed(0)}</td><td>${p.allocsPerOp.toFixed(2)}</td>` +
          `<td>${p.iovaAllocsPerOp.toFixed(2)}</td><td>${p.pteWritesPerOp.toFixed(1)}</td>` +
          `<td>${p.iotlbInvalidationsPerOp.toFixed(3)}</td><td>${p.bounceBytesPerOp.toFixed(0)}</td>` +
          `<td>${p.verified ? 'yes' : 'NO'}</td></tr>`,
      ),
    )
    .join('\n');
  // JSON inside <script>: escape "<" so no "</script>" can end it early
  const data = JSON.stringify(r).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}.note{color:#555}.chart{max-width:1000px;margin:2em 0}
</style></head><body>
<h1>${esc(r.title)}</h1>
<p class="note">IOMMU: ${esc(r.iommu)} · cost model: ${esc(r.costModel)} · seed ${r.seed}.
<b>Simulator time</b> is how fast this model ran on the machine that made this report.
<b>Modeled kernel time</b> is counted events × the cost model's nanoseconds: a prediction, not a measurement.</p>
<div class="chart"><h2>Per-op cost by size and path</h2><canvas id="cost"></canvas></div>
<div class="chart"><h2>Mapping memory per 4 KiB page by subsystem and path</h2><canvas id="memory"></canvas></div>
<h2>Results</h2>
<table id="results"><thead><tr><th>workload</th><th>path</th><th>ops</th><th>sim ns/op</th><th>modeled ns/op</th>
<th>metadata B/op</th><th>allocs/op</th><th>IOVA allocs/op</th><th>PTE writes/op</th><th>IOTLB inval/op</th>
<th>bounce B/op</th><th>data verified</th></tr></thead><tbody>
${rows}
</tbody></table>
<script>${chartJsSource()}</script>
<script id="report-data" type="application/json">${data}</script>
<script>
const report = JSON.parse(document.getElementById('report-data').textContent);
const labels = report.workloads.map((w) => w.name);
const per = (path, key) => report.workloads.map((w) => { const p = w.paths.find((x) => x.path === path); return p ? p[key] : null; });
const colors = { sg: '#d9534f', iova: '#2b7bb9' };
const names = { sg: 'legacy (scatterlist / per-page)', iova: 'two-step IOVA' };
new Chart(document.getElementById('cost'), {
  type: 'bar',
  data: { labels, datasets: ['sg', 'iova'].flatMap((p) => [
    { label: names[p] + ' · modeled kernel ns/op', data: per(p, 'modeledNsPerOp'), backgroundColor: colors[p] },
    { label: names[p] + ' · simulator ns/op', data: per(p, 'simNsPerOp'), backgroundColor: colors[p] + '66' },
  ]) },
  options: { animation: false, scales: { y: { type: 'logarithmic', title: { display: true, text: 'ns per op' } } } },
});
new Chart(document.getElementById('memory'), {
  type: 'bar',
  data: { labels, datasets: ['sg', 'iova'].map((p) => ({ label: names[p] + ' · metadata bytes per page', data: per(p, 'metaBytesPerPage'), backgroundColor: colors[p] })) },
  options: { animation: false, scales: { y: { title: { display: true, text: 'bytes per 4 KiB page' } } } },
});
document.body.dataset.rendered = 'yes';
</script>
</body></html>
`;
}
