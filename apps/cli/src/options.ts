/** Option parsers shared by the commands. */

import { DEFAULT_IOMMU_HW, IOMMU_HW_PRESET_NAMES } from '@iovalink/iommu';
import { InvalidArgumentError, Option } from 'commander';
import { COST_MODEL_PRESETS } from './cost-model.js';
import { IOMMU_MODES } from './rig.js';

/** A commander parser for an integer in `lo..hi`, rejecting anything else with a message naming `name`. */
export function intOption(name: string, lo: number, hi: number): (v: string) => number {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) {
      throw new InvalidArgumentError(`${name} must be an integer in ${lo}..${hi}, got "${v}"`);
    }
    return n;
  };
}

/** `--iommu <mode>`: device translation, one of IOMMU_MODES (default strict). */
export function iommuOption(): Option {
  return new Option('--iommu <mode>', 'device translation').choices([...IOMMU_MODES]).default('strict');
}

/** `--seed <n>`: a seed in 0..2^31-1 (default 1). */
export function seedOption(description = 'seed'): Option {
  return new Option('--seed <n>', description).default(1).argParser(intOption('seed', 0, 2 ** 31 - 1));
}

/** `--hw <preset|file.json>`: the IOMMU hardware the machine follows (default smmuv3-norange). */
export function hwOption(): Option {
  return new Option(
    '--hw <preset|file.json>',
    `IOMMU hardware: ${IOMMU_HW_PRESET_NAMES.join(', ')}, or a JSON description`,
  ).default(DEFAULT_IOMMU_HW);
}

/** `--cost-model <preset|file.json>` without a default: `resolveCostModel` then takes the hardware's. */
export function costModelOption(): Option {
  return new Option(
    '--cost-model <preset|file.json>',
    `cost model for modeled kernel time (${COST_MODEL_PRESETS.join(', ')}, or a file; default: the --hw preset's)`,
  );
}
