/** The demo's workloads, in the order the demo runs them. */
import { blockWorkloads } from './block.js';
import { odpWorkload } from './odp.js';
import type { Workload } from './types.js';
import { vfioWorkload } from './vfio.js';

/** Every workload: block, then RDMA ODP, then VFIO. */
export function allWorkloads(): Workload[] {
  return [...blockWorkloads(), odpWorkload(), vfioWorkload()];
}
