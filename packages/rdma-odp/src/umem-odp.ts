/**
 * The ODP user memory object behind an on-demand-paging MR: the VA range, its mmu interval
 * notifier, the pfn list filled by `hmm_range_fault`, the DMA mapping state and the lock that
 * orders device-table updates against invalidations. Two modes, as the kernel had them:
 *
 * - `legacy` (v5.8 … v6.15): a `pfn_list` (8 bytes a page) for `hmm_range_fault` plus a
 *   `dma_list` (8 bytes a page: DMA address | `ODP_READ_ALLOWED_BIT` | `ODP_WRITE_ALLOWED_BIT`);
 *   `ib_umem_odp_map_dma_and_lock` maps every newly valid page with its own `ib_dma_map_page`
 *   (one IOVA allocation, map and IOTLB sync-map per page) and unmapping is one `dma_unmap_page`
 *   per page (IOVA freed per page; on a flush-queue domain the IOTLB flush is deferred).
 * - `hmm` (v6.16+): a `struct hmm_dma_map` — the pfn list alone when `dma_iova_try_alloc`
 *   reserved one IOVA range for the whole umem at creation; `map_dma_and_lock` only faults and
 *   locks, the driver maps each page with `hmm_dma_map_pfn` (link + sync into the reserved range)
 *   while writing its translation table; unmapping is `hmm_dma_unmap_pfn` (unlink + immediate
 *   IOTLB invalidation).
 *
 * Kernel counterpart: drivers/infiniband/core/umem_odp.c and include/rdma/ib_umem_odp.h —
 * `ib_init_umem_odp`, `ib_umem_odp_get`, `ib_umem_odp_alloc_implicit`, `ib_umem_odp_alloc_child`,
 * `ib_umem_odp_release`, `ib_umem_odp_map_dma_and_lock`, `ib_umem_odp_unmap_dma_pages`,
 * `ib_umem_odp_map_dma_single_page` (legacy). Metadata is counted as `umem_odp.pfn_list` and
 * `umem_odp.dma_list` (legacy) or through `hmm_dma_map_alloc` (hmm).
 *
 * Deliberate differences: PAGE_SIZE umem pages only (`IB_ACCESS_HUGETLB` is -EOPNOTSUPP); the
 * -EBUSY retry gives up after `HMM_RANGE_DEFAULT_TIMEOUT` of virtual time or after
 * `ODP_MAX_RETRIES` passes, whichever comes first (nothing advances the virtual clock inside a
 * fault, so the count is what bounds a livelock); `hooks.raceWindow` lets a test run an
 * invalidation exactly where a concurrent one could land in the kernel (after `read_begin`, after
 * `hmm_range_fault`, before the lock).
 */
import { DMA_BIDIRECTIONAL } from '@iovalink/dma-api';
import { Errno, PAGE_SHIFT, PAGE_SIZE } from '@iovalink/iommu';
import { alignDown, alignUp } from '@iovalink/iommu/internal';
import { OdpError } from './errors.js';
import {
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_FLAGS,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmPfnList,
  type HmmRange,
  hmmPfnToMapOrder,
  hmmPfnToPhys,
  hmmRangeFault,
} from './hmm.js';
import {
  HMM_DMA_PFN_LIST,
  HmmDmaMap,
  hmmDmaMapAlloc,
  hmmDmaMapFree,
  hmmDmaUnmapPfn,
  kvcallocAccounted,
} from './hmm-dma.js';
import {
  IB_ACCESS_HUGETLB,
  IB_ACCESS_ON_DEMAND,
  type IbDevice,
  ibAccessWritable,
  ibDmaMapPage,
  ibDmaMappingError,
  ibDmaUnmapPage,
  ibUsesVirtDma,
} from './ib-verbs.js';
import type { Mm } from './mm.js';
import {
  MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
} from './mmu-notifier.js';
import { lockdepAssertHeld, Mutex, mutexLock, mutexUnlock } from './mutex.js';

/** Which kernel generation of ODP DMA mapping a umem follows. */
export type OdpMode = 'legacy' | 'hmm';

/** Legacy dma_list bit: the device may read (kernel: `ODP_READ_ALLOWED_BIT`, ≤ v6.15). */
export const ODP_READ_ALLOWED_BIT = 1 << 0;
/** Legacy dma_list bit: the device may write (kernel: `ODP_WRITE_ALLOWED_BIT`, ≤ v6.15). */
export const ODP_WRITE_ALLOWED_BIT = 1 << 1;
/** Legacy dma_list: the access bits (kernel: `~ODP_DMA_ADDR_MASK`). */
export const ODP_ACCESS_MASK = ODP_READ_ALLOWED_BIT | ODP_WRITE_ALLOWED_BIT;

/** Metadata kind of the legacy pfn list (8 bytes a page). */
export const UMEM_ODP_PFN_LIST = 'umem_odp.pfn_list';
/** Metadata kind of the legacy dma_list (8 bytes a page). */
export const UMEM_ODP_DMA_LIST = 'umem_odp.dma_list';

/** Model bound on fault retries (the kernel bounds -EBUSY retries by a 1 s timeout only). */
export const ODP_MAX_RETRIES = 1000;

/** Points in `ib_umem_odp_map_dma_and_lock` where a concurrent invalidation can land. */
export type OdpRacePoint = 'after_read_begin' | 'after_range_fault';

/** Test hooks shared by the umems of one device. */
export interface OdpHooks {
  /** Called at each race point of every fault; may run mm operations (invalidations). */
  raceWindow?: ((point: OdpRacePoint, umem: IbUmemOdp, attempt: number) => void) | undefined;
}

/** ODP counters shared by the umems of one device. */
export interface OdpUmemStats {
  /** `map_dma_and_lock` calls. */
  mapCalls: number;
  /** Retries because `hmm_range_fault` returned -EBUSY. */
  busyRetries: number;
  /** Retries because `mmu_interval_read_retry` was true under the lock. */
  seqRetries: number;
  /** Pages DMA-mapped with one `dma_map_page` each (legacy). */
  legacyPageMaps: number;
}

/** Fresh counters. */
export function newOdpUmemStats(): OdpUmemStats {
  return { mapCalls: 0, busyRetries: 0, seqRetries: 0, legacyPageMaps: 0 };
}

/** An ODP umem (kernel: `struct ib_umem_odp` with its `struct ib_umem`). */
export class IbUmemOdp {
  readonly ibdev: IbDevice;
  readonly mode: OdpMode;
  /** The process whose pages are mirrored (kernel: `umem.owning_mm`). */
  readonly owningMm: Mm;
  /** Start of the user range (kernel: `umem.address`). */
  readonly address: number;
  /** Length of the user range (kernel: `umem.length`). */
  readonly length: number;
  /** The device may write (kernel: `umem.writable`). */
  readonly writable: boolean;
  /** log2 of the umem page size (kernel: `page_shift`). */
  readonly pageShift = PAGE_SHIFT;
  /** An implicit-ODP parent: no range, no lists, no notifier (kernel: `is_implicit_odp`). */
  readonly isImplicitOdp: boolean;
  readonly notifier: MmuIntervalNotifier;
  /** hmm mode: pfn list and DMA state (kernel: `map`, v6.16+). */
  readonly map = new HmmDmaMap();
  /** legacy mode: pfn list (kernel: `pfn_list`, ≤ v6.15). */
  legacyPfnList: HmmPfnList | undefined;
  /** legacy mode: DMA address | access bits per page (kernel: `dma_list`, ≤ v6.15). */
  legacyDmaList: Float64Array | undefined;
  /** Orders device-table updates against invalidations (kernel: `umem_mutex`). */
  readonly umemMutex: Mutex;
  /** Pages mapped, as the kernel counts them (kernel: `npages`). */
  npages = 0;
  /** Driver back pointer, e.g. the MR (kernel: `private`). */
  private: unknown;
  hooks: OdpHooks | undefined;
  stats: OdpUmemStats;
  released = false;

  constructor(
    ibdev: IbDevice,
    mode: OdpMode,
    mm: Mm,
    address: number,
    length: number,
    writable: boolean,
    implicit: boolean,
    stats?: OdpUmemStats,
  ) {
    this.ibdev = ibdev;
    this.mode = mode;
    this.owningMm = mm;
    this.address = address;
    this.length = length;
    this.writable = writable;
    this.isImplicitOdp = implicit;
    this.notifier = new MmuIntervalNotifier(this);
    this.umemMutex = new Mutex(`umem_mutex@${address.toString(16)}`);
    this.stats = stats ?? newOdpUmemStats();
  }

  /** The pfn list of either mode. */
  get pfnList(): HmmPfnList {
    const l = this.mode === 'hmm' ? this.map.pfnList : this.legacyPfnList;
    if (l === undefined) {
      throw new OdpError('ib_umem_odp: no pfn list (implicit parent or released umem)', {
        rule: 'ib_umem_odp: no pfn list',
      });
    }
    return l;
  }

  /** First byte covered, rounded down to the umem page (kernel: `ib_umem_start`). */
  get start(): number {
    return alignDown(this.address, PAGE_SIZE);
  }

  /** End of the range, rounded up to the umem page (kernel: `ib_umem_end`). */
  get end(): number {
    return Math.ceil((this.address + this.length) / PAGE_SIZE) * PAGE_SIZE;
  }

  /** Number of umem pages (kernel: `ib_umem_odp_num_pages`). */
  get numPages(): number {
    return (this.end - this.start) / PAGE_SIZE;
  }
}

/**
 * Frees the pfn list and DMA state of either mode (kernel: `ib_umem_odp_free`, v6.16+: the pfn
 * list alone for software RDMA, else `hmm_dma_map_free`; ≤ v6.15: `kvfree` of `dma_list` and
 * `pfn_list`). Lists never allocated are skipped, so the error path of `ibInitUmemOdp` uses it too.
 */
function ibUmemOdpFree(umem: IbUmemOdp): void {
  const counters = umem.ibdev.machine.counters;
  if (umem.mode === 'hmm') {
    if (ibUsesVirtDma(umem.ibdev)) {
      if (umem.map.pfnList !== undefined) counters.kfree(HMM_DMA_PFN_LIST, umem.map.pfnList.byteLength);
      umem.map.pfnList = undefined;
    } else {
      hmmDmaMapFree(umem.ibdev.dmaDevice!, umem.map);
    }
    return;
  }
  if (umem.legacyPfnList !== undefined) counters.kfree(UMEM_ODP_PFN_LIST, umem.legacyPfnList.byteLength);
  if (umem.legacyDmaList !== undefined) counters.kfree(UMEM_ODP_DMA_LIST, umem.legacyDmaList.length * 8);
  umem.legacyPfnList = undefined;
  umem.legacyDmaList = undefined;
}

/** Sets the lists and the notifier up (kernel: `ib_init_umem_odp`). Returns 0 or -errno; nothing left on error. */
function ibInitUmemOdp(umem: IbUmemOdp, ops: MmuIntervalNotifierOps): number {
  const pageSize = 1 << umem.pageShift;
  const start = umem.start;
  if (!Number.isSafeInteger(umem.address + umem.length)) return -Errno.EOVERFLOW;
  const end = Math.ceil((umem.address + umem.length) / pageSize) * pageSize;
  if (end < pageSize) return -Errno.EOVERFLOW;
  const nrEntries = (end - start) / PAGE_SIZE;
  if (Math.floor((nrEntries * PAGE_SIZE) / pageSize) === 0) return -Errno.EINVAL;
  const machine = umem.ibdev.machine;
  if (umem.mode === 'hmm') {
    if (ibUsesVirtDma(umem.ibdev)) {
      if (!kvcallocAccounted(machine, HMM_DMA_PFN_LIST, nrEntries)) return -Errno.ENOMEM;
      umem.map.pfnList = new HmmPfnList(nrEntries);
      umem.map.dmaEntrySize = pageSize;
    } else {
      const r = hmmDmaMapAlloc(umem.ibdev.dmaDevice!, umem.map, nrEntries, pageSize);
      if (r !== 0) return r;
    }
  } else {
    const ndmas = (end - start) / pageSize;
    if (!kvcallocAccounted(machine, UMEM_ODP_PFN_LIST, nrEntries)) return -Errno.ENOMEM;
    umem.legacyPfnList = new HmmPfnList(nrEntries);
    if (!kvcallocAccounted(machine, UMEM_ODP_DMA_LIST, ndmas)) {
      ibUmemOdpFree(umem);
      return -Errno.ENOMEM;
    }
    umem.legacyDmaList = new Float64Array(ndmas);
  }
  const r = mmuIntervalNotifierInsert(umem.notifier, umem.owningMm, start, end - start, ops);
  if (r !== 0) ibUmemOdpFree(umem);
  return r;
}

/**
 * Creates the umem of an explicit ODP MR over `[addr, addr + size)` of `mm` (kernel:
 * `ib_umem_odp_get`): nothing is pinned or mapped; the lists are allocated (hmm mode: with one
 * IOVA reservation for the whole range) and the interval notifier is inserted. Returns the umem or
 * -errno (-EINVAL, -EOVERFLOW, -ENOMEM, -EOPNOTSUPP for hugetlb or, in hmm mode, a device that
 * needs cache syncs or bouncing).
 */
export function ibUmemOdpGet(
  ibdev: IbDevice,
  mm: Mm,
  addr: number,
  size: number,
  access: number,
  ops: MmuIntervalNotifierOps,
  mode: OdpMode,
  stats?: OdpUmemStats,
): IbUmemOdp | number {
  if ((access & IB_ACCESS_ON_DEMAND) === 0) {
    throw new OdpError('ib_umem_odp_get: access flags lack IB_ACCESS_ON_DEMAND', {
      rule: 'ib_umem_odp_get: not on-demand',
    });
  }
  if ((access & IB_ACCESS_HUGETLB) !== 0) return -Errno.EOPNOTSUPP;
  if (!(addr >= 0) || !(size >= 0)) return -Errno.EINVAL;
  const umem = new IbUmemOdp(ibdev, mode, mm, addr, size, ibAccessWritable(access), false, stats);
  const r = ibInitUmemOdp(umem, ops);
  return r === 0 ? umem : r;
}

/**
 * Creates the parent umem of an implicit ODP MR covering the whole address space (kernel:
 * `ib_umem_odp_alloc_implicit`): no range, no lists, no notifier — children are created per
 * granule on first fault. Returns the umem or -EINVAL (hugetlb).
 */
export function ibUmemOdpAllocImplicit(
  ibdev: IbDevice,
  mm: Mm,
  access: number,
  mode: OdpMode,
  stats?: OdpUmemStats,
): IbUmemOdp | number {
  if ((access & IB_ACCESS_HUGETLB) !== 0) return -Errno.EINVAL;
  return new IbUmemOdp(ibdev, mode, mm, 0, 0, ibAccessWritable(access), true, stats);
}

/**
 * Creates a child umem of an implicit parent for `[addr, addr + size)` (kernel:
 * `ib_umem_odp_alloc_child`). Returns the umem or -errno; -EFAULT when the process has exited.
 */
export function ibUmemOdpAllocChild(
  root: IbUmemOdp,
  addr: number,
  size: number,
  ops: MmuIntervalNotifierOps,
): IbUmemOdp | number {
  if (!root.isImplicitOdp) {
    throw new OdpError('ib_umem_odp_alloc_child: root is not an implicit ODP umem', {
      rule: 'ib_umem_odp_alloc_child: not implicit',
    });
  }
  if (root.owningMm.mmUsers <= 0) return -Errno.EFAULT;
  const umem = new IbUmemOdp(
    root.ibdev,
    root.mode,
    root.owningMm,
    addr,
    size,
    root.writable,
    false,
    root.stats,
  );
  umem.hooks = root.hooks;
  const r = ibInitUmemOdp(umem, ops);
  return r === 0 ? umem : r;
}

/**
 * Releases a umem (kernel: `ib_umem_odp_release` → `ib_umem_odp_free`): under the lock every page
 * is DMA-unmapped, then the notifier is removed and the lists (and, hmm mode, the IOVA range)
 * freed. The driver has stopped the device using the MR before.
 */
export function ibUmemOdpRelease(umem: IbUmemOdp): void {
  if (umem.released) {
    throw new OdpError('ib_umem_odp_release: released twice', {
      rule: 'ib_umem_odp_release: double release',
    });
  }
  umem.released = true;
  if (umem.isImplicitOdp) return;
  mutexLock(umem.umemMutex, 'ib_umem_odp_release');
  try {
    ibUmemOdpUnmapDmaPages(umem, umem.start, umem.end);
  } finally {
    mutexUnlock(umem.umemMutex);
  }
  mmuIntervalNotifierRemove(umem.notifier);
  ibUmemOdpFree(umem);
}

/**
 * Legacy: maps one page with its own `ib_dma_map_page`, or refreshes the access bits of a page
 * already mapped (a read-only → writable transition without invalidation) (kernel:
 * `ib_umem_odp_map_dma_single_page`, ≤ v6.15). Returns 0 or -EFAULT.
 */
function ibUmemOdpMapDmaSinglePage(
  umem: IbUmemOdp,
  dmaIndex: number,
  page: number,
  accessMask: number,
): number {
  const list = umem.legacyDmaList!;
  const cur = list[dmaIndex]!;
  if (cur !== 0) {
    list[dmaIndex] = cur - (cur % 4) + accessMask;
    return 0;
  }
  const size = 1 << umem.pageShift;
  const addr = ibDmaMapPage(umem.ibdev, page, 0, size, DMA_BIDIRECTIONAL);
  if (ibDmaMappingError(umem.ibdev, addr)) {
    list[dmaIndex] = 0;
    return -Errno.EFAULT;
  }
  umem.stats.legacyPageMaps++;
  umem.npages++;
  list[dmaIndex] = addr + accessMask;
  return 0;
}

/**
 * Faults `[userVirt, userVirt + bcnt)` in and returns with the umem lock held (kernel:
 * `ib_umem_odp_map_dma_and_lock`). The kernel's order: `mmu_interval_read_begin`,
 * `hmm_range_fault` (retry on -EBUSY), take `umem_mutex`, `mmu_interval_read_retry` (on a
 * collision: unlock and start over). `accessMask` is `HMM_PFN_WRITE` or 0 in hmm mode,
 * `ODP_READ_ALLOWED_BIT [| ODP_WRITE_ALLOWED_BIT]` in legacy mode; with `fault` false only present
 * pages are reported (snapshot/prefetch-no-fault). hmm mode maps nothing here (the driver maps
 * while writing its table); legacy mode DMA-maps every valid page not yet mapped.
 * Returns the number of umem pages in the range with `umem_mutex` held, or -errno with it
 * released: -EFAULT (outside the umem, or no VMA/fault failed), -EPERM (write to a read-only VMA),
 * -EINVAL (process exited), -EBUSY (kept colliding).
 */
export function ibUmemOdpMapDmaAndLock(
  umem: IbUmemOdp,
  userVirt: number,
  bcnt: number,
  accessMask: number,
  fault: boolean,
): number {
  const bad = ibUmemOdpCheckMapRange(umem, userVirt, bcnt);
  if (bad !== 0) return bad;
  const range = ibUmemOdpHmmRange(umem, userVirt, bcnt, accessMask, fault);
  umem.stats.mapCalls++;
  const clock = umem.ibdev.machine.clock;
  const timeout = clock.nowNs + HMM_RANGE_DEFAULT_TIMEOUT * 1e6;
  for (let attempt = 0; ; attempt++) {
    if (attempt >= ODP_MAX_RETRIES) return -Errno.EBUSY;
    // snapshot the notifier sequence, then fault the range in without the umem lock
    const seq = mmuIntervalReadBegin(umem.notifier);
    range.notifierSeq = seq;
    umem.hooks?.raceWindow?.('after_read_begin', umem, attempt);
    const ret = hmmRangeFault(range);
    umem.hooks?.raceWindow?.('after_range_fault', umem, attempt);
    if (ret !== 0) {
      if (ret === -Errno.EBUSY && clock.nowNs <= timeout) {
        umem.stats.busyRetries++;
        continue;
      }
      return ret;
    }
    // take the lock and start over if an invalidation ran since the snapshot
    mutexLock(umem.umemMutex, 'ib_umem_odp_map_dma_and_lock');
    if (mmuIntervalReadRetry(umem.notifier, seq)) {
      mutexUnlock(umem.umemMutex);
      umem.stats.seqRetries++;
      continue;
    }
    const mapped = ibUmemOdpMapFaultedPages(umem, range, accessMask, fault);
    if (mapped < 0) mutexUnlock(umem.umemMutex);
    return mapped;
  }
}

/**
 * The opening checks of `ib_umem_odp_map_dma_and_lock`: an implicit or released umem is a caller
 * bug (throws); a range outside the umem is -EFAULT, a process that has exited -EINVAL (the
 * kernel's failed `mmget_not_zero`). Returns 0 when the map may go on.
 */
function ibUmemOdpCheckMapRange(umem: IbUmemOdp, userVirt: number, bcnt: number): number {
  if (umem.isImplicitOdp || umem.released) {
    throw new OdpError('ib_umem_odp_map_dma_and_lock: not an explicit live umem', {
      rule: 'ib_umem_odp_map_dma_and_lock: bad umem',
    });
  }
  if (userVirt < umem.start || userVirt + bcnt > umem.end || !(bcnt > 0)) return -Errno.EFAULT;
  if (umem.owningMm.mmUsers <= 0) return -Errno.EINVAL;
  return 0;
}

/**
 * The `struct hmm_range` that `ib_umem_odp_map_dma_and_lock` fills before faulting: the range
 * widened to whole umem pages, the umem's pfn list at the range's offset, and the default flags
 * (fault, and write when the access mask asks for it; none for a snapshot).
 */
function ibUmemOdpHmmRange(
  umem: IbUmemOdp,
  userVirt: number,
  bcnt: number,
  accessMask: number,
  fault: boolean,
): HmmRange {
  const pageSize = 1 << umem.pageShift;
  const start = alignDown(userVirt, pageSize);
  const write =
    umem.mode === 'legacy' ? (accessMask & ODP_WRITE_ALLOWED_BIT) !== 0 : (accessMask & HMM_PFN_WRITE) !== 0;
  return {
    notifier: umem.notifier,
    notifierSeq: 0,
    start,
    end: alignUp(userVirt + bcnt, pageSize),
    hmmPfns: umem.pfnList,
    pfnOffset: (start - umem.start) / PAGE_SIZE,
    defaultFlags: fault ? (HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0)) >>> 0 : 0,
    pfnFlagsMask: 0,
  };
}

/**
 * The loop of `ib_umem_odp_map_dma_and_lock` after a fault that no invalidation overtook
 * (`umem_mutex` held): walks the range one umem page at a time; a faulting walk must have left
 * every pfn valid (throws otherwise, lock released); a pfn mapped with a smaller order than the
 * umem page is -EINVAL; legacy mode DMA-maps each valid page (snapshot: with the access its CPU
 * entry allows), hmm mode maps nothing here. Returns the number of umem pages walked, or -errno.
 */
function ibUmemOdpMapFaultedPages(
  umem: IbUmemOdp,
  range: HmmRange,
  accessMask: number,
  fault: boolean,
): number {
  const list = umem.pfnList;
  const legacy = umem.mode === 'legacy';
  const numPfns = (range.end - range.start) / PAGE_SIZE;
  const step = 1 << (umem.pageShift - PAGE_SHIFT);
  const startIdx = (range.start - umem.start) / (1 << umem.pageShift);
  let dmaIndex = startIdx;
  for (let p = 0; p < numPfns; p += step, dmaIndex++) {
    const i = range.pfnOffset + p;
    const valid = list.test(i, HMM_PFN_VALID);
    if (fault && (list.test(i, HMM_PFN_ERROR) || !valid)) {
      mutexUnlock(umem.umemMutex);
      throw new OdpError(`ib_umem_odp_map_dma_and_lock: page ${i} not valid after a successful fault`, {
        rule: 'ib_umem_odp_map_dma_and_lock: fault left an invalid pfn',
      });
    }
    if (!valid) continue;
    if (!legacy && list.test(i, HMM_PFN_DMA_MAPPED)) continue;
    if (hmmPfnToMapOrder(list, i) + PAGE_SHIFT < umem.pageShift) return -Errno.EINVAL;
    if (legacy) {
      // snapshot: per-page access from the CPU entry; fault: the caller's mask for every page
      let access = accessMask;
      if (!fault) access = ODP_READ_ALLOWED_BIT | (list.test(i, HMM_PFN_WRITE) ? ODP_WRITE_ALLOWED_BIT : 0);
      const err = ibUmemOdpMapDmaSinglePage(umem, dmaIndex, hmmPfnToPhys(list, i), access);
      if (err < 0) return err;
    }
  }
  return dmaIndex - startIdx;
}

/**
 * DMA-unmaps the pages of `[virt, bound)` (kernel: `ib_umem_odp_unmap_dma_pages`; `umem_mutex`
 * held). hmm mode: `hmm_dma_unmap_pfn` per page, dirtying pages that were mapped writable, then
 * every flag of the pfn word cleared. legacy mode: `ib_dma_unmap_page` per mapped page (dirtied if
 * it was writable), dma_list entry cleared.
 */
export function ibUmemOdpUnmapDmaPages(umem: IbUmemOdp, virt: number, bound: number): void {
  lockdepAssertHeld(umem.umemMutex, 'ib_umem_odp_unmap_dma_pages');
  const start = Math.max(virt, umem.start);
  const end = Math.min(bound, umem.end);
  const pageSize = 1 << umem.pageShift;
  const memMap = umem.owningMm.memMap;
  const list = umem.pfnList;
  for (let addr = start; addr < end; addr += pageSize) {
    const idx = (addr - umem.start) / pageSize;
    if (umem.mode === 'legacy') {
      const dmaList = umem.legacyDmaList!;
      const dma = dmaList[idx]!;
      if (dma === 0) continue;
      const bits = dma % 4;
      ibDmaUnmapPage(umem.ibdev, dma - bits, pageSize, DMA_BIDIRECTIONAL);
      if ((bits & ODP_WRITE_ALLOWED_BIT) !== 0)
        memMap.setPageDirty(list.pfn((addr - umem.start) / PAGE_SIZE));
      dmaList[idx] = 0;
      umem.npages--;
      continue;
    }
    const pfnWrite = list.test(idx, HMM_PFN_WRITE);
    const pfn = list.pfn(idx);
    let unmapped: boolean;
    if (ibUsesVirtDma(umem.ibdev)) {
      unmapped = list.test(idx, HMM_PFN_VALID | HMM_PFN_DMA_MAPPED);
    } else {
      unmapped = hmmDmaUnmapPfn(umem.ibdev.dmaDevice!, umem.map, idx);
    }
    if (unmapped) {
      if (pfnWrite) memMap.setPageDirty(pfn);
      umem.npages--;
    }
    list.clearFlags(idx, HMM_PFN_FLAGS);
  }
}
