/**
 * Guest memory for a VFIO container: a new type1 IOMMU context on the IOMMU of a DMA system with
 * `size` bytes of guest RAM mapped from IOVA 0 — what a VMM does at start (open the container,
 * `VFIO_IOMMU_MAP_DMA` its RAM; kernel: `vfio_iommu_type1_open` + `vfio_dma_do_map`,
 * drivers/vfio/vfio_iommu_type1.c, v6.17). The documented first step of a migration with
 * `@iovalink/vfio-migration`.
 *
 * Deliberate differences: one mapping from IOVA 0 of freshly allocated pages (a VMM maps its own
 * user memory region by region).
 */
import type { DmaSystem } from '@iovalink/dma-api';
import { VfioError } from './errors.js';
import { type VfioIommu, vfioDmaDoMap, vfioIommuType1Open } from './vfio-iommu-type1.js';

/**
 * Opens a type1 IOMMU context on `system.iommu` and maps `size` bytes of guest memory from IOVA 0
 * (kernel: `vfio_iommu_type1_open` + `vfio_dma_do_map`). Throws a `VfioError` carrying the errno
 * when the map fails (unaligned size, out of memory).
 */
export function createGuestMemory(system: Pick<DmaSystem, 'iommu'>, size: number): VfioIommu {
  const vi = vfioIommuType1Open(system.iommu);
  const ret = vfioDmaDoMap(vi, 0, size);
  if (ret !== 0) {
    throw new VfioError(
      `createGuestMemory: vfio_dma_do_map of ${size} bytes at IOVA 0 failed (${ret}); expected a page-aligned size that fits in memory`,
      {
        rule: 'vfio: guest memory map',
        errno: ret,
      },
    );
  }
  return vi;
}
