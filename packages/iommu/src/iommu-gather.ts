/**
 * The IOTLB gather: the range, page size and freed page-table pages an unmap collects, so that
 * the IOTLB is invalidated once for the lot and page-table pages are freed only after that
 * invalidation. Kernel counterpart: `struct iommu_iotlb_gather` and its helpers in
 * `include/linux/iommu.h` (`iommu_iotlb_gather_init`, `_add_range`, `_is_disjoint`, `_add_page`).
 * Differs on purpose: the freelist holds physical addresses of page-table pages.
 */

/** Collected invalidation work (kernel: `struct iommu_iotlb_gather`). */
export interface IommuIotlbGather {
  /** Lowest IOVA gathered (`Number.MAX_SAFE_INTEGER` when empty). */
  start: number;
  /** Last byte gathered, inclusive (0 when empty). */
  end: number;
  /** Page size of the gathered leaves (0 = none yet). */
  pgsize: number;
  /** Physical addresses of page-table pages to free once the IOTLB is synced. */
  freelist: number[];
  /** True when a flush queue will invalidate later: drivers skip per-range invalidation. */
  queued: boolean;
}

/** A fresh gather (kernel: `iommu_iotlb_gather_init`). */
export function iommuIotlbGatherInit(queued = false): IommuIotlbGather {
  return { start: Number.MAX_SAFE_INTEGER, end: 0, pgsize: 0, freelist: [], queued };
}

/**
 * Re-initialises a gather in place after a sync, keeping `queued` (kernel: `iommu_iotlb_gather_init`).
 * A non-empty freelist is replaced by a new array (whoever took the old one keeps its pages); an
 * empty one is kept, so a sync that freed nothing allocates nothing.
 */
export function iommuIotlbGatherReset(g: IommuIotlbGather): void {
  g.start = Number.MAX_SAFE_INTEGER;
  g.end = 0;
  g.pgsize = 0;
  if (g.freelist.length !== 0) g.freelist = [];
}

/** True when nothing has been gathered. */
export function iommuIotlbGatherIsEmpty(g: IommuIotlbGather): boolean {
  return g.end === 0 && g.start === Number.MAX_SAFE_INTEGER;
}

/** Widens the gathered range to include `[iova, iova + size)` (kernel: `iommu_iotlb_gather_add_range`). */
export function iommuIotlbGatherAddRange(g: IommuIotlbGather, iova: number, size: number): void {
  const end = iova + size - 1;
  if (g.start > iova) g.start = iova;
  if (g.end < end) g.end = end;
}

/**
 * True when the gather holds a range and `[iova, iova + size)` neither overlaps nor touches it
 * (kernel: `iommu_iotlb_gather_is_disjoint`).
 */
export function iommuIotlbGatherIsDisjoint(g: IommuIotlbGather, iova: number, size: number): boolean {
  const start = iova;
  const end = iova + size - 1;
  return g.end !== 0 && (end + 1 < g.start || start > g.end + 1);
}
