/**
 * `iovalink demo`: the story in one command. Block I/O, RDMA ODP and VFIO migration workloads run
 * through the scatterlist path and the two-step path on the default machine, data verified, and
 * a side-by-side table per workload: simulator time (median over interleaved rounds, with the
 * harness's share apart and "≈" where the rounds cannot tell the paths apart), modeled kernel time
 * (clearly labelled), and the counts the kernel would spend.
 */
import { writeFileSync } from 'node:fs';
import { DEFAULT_IOMMU_HW } from '@iovalink/iommu';
import { type CostModel, resolveCostModel } from '../cost-model.js';
import { fmtNs, type Row, renderTable } from '../format.js';
import { fmtComparison, fmtRatio } from '../measure.js';
import { progressBars, wantsProgress } from '../progress.js';
import { renderReport } from '../report.js';
import {
  modeledTopCategories,
  PATH_LABEL,
  type PathResult,
  type RunReport,
  type WorkloadResult,
} from '../results.js';
import { type IommuMode, loadIommuHw } from '../rig.js';
import { allWorkloads } from '../workloads/index.js';
import type { Workload, WorkloadContext } from '../workloads/types.js';

/** Options of `iovalink demo`. */
export interface DemoOptions {
  quick?: boolean;
  json?: boolean;
  report?: string;
  /** Cost model preset or file (default: the hardware's own). */
  costModel?: string;
  /** IOMMU hardware preset or file (default smmuv3-norange). */
  hw?: string;
  iommu: IommuMode;
  seed: number;
  debug?: boolean;
  /** Show progress bars (default on; drawn only on a terminal and never with --json). */
  progress?: boolean;
  /** Only workloads whose subsystem is listed. */
  only?: ReadonlyArray<WorkloadResult['subsystem']>;
}

/**
 * A table row: its name, a path's value, how to show it (default: significant digits), and what
 * the ratio column holds ('ratio': two-step / legacy; 'sim': the round-by-round comparison).
 */
interface Metric {
  name: string;
  value: (p: PathResult) => number | string;
  show?: (v: number) => string;
  compare: 'ratio' | 'sim' | 'none';
}

const METRICS: Metric[] = [
  { name: 'operations', value: (p) => p.ops, compare: 'ratio' },
  {
    name: 'simulator time / op (model; median)',
    value: (p) => p.simNsPerOp,
    show: fmtNs,
    compare: 'sim',
  },
  {
    name: 'simulator time / op (harness: payloads, checks)',
    value: (p) => p.harnessNsPerOp,
    show: (ns) => (ns === 0 ? 'not timed' : fmtNs(ns)),
    compare: 'none',
  },
  { name: 'MODELED kernel time / op', value: (p) => p.modeledNsPerOp, show: fmtNs, compare: 'ratio' },
  { name: 'MODELED: where it goes', value: (p) => modeledTopCategories(p, 2), compare: 'none' },
  { name: 'metadata bytes / op', value: (p) => p.metaBytesPerOp, compare: 'ratio' },
  { name: 'scatterlist bytes / op', value: (p) => p.sgBytesPerOp, compare: 'ratio' },
  { name: 'allocations / op', value: (p) => p.allocsPerOp, compare: 'ratio' },
  { name: 'IOVA allocations / op', value: (p) => p.iovaAllocsPerOp, compare: 'ratio' },
  {
    name: 'IOVA allocations (total)',
    value: (p) => Math.round(p.iovaAllocsPerOp * p.ops),
    compare: 'ratio',
  },
  { name: 'PTE writes / op', value: (p) => p.pteWritesPerOp, compare: 'ratio' },
  { name: 'IOTLB invalidations / op', value: (p) => p.iotlbInvalidationsPerOp, compare: 'ratio' },
  { name: '  invalidation commands / op', value: (p) => p.invalidationCmdsPerOp, compare: 'ratio' },
  { name: '  invalidation syncs / op', value: (p) => p.invalidationSyncsPerOp, compare: 'ratio' },
  { name: 'bounce bytes / op', value: (p) => p.bounceBytesPerOp, compare: 'ratio' },
  { name: 'mapping metadata bytes / page', value: (p) => p.metaBytesPerPage, compare: 'ratio' },
  { name: 'data verified', value: (p) => (p.verified ? 'yes' : 'NO'), compare: 'none' },
];

function ratio(a: number, b: number): string {
  if (a === 0 && b === 0) return '=';
  if (a === 0) return '∞';
  return fmtRatio(b / a);
}

/** The side-by-side table of one workload. */
export function workloadTable(w: WorkloadResult): string {
  const sg = w.paths.find((p) => p.path === 'sg');
  const iova = w.paths.find((p) => p.path === 'iova');
  if (sg === undefined || iova === undefined) throw new Error(`${w.name}: both paths must have run`);
  const rows: Row[] = METRICS.map((m) => {
    const a = m.value(sg);
    const b = m.value(iova);
    const cell = (v: number | string) => (typeof v === 'number' && m.show !== undefined ? m.show(v) : v);
    let r = '';
    if (m.compare === 'sim' && w.sim !== undefined) r = fmtComparison(w.sim);
    else if (m.compare === 'ratio' && typeof a === 'number' && typeof b === 'number') r = ratio(a, b);
    return { metric: m.name, [PATH_LABEL.sg]: cell(a), [PATH_LABEL.iova]: cell(b), 'two-step / legacy': r };
  });
  return renderTable(rows, ['metric', PATH_LABEL.sg, PATH_LABEL.iova, 'two-step / legacy']);
}

/**
 * Runs the workloads and returns the report. Workloads yield to the event loop between chunks, so
 * the progress bars (on a terminal, without --json) redraw while they run.
 */
export async function runDemo(
  o: DemoOptions,
  workloads: readonly Workload[] = allWorkloads(),
): Promise<RunReport> {
  const hw = loadIommuHw(o.hw ?? DEFAULT_IOMMU_HW);
  const model: CostModel = resolveCostModel(o.costModel, hw);
  const chosen = workloads.filter((w) => o.only === undefined || o.only.includes(w.subsystem));
  const bars = progressBars(wantsProgress(o));
  const results: WorkloadResult[] = [];
  for (const w of chosen) {
    const bar = bars?.create(1, 0, { name: w.name });
    const ctx: WorkloadContext = {
      iommu: o.iommu,
      hw,
      seed: o.seed,
      quick: o.quick ?? false,
      costModel: model,
      debug: o.debug ?? false,
      onProgress: (done, total) => {
        bar?.setTotal(total);
        bar?.update(done);
      },
    };
    results.push(await w.run(ctx));
    bar?.stop();
  }
  bars?.stop();
  return {
    title: 'iovalink demo: scatterlist path vs two-step IOVA API',
    costModel: model.name,
    iommu: o.iommu,
    hw: hw.name,
    seed: o.seed,
    workloads: results,
  };
}

/** `iovalink demo`: runs and renders. */
export async function demo(o: DemoOptions, workloads?: readonly Workload[]): Promise<string> {
  const report = await runDemo(o, workloads);
  if (o.report !== undefined) writeFileSync(o.report, renderReport(report));
  if (o.json)
    return JSON.stringify(
      {
        timeKinds: {
          simNsPerOp: 'simulator, the model only (median of the interleaved rounds)',
          simNsPerOpRounds: 'simulator, the model only, one figure per round',
          harnessNsPerOp: 'simulator, the workload harness (payloads and checks)',
          sim: 'simulator time two-step / legacy per round: median and 95% interval (low, high); similar = the interval includes 1',
          modeledNsPerOp: 'modeled kernel (counts × cost model)',
        },
        ...report,
      },
      null,
      2,
    );
  const parts = [
    `iovalink demo · IOMMU ${report.iommu} · hardware ${report.hw} · cost model ${report.costModel} · seed ${report.seed}`,
    'Simulator time is how fast this model ran here: the median of rounds in which the two paths take',
    'turns, with a 95% interval of the ratio ("≈" when it includes 1: the rounds show no difference).',
    'MODELED kernel time is counted events × the cost model (a prediction, not a measurement; see',
    'cost-models/*.json for every figure and source).',
  ];
  for (const w of report.workloads) {
    const rounds = w.sim === undefined ? '' : ` · ${w.sim.rounds} interleaved rounds`;
    parts.push('', `${w.name}${rounds}`, workloadTable(w));
  }
  if (o.report !== undefined) parts.push('', `report written to ${o.report}`);
  return parts.join('\n');
}
