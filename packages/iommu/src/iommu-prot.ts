/**
 * IOMMU mapping permissions, as the `IOMMU_*` prot flags of Linux `include/linux/iommu.h`.
 */

/** Device may read (DMA_TO_DEVICE). */
export const IOMMU_READ = 1 << 0;
/** Device may write (DMA_FROM_DEVICE). */
export const IOMMU_WRITE = 1 << 1;
/** Coherent mapping (the device snoops CPU caches). */
export const IOMMU_CACHE = 1 << 2;
/** No instruction fetch. */
export const IOMMU_NOEXEC = 1 << 3;
/** MMIO / peer memory, mapped as device memory. */
export const IOMMU_MMIO = 1 << 4;
/** Privileged access only. */
export const IOMMU_PRIV = 1 << 5;
