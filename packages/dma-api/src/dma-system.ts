/**
 * A ready DMA system: what boot gives a driver before its probe runs — a machine with RAM, one
 * IOMMU (kernel: the IOMMU driver's `iommu_device_register`), a swiotlb pool (`swiotlb_init`,
 * kernel/dma/swiotlb.c, v6.17) — and devices attached in each translation mode the kernel's
 * default domains give (`iommu.strict=1`, lazy flush queue, identity/passthrough, no IOMMU) plus an
 * untrusted (external-facing) device. This is the documented way into `@iovalink/dma-api`; the
 * consumers' `./testing` fixtures are built on it.
 *
 * Deliberate differences: one IOMMU and one pool for every device (no per-bus IOMMU groups, no
 * restricted pools); the mode is chosen per device here, where the kernel picks it per group
 * from the command line and the device's trust.
 */
import { IommuDevice, type IommuDeviceOptions, Machine, type MachineOptions } from '@iovalink/iommu';
import { Device, type DeviceOptions } from './device.js';
import { DmaError } from './errors.js';
import { IoTlbMem } from './swiotlb.js';

/**
 * How a device reaches memory: through the IOMMU in a strict `DMA` domain, a lazy `DMA_FQ` domain,
 * an `IDENTITY` domain, not at all (`none`: dma-direct), or strict and untrusted (every partial
 * granule bounced through swiotlb).
 */
export type DeviceKind = 'strict' | 'lazy' | 'identity' | 'none' | 'untrusted';

/** All five kinds, in the order above. */
export const DEVICE_KINDS: readonly DeviceKind[] = ['strict', 'lazy', 'identity', 'none', 'untrusted'];

/** A machine, its IOMMU and its swiotlb pool. */
export interface DmaSystem {
  machine: Machine;
  iommu: IommuDevice;
  swiotlb: IoTlbMem;
}

/** Options of `createDmaSystem`. */
export interface DmaSystemOptions {
  /** Machine options (default 256 MiB of RAM). */
  machine?: MachineOptions;
  /** IOMMU options (page sizes, hardware preset, address width). */
  iommu?: IommuDeviceOptions;
  /** swiotlb pool size in bytes (default 4 MiB). */
  swiotlbSize?: number;
}

/**
 * Builds a machine (default 256 MiB) with one IOMMU and a swiotlb pool (default 4 MiB). Kernel
 * counterpart: none as one call — boot's memory setup, `swiotlb_init` and the IOMMU driver's
 * registration. Throws a `DmaError` when the pool does not fit in the machine's memory.
 */
export function createDmaSystem(options: DmaSystemOptions = {}): DmaSystem {
  const machine = new Machine({ memSize: 256 << 20, ...options.machine });
  const iommu = new IommuDevice(machine, options.iommu);
  const size = options.swiotlbSize ?? 4 << 20;
  const swiotlb = IoTlbMem.create(machine, { size });
  if (swiotlb === undefined) {
    throw new DmaError(
      `createDmaSystem: a ${size}-byte swiotlb pool does not fit in the machine's free memory; expected a smaller swiotlbSize or a larger machine.memSize`,
      { rule: 'swiotlb: pool allocation' },
    );
  }
  return { machine, iommu, swiotlb };
}

/**
 * A device of `kind` on `system` (dma-debug on unless `options.debug` is false). Kernel
 * counterpart: the device's attach to its group's default domain (`iommu_setup_default_domain`,
 * drivers/iommu/iommu.c) or to dma-direct when no IOMMU translates it. The `untrusted` device has
 * an NVMe-like `minAlignMask` of 0xfff so a bounced partial granule keeps its in-page offset.
 */
export function createKindDevice(system: DmaSystem, kind: DeviceKind, options: DeviceOptions = {}): Device {
  const base: DeviceOptions = { name: `${kind}-dev`, swiotlb: system.swiotlb, ...options };
  switch (kind) {
    case 'strict':
      return new Device(system.machine, { ...base, iommu: system.iommu, translation: 'strict' });
    case 'lazy':
      return new Device(system.machine, { ...base, iommu: system.iommu, translation: 'lazy' });
    case 'identity':
      return new Device(system.machine, { ...base, iommu: system.iommu, translation: 'identity' });
    case 'untrusted':
      return new Device(system.machine, {
        ...base,
        iommu: system.iommu,
        translation: 'strict',
        untrusted: true,
        dmaParms: { minAlignMask: 0xfff, ...options.dmaParms },
      });
    case 'none':
      return new Device(system.machine, base);
  }
}
