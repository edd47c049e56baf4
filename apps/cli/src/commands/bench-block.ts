/**
 * `iovalink bench block`: sweeps request size × queue depth through the NVMe-style device for
 * both mapping paths, with IOPS in simulator time (median of interleaved rounds), modeled kernel
 * time per I/O, and the counts per I/O side by side. Every byte is verified.
 */
import { DEFAULT_IOMMU_HW } from '@iovalink/iommu';
import { resolveCostModel } from '../cost-model.js';
import { type Row, renderCsv, renderTable } from '../format.js';
import { compareRounds, fmtComparison, fmtRatio } from '../measure.js';
import { type DmaPath, modeledTopCategories } from '../results.js';
import { type IommuMode, loadIommuHw } from '../rig.js';
import { type BlockCase, type BlockRunStats, blockWarmupIos, openBlockPath } from '../workloads/block.js';
import { type PathRun, ROUNDS, runPaths } from '../workloads/both-paths.js';
import type { WorkloadContext } from '../workloads/types.js';

/** Options of `bench block`. */
export interface BenchBlockOptions {
  sizes: number[];
  depths: number[];
  ios: number;
  pattern: 'random' | 'sequential';
  buffers: 'contiguous' | 'scattered';
  path: DmaPath | 'both';
  iommu: IommuMode;
  /** IOMMU hardware preset or file (default smmuv3-norange). */
  hw?: string;
  /** Cost model preset or file (default: the hardware's own). */
  costModel?: string;
  seed: number;
  json?: boolean;
  csv?: boolean;
}

/** Parses "4k,128k,1m" into bytes. */
export function parseSizes(v: string): number[] {
  return v.split(',').map((t) => {
    const m = /^(\d+)([kmKM]?)$/.exec(t.trim());
    if (m === null) throw new Error(`size "${t}" is not a number with an optional k or m suffix`);
    const n = Number(m[1]) * (m[2] === '' ? 1 : m[2]!.toLowerCase() === 'k' ? 1024 : 1024 * 1024);
    if (n < 512 || n % 512 !== 0) throw new Error(`size "${t}" must be a multiple of 512 bytes`);
    return n;
  });
}

/**
 * Runs the sweep. At each point the chosen paths warm up, then run interleaved in rounds (ABBA
 * order), so a figure does not depend on which path ran first; IOPS are from the median per-I/O
 * simulator time of the model (harness time apart), and with both paths the two-step row carries
 * the ratio's 95% interval over the rounds ("≈" when it includes 1).
 */
export async function benchBlock(o: BenchBlockOptions): Promise<string> {
  const hw = loadIommuHw(o.hw ?? DEFAULT_IOMMU_HW);
  const model = resolveCostModel(o.costModel, hw);
  const paths: DmaPath[] = o.path === 'both' ? ['sg', 'iova'] : [o.path];
  const ctx: WorkloadContext = {
    iommu: o.iommu,
    hw,
    seed: o.seed,
    quick: false,
    debug: false,
    costModel: model,
  };
  const rows: Row[] = [];
  for (const size of o.sizes) {
    for (const qd of o.depths) {
      const c: BlockCase = {
        name: `${size / 1024} KiB qd${qd}`,
        blockSize: size,
        pattern: o.pattern,
        readMix: 0.5,
        buffers: o.buffers,
        ios: o.ios,
        quickIos: o.ios,
      };
      const runs = await runPaths(ctx, (path, x, z: BlockCase) => openBlockPath(z, path, x, qd), paths, {
        measured: c,
        units: o.ios,
        warmup: c,
        warmupUnits: blockWarmupIos(c, o.ios),
      });
      rows.push(...pointRows(runs, paths, size, qd));
    }
  }
  if (o.json)
    return JSON.stringify(
      {
        timeKinds: {
          'IOPS (sim)': `simulator, the model only (1e9 / median ns per I/O over ${ROUNDS} interleaved rounds)`,
          'sim ns/io median': 'simulator, the model only (median over rounds)',
          'modeled ns/io': 'modeled kernel (counts × cost model)',
        },
        hw: hw.name,
        costModel: model.name,
        rounds: Math.min(ROUNDS, o.ios),
        rows,
      },
      null,
      2,
    );
  if (o.csv) return renderCsv(rows);
  return [
    renderTable(rows),
    `IOPS (sim) and sim ns/io: simulator time of the model (whole I/O path incl. device data movement, payload`,
    `preparation and checks excluded), median of ${Math.min(ROUNDS, o.ios)} rounds, paths interleaved (two-step/legacy:`,
    `median ratio and 95% interval, "≈" when it includes 1). modeled ns/io: counts × cost model ${model.name} on ${hw.name}.`,
  ].join('\n');
}

/**
 * The rows of one sweep point (request `size`, queue depth `qd`), one a path; the two-step row
 * carries the ratios to the legacy row when both ran.
 */
function pointRows(
  runs: ReadonlyMap<DmaPath, PathRun<BlockRunStats>>,
  paths: readonly DmaPath[],
  size: number,
  qd: number,
): Row[] {
  const out: Row[] = [];
  const sg = runs.get('sg')?.result;
  const iova = runs.get('iova')?.result;
  const sim =
    sg !== undefined && iova !== undefined
      ? compareRounds(sg.simNsPerOpRounds, iova.simNsPerOpRounds)
      : undefined;
  for (const path of paths) {
    const r = runs.get(path)!.result;
    const twoStepRow = path === 'iova' && sim !== undefined && sg !== undefined;
    out.push({
      size: `${size / 1024} KiB`,
      qd,
      path,
      'IOPS (sim)': Math.round(1e9 / r.simNsPerOp),
      'sim ns/io median': r.simNsPerOp,
      'sim ns/io min–max': `${Math.round(Math.min(...r.simNsPerOpRounds))}–${Math.round(Math.max(...r.simNsPerOpRounds))}`,
      'sim two-step/legacy': twoStepRow ? fmtComparison(sim) : '',
      'modeled ns/io': Number(r.modeledNsPerOp.toPrecision(4)),
      'modeled two-step/legacy': twoStepRow ? fmtRatio(r.modeledNsPerOp / sg.modeledNsPerOp) : '',
      'modeled: where it goes': modeledTopCategories(r),
      'sg B/io': Number(r.sgBytesPerOp.toPrecision(4)),
      'meta B/io': Number(r.metaBytesPerOp.toPrecision(4)),
      'allocs/io': Number(r.allocsPerOp.toPrecision(3)),
      'IOVA allocs/io': Number(r.iovaAllocsPerOp.toPrecision(3)),
      'PTE writes/io': Number(r.pteWritesPerOp.toPrecision(4)),
      'IOTLB inval/io': Number(r.iotlbInvalidationsPerOp.toPrecision(3)),
      'inval cmds/io': Number(r.invalidationCmdsPerOp.toPrecision(3)),
    });
  }
  return out;
}
