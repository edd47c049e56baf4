/**
 * iommu-dma: the DMA API on top of an IOMMU DMA domain. The IOVA cookie (an IOVA domain plus an
 * optional flush queue), IOVA allocation with the 32-bit-first rule, and the legacy one-shot
 * paths: `map_phys`/`unmap_phys` (one IOVA allocation per buffer) and `map_sg`/`unmap_sg` (one
 * IOVA allocation per list, granule widening, segment-boundary padding, one `iommu_map_sg`, then
 * merging into DMA segments). Kernel counterpart: drivers/iommu/dma-iommu.c (v6.17/v6.18).
 * Differs on purpose: no P2P classification beyond bus-address entries, no deferred attach,
 * no MSI cookies; CPU cache maintenance is counted, not simulated.
 */
import {
  Errno,
  type IommuDomain,
  type IommuIotlbGather,
  IovaDomain,
  iommuIotlbGatherInit,
  iommuIotlbSync,
  iommuIovaToPhys,
  iommuMap,
  iommuMapSg,
  iommuMinPgsize,
  iommuUnmapFast,
  iovaAlign,
  iovaOffset,
  iovaPfn,
  type PteLookup,
  SG_DMA_BUS_ADDRESS,
} from '@iovalink/iommu';
import { hex } from '@iovalink/iommu/internal';
import { archSyncDma } from './cpu-sync.js';
import type { Device } from './device.js';
import {
  DMA_ATTR_MMIO,
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  type DmaDataDirection,
  dmaInfoToProt,
} from './dma-direction.js';
import { FlushQueue } from './dma-iommu-fq.js';
import { DmaError } from './errors.js';
import { type Scatterlist, SG_DMA_SWIOTLB, sgIter, sgNext } from './scatterlist.js';
import {
  isSwiotlbBuffer,
  swiotlbSyncSingleForCpu,
  swiotlbSyncSingleForDevice,
  swiotlbTblMapSingle,
  swiotlbTblUnmapSingle,
} from './swiotlb.js';

/** The x86 MSI window every PCI domain reserves (kernel: IOMMU_RESV_MSI, 0xfee00000–0xfeefffff). */
export const MSI_RANGE_START = 0xfee00000;
/** Last byte of the MSI window. */
export const MSI_RANGE_END = 0xfeefffff;

/** Per-domain DMA state (kernel: `struct iommu_dma_cookie`). */
export interface IommuDmaCookie {
  readonly iovad: IovaDomain;
  /** Present on DMA_FQ domains. */
  readonly fq: FlushQueue | undefined;
  /** Scratch leaf for the pre-unmap walk (`iommuDmaCheckMapped`): one per domain, no per-call object. */
  readonly walk: PteLookup;
}

/** The cookie of a DMA-API domain. Throws when the domain was never initialised for DMA. */
export function iommuDmaCookie(domain: IommuDomain): IommuDmaCookie {
  const c = domain.iovaCookie as IommuDmaCookie | undefined;
  if (c === undefined) {
    throw new DmaError(`domain ${domain.id} has no DMA cookie: not a DMA-API domain`, {
      rule: 'iommu_dma: no cookie',
    });
  }
  return c;
}

/**
 * Sets a DMA-API domain up for the DMA layer (kernel: `iommu_dma_init_domain`): an IOVA domain
 * whose granule is the smallest page size and whose first pfn is max(1, aperture start), the MSI
 * window reserved, and a flush queue for DMA_FQ domains.
 */
export function iommuDmaInitDomain(dev: Device, domain: IommuDomain): IommuDmaCookie {
  const existing = domain.iovaCookie as IommuDmaCookie | undefined;
  if (existing !== undefined) return existing;
  const granule = iommuMinPgsize(domain);
  const startPfn = Math.max(1, Math.floor(domain.geometry.apertureStart / granule));
  const iovad = new IovaDomain(dev.machine, granule, startPfn);
  if (dev.isPci) iovad.reserveIova(iovaPfn(iovad, MSI_RANGE_START), iovaPfn(iovad, MSI_RANGE_END));
  const fq = domain.isFq ? new FlushQueue(domain, iovad) : undefined;
  const walk: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
  const cookie: IommuDmaCookie = { iovad, fq, walk };
  domain.iovaCookie = cookie;
  return cookie;
}

/** The device's DMA-API domain (hot path: no allocation); throws when it has none. */
export function devDomain(dev: Device): IommuDomain {
  const domain = dev.domain;
  if (!dev.dmaIommu || domain === undefined) {
    throw new DmaError(`${dev}: not behind an IOMMU DMA domain`, { rule: 'iommu_dma: not dma_iommu' });
  }
  return domain;
}

/** The device's DMA cookie (hot path: no allocation); throws when it has none. */
export function devCookie(dev: Device): IommuDmaCookie {
  return iommuDmaCookie(devDomain(dev));
}

/**
 * Allocates `size` bytes (granule multiple) of IOVA below `dmaLimit` (kernel:
 * `iommu_dma_alloc_iova`): PCI devices try below 4 GiB first without flushing the rcaches, and
 * after the first failure use their full mask for good. Returns the IOVA, or 0 on failure.
 */
export function iommuDmaAllocIova(dev: Device, domain: IommuDomain, size: number, dmaLimit: number): number {
  const { iovad } = iommuDmaCookie(domain);
  const granule = iovad.granule;
  const pages = size / granule;
  let limit = dmaLimit;
  if (domain.geometry.forceAperture) limit = Math.min(limit, domain.geometry.apertureEnd);
  const counters = dev.machine.counters;
  if (limit > 0xffffffff && dev.pci32bitWorkaround) {
    const pfn = iovad.allocIovaFast(pages, iovaPfn(iovad, 0xffffffff), false);
    if (pfn !== 0) {
      counters.iovaAllocs++;
      return pfn * granule;
    }
    dev.pci32bitWorkaround = false;
  }
  const pfn = iovad.allocIovaFast(pages, iovaPfn(iovad, limit), true);
  if (pfn === 0) return 0;
  counters.iovaAllocs++;
  return pfn * granule;
}

/**
 * Returns IOVA space (kernel: `iommu_dma_free_iova`): into the flush queue with the gather's
 * page-table pages when the gather is queued, else straight back to the rcache.
 */
export function iommuDmaFreeIova(
  domain: IommuDomain,
  iova: number,
  size: number,
  gather: { queued: boolean; freelist: number[] } | undefined,
): void {
  const { iovad, fq } = iommuDmaCookie(domain);
  const pfn = iova / iovad.granule;
  const pages = size / iovad.granule;
  if (gather?.queued && fq !== undefined) {
    fq.queueIova(pfn, pages, gather.freelist);
    gather.freelist = [];
  } else {
    iovad.freeIovaFast(pfn, pages);
  }
  domain.iommu.machine.counters.iovaFrees++;
}

/**
 * Maps `[phys, phys + size)` into a fresh IOVA range (kernel: `__iommu_dma_map`): granule-widened,
 * `iommu_map` with sync. Returns the bus address of `phys`, or DMA_MAPPING_ERROR.
 */
export function __iommuDmaMap(
  dev: Device,
  phys: number,
  size: number,
  prot: number,
  dmaMask: number,
): number {
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  if (dev.dmaParms.minAlignMask > iovad.granule - 1) {
    throw new DmaError(`${dev}: min_align_mask ${hex(dev.dmaParms.minAlignMask)} exceeds the IOVA granule`, {
      rule: '__iommu_dma_map: min_align_mask > granule',
    });
  }
  const off = iovaOffset(iovad, phys);
  const len = iovaAlign(iovad, size + off);
  const iova = iommuDmaAllocIova(dev, domain, len, dmaMask);
  if (iova === 0) return DMA_MAPPING_ERROR;
  if (iommuMap(domain, iova, phys - off, len, prot) !== 0) {
    iommuDmaFreeIova(domain, iova, len, undefined);
    return DMA_MAPPING_ERROR;
  }
  return iova + off;
}

/**
 * Throws a `DmaError` unless `[start, start + len)` is mapped leaf by leaf with no hole, starting
 * and ending on leaf boundaries, so that an unmap of it removes exactly `len` bytes. Reads the
 * page table only. No kernel counterpart: the kernel unmaps first and WARNs when
 * `iommu_unmap_fast` returns a different length, leaving PTEs cleared and (in
 * `__iommu_dma_unmap`) still freeing the IOVA; we refuse the call before anything changes.
 */
export function iommuDmaCheckMapped(
  dev: Device,
  domain: IommuDomain,
  start: number,
  len: number,
  what: string,
): void {
  const pgtbl = domain.pgtbl;
  const leaf = iommuDmaCookie(domain).walk;
  const end = start + len;
  let addr = start;
  while (addr < end && pgtbl !== undefined && pgtbl.lookup(addr, leaf)) {
    if (leaf.leafIova !== addr) break;
    addr += leaf.leafSize;
  }
  if (addr !== end) {
    throw new DmaError(
      `${what}: ${dev.name}: [${hex(start)}, +${hex(len)}) is not wholly mapped: ${addr < end ? `${hex(addr)} has no mapping of its own` : `a mapping runs on to ${hex(addr)}`}; expected exactly what one map call returned`,
      { rule: `${what}: range not mapped` },
    );
  }
}

/**
 * Throws a `DmaError` unless `[start, start + len)` is the whole mapping of one IOVA allocation of
 * a legacy map (`__iommu_dma_map` / `iommu_dma_map_sg`): it starts the allocation (`find_iova`),
 * its first and last granules are mapped, and the granule after it is not mapped inside the same
 * allocation. A legacy mapping is one `iommu_map` of a contiguous range and partial unmaps are
 * refused here, so it has no hole in the middle: these few page-table reads decide it. Catches an
 * unmap of an address never mapped, a double unmap, and a wrong size (larger or smaller by a
 * granule or more) before any state changes; the kernel WARNs after clearing PTEs and frees the
 * IOVA regardless.
 */
function iommuDmaCheckUnmap(dev: Device, domain: IommuDomain, start: number, len: number): void {
  const iovad = iommuDmaCookie(domain).iovad;
  const granule = iovad.granule;
  const node = iovad.findIova(start / granule);
  const end = start + len;
  if (
    node === undefined ||
    node.pfnLo * granule !== start ||
    end > (node.pfnHi + 1) * granule ||
    iommuIovaToPhys(domain, start) === 0 ||
    (len > granule && iommuIovaToPhys(domain, end - granule) === 0)
  ) {
    throw new DmaError(
      `__iommu_dma_unmap: ${dev.name}: [${hex(start)}, +${hex(len)}) is not a live mapping: never mapped, already unmapped, not the address the map returned, or larger than mapped`,
      { rule: '__iommu_dma_unmap: not mapped' },
    );
  }
  if (end <= node.pfnHi * granule && iommuIovaToPhys(domain, end) !== 0) {
    throw new DmaError(
      `__iommu_dma_unmap: ${dev.name}: unmap of [${hex(start)}, +${hex(len)}) is shorter than its mapping (${hex(end)} is still mapped); expected the size passed to map`,
      { rule: '__iommu_dma_unmap: size smaller than mapped' },
    );
  }
}

/** The gather an unmap lends out between calls (see `iommuDmaTakeGather`); null while lent. */
let spareGather: IommuIotlbGather | null = null;

/**
 * A fresh gather for one unmap (kernel: `iommu_iotlb_gather_init` on the unmapping function's
 * stack): the one kept since the last `iommuDmaPutGather`, or a new one when it is lent out (a
 * nested unmap) or was lost to a throw.
 */
export function iommuDmaTakeGather(queued: boolean): IommuIotlbGather {
  const g = spareGather;
  if (g === null) return iommuIotlbGatherInit(queued);
  spareGather = null;
  g.queued = queued;
  return g;
}

/**
 * Hands a gather back once its unmap is done with it: emptied as `iommu_iotlb_gather_init` leaves
 * it; a freelist someone may still hold is replaced, never cleared.
 */
export function iommuDmaPutGather(g: IommuIotlbGather): void {
  g.start = Number.MAX_SAFE_INTEGER;
  g.end = 0;
  g.pgsize = 0;
  if (g.freelist.length !== 0) g.freelist = [];
  spareGather = g;
}

/**
 * Unmaps a range mapped by `__iommuDmaMap` (kernel: `__iommu_dma_unmap`): strict domains sync
 * the IOTLB (one ranged invalidation) and free the IOVA at once; lazy domains queue the IOVA and
 * the freed page-table pages on the flush queue. Differs: a range that is not exactly one live
 * mapping throws `DmaError` before anything changes (`iommuDmaCheckUnmap`).
 */
export function __iommuDmaUnmap(dev: Device, dmaAddr: number, size: number): void {
  const domain = devDomain(dev);
  const cookie = iommuDmaCookie(domain);
  const iovad = cookie.iovad;
  const off = iovaOffset(iovad, dmaAddr);
  const start = dmaAddr - off;
  const len = iovaAlign(iovad, size + off);
  iommuDmaCheckUnmap(dev, domain, start, len);
  const gather = iommuDmaTakeGather(cookie.fq !== undefined);
  iommuUnmapFast(domain, start, len, gather);
  if (!gather.queued) iommuIotlbSync(domain, gather);
  iommuDmaFreeIova(domain, start, len, gather);
  iommuDmaPutGather(gather);
}

/**
 * True when a mapping of this device must bounce through swiotlb (kernel: `dev_use_swiotlb`):
 * untrusted devices, so that a partial granule never exposes neighbouring memory.
 */
export function devUseSwiotlb(dev: Device): boolean {
  return dev.untrusted;
}

/**
 * Maps one physically contiguous buffer (kernel: `iommu_dma_map_phys`, formerly `_map_page`):
 * untrusted devices bounce unaligned buffers through swiotlb (slot aligned like the granule),
 * then `__iommuDmaMap`. Returns the bus address or DMA_MAPPING_ERROR.
 */
export function iommuDmaMapPhys(
  dev: Device,
  phys: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  const iovad = devCookie(dev).iovad;
  const prot = dmaInfoToProt(dir, dev.coherent, attrs);
  let p = phys;
  let bounced = false;
  if (devUseSwiotlb(dev) && (iovaOffset(iovad, phys) !== 0 || iovaOffset(iovad, size) !== 0)) {
    if (attrs & DMA_ATTR_MMIO) return DMA_MAPPING_ERROR;
    const mem = dev.swiotlb;
    if (mem === undefined) return DMA_MAPPING_ERROR;
    p = swiotlbTblMapSingle(
      mem,
      phys,
      size,
      iovad.granule - 1,
      dev.dmaParms.minAlignMask,
      dir,
      attrs,
      dev.untrusted,
    );
    if (p === DMA_MAPPING_ERROR) return DMA_MAPPING_ERROR;
    dev.usedSwiotlb = true;
    bounced = true;
  }
  archSyncDma(dev, attrs);
  const iova = __iommuDmaMap(dev, p, size, prot, dev.dmaMask);
  if (iova === DMA_MAPPING_ERROR && bounced && dev.swiotlb !== undefined) {
    swiotlbTblUnmapSingle(dev.swiotlb, p, size, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC);
  }
  return iova;
}

/**
 * Unmaps one buffer (kernel: `iommu_dma_unmap_phys`): finds the physical address through the page
 * table, CPU-syncs non-coherent devices, `__iommuDmaUnmap`, then releases a bounce slot (copying
 * back for FROM_DEVICE/BIDIRECTIONAL).
 */
export function iommuDmaUnmapPhys(
  dev: Device,
  dmaHandle: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  const phys = iommuIovaToPhys(devDomain(dev), dmaHandle);
  if (phys === 0) {
    throw new DmaError(`${dev}: unmap of ${hex(dmaHandle)}: no translation (not mapped)`, {
      rule: 'iommu_dma_unmap_phys: no translation',
    });
  }
  __iommuDmaUnmap(dev, dmaHandle, size);
  archSyncDma(dev, attrs);
  if (dev.swiotlb !== undefined && isSwiotlbBuffer(dev.swiotlb, phys)) {
    swiotlbTblUnmapSingle(dev.swiotlb, phys, size, dir, attrs);
  }
}

/** Syncs a streaming mapping for the CPU (kernel: `iommu_dma_sync_single_for_cpu`). */
export function iommuDmaSyncSingleForCpu(
  dev: Device,
  dmaHandle: number,
  size: number,
  dir: DmaDataDirection,
): void {
  const phys = iommuIovaToPhys(devDomain(dev), dmaHandle);
  if (!dev.coherent) dev.machine.counters.cpuCacheSyncs++;
  if (dev.swiotlb !== undefined && phys !== 0 && isSwiotlbBuffer(dev.swiotlb, phys)) {
    swiotlbSyncSingleForCpu(dev.swiotlb, phys, size, dir);
  }
}

/** Syncs a streaming mapping for the device (kernel: `iommu_dma_sync_single_for_device`). */
export function iommuDmaSyncSingleForDevice(
  dev: Device,
  dmaHandle: number,
  size: number,
  dir: DmaDataDirection,
): void {
  const phys = iommuIovaToPhys(devDomain(dev), dmaHandle);
  if (dev.swiotlb !== undefined && phys !== 0 && isSwiotlbBuffer(dev.swiotlb, phys)) {
    swiotlbSyncSingleForDevice(dev.swiotlb, phys, size, dir);
  }
  if (!dev.coherent) dev.machine.counters.cpuCacheSyncs++;
}

/** Untrusted path of map_sg: every entry mapped on its own (kernel: `iommu_dma_map_sg_swiotlb`). */
function iommuDmaMapSgSwiotlb(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  let i = 0;
  for (const s of sgIter(sgl, nents)) {
    const addr = iommuDmaMapPhys(dev, s.page + s.offset, s.length, dir, attrs);
    if (addr === DMA_MAPPING_ERROR) {
      iommuDmaUnmapSgSwiotlb(dev, sgl, i, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC);
      for (const t of sgIter(sgl, i)) {
        t.dmaAddress = DMA_MAPPING_ERROR;
        t.dmaLength = 0;
      }
      return -Errno.EIO;
    }
    s.dmaAddress = addr;
    s.dmaLength = s.length;
    s.dmaFlags |= SG_DMA_SWIOTLB;
    i++;
  }
  return nents;
}

/** Untrusted path of unmap_sg: every entry unmapped on its own (kernel: `iommu_dma_unmap_sg_swiotlb`). */
function iommuDmaUnmapSgSwiotlb(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  for (const s of sgIter(sgl, nents)) {
    iommuDmaUnmapPhys(dev, s.dmaAddress, s.dmaLength, dir, attrs);
    s.dmaFlags &= ~SG_DMA_SWIOTLB;
  }
}

/**
 * Writes the DMA segments in place at the head of the list (kernel: `__finalise_sg`): restores
 * each entry's offset and length, and appends an entry to the current segment when that segment
 * is non-empty, the entry starts at a granule boundary, the IOVA cursor is not on a segment
 * boundary, and the result stays within the maximum segment size. Returns the segment count.
 */
function finaliseSg(dev: Device, sgl: Scatterlist, nents: number, dmaAddrStart: number): number {
  const segMask = dev.dmaParms.segmentBoundaryMask;
  const segSize = segMask + 1;
  const maxLen = dev.dmaParms.maxSegmentSize;
  let cur: Scatterlist = sgl;
  let curLen = 0;
  let count = 0;
  let dmaAddr = dmaAddrStart;
  let i = 0;
  for (const s of sgIter(sgl, nents)) {
    const sIovaOff = s.dmaAddress;
    const sLength = s.dmaLength;
    const sIovaLen = s.length;
    s.dmaAddress = DMA_MAPPING_ERROR;
    s.dmaLength = 0;
    if ((s.dmaFlags & SG_DMA_BUS_ADDRESS) !== 0) {
      i++;
      continue;
    }
    s.offset += sIovaOff;
    s.length = sLength;
    if (curLen !== 0 && sIovaOff === 0 && dmaAddr % segSize !== 0 && maxLen - curLen >= sLength) {
      curLen += sLength;
    } else {
      if (i > 0) cur = sgNext(cur)!;
      curLen = sLength;
      count++;
      cur.dmaAddress = dmaAddr + sIovaOff;
    }
    cur.dmaLength = curLen;
    dmaAddr += sIovaLen;
    if (sLength + sIovaOff < sIovaLen) curLen = 0;
    i++;
  }
  return count;
}

/** Restores a list after a failed map (kernel: `__invalidate_sg`). */
function invalidateSg(sgl: Scatterlist, nents: number): void {
  for (const s of sgIter(sgl, nents)) {
    if (s.dmaAddress !== DMA_MAPPING_ERROR) s.offset += s.dmaAddress;
    if (s.dmaLength !== 0) s.length = s.dmaLength;
    s.dmaAddress = DMA_MAPPING_ERROR;
    s.dmaLength = 0;
  }
}

/**
 * Maps a scatterlist with one IOVA allocation (kernel: `iommu_dma_map_sg`). Returns the number of
 * DMA segments (≤ nents), or -errno (-ENOMEM when IOVA space ran out, -EINVAL for other mapping
 * failures, -EIO for a failed bounce) with the list restored and nothing left mapped.
 */
export function iommuDmaMapSg(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  if (devUseSwiotlb(dev)) return iommuDmaMapSgSwiotlb(dev, sgl, nents, dir, attrs);
  if ((attrs & DMA_ATTR_SKIP_CPU_SYNC) === 0 && !dev.coherent) dev.machine.counters.cpuCacheSyncs += nents;
  const prot = dmaInfoToProt(dir, dev.coherent, attrs);
  const segSize = dev.dmaParms.segmentBoundaryMask + 1;
  let prev: Scatterlist | undefined;
  let iovaLen = 0;
  for (const s of sgIter(sgl, nents)) {
    if ((s.dmaFlags & SG_DMA_BUS_ADDRESS) !== 0) continue;
    const sIovaOff = iovaOffset(iovad, s.offset);
    s.dmaAddress = sIovaOff;
    s.dmaLength = s.length;
    s.offset -= sIovaOff;
    const sLength = iovaAlign(iovad, s.length + sIovaOff);
    s.length = sLength;
    // bytes from the current IOVA end to the next segment boundary
    const padLen = (segSize - (iovaLen % segSize)) % segSize;
    if (padLen !== 0 && padLen < sLength - 1 && prev !== undefined) {
      prev.length += padLen;
      iovaLen += padLen;
    }
    iovaLen += sLength;
    prev = s;
  }
  if (iovaLen === 0) return finaliseSg(dev, sgl, nents, 0);
  const iova = iommuDmaAllocIova(dev, domain, iovaLen, dev.dmaMask);
  if (iova === 0) {
    invalidateSg(sgl, nents);
    return -Errno.ENOMEM;
  }
  const ret = iommuMapSg(domain, iova, sgIter(sgl, nents), prot);
  if (ret < iovaLen) {
    iommuDmaFreeIova(domain, iova, iovaLen, undefined);
    invalidateSg(sgl, nents);
    return ret === -Errno.ENOMEM || ret === -Errno.EREMOTEIO ? ret : -Errno.EINVAL;
  }
  return finaliseSg(dev, sgl, nents, iova);
}

/**
 * Unmaps a list mapped by `iommuDmaMapSg` (kernel: `iommu_dma_unmap_sg`): one `__iommuDmaUnmap` of
 * the span from the first to the last DMA segment; per-entry unmaps for bounced lists.
 */
export function iommuDmaUnmapSg(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  if ((sgl.dmaFlags & SG_DMA_SWIOTLB) !== 0) {
    iommuDmaUnmapSgSwiotlb(dev, sgl, nents, dir, attrs);
    return;
  }
  let start = -1;
  let end = -1;
  for (const s of sgIter(sgl, nents)) {
    if (s.dmaLength === 0) {
      if (start >= 0) break;
      continue;
    }
    if (start < 0) start = s.dmaAddress;
    end = s.dmaAddress + s.dmaLength;
  }
  if (start < 0) return;
  __iommuDmaUnmap(dev, start, end - start);
  if ((attrs & DMA_ATTR_SKIP_CPU_SYNC) === 0 && !dev.coherent) dev.machine.counters.cpuCacheSyncs += nents;
}
