/**
 * Builds the simulated machine a command runs on: RAM, one IOMMU and a swiotlb pool, and devices
 * in the translation mode the user chose. Shared by every command so they all describe the same
 * default machine.
 */
import { Device, type DeviceOptions, IoTlbMem } from '@iovalink/dma-api';
import { IommuDevice, Machine } from '@iovalink/iommu';

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
  /** Check every mapping with dma-debug (slower; default off for measurements). */
  debug?: boolean;
}

/** A machine with an IOMMU and a swiotlb pool. */
export interface Rig {
  machine: Machine;
  iommu: IommuDevice;
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
  const iommu = new IommuDevice(machine);
  const swiotlb = IoTlbMem.create(machine, { size: 8 << 20 });
  if (swiotlb === undefined) throw new Error('could not allocate the swiotlb pool');
  const mode = options.iommu ?? 'strict';
  const debug = options.debug ?? false;
  return {
    machine,
    iommu,
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
