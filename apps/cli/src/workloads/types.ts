/**
 * The shape every demo workload has: it runs the same seeded work through the scatterlist path and
 * the two-step path, each on a fresh machine so counters never mix, verifies the data, and returns
 * one `WorkloadResult` (see `../results.ts`).
 */

import type { IommuHw, Machine } from '@iovalink/iommu';
import type { CostModel } from '../cost-model.js';
import type { DmaPath, WorkloadResult } from '../results.js';
import type { IommuMode } from '../rig.js';

/** What a workload is told. */
export interface WorkloadContext {
  /** Device translation for the run (strict by default). */
  iommu: IommuMode;
  /** IOMMU hardware the machines follow (default: `createRig`'s, smmuv3-norange). */
  hw?: IommuHw;
  /** Seed for the machine and the workload's random choices. */
  seed: number;
  /** Small sizes so that the whole demo finishes in well under ten seconds. */
  quick: boolean;
  /** Turns counts into modeled kernel time. */
  costModel: CostModel;
  /** Check every mapping with dma-debug (slower). */
  debug: boolean;
  /** Called after each chunk of measured work (done, total units) for progress bars. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Called with each path's machine right after it is built, before any work: `iovalink trace`
   * installs its tracer here.
   */
  onMachine?: (machine: Machine, path: DmaPath) => void;
  /**
   * The simulator-time clock in ms (default `performance.now`). Tests inject a clock that ticks
   * once per read to check what the timed regions hold; it never changes what the model does.
   */
  clock?: () => number;
}

/** A runnable workload. */
export interface Workload {
  /** Shown in tables and charts, e.g. "block 4 KiB random read". */
  name: string;
  subsystem: WorkloadResult['subsystem'];
  /**
   * Runs both paths (warm-up, then interleaved measured rounds, yielding to the event loop between
   * chunks) and returns their results; rejects if data does not verify.
   */
  run(ctx: WorkloadContext): Promise<WorkloadResult>;
}
