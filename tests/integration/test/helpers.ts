// Shared by the integration tests: the digest that compares the two paths' outcomes, and the
// context and determinism view of the end-to-end runs of the CLI's workloads.
import { loadPreset } from 'iovalink';
import type { WorkloadContext, WorkloadResult } from 'iovalink/workloads';

/** FNV-1a over `b`, continuing from `h` (the offset basis by default). */
export function digest(b: Uint8Array, h = 2166136261): number {
  let x = h;
  for (let i = 0; i < b.length; i++) x = Math.imul(x ^ b[i]!, 16777619) >>> 0;
  return x;
}

/** The context of an end-to-end workload run: quick, dma-debug on, the arm-smmuv3 cost model. */
export function workloadCtx(iommu: WorkloadContext['iommu'], seed = 5): WorkloadContext {
  return { iommu, seed, quick: true, debug: true, costModel: loadPreset('arm-smmuv3') };
}

/** A workload's path results without simulator time, the one thing a seed does not fix. */
export function withoutSimTime(w: WorkloadResult) {
  return w.paths.map(({ simNsPerOp: _s, simNsPerOpRounds: _r, harnessNsPerOp: _h, ...rest }) => rest);
}
