/**
 * mlx5 on-demand paging: the page-fault handler, the mmu interval notifier callback, prefetch and
 * implicit MRs. Kernel counterpart: drivers/infiniband/hw/mlx5/odp.c (v6.16–v6.18 for the hmm
 * mode, v6.10–v6.15 for the legacy mode): `pagefault_real_mr`, `pagefault_implicit_mr`,
 * `pagefault_mr`, `populate_mtt`, `populate_ksm`, `mlx5_ib_invalidate_range`,
 * `implicit_get_child_mr`, `destroy_unused_implicit_child_mr`, `free_implicit_child_mr_work`,
 * `mlx5_ib_alloc_implicit_mr`, `mlx5_ib_free_odp_mr`, `mlx5_ib_init_odp_mr`,
 * `mlx5_ib_advise_mr_prefetch`, plus `mlx5r_umr_update_xlt` (umr.c).
 *
 * The fault path follows the kernel's order: `ib_umem_odp_map_dma_and_lock` (read_begin,
 * hmm_range_fault, umem_mutex, read_retry — legacy mode also DMA-maps each new page there), then
 * `mlx5r_umr_update_xlt` whose `populate_mtt` maps each valid page with `hmm_dma_map_pfn` (hmm mode)
 * or reads the legacy `dma_list`, writes MTT = DMA address | READ [| WRITE], then unlocks; the NIC
 * resumes. The invalidate callback, under `umem_mutex`: `mmu_interval_set_seq`, zap the MTT
 * entries of valid pages in blocks, DMA-unmap them (the IOTLB invalidation happens inside the DMA
 * unmap/unlink), and reap an emptied implicit child.
 *
 * Kernel behaviour kept on purpose: in hmm mode `populate_mtt` counts `npages` for every valid
 * entry it writes, including ones already mapped, while unmapping decrements only for entries it
 * unmaps — so `npages` drifts upward and emptied implicit children are reaped less often than in
 * the legacy mode. Deliberate differences: faults are handled synchronously; no memory-scheme
 * faults, no dmabuf MRs, no P2P; the implicit child span is the device option `imrMttShift`.
 */
import { dmaMappingError } from '@iovalink/dma-api';
import { Errno, PAGE_SHIFT, PAGE_SIZE } from '@iovalink/iommu';
import { isErr } from './errors.js';
import { HMM_PFN_VALID, HMM_PFN_WRITE } from './hmm.js';
import { hmmDmaMapPfn } from './hmm-dma.js';
import {
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  type IbPd,
  type IbSge,
} from './ib-verbs.js';
import { MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT, type Mlx5IbDev, Mlx5IbMr } from './mlx5-ib.js';
import {
  type MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  type MmuNotifierRange,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from './mmu-notifier.js';
import { mutexLock, mutexUnlock } from './mutex.js';
import {
  MLX5_IB_MTT_READ,
  MLX5_IB_MTT_WRITE,
  MLX5_IB_UPD_XLT_ATOMIC,
  MLX5_IB_UPD_XLT_DOWNGRADE,
  MLX5_IB_UPD_XLT_ENABLE,
  MLX5_IB_UPD_XLT_INDIRECT,
  MLX5_IB_UPD_XLT_ZAP,
  MLX5_MKC_ACCESS_MODE_KSM,
  MLX5_MKC_ACCESS_MODE_MTT,
  type NicPageFaultHandler,
} from './nic.js';
import {
  type IbUmemOdp,
  ibUmemOdpAllocChild,
  ibUmemOdpAllocImplicit,
  ibUmemOdpMapDmaAndLock,
  ibUmemOdpRelease,
  ibUmemOdpUnmapDmaPages,
  ODP_READ_ALLOWED_BIT,
  ODP_WRITE_ALLOWED_BIT,
} from './umem-odp.js';

/** Fault: write access not wanted, map read-only (kernel: `MLX5_PF_FLAGS_DOWNGRADE`). */
export const MLX5_PF_FLAGS_DOWNGRADE = 1 << 1;
/** Fault: map only what is present (kernel: `MLX5_PF_FLAGS_SNAPSHOT`). */
export const MLX5_PF_FLAGS_SNAPSHOT = 1 << 2;
/** Fault: enable the mkey with the update (kernel: `MLX5_PF_FLAGS_ENABLE`). */
export const MLX5_PF_FLAGS_ENABLE = 1 << 3;

/**
 * Builds MTT entries `[start, start + n)` into `out` (kernel: `populate_mtt`): invalid pfns give 0;
 * hmm mode maps each valid page with `hmm_dma_map_pfn` (a no-op returning the address for pages
 * already mapped) and counts `npages`; legacy mode translates the dma_list entry's access bits.
 * Returns 0 or -EFAULT (a mapping failed; entries before it stay mapped).
 */
export function populateMtt(
  mr: Mlx5IbMr,
  start: number,
  n: number,
  flags: number,
  out: Float64Array,
): number {
  if ((flags & MLX5_IB_UPD_XLT_ZAP) !== 0) return 0;
  const odp = mr.umem;
  const downgrade = (flags & MLX5_IB_UPD_XLT_DOWNGRADE) !== 0;
  const list = odp.pfnList;
  if (odp.mode === 'legacy') {
    const dmaList = odp.legacyDmaList!;
    for (let i = 0; i < n; i++) {
      const dma = dmaList[start + i]!;
      const bits = dma % 4;
      let e = dma - bits;
      if (e !== 0) {
        if (bits & ODP_READ_ALLOWED_BIT) e += MLX5_IB_MTT_READ;
        if (bits & ODP_WRITE_ALLOWED_BIT) e += MLX5_IB_MTT_WRITE;
      }
      out[i] = e;
    }
    return 0;
  }
  const dev = mr.device.dmaDevice;
  for (let i = 0; i < n; i++) {
    const idx = start + i;
    if (!list.test(idx, HMM_PFN_VALID)) {
      out[i] = 0;
      continue;
    }
    const dmaAddr = hmmDmaMapPfn(dev, odp.map, idx);
    if (dmaMappingError(dev, dmaAddr)) return -Errno.EFAULT;
    let e = dmaAddr + MLX5_IB_MTT_READ;
    if (list.test(idx, HMM_PFN_WRITE) && !downgrade) e += MLX5_IB_MTT_WRITE;
    out[i] = e;
    odp.npages++;
  }
  return 0;
}

/**
 * Writes translation entries through a UMR (kernel: `mlx5r_umr_update_xlt`): KSM entries of an
 * implicit parent from its current children (`populate_ksm`), or MTT entries zapped or populated.
 * Returns 0 or -errno from populate.
 */
export function mlx5rUmrUpdateXlt(
  mr: Mlx5IbMr,
  idx: number,
  npages: number,
  _pageShift: number,
  flags: number,
): number {
  const nic = mr.device.nic;
  const enable = (flags & MLX5_IB_UPD_XLT_ENABLE) !== 0;
  if ((flags & MLX5_IB_UPD_XLT_INDIRECT) !== 0) {
    const children: number[] = [];
    for (let i = idx; i < idx + npages; i++) {
      children.push((flags & MLX5_IB_UPD_XLT_ZAP) !== 0 ? 0 : (mr.implicitChildren.get(i)?.mkey.key ?? 0));
    }
    nic.umrUpdateKsm(mr.mkey.key, idx, children, enable);
    return 0;
  }
  const entries = new Float64Array(npages);
  const r = populateMtt(mr, idx, npages, flags, entries);
  if (r < 0) return r;
  nic.umrUpdateMtt(mr.mkey.key, idx, entries, enable);
  return 0;
}

/**
 * Resolves a fault on `[userVa, userVa + bcnt)` of an explicit MR or implicit child (kernel:
 * `pagefault_real_mr`). Writable MRs request write access unless `MLX5_PF_FLAGS_DOWNGRADE`;
 * `MLX5_PF_FLAGS_SNAPSHOT` faults nothing. Returns the number of PAGE_SIZE pages mapped or -errno.
 */
export function pagefaultRealMr(
  mr: Mlx5IbMr,
  odp: IbUmemOdp,
  userVa: number,
  bcnt: number,
  bytesMapped: { value: number } | undefined,
  flags: number,
): number {
  const downgrade = (flags & MLX5_PF_FLAGS_DOWNGRADE) !== 0;
  const fault = (flags & MLX5_PF_FLAGS_SNAPSHOT) === 0;
  let xltFlags = MLX5_IB_UPD_XLT_ATOMIC;
  if ((flags & MLX5_PF_FLAGS_ENABLE) !== 0) xltFlags |= MLX5_IB_UPD_XLT_ENABLE;
  if (downgrade) xltFlags |= MLX5_IB_UPD_XLT_DOWNGRADE;
  const pageShift = odp.pageShift;
  const startIdx = Math.floor((userVa - odp.start) / 2 ** pageShift);
  let accessMask: number;
  if (odp.mode === 'hmm') accessMask = odp.writable && !downgrade ? HMM_PFN_WRITE : 0;
  else accessMask = ODP_READ_ALLOWED_BIT | (odp.writable && !downgrade ? ODP_WRITE_ALLOWED_BIT : 0);
  const np = ibUmemOdpMapDmaAndLock(odp, userVa, bcnt, accessMask, fault);
  if (np < 0) return np;
  let ret: number;
  try {
    ret = mlx5rUmrUpdateXlt(mr, startIdx, np, pageShift, xltFlags);
  } finally {
    mutexUnlock(odp.umemMutex);
  }
  if (ret < 0) return ret;
  if (bytesMapped !== undefined) {
    const newMappings = np * 2 ** pageShift - (userVa % 2 ** pageShift);
    bytesMapped.value += Math.min(newMappings, bcnt);
  }
  mr.device.stats.pagesMapped += np;
  return np;
}

/**
 * Creates the child MR of implicit MR `imr` for granule `idx` (kernel: `implicit_get_child_mr`):
 * a child umem over the granule (its own notifier and, in hmm mode, its own IOVA reservation), an
 * MTT mkey zapped and enabled, stored in the parent's children. Returns the child or -errno.
 */
export function implicitGetChildMr(imr: Mlx5IbMr, idx: number): Mlx5IbMr | number {
  const dev = imr.device;
  const size = 2 ** dev.imrMttShift;
  const odp = ibUmemOdpAllocChild(imr.umem, idx * size, size, mlx5MnOps);
  if (isErr(odp)) return odp;
  const mkey = dev.nic.createMkey(
    MLX5_MKC_ACCESS_MODE_MTT,
    idx * size,
    size,
    imr.access,
    PAGE_SHIFT,
    size / PAGE_SIZE,
  );
  const mr = new Mlx5IbMr(dev, imr.pd, odp, mkey, idx * size, size, imr.access, imr, false);
  odp.private = mr;
  dev.nic.umrUpdateMtt(mkey.key, 0, [], true);
  imr.implicitChildren.set(idx, mr);
  dev.odpMkeys.set(mkey.key, mr);
  dev.stats.implicitChildrenCreated++;
  return mr;
}

/**
 * Faults `[userVa, userVa + bcnt)` of an implicit MR (kernel: `pagefault_implicit_mr`): each
 * granule's child MR is found or created, `pagefault_real_mr` runs on it, and the parent's KSM is
 * updated for new children under the parent's lock. Returns pages mapped or -errno.
 */
export function pagefaultImplicitMr(
  imr: Mlx5IbMr,
  odpImr: IbUmemOdp,
  userVa: number,
  bcnt: number,
  bytesMapped: { value: number } | undefined,
  flags: number,
): number {
  const dev = imr.device;
  const size = 2 ** dev.imrMttShift;
  const total = dev.imrKsmEntries * size;
  if (userVa >= total || total - userVa < bcnt) return -Errno.EFAULT;
  const endIdx = Math.floor((userVa + bcnt - 1) / size);
  let updStartIdx = endIdx + 1;
  let updLen = 0;
  let npages = 0;
  let ret = 0;
  let va = userVa;
  let left = bcnt;
  while (left > 0) {
    const idx = Math.floor(va / size);
    let mtt = imr.implicitChildren.get(idx);
    if (mtt === undefined) {
      const c = implicitGetChildMr(imr, idx);
      if (isErr(c)) {
        ret = c;
        break;
      }
      mtt = c;
      updStartIdx = Math.min(updStartIdx, idx);
      updLen = idx - updStartIdx + 1;
    }
    const len = Math.min(va + left, mtt.umem.end) - va;
    const r = pagefaultRealMr(mtt, mtt.umem, va, len, bytesMapped, flags);
    if (r < 0) {
      ret = r;
      break;
    }
    va += len;
    left -= len;
    npages += r;
  }
  if (left === 0) ret = npages;
  if (updLen === 0) return ret;
  mutexLock(odpImr.umemMutex, 'pagefault_implicit_mr');
  let err: number;
  try {
    err = mlx5rUmrUpdateXlt(imr, updStartIdx, updLen, 0, MLX5_IB_UPD_XLT_INDIRECT | MLX5_IB_UPD_XLT_ATOMIC);
  } finally {
    mutexUnlock(odpImr.umemMutex);
  }
  return err < 0 ? err : ret;
}

/**
 * Resolves a fault at `ioVirt` of any ODP MR (kernel: `pagefault_mr`): converts the MR address to
 * a user address, checks it lies in the umem (-EFAULT otherwise), and dispatches to the explicit or
 * implicit path. Returns pages mapped or -errno.
 */
export function pagefaultMr(
  mr: Mlx5IbMr,
  ioVirt: number,
  bcnt: number,
  bytesMapped: { value: number } | undefined,
  flags: number,
): number {
  const odp = mr.umem;
  if (ioVirt < mr.iova) return -Errno.EFAULT;
  if (!odp.isImplicitOdp) {
    const userVa = ioVirt - mr.iova + odp.address;
    if (userVa >= odp.end || odp.end - userVa < bcnt) return -Errno.EFAULT;
    return pagefaultRealMr(mr, odp, userVa, bcnt, bytesMapped, flags);
  }
  return pagefaultImplicitMr(mr, odp, ioVirt, bcnt, bytesMapped, flags);
}

/**
 * The driver's page-fault event handler (kernel: `mlx5_ib_eq_pf_process` →
 * `mlx5_ib_mr_rdma_pfault_handler` → `pagefault_single_data_segment`): finds the ODP MR of the
 * key, resolves the fault, and tells the NIC to resume (0) or fail the request (-errno). A key that
 * is not an ODP MR is treated as resolved, as the kernel does.
 */
export function mlx5IbPageFaultHandler(dev: Mlx5IbDev): NicPageFaultHandler {
  return (pf) => {
    dev.flushWork();
    const mr = dev.odpMkeys.get(pf.key);
    if (mr === undefined) return 0;
    dev.stats.pageFaults++;
    mr.faults++;
    const r = pagefaultMr(mr, pf.va, pf.bcnt, undefined, 0);
    if (r < 0) {
      dev.stats.pageFaultErrors++;
      return r;
    }
    return 0;
  };
}

/**
 * Tears down an implicit child emptied by an invalidation (kernel:
 * `destroy_unused_implicit_child_mr`): removes it from the parent's children now; the teardown,
 * which sleeps, is queued as work (kernel: `free_implicit_child_mr_work`).
 */
function destroyUnusedImplicitChildMr(mr: Mlx5IbMr): void {
  const imr = mr.parent!;
  if (imr.deregistered) return;
  const dev = mr.device;
  const idx = Math.floor(mr.umem.start / 2 ** dev.imrMttShift);
  if (imr.implicitChildren.get(idx) !== mr) return;
  imr.implicitChildren.delete(idx);
  dev.odpMkeys.delete(mr.mkey.key);
  dev.workQueue.push(() => freeImplicitChildMrWork(mr, idx));
}

/** Queued teardown of a reaped child (kernel: `free_implicit_child_mr_work`). */
function freeImplicitChildMrWork(mr: Mlx5IbMr, idx: number): void {
  const imr = mr.parent!;
  const dev = mr.device;
  if (!imr.deregistered) {
    mutexLock(imr.umem.umemMutex, 'free_implicit_child_mr_work');
    try {
      mlx5rUmrUpdateXlt(imr, idx, 1, 0, MLX5_IB_UPD_XLT_INDIRECT | MLX5_IB_UPD_XLT_ATOMIC);
    } finally {
      mutexUnlock(imr.umem.umemMutex);
    }
  }
  mlx5DeregOdpMrHw(mr);
  dev.stats.implicitChildrenDestroyed++;
}

/**
 * Stops the hardware using an MR and releases its umem (kernel: `mlx5_revoke_mr` +
 * `ib_umem_odp_release`); an implicit parent deregisters its children in between (kernel:
 * `mlx5_ib_free_odp_mr`). A second call does nothing.
 */
export function mlx5DeregOdpMrHw(mr: Mlx5IbMr): void {
  if (mr.deregistered) return;
  mr.deregistered = true;
  const dev = mr.device;
  dev.odpMkeys.delete(mr.mkey.key);
  dev.nic.destroyMkey(mr.mkey.key);
  if (mr.isOdpImplicit) mlx5IbFreeOdpMr(mr);
  ibUmemOdpRelease(mr.umem);
}

/** Deregisters every child of an implicit MR (kernel: `mlx5_ib_free_odp_mr`). */
function mlx5IbFreeOdpMr(imr: Mlx5IbMr): void {
  for (const [idx, child] of [...imr.implicitChildren]) {
    imr.implicitChildren.delete(idx);
    mlx5DeregOdpMrHw(child);
  }
}

/**
 * The mmu interval notifier callback of every ODP umem (kernel: `mlx5_ib_invalidate_range`):
 * refuses (false) a non-blockable range; otherwise, under `umem_mutex`: records `cur_seq`, zaps the
 * MTT entries of mapped pages in `[range.start, range.end)` in UMR blocks, DMA-unmaps those pages
 * (dirtying the written ones) and reaps an emptied implicit child. Returns true.
 */
export function mlx5IbInvalidateRange(
  sub: MmuIntervalNotifier,
  range: MmuNotifierRange,
  curSeq: number,
): boolean {
  const umem = sub.owner as IbUmemOdp;
  if (!mmuNotifierRangeBlockable(range)) return false;
  mutexLock(umem.umemMutex, 'mlx5_ib_invalidate_range');
  try {
    mmuIntervalSetSeq(sub, curSeq);
    if (umem.npages === 0) return true;
    const mr = umem.private as Mlx5IbMr | undefined;
    if (mr === undefined) return true;
    const start = Math.max(umem.start, range.start);
    const end = Math.min(umem.end, range.end);
    const pageSize = 2 ** umem.pageShift;
    const blockMask = MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT - 1;
    const list = umem.pfnList;
    const dmaList = umem.legacyDmaList;
    // hmm: the pfn is valid; legacy: the dma_list entry has access bits
    const mapped =
      umem.mode === 'hmm'
        ? (idx: number): boolean => list.test(idx, HMM_PFN_VALID)
        : (idx: number): boolean => dmaList![idx]! % 4 !== 0;
    let idx = 0;
    let blkStartIdx = 0;
    let inBlock = false;
    let invalidations = 0;
    const zap = (from: number, n: number): void => {
      mlx5rUmrUpdateXlt(mr, from, n, 0, MLX5_IB_UPD_XLT_ZAP | MLX5_IB_UPD_XLT_ATOMIC);
    };
    for (let addr = start; addr < end; addr += pageSize) {
      idx = (addr - umem.start) / pageSize;
      if (mapped(idx)) {
        if (!inBlock) {
          blkStartIdx = idx;
          inBlock = true;
        }
      } else if (inBlock && (idx & blockMask) === 0) {
        zap(blkStartIdx, idx - blkStartIdx);
        inBlock = false;
        invalidations += idx - blkStartIdx + 1;
      }
    }
    if (inBlock) {
      zap(blkStartIdx, idx - blkStartIdx + 1);
      invalidations += idx - blkStartIdx + 1;
    }
    mr.device.stats.invalidations++;
    mr.device.stats.invalidatedPages += invalidations;
    mr.invalidations += invalidations;
    ibUmemOdpUnmapDmaPages(umem, start, end);
    if (umem.npages === 0 && mr.parent !== undefined) destroyUnusedImplicitChildMr(mr);
  } finally {
    mutexUnlock(umem.umemMutex);
  }
  return true;
}

/** The notifier ops of ODP umems (kernel: `mlx5_mn_ops`). */
export const mlx5MnOps: MmuIntervalNotifierOps = { invalidate: mlx5IbInvalidateRange };

/**
 * Creates an implicit ODP MR covering the whole address space (kernel: `mlx5_ib_alloc_implicit_mr`):
 * a parent umem without lists, a KSM mkey of `imrKsmEntries` granules all pointing at the null
 * mkey (so every access faults until a child exists), enabled. Returns the MR or -errno.
 */
export function mlx5IbAllocImplicitMr(pd: IbPd, access: number): Mlx5IbMr | number {
  const dev = pd.device as Mlx5IbDev;
  const umem = ibUmemOdpAllocImplicit(dev, pd.mm, access, dev.mode, dev.stats.umem);
  if (isErr(umem)) return umem;
  umem.hooks = dev.hooks;
  const size = 2 ** dev.imrMttShift;
  const mkey = dev.nic.createMkey(
    MLX5_MKC_ACCESS_MODE_KSM,
    0,
    dev.imrKsmEntries * size,
    access,
    dev.imrMttShift,
    dev.imrKsmEntries,
  );
  const imr = new Mlx5IbMr(dev, pd, umem, mkey, 0, dev.imrKsmEntries * size, access, undefined, true);
  umem.private = imr;
  dev.nic.umrUpdateKsm(mkey.key, 0, [], true);
  dev.odpMkeys.set(mkey.key, imr);
  return imr;
}

/**
 * Snapshots the present pages of a new explicit ODP MR and enables its mkey (kernel:
 * `mlx5_ib_init_odp_mr` → `pagefault_real_mr(..., SNAPSHOT | ENABLE)`). Returns 0 or -errno.
 */
export function mlx5IbInitOdpMr(mr: Mlx5IbMr): number {
  const r = pagefaultRealMr(
    mr,
    mr.umem,
    mr.umem.address,
    mr.umem.length,
    undefined,
    MLX5_PF_FLAGS_SNAPSHOT | MLX5_PF_FLAGS_ENABLE,
  );
  return Math.min(r, 0);
}

/** The MR of `lkey` if this PD may prefetch it for `advice` (kernel: `get_prefetchable_mr`). */
function getPrefetchableMr(pd: IbPd, advice: number, lkey: number): Mlx5IbMr | undefined {
  const dev = pd.device as Mlx5IbDev;
  const mr = dev.odpMkeys.get(lkey);
  if (mr === undefined || mr.parent !== undefined || mr.pd !== pd || mr.deregistered) return undefined;
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE && !mr.umem.writable) return undefined;
  return mr;
}

/** Prefetches every element (kernel: `mlx5_ib_prefetch_sg_list`). Returns 0 or -errno. */
function prefetchSgList(pd: IbPd, advice: number, pfFlags: number, sgList: readonly IbSge[]): number {
  const dev = pd.device as Mlx5IbDev;
  for (const sge of sgList) {
    const mr = getPrefetchableMr(pd, advice, sge.lkey);
    if (mr === undefined) return -Errno.ENOENT;
    const r = pagefaultMr(mr, sge.addr, sge.length, { value: 0 }, pfFlags);
    if (r < 0) return r;
    dev.stats.prefetches++;
  }
  return 0;
}

/**
 * Prefetches MR ranges (kernel: `mlx5_ib_advise_mr_prefetch`): PREFETCH maps read-only
 * (`DOWNGRADE`), PREFETCH_WRITE maps writable, PREFETCH_NO_FAULT maps only present pages
 * (`SNAPSHOT`). With `IB_UVERBS_ADVISE_MR_FLAG_FLUSH` it runs now and returns its result;
 * otherwise the MRs are checked (-ENOENT) and the work is queued. Returns 0 or -errno.
 */
export function mlx5IbAdviseMr(pd: IbPd, advice: number, flags: number, sgList: readonly IbSge[]): number {
  const dev = pd.device as Mlx5IbDev;
  dev.flushWork();
  let pfFlags = 0;
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH) pfFlags |= MLX5_PF_FLAGS_DOWNGRADE;
  if (advice === IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT) pfFlags |= MLX5_PF_FLAGS_SNAPSHOT;
  if ((flags & IB_UVERBS_ADVISE_MR_FLAG_FLUSH) !== 0) return prefetchSgList(pd, advice, pfFlags, sgList);
  for (const sge of sgList) if (getPrefetchableMr(pd, advice, sge.lkey) === undefined) return -Errno.ENOENT;
  const copy = sgList.map((s) => ({ ...s }));
  dev.workQueue.push(() => {
    prefetchSgList(pd, advice, pfFlags, copy);
  });
  return 0;
}
