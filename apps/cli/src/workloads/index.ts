/** The demo's workloads, in the order the demo runs them. */
import { blockWorkloads } from './block.js';
import type { Workload } from './types.js';

/** Every workload: block, then RDMA ODP, then VFIO. */
export function allWorkloads(): Workload[] {
  return [...blockWorkloads()];
}
