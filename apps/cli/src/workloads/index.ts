/**
 * `iovalink/workloads`: the demo's workloads (block I/O on NVMe, RDMA ODP page faults, VFIO live
 * migration), each run on both DMA paths — the scatterlist path and the two-step IOVA API — by
 * `runBothPaths`, with the counters and modeled kernel time of each path. `allWorkloads()` lists
 * them in the order the demo runs them.
 */
import { blockWorkloads } from './block.js';
import { odpWorkload } from './odp.js';
import type { Workload } from './types.js';
import { vfioWorkload } from './vfio.js';

/** Every workload: block, then RDMA ODP, then VFIO. */
export function allWorkloads(): Workload[] {
  return [...blockWorkloads(), odpWorkload(), vfioWorkload()];
}

export type { DmaPath, PathResult, RunReport, WorkloadResult } from '../results.js';
export { BLOCK_CASES, type BlockCase, blockWorkload, blockWorkloads } from './block.js';
export {
  type ChunkTime,
  type OpenPath,
  type PathOutcome,
  type PathRun,
  type PathSession,
  type RunSizes,
  runBothPaths,
  runPaths,
} from './both-paths.js';
export { ODP_SIZES, type OdpWorkloadSize, odpWorkload } from './odp.js';
export type { Workload, WorkloadContext } from './types.js';
export { VFIO_ROUNDS, VFIO_SIZES, type VfioWorkloadSize, vfioWorkload } from './vfio.js';
