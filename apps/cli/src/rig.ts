/**
 * Builds the simulated machine a command runs on: RAM, one IOMMU following a hardware description
 * (`--hw`: a preset of `@iovalink/iommu` or a JSON file) and a swiotlb pool, and devices in the
 * translation mode the user chose. Shared by every command so they all describe the same default
 * machine.
 */
import { readFileSync } from 'node:fs';
import { Device, type DeviceOptions, IoTlbMem } from '@iovalink/dma-api';
import {
  DEFAULT_IOMMU_HW,
  IOMMU_HW_PRESET_NAMES,
  IOMMU_HW_PRESETS,
  IommuDevice,
  type IommuHw,
  Machine,
  validateIommuHw,
} from '@iovalink/iommu';

/** How devices reach memory, as users name it on the command line. */
export const IOMMU_MODES = ['strict', 'lazy', 'identity', 'none'] as const;
/** One of IOMMU_MODES. */
export type IommuMode = (typeof IOMMU_MODES)[number];

/** Options shared by the commands. */
export interface RigOptions {
  /** RAM in bytes (default 4 GiB, lazily backed). */
  memSize?: number;
  cpus?: number;
  seed?: number;
  iommu?: IommuMode;
  /** IOMMU hardware: a preset name, a JSON file path, or a description (default smmuv3-norange). */
  hw?: string | IommuHw;
  /** Check every mapping with dma-debug (slower; default off for measurements). */
  debug?: boolean;
}

/** A machine with an IOMMU and a swiotlb pool. */
export interface Rig {
  machine: Machine;
  iommu: IommuDevice;
  /** The IOMMU hardware description the rig follows. */
  hw: IommuHw;
  swiotlb: IoTlbMem;
  mode: IommuMode;
  debug: boolean;
  /** A new device on this rig in the chosen mode. */
  device(name: string, options?: DeviceOptions): Device;
}

/** Creates the default machine for a command. */
export function createRig(options: RigOptions = {}): Rig {
  const machine = new Machine({
    memSize: options.memSize ?? 4 * 2 ** 30,
    cpus: options.cpus ?? 2,
    seed: options.seed ?? 1,
  });
  const hw = typeof options.hw === 'object' ? options.hw : loadIommuHw(options.hw ?? DEFAULT_IOMMU_HW);
  const iommu = new IommuDevice(machine, { hw });
  const swiotlb = IoTlbMem.create(machine, { size: 8 << 20 });
  if (swiotlb === undefined) throw new Error('could not allocate the swiotlb pool');
  const mode = options.iommu ?? 'strict';
  const debug = options.debug ?? false;
  return {
    machine,
    iommu,
    hw,
    swiotlb,
    mode,
    debug,
    device(name, extra = {}) {
      const base: DeviceOptions = { name, swiotlb, debug, ...extra };
      if (mode === 'none') return new Device(machine, base);
      return new Device(machine, { ...base, iommu, translation: mode });
    },
  };
}

/**
 * An IOMMU hardware description by preset name (`smmuv3-norange`, `smmuv3-range`, `intel-vtd`,
 * `amd-vi`) or from a JSON file, validated by `validateIommuHw` (unknown keys and impossible
 * capabilities are refused with a message naming them).
 */
export function loadIommuHw(nameOrPath: string): IommuHw {
  if (Object.hasOwn(IOMMU_HW_PRESETS, nameOrPath))
    return IOMMU_HW_PRESETS[nameOrPath as keyof typeof IOMMU_HW_PRESETS];
  let text: string;
  try {
    text = readFileSync(nameOrPath, 'utf8');
  } catch (e) {
    throw new Error(
      `--hw "${nameOrPath}": not a preset (${IOMMU_HW_PRESET_NAMES.join(', ')}) and not a readable file (${(e as Error).message})`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`--hw ${nameOrPath}: not valid JSON (${(e as Error).message})`);
  }
  return validateIommuHw(raw, `--hw ${nameOrPath}`);
}
