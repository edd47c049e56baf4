/**
 * DMA data directions and mapping attributes, as in Linux `include/linux/dma-direction.h` and
 * `include/linux/dma-mapping.h`, and the direction → IOMMU permission rule of `dma_info_to_prot`
 * (drivers/iommu/dma-iommu.c).
 */
import { IOMMU_CACHE, IOMMU_MMIO, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE } from '@iovalink/iommu';

/** Data moves both ways. */
export const DMA_BIDIRECTIONAL = 0;
/** The device reads memory (CPU → device). */
export const DMA_TO_DEVICE = 1;
/** The device writes memory (device → CPU). */
export const DMA_FROM_DEVICE = 2;
/** No direction: never valid for a mapping. */
export const DMA_NONE = 3;

/** A DMA direction (kernel: `enum dma_data_direction`). */
export type DmaDataDirection =
  | typeof DMA_BIDIRECTIONAL
  | typeof DMA_TO_DEVICE
  | typeof DMA_FROM_DEVICE
  | typeof DMA_NONE;

/** Writes may be reordered (accepted and ignored here). */
export const DMA_ATTR_WEAK_ORDERING = 1 << 1;
/** Write-combining (accepted and ignored here). */
export const DMA_ATTR_WRITE_COMBINE = 1 << 2;
/** Do not sync CPU caches at map/unmap: the caller syncs explicitly. */
export const DMA_ATTR_SKIP_CPU_SYNC = 1 << 5;
/** Do not warn on allocation failure. */
export const DMA_ATTR_NO_WARN = 1 << 8;
/** Privileged (supervisor) device access. */
export const DMA_ATTR_PRIVILEGED = 1 << 9;
/** The address is MMIO / peer memory: never bounce, never CPU-sync (v6.18+). */
export const DMA_ATTR_MMIO = 1 << 10;

/** The value returned instead of a DMA address on failure (kernel: `DMA_MAPPING_ERROR`, `~0`). */
export const DMA_MAPPING_ERROR = Number.MAX_SAFE_INTEGER;

/** True for the three directions a mapping may use (kernel: `valid_dma_direction`). */
export function validDmaDirection(dir: number): dir is DmaDataDirection {
  return dir === DMA_BIDIRECTIONAL || dir === DMA_TO_DEVICE || dir === DMA_FROM_DEVICE;
}

/** Name of a direction, as dma-debug prints it. */
export function dmaDirectionName(dir: number): string {
  switch (dir) {
    case DMA_BIDIRECTIONAL:
      return 'DMA_BIDIRECTIONAL';
    case DMA_TO_DEVICE:
      return 'DMA_TO_DEVICE';
    case DMA_FROM_DEVICE:
      return 'DMA_FROM_DEVICE';
    case DMA_NONE:
      return 'DMA_NONE';
    default:
      return `invalid direction ${dir}`;
  }
}

/**
 * IOMMU permissions for a mapping (kernel: `dma_info_to_prot`, drivers/iommu/dma-iommu.c):
 * CACHE when the device is coherent, READ for TO_DEVICE, WRITE for FROM_DEVICE, both for
 * BIDIRECTIONAL, PRIV for DMA_ATTR_PRIVILEGED, MMIO for DMA_ATTR_MMIO. DMA_NONE gives no
 * permission bits.
 */
export function dmaInfoToProt(dir: DmaDataDirection, coherent: boolean, attrs: number): number {
  let prot = coherent ? IOMMU_CACHE : 0;
  if (attrs & DMA_ATTR_PRIVILEGED) prot |= IOMMU_PRIV;
  if (attrs & DMA_ATTR_MMIO) prot |= IOMMU_MMIO;
  switch (dir) {
    case DMA_BIDIRECTIONAL:
      return prot | IOMMU_READ | IOMMU_WRITE;
    case DMA_TO_DEVICE:
      return prot | IOMMU_READ;
    case DMA_FROM_DEVICE:
      return prot | IOMMU_WRITE;
    default:
      return 0;
  }
}
