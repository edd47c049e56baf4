/**
 * The iommu core: map/unmap with page-size selection, the IOTLB gather, sync-map, map_sg and
 * iova_to_phys, with the kernel's argument checks and rollback. Kernel counterpart:
 * `drivers/iommu/iommu.c` (v6.17). Differs on purpose: no groups, no GFP flags (allocation
 * failure comes from fault injection), driver ops are the `IommuDevice` methods.
 */
import { isAlignedPow2, lo32, modPow2 } from './bits.js';
import { Errno } from './errno.js';
import type { IommuDevice } from './iommu-device.js';
import {
  IOMMU_DOMAIN_BLOCKED,
  IOMMU_DOMAIN_IDENTITY,
  type IommuDomain,
  type IommuDomainType,
  type IommuFaultHandler,
} from './iommu-domain.js';
import { type IommuIotlbGather, iommuIotlbGatherInit, iommuIotlbGatherReset } from './iommu-gather.js';

const TWO_31 = 2 ** 31;

/** Lowest set bit of `x` (x ≥ 0, < 2^31), or 0 when x is 0. */
function lowBit31(x: number): number {
  return x & -x;
}

/** Highest set bit of `x` (0 < x < 2^32). */
function highBit32(x: number): number {
  const b = 31 - Math.clz32(x);
  return b === 31 ? 2147483648 : 1 << b;
}

/** Smallest page size a domain supports (the IOVA granule). */
export function iommuMinPgsize(domain: IommuDomain): number {
  return lowBit31(domain.pgsizeBitmap);
}

/** Result holder for `iommuPgsize`'s count (kernel: the `count` out-parameter). */
export interface PgsizeCount {
  count: number;
}

/**
 * Picks the page size for the next run of a map or unmap, and how many pages of it (kernel:
 * `iommu_pgsize`, drivers/iommu/iommu.c): the largest supported size no bigger than `size` to
 * which both `iova` and `paddr` are aligned; the run is shortened to end where the next larger
 * page size becomes usable, when iova and paddr are congruent modulo that size.
 */
export function iommuPgsize(
  domain: IommuDomain,
  iova: number,
  paddr: number,
  size: number,
  out: PgsizeCount | undefined,
): number {
  const bitmap = domain.pgsizeBitmap;
  // fast path: smaller than the second page size → only the smallest fits, and no run can be
  // shortened for a larger page that cannot fit anyway
  const min = bitmap & -bitmap;
  const rest = bitmap & (bitmap - 1);
  if (rest === 0 || size < (rest & -rest)) {
    if (out !== undefined) out.count = Math.floor(size / min);
    return min;
  }
  // sizes no larger than `size`
  let pgsizes = size >= TWO_31 ? bitmap : bitmap & (highBit32(size) * 2 - 1);
  // sizes to which iova and paddr are both aligned
  const merge = (lo32(iova) | lo32(paddr)) & 0x7fffffff;
  if (merge !== 0) pgsizes &= lowBit31(merge) * 2 - 1;
  if (pgsizes === 0) {
    throw new RangeError(`iommu_pgsize: no page size for iova ${iova} paddr ${paddr} size ${size}`);
  }
  const pgsize = highBit32(pgsizes);
  if (out === undefined) return pgsize;
  const larger = bitmap & ~(pgsize * 2 - 1);
  let runSize = size;
  if (larger !== 0) {
    const next = lowBit31(larger);
    if (modPow2(iova, next) === modPow2(paddr, next)) {
      const offset = next - modPow2(iova, next);
      if (offset + next <= size) runSize = offset;
    }
  }
  out.count = Math.floor(runSize / pgsize);
  return pgsize;
}

const pgsizeScratch: PgsizeCount = { count: 0 };

/** True when no tracer listens (the 4 KiB fast path skips the trace events). */
function machineTracerOff(domain: IommuDomain): boolean {
  return domain.iommu.machine.tracer === undefined;
}
const mappedScratch = { mapped: 0 };

/**
 * Maps `[iova, iova + size)` to `[paddr, …)` without syncing the IOTLB (kernel:
 * `iommu_map_nosync`). Returns 0 or -errno: -EINVAL for a non-paging domain or a misaligned
 * iova/paddr/size, or the page table's error (-EEXIST over an existing mapping, -ENOMEM for a
 * page-table page, -ERANGE beyond the address size). On error everything this call mapped is
 * unmapped again before returning.
 */
export function iommuMapNosync(
  domain: IommuDomain,
  iova: number,
  paddr: number,
  size: number,
  prot: number,
): number {
  const pgtbl = domain.pgtbl;
  if (!domain.isPaging || pgtbl === undefined) return -Errno.EINVAL;
  if (size === 4096 && machineTracerOff(domain)) {
    // one 4 KiB page: the page-size choice is trivial and nothing needs rolling back
    domain.iommu.machine.counters.iommuMapCalls++;
    return pgtbl.mapOne4K(iova, paddr, prot);
  }
  const min = iommuMinPgsize(domain);
  if (!isAlignedPow2(iova, min) || !isAlignedPow2(paddr, min) || !isAlignedPow2(size, min) || size < 0)
    return -Errno.EINVAL;
  if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(paddr) || iova < 0 || paddr < 0)
    return -Errno.EINVAL;
  const machine = domain.iommu.machine;
  machine.counters.iommuMapCalls++;
  const tr = machine.tracer;
  tr?.begin('iommu_map', 'iommu', { iova, paddr, size });
  const origIova = iova;
  const origSize = size;
  let ret = 0;
  while (size > 0) {
    const pgsize = iommuPgsize(domain, iova, paddr, size, pgsizeScratch);
    mappedScratch.mapped = 0;
    ret = pgtbl.mapPages(iova, paddr, pgsize, pgsizeScratch.count, prot, mappedScratch);
    const mapped = mappedScratch.mapped;
    size -= mapped;
    if (ret !== 0) break;
    iova += mapped;
    paddr += mapped;
    if (mapped === 0) break; // prot without R/W: the table maps nothing and reports success
  }
  if (ret !== 0) iommuUnmap(domain, origIova, origSize - size);
  tr?.end();
  return ret;
}

/**
 * Makes new mappings visible to a device on IOMMUs that cache non-present entries (kernel:
 * `iommu_sync_map`, calling the driver's `iotlb_sync_map`). Returns 0, or -ENOMEM when the
 * `iotlb_sync_map` fault point fires.
 */
export function iommuSyncMap(domain: IommuDomain, iova: number, size: number): number {
  const iommu = domain.iommu;
  if (!iommu.cachesNonPresent) return 0;
  if (iommu.machine.faults.shouldFail('iotlb_sync_map')) return -Errno.ENOMEM;
  iommu.iotlbSyncMap(domain, iova, size);
  iommu.machine.counters.iotlbSyncMap++;
  return 0;
}

/**
 * Maps and syncs (kernel: `iommu_map`): `iommuMapNosync` then `iommuSyncMap`; if the sync fails
 * the range is unmapped and the error returned.
 */
export function iommuMap(
  domain: IommuDomain,
  iova: number,
  paddr: number,
  size: number,
  prot: number,
): number {
  const ret = iommuMapNosync(domain, iova, paddr, size, prot);
  if (ret !== 0) return ret;
  const sync = iommuSyncMap(domain, iova, size);
  if (sync !== 0) iommuUnmap(domain, iova, size);
  return sync;
}

/**
 * Unmaps into a gather without syncing (kernel: `__iommu_unmap`). Returns bytes unmapped: 0 for a
 * non-paging domain or misaligned arguments; stops at the first hole; may exceed `size` when the
 * range ends inside a larger leaf (leaves are never split).
 */
function iommuUnmapInner(domain: IommuDomain, iova: number, size: number, gather: IommuIotlbGather): number {
  const pgtbl = domain.pgtbl;
  if (!domain.isPaging || pgtbl === undefined) return 0;
  const min = iommuMinPgsize(domain);
  if (!isAlignedPow2(iova, min) || !isAlignedPow2(size, min)) return 0;
  const machine = domain.iommu.machine;
  machine.counters.iommuUnmapCalls++;
  const tr = machine.tracer;
  // one page of the smallest size: the page-size choice is trivial (iommu_pgsize gives 4 KiB × 1)
  if (size === 4096 && min === 4096 && tr === undefined) return pgtbl.unmapOne4K(iova, gather);
  tr?.begin('iommu_unmap', 'iommu', { iova, size });
  let unmapped = 0;
  while (unmapped < size) {
    const pgsize = iommuPgsize(domain, iova, iova, size - unmapped, pgsizeScratch);
    const u = pgtbl.unmapPages(iova, pgsize, pgsizeScratch.count, gather);
    if (u === 0) break;
    iova += u;
    unmapped += u;
  }
  tr?.end();
  return unmapped;
}

/**
 * Unmaps `[iova, iova + size)` and syncs the IOTLB once (kernel: `iommu_unmap`). Page-table pages
 * emptied by the unmap are freed after that invalidation. Returns bytes unmapped.
 */
export function iommuUnmap(domain: IommuDomain, iova: number, size: number): number {
  // The gather lives on the kernel's stack; here one is reused (a nested call, e.g. from a
  // tracer, gets its own), and the sync leaves it reset.
  let gather = unmapGather;
  if (unmapGatherBusy) gather = iommuIotlbGatherInit();
  else unmapGatherBusy = true;
  try {
    const ret = iommuUnmapInner(domain, iova, size, gather);
    iommuIotlbSync(domain, gather);
    return ret;
  } finally {
    if (gather === unmapGather) {
      unmapGatherBusy = false;
      iommuIotlbGatherReset(gather);
    }
  }
}
const unmapGather = iommuIotlbGatherInit();
let unmapGatherBusy = false;

/**
 * Unmaps into the caller's gather; the caller owns the IOTLB sync (kernel: `iommu_unmap_fast`).
 * With `gather.queued` the driver skips per-range invalidation: a flush queue will flush all.
 */
export function iommuUnmapFast(
  domain: IommuDomain,
  iova: number,
  size: number,
  gather: IommuIotlbGather,
): number {
  return iommuUnmapInner(domain, iova, size, gather);
}

/**
 * Invalidates what the gather collected and frees its page-table pages (kernel:
 * `iommu_iotlb_sync`). The IOMMU's hardware description decides the commands (see
 * `IommuDevice.iotlbSync`); the IOTLB model counts one range drop (`iotlbInvRange`).
 */
export function iommuIotlbSync(domain: IommuDomain, gather: IommuIotlbGather): void {
  domain.iommu.iotlbSync(domain, gather);
}

/**
 * Invalidates every IOTLB entry of the domain (kernel: `iommu_flush_iotlb_all`) with the driver's
 * domain-wide command and its completion wait.
 */
export function iommuFlushIotlbAll(domain: IommuDomain): void {
  domain.iommu.flushIotlbAll(domain);
}

/** One scatterlist entry as the iommu core reads it (the fields of `struct scatterlist` it uses). */
export interface IommuSgEntry {
  /** Physical address of the page (page-aligned). */
  readonly page: number;
  /** Offset of the data in the page. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
  /** DMA flags; bit 0 (`SG_DMA_BUS_ADDRESS`) marks a P2P bus-address entry that takes no IOVA. */
  readonly dmaFlags: number;
}

/** `SG_DMA_BUS_ADDRESS`: the entry holds a PCI bus address and is not mapped by the IOMMU. */
export const SG_DMA_BUS_ADDRESS = 1 << 0;

/**
 * Maps a scatterlist back to back from `iova` (kernel: `iommu_map_sg`): physically contiguous
 * entries are coalesced into one `iommuMapNosync`, bus-address entries are skipped, and one
 * `iommuSyncMap` covers the whole range. Returns bytes mapped, or -errno after unmapping
 * everything it mapped. Entries must already be granule-aligned.
 */
export function iommuMapSg(
  domain: IommuDomain,
  iova: number,
  sg: Iterable<IommuSgEntry>,
  prot: number,
): number {
  let mapped = 0;
  let start = 0;
  let len = 0;
  let ret = 0;
  for (const s of sg) {
    const phys = s.page + s.offset;
    if (len !== 0 && phys !== start + len) {
      ret = iommuMapNosync(domain, iova + mapped, start, len, prot);
      if (ret !== 0) break;
      mapped += len;
      len = 0;
    }
    if ((s.dmaFlags & SG_DMA_BUS_ADDRESS) !== 0) continue;
    if (len !== 0) {
      len += s.length;
    } else {
      len = s.length;
      start = phys;
    }
  }
  if (ret === 0 && len !== 0) {
    ret = iommuMapNosync(domain, iova + mapped, start, len, prot);
    if (ret === 0) mapped += len;
  }
  if (ret === 0) ret = iommuSyncMap(domain, iova, mapped);
  if (ret !== 0) {
    if (mapped > 0) iommuUnmap(domain, iova, mapped);
    return ret;
  }
  return mapped;
}

/**
 * The physical address a bus address translates to, or 0 if unmapped (kernel:
 * `iommu_iova_to_phys`): IDENTITY returns `iova`, BLOCKED 0, paging domains walk the table.
 * Reads the page table, never the IOTLB.
 */
export function iommuIovaToPhys(domain: IommuDomain, iova: number): number {
  if (domain.type === IOMMU_DOMAIN_IDENTITY) return iova;
  if (domain.type === IOMMU_DOMAIN_BLOCKED || domain.pgtbl === undefined) return 0;
  return domain.pgtbl.iovaToPhys(iova);
}

/**
 * Allocates a domain of `type` on an IOMMU (kernel: `iommu_paging_domain_alloc` and the static
 * identity/blocked domains). Returns undefined when its page-table root cannot be allocated.
 */
export function iommuDomainAlloc(iommu: IommuDevice, type: IommuDomainType): IommuDomain | undefined {
  return iommu.domainAlloc(type);
}

/** Frees a domain and all its page-table pages (kernel: `iommu_domain_free`). */
export function iommuDomainFree(domain: IommuDomain): void {
  domain.iommu.domainFree(domain);
}

/** Installs a fault handler on a domain (kernel: `iommu_set_fault_handler`). */
export function iommuSetFaultHandler(domain: IommuDomain, handler: IommuFaultHandler | undefined): void {
  domain.faultHandler = handler;
}

/**
 * Turns hardware dirty tracking on or off for a paging domain (kernel:
 * `domain->dirty_ops->set_dirty_tracking`). Returns 0, or -EOPNOTSUPP when the IOMMU or domain
 * cannot track dirty pages.
 */
export function iommuSetDirtyTracking(domain: IommuDomain, enable: boolean): number {
  if (!domain.isPaging || domain.pgtbl === undefined || !domain.iommu.supportsDirtyTracking) {
    return -Errno.EOPNOTSUPP;
  }
  domain.dirtyTracking = enable;
  return 0;
}

/**
 * Reports dirty leaves intersecting `[iova, iova + size)` through `record(iova, size)` and clears
 * their dirty bits unless `noClear` (kernel: `dirty_ops->read_and_clear_dirty` with
 * IOMMU_DIRTY_NO_CLEAR). The caller flushes the IOTLB afterwards so the hardware sets bits again.
 */
export function iommuReadAndClearDirty(
  domain: IommuDomain,
  iova: number,
  size: number,
  noClear: boolean,
  record: (iova: number, size: number) => void,
): number {
  if (!domain.dirtyTracking || domain.pgtbl === undefined) return -Errno.EINVAL;
  domain.pgtbl.readAndClearDirty(iova, size, noClear, record);
  return 0;
}
