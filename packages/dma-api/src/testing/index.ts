/**
 * Fixtures for the layers above: a machine with an IOMMU, a swiotlb pool and devices in each of
 * the translation modes the consumers must be tested against. Exported as
 * `@iovalink/dma-api/testing`; the same builders are in the main entry as `createDmaSystem` and
 * `createKindDevice`, which is what READMEs and applications use.
 */
import { createDmaSystem, type DmaSystem } from '../dma-system.js';

export { createKindDevice, DEVICE_KINDS, type DeviceKind } from '../dma-system.js';

/** A test rig: machine, IOMMU, swiotlb pool (the main entry's `DmaSystem`). */
export type DmaRig = DmaSystem;

/** Builds a machine (default 256 MiB) with one IOMMU and a 4 MiB swiotlb pool (`createDmaSystem`). */
export const createDmaRig: typeof createDmaSystem = createDmaSystem;
