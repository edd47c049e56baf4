/**
 * Fixtures for the layers above: a machine with an IOMMU, a swiotlb pool and devices in each of
 * the translation modes the consumers must be tested against. Exported as
 * `@iovalink/dma-api/testing`.
 */
import { IommuDevice, type IommuDeviceOptions, Machine, type MachineOptions } from '@iovalink/iommu';
import { Device, type DeviceOptions } from '../device.js';
import { IoTlbMem } from '../swiotlb.js';

/** The device set every consumer is tested against. */
export type DeviceKind = 'strict' | 'lazy' | 'identity' | 'none' | 'untrusted';

/** All five kinds, for `describe.each`. */
export const DEVICE_KINDS: readonly DeviceKind[] = ['strict', 'lazy', 'identity', 'none', 'untrusted'];

/** A test rig: machine, IOMMU, swiotlb pool. */
export interface DmaRig {
  machine: Machine;
  iommu: IommuDevice;
  swiotlb: IoTlbMem;
}

/** Builds a machine (default 256 MiB) with one IOMMU and a 4 MiB swiotlb pool. */
export function createDmaRig(
  options: { machine?: MachineOptions; iommu?: IommuDeviceOptions; swiotlbSize?: number } = {},
): DmaRig {
  const machine = new Machine({ memSize: 256 << 20, ...options.machine });
  const iommu = new IommuDevice(machine, options.iommu);
  const swiotlb = IoTlbMem.create(machine, { size: options.swiotlbSize ?? 4 << 20 });
  if (swiotlb === undefined) throw new Error('createDmaRig: could not allocate the swiotlb pool');
  return { machine, iommu, swiotlb };
}

/** A device of `kind` on the rig (with dma-debug on unless told otherwise). */
export function createKindDevice(rig: DmaRig, kind: DeviceKind, options: DeviceOptions = {}): Device {
  const base: DeviceOptions = { name: `${kind}-dev`, swiotlb: rig.swiotlb, ...options };
  switch (kind) {
    case 'strict':
      return new Device(rig.machine, { ...base, iommu: rig.iommu, translation: 'strict' });
    case 'lazy':
      return new Device(rig.machine, { ...base, iommu: rig.iommu, translation: 'lazy' });
    case 'identity':
      return new Device(rig.machine, { ...base, iommu: rig.iommu, translation: 'identity' });
    case 'untrusted':
      // NVMe-like: min_align_mask 0xfff keeps a bounce buffer's in-page offset, which the
      // two-step API needs to map a bounced partial granule (kernel-reference §1.4)
      return new Device(rig.machine, {
        ...base,
        iommu: rig.iommu,
        translation: 'strict',
        untrusted: true,
        dmaParms: { minAlignMask: 0xfff, ...options.dmaParms },
      });
    case 'none':
      return new Device(rig.machine, base);
  }
}
