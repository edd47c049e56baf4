/**
 * `iovalink demo`: the story in one command. Block I/O, RDMA ODP and VFIO migration workloads run
 * through the scatterlist path and the two-step path on the default machine, data verified, and
 * a side-by-side table per workload: simulator time, modeled kernel time (clearly labelled), and
 * the counts the kernel would spend.
 */
import { writeFileSync } from 'node:fs';
import cliProgress from 'cli-progress';
import { type CostModel, loadCostModel } from '../cost-model.js';
import { type Row, renderTable } from '../format.js';
import { renderReport } from '../report.js';
import { PATH_LABEL, type PathResult, type RunReport, type WorkloadResult } from '../results.js';
import type { IommuMode } from '../rig.js';
import { allWorkloads } from '../workloads/index.js';
import type { Workload, WorkloadContext } from '../workloads/types.js';

/** Options of `iovalink demo`. */
export interface DemoOptions {
  quick?: boolean;
  json?: boolean;
  report?: string;
  costModel: string;
  iommu: IommuMode;
  seed: number;
  debug?: boolean;
  /** Show progress bars (on a terminal, for runs over a second). */
  progress?: boolean;
  /** Only workloads whose subsystem is listed. */
  only?: ReadonlyArray<WorkloadResult['subsystem']>;
}

const METRICS: Array<[string, (p: PathResult) => number | string]> = [
  ['operations', (p) => p.ops],
  ['simulator time / op (ns)', (p) => p.simNsPerOp],
  ['MODELED kernel time / op (ns)', (p) => p.modeledNsPerOp],
  ['metadata bytes / op', (p) => p.metaBytesPerOp],
  ['scatterlist bytes / op', (p) => p.sgBytesPerOp],
  ['allocations / op', (p) => p.allocsPerOp],
  ['IOVA allocations / op', (p) => p.iovaAllocsPerOp],
  ['IOVA allocations (total)', (p) => Math.round(p.iovaAllocsPerOp * p.ops)],
  ['PTE writes / op', (p) => p.pteWritesPerOp],
  ['IOTLB invalidations / op', (p) => p.iotlbInvalidationsPerOp],
  ['bounce bytes / op', (p) => p.bounceBytesPerOp],
  ['mapping metadata bytes / page', (p) => p.metaBytesPerPage],
  ['data verified', (p) => (p.verified ? 'yes' : 'NO')],
];

function ratio(a: number | string, b: number | string): string {
  if (typeof a !== 'number' || typeof b !== 'number') return '';
  if (a === 0 && b === 0) return '=';
  if (a === 0) return '∞';
  const r = b / a;
  return r !== 0 && r < 0.01 ? `${r.toPrecision(2)}×` : `${r.toFixed(2)}×`;
}

/** The side-by-side table of one workload. */
export function workloadTable(w: WorkloadResult): string {
  const sg = w.paths.find((p) => p.path === 'sg');
  const iova = w.paths.find((p) => p.path === 'iova');
  if (sg === undefined || iova === undefined) throw new Error(`${w.name}: both paths must have run`);
  const rows: Row[] = METRICS.map(([name, f]) => ({
    metric: name,
    [PATH_LABEL.sg]: f(sg),
    [PATH_LABEL.iova]: f(iova),
    'two-step / legacy': ratio(f(sg), f(iova)),
  }));
  return renderTable(rows, ['metric', PATH_LABEL.sg, PATH_LABEL.iova, 'two-step / legacy']);
}

/** Runs the workloads and returns the report. */
export function runDemo(o: DemoOptions, workloads: readonly Workload[] = allWorkloads()): RunReport {
  const model: CostModel = loadCostModel(o.costModel);
  const chosen = workloads.filter((w) => o.only === undefined || o.only.includes(w.subsystem));
  const bars =
    o.progress && process.stderr.isTTY
      ? new cliProgress.MultiBar(
          {
            clearOnComplete: true,
            hideCursor: true,
            format: ' {bar} {percentage}% | {name}',
            stream: process.stderr,
          },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  const results: WorkloadResult[] = [];
  for (const w of chosen) {
    const bar = bars?.create(1, 0, { name: w.name });
    const ctx: WorkloadContext = {
      iommu: o.iommu,
      seed: o.seed,
      quick: o.quick ?? false,
      costModel: model,
      debug: o.debug ?? false,
      onProgress: (done, total) => {
        bar?.setTotal(total);
        bar?.update(done);
      },
    };
    results.push(w.run(ctx));
    bar?.stop();
  }
  bars?.stop();
  return {
    title: 'iovalink demo: scatterlist path vs two-step IOVA API',
    costModel: model.name,
    iommu: o.iommu,
    seed: o.seed,
    workloads: results,
  };
}

/** `iovalink demo`: runs and renders. */
export function demo(o: DemoOptions, workloads?: readonly Workload[]): string {
  const report = runDemo(o, workloads);
  if (o.report !== undefined) writeFileSync(o.report, renderReport(report));
  if (o.json)
    return JSON.stringify(
      {
        timeKinds: { simNsPerOp: 'simulator', modeledNsPerOp: 'modeled kernel (counts × cost model)' },
        ...report,
      },
      null,
      2,
    );
  const parts = [
    `iovalink demo · IOMMU ${report.iommu} · cost model ${report.costModel} · seed ${report.seed}`,
    'Simulator time is how fast this model ran here. MODELED kernel time is counted events × the',
    'cost model (a prediction, not a measurement; see cost-models/*.json for every figure and source).',
  ];
  for (const w of report.workloads) parts.push('', `${w.name}`, workloadTable(w));
  if (o.report !== undefined) parts.push('', `report written to ${o.report}`);
  return parts.join('\n');
}
