/**
 * What a workload run produces, per path: the counts the kernel would spend per operation,
 * simulator time and modeled kernel time. Shared by the demo table, JSON output and the HTML
 * report, so all three always show the same figures.
 */
import type { CounterSnapshot } from '@iovalink/iommu';
import { type CostCategory, type CostModel, modeledBreakdown } from './cost-model.js';
import { median, type SimComparison } from './measure.js';

/** The two DMA paths every consumer runs. */
export type DmaPath = 'sg' | 'iova';

/** Human name of a path. */
export const PATH_LABEL: Record<DmaPath, string> = {
  sg: 'legacy (scatterlist / per-page)',
  iova: 'two-step IOVA',
};

/**
 * One path's result for one workload. Counts and modeled time are averages over `ops`; simulator
 * times are medians over the measured rounds.
 */
export interface PathResult {
  path: DmaPath;
  ops: number;
  /** Simulator time per op in the model: how fast this model ran here (ns, median over rounds). */
  simNsPerOp: number;
  /** Simulator time per op in the model, one figure per measured round (ns). */
  simNsPerOpRounds: number[];
  /**
   * Simulator time per op spent by the workload harness, not the model: preparing write payloads
   * and checking what was read (ns, median over rounds; 0 where the harness is outside the timing).
   */
  harnessNsPerOp: number;
  /** Modeled kernel time per op: counts × cost model (ns). */
  modeledNsPerOp: number;
  /** Modeled kernel time per op by cost category (ns; sums to modeledNsPerOp). */
  modeledNsPerOpByCategory: Record<CostCategory, number>;
  /** Heap metadata bytes allocated per op, all kinds. */
  metaBytesPerOp: number;
  /** Heap allocations per op, all kinds. */
  allocsPerOp: number;
  /** Scatterlist bytes per op (scatterlist + sg_pool kinds). */
  sgBytesPerOp: number;
  iovaAllocsPerOp: number;
  pteWritesPerOp: number;
  iotlbInvalidationsPerOp: number;
  /** Invalidation commands the IOMMU driver issued per op (per-page, range and domain-wide). */
  invalidationCmdsPerOp: number;
  /** Invalidation completion waits per op (SMMUv3 CMD_SYNC, VT-d wait descriptor, AMD COMPLETION_WAIT). */
  invalidationSyncsPerOp: number;
  bounceBytesPerOp: number;
  /** Bytes of mapping metadata per 4 KiB page kept while mapped (for memory-per-page charts). */
  metaBytesPerPage: number;
  /** Data verified end to end. */
  verified: boolean;
}

/** One workload, both paths. */
export interface WorkloadResult {
  /** e.g. "block 4 KiB random read". */
  name: string;
  subsystem: 'block' | 'odp' | 'vfio';
  /** Bytes moved per op (request size, MR size, state size). */
  bytesPerOp: number;
  paths: PathResult[];
  /** Simulator time two-step / legacy, round by round (present when both paths ran). */
  sim?: SimComparison;
}

/** A whole demo or sweep. */
export interface RunReport {
  title: string;
  costModel: string;
  iommu: string;
  /** IOMMU hardware description the machines followed (preset or file name). */
  hw?: string;
  seed: number;
  workloads: WorkloadResult[];
}

/**
 * Metadata kinds that are not DMA-mapping metadata: the I/O itself (a bio is allocated the same way
 * on both paths), left out of the metadata columns so they show what the mapping path costs.
 */
export const NON_MAPPING_META_KINDS: readonly string[] = ['bio', 'nvme_dsm_range'];

/** DMA-mapping metadata in a run's counter diff: every kind but NON_MAPPING_META_KINDS. */
export function mappingMeta(counts: CounterSnapshot): { bytes: number; allocs: number; sgBytes: number } {
  let bytes = 0;
  let allocs = 0;
  let sgBytes = 0;
  for (const [k, s] of Object.entries(counts.meta)) {
    if (NON_MAPPING_META_KINDS.includes(k)) continue;
    bytes += s.bytes;
    allocs += s.allocs;
    if (k === 'scatterlist' || k === 'sg_pool') sgBytes += s.bytes;
  }
  return { bytes, allocs, sgBytes };
}

/** Per-round simulator times of a run (ns per op), the model's and the harness's. */
export interface RoundTimes {
  modelNsPerOpRounds: number[];
  harnessNsPerOpRounds: number[];
}

/** Builds a PathResult from the counters of a run (`d`: the diff of two snapshots around it). */
export function pathResult(
  path: DmaPath,
  ops: number,
  sim: RoundTimes,
  d: CounterSnapshot,
  model: CostModel,
  extra: { pages: number; keptMetaBytes: number; verified: boolean },
): PathResult {
  const meta = mappingMeta(d);
  const per = (x: number) => (ops > 0 ? x / ops : 0);
  const modeled = modeledBreakdown(model, d);
  const byCategory = { ...modeled.byCategory };
  for (const k of Object.keys(byCategory) as CostCategory[]) byCategory[k] = per(byCategory[k]);
  return {
    path,
    ops,
    simNsPerOp: median(sim.modelNsPerOpRounds),
    simNsPerOpRounds: sim.modelNsPerOpRounds,
    harnessNsPerOp: median(sim.harnessNsPerOpRounds),
    modeledNsPerOp: per(modeled.totalNs),
    modeledNsPerOpByCategory: byCategory,
    metaBytesPerOp: per(meta.bytes),
    allocsPerOp: per(meta.allocs),
    sgBytesPerOp: per(meta.sgBytes),
    iovaAllocsPerOp: per(d.events.iovaAllocs),
    pteWritesPerOp: per(d.events.pteWrites),
    iotlbInvalidationsPerOp: per(d.events.iotlbInvRange + d.events.iotlbInvAll),
    invalidationCmdsPerOp: per(
      d.events.iotlbInvPageCmds + d.events.iotlbInvRangeCmds + d.events.iotlbInvDomainCmds,
    ),
    invalidationSyncsPerOp: per(d.events.iotlbInvSyncs),
    bounceBytesPerOp: per(d.events.bounceBytes),
    metaBytesPerPage: extra.pages > 0 ? extra.keptMetaBytes / extra.pages : 0,
    verified: extra.verified,
  };
}

/** The largest cost categories of a path's modeled time, e.g. "invalidation 61%, page-table 22%". */
export function modeledTopCategories(r: PathResult, top = 3): string {
  if (!(r.modeledNsPerOp > 0)) return '';
  return Object.entries(r.modeledNsPerOpByCategory)
    .filter(([, ns]) => ns > 0)
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([k, ns]) => `${k} ${Math.round((100 * ns) / r.modeledNsPerOp)}%`)
    .join(', ');
}
