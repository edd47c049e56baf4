/**
 * `iovalink` as a library: the cost model and the command builders, for tools that embed the
 * command line or reuse its measurements.
 */

export { buildProgram } from './cli.js';
export { kernelDiffCommand } from './commands/kernel-diff.js';
export {
  COST_CATEGORIES,
  COST_MODEL_PRESETS,
  type CostCategory,
  type CostEntry,
  type CostModel,
  CostModelError,
  type CostModelPreset,
  loadCostModel,
  loadPreset,
  type MetaCost,
  type ModeledBreakdown,
  modeledBreakdown,
  modeledNs,
  resolveCostModel,
  validateCostModel,
} from './cost-model.js';
export type { Divergence, ReplayName, ReplayResult } from './kernel-diff/divergence.js';
export {
  type DivergenceWithContext,
  formatKernelDiff,
  type KernelDiffReport,
  kernelDiff,
} from './kernel-diff/kernel-diff.js';
export {
  type KernelDmaMode,
  type KernelEvent,
  type KernelEventKind,
  type KernelTrace,
  KernelTraceError,
  type KernelTraceHeader,
  parseKernelTrace,
} from './kernel-diff/kernel-trace.js';
export { replayDmaIommu } from './kernel-diff/replay-dma.js';
export { replayIovaAllocator } from './kernel-diff/replay-iova.js';
export { replaySwiotlb, swiotlbRulesFor } from './kernel-diff/replay-swiotlb.js';
export { createRig, IOMMU_MODES, type IommuMode, loadIommuHw, type Rig, type RigOptions } from './rig.js';
