/**
 * `iovalink` as a library: the cost model and the command builders, for tools that embed the
 * command line or reuse its measurements.
 */

export { buildProgram } from './cli.js';
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
export { createRig, IOMMU_MODES, type IommuMode, loadIommuHw, type Rig, type RigOptions } from './rig.js';
