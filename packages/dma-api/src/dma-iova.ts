/**
 * The two-step DMA API: reserve IOVA space up front (`dma_iova_try_alloc`), then link physical
 * ranges into it without IOTLB flushes (`dma_iova_link`), make them visible once
 * (`dma_iova_sync`), and tear down per range (`dma_iova_unlink` + `dma_iova_free`) or in one go
 * (`dma_iova_destroy`). No scatterlist, one IOVA allocation per state, at most one IOTLB
 * invalidation per teardown. Kernel counterpart: the "IOVA-based API" part of
 * drivers/iommu/dma-iommu.c and `struct dma_iova_state` in include/linux/dma-mapping.h (v6.17;
 * documented in Documentation/core-api/dma-api.rst, Part Ie).
 * Differs on purpose: the kernel keeps "used swiotlb" in bit 63 of the state's size; we keep a
 * separate boolean (a JS number cannot hold bit 63). Links out of the allocated range are always
 * rejected (the kernel does not check). On a failed bounced link the kernel unlinks from offset 0
 * instead of from `offset` (a latent bug, kernel-reference §1.4); we unlink what this call mapped.
 */
import {
  Errno,
  type IovaDomain,
  iommuIotlbSync,
  iommuIovaToPhys,
  iommuMapNosync,
  iommuSyncMap,
  iommuUnmapFast,
  iovaAlign,
  iovaOffset,
} from '@iovalink/iommu';
import { hex } from '@iovalink/iommu/internal';
import { archSyncDma, devNeedsCpuSync } from './cpu-sync.js';
import type { Device } from './device.js';
import {
  DMA_ATTR_MMIO,
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  type DmaDataDirection,
  dmaInfoToProt,
} from './dma-direction.js';
import { DMA_ENTRY_NO_DIR, DMA_ENTRY_SPAN, DmaEntry, dmaEntry } from './dma-entry.js';
import {
  devCookie,
  devDomain,
  iommuDmaAllocIova,
  iommuDmaCheckMapped,
  iommuDmaCookie,
  iommuDmaFreeIova,
  iommuDmaPutGather,
  iommuDmaTakeGather,
} from './dma-iommu.js';
import { DmaDebugError, DmaError } from './errors.js';
import { isSwiotlbBuffer, swiotlbTblMapSingle, swiotlbTblUnmapSingle } from './swiotlb.js';

/** Bytes the kernel's `struct dma_iova_state` occupies (addr + size), embedded in the caller. */
export const DMA_IOVA_STATE_SIZE = 16;

/** Caller-owned state of one IOVA range (kernel: `struct dma_iova_state`). */
export class DmaIovaState {
  /** Bus address of byte 0 of the caller's buffer: IOVA base + start pad. */
  addr = 0;
  /** Requested size in bytes; 0 when the state holds no IOVA. */
  size = 0;
  /** Some link bounced through swiotlb (kernel: bit 63 of `__size`); never cleared. */
  usedSwiotlb = false;
  /**
   * Model-only (the kernel keeps no such count): granule bytes currently linked, and the end of
   * the highest link, both counted from the granule-aligned IOVA base. `linkedBytes ===
   * linkedEnd` means `[0, linkedEnd)` is wholly linked (links never overlap), which lets unlink
   * and destroy refuse misuse before anything changes without walking the page table.
   */
  linkedBytes = 0;
  linkedEnd = 0;
}

/** Size of the state's IOVA range (kernel: `dma_iova_size`). */
export function dmaIovaSize(state: DmaIovaState): number {
  return state.size;
}

/** True when the state holds IOVA space (kernel: `dma_use_iova`). */
export function dmaUseIova(state: DmaIovaState): boolean {
  return state.size !== 0;
}

/**
 * Reserves IOVA space for `size` bytes (kernel: `dma_iova_try_alloc`). Zeroes the state first.
 * Returns false when the device does not use iommu-dma (no IOMMU, identity or blocked domain), the
 * size is zero, or IOVA space cannot be had — the caller then uses the streaming API. `phys` only
 * sets the start pad, so `state.addr` has the same offset within the granule (pass 0 if unknown).
 */
export function dmaIovaTryAlloc(dev: Device, state: DmaIovaState, phys: number, size: number): boolean {
  state.addr = 0;
  state.size = 0;
  state.usedSwiotlb = false;
  state.linkedBytes = 0;
  state.linkedEnd = 0;
  if (!dev.dmaIommu) return false;
  if (!(size > 0) || !Number.isSafeInteger(size)) return false;
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  const pad = iovaOffset(iovad, phys);
  const len = iovaAlign(iovad, size + pad);
  const iova = iommuDmaAllocIova(dev, domain, len, dev.dmaMask);
  if (iova === 0) return false;
  state.addr = iova + pad;
  state.size = size;
  dev.debug?.iovaAlloc(state, size, iovad.granule, pad);
  dev.machine.tracer?.instant('dma_iova_try_alloc', 'iova', { dev: dev.name, addr: state.addr, size });
  return true;
}

/** Throws unless the state holds IOVA; returns 0 (an entry point's `check`). */
function checkState(dev: Device, state: DmaIovaState, what: string): number {
  if (!dmaUseIova(state)) {
    throw new DmaDebugError(
      `${what}: ${dev.name}: the state holds no IOVA (dma_iova_try_alloc failed or was not called)`,
      {
        rule: `${what}: no IOVA allocated`,
      },
    );
  }
  return 0;
}

function throwOutside(
  dev: Device,
  state: DmaIovaState,
  offset: number,
  size: number,
  what = 'dma_iova_link',
): never {
  throw new DmaDebugError(
    `${what}: ${dev.name}: [${hex(offset)}, +${hex(size)}) is outside the allocated IOVA [0, ${hex(state.size)})`,
    { rule: `${what}: outside allocated IOVA` },
  );
}

/** Maps `size` granule-aligned bytes at bus `addr` without IOTLB sync (kernel: `__dma_iova_link`). */
function iovaLinkRaw(
  dev: Device,
  addr: number,
  phys: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  archSyncDma(dev, attrs);
  return iommuMapNosync(devDomain(dev), addr, phys, size, dmaInfoToProt(dir, dev.coherent, attrs));
}

/**
 * Bounces a partial granule through swiotlb and links the slot's granule (kernel:
 * `iova_bounce_and_link`). Returns 0 or -errno.
 */
function bounceAndLink(
  dev: Device,
  addr: number,
  phys: number,
  bounceLen: number,
  dir: DmaDataDirection,
  attrs: number,
  startPad: number,
): number {
  const mem = dev.swiotlb;
  const iovad = devCookie(dev).iovad;
  if (attrs & DMA_ATTR_MMIO) return -Errno.EPERM;
  if (mem === undefined) return -Errno.ENOMEM;
  const bouncePhys = swiotlbTblMapSingle(
    mem,
    phys,
    bounceLen,
    iovad.granule - 1,
    dev.dmaParms.minAlignMask,
    dir,
    attrs,
    dev.untrusted,
  );
  if (bouncePhys === DMA_MAPPING_ERROR) return -Errno.ENOMEM;
  dev.usedSwiotlb = true;
  const ret = iovaLinkRaw(
    dev,
    addr - startPad,
    bouncePhys - startPad,
    iovaAlign(iovad, bounceLen + startPad),
    dir,
    attrs,
  );
  if (ret !== 0) swiotlbTblUnmapSingle(mem, bouncePhys, bounceLen, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC);
  return ret;
}

/**
 * Links `[phys, phys + size)` at `state.addr + offset` (kernel: `dma_iova_link`), without flushing
 * the IOTLB. All links but the first must start on the merge boundary: a `phys` with a start pad
 * at a non-zero offset returns -EIO and maps nothing. Untrusted devices bounce partial head and
 * tail granules through swiotlb. Returns 0 or -errno (-EIO, -ENOMEM, -EEXIST, -EPERM); on error
 * nothing of this call stays mapped, and the caller must undo its earlier links.
 */
export function dmaIovaLink(
  dev: Device,
  state: DmaIovaState,
  phys: number,
  offset: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): number {
  const open = dmaEntry(dev, LINK, dir, state, phys, offset, size);
  if (open < 0) return open;
  const machine = dev.machine;
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  const pad = iovaOffset(iovad, phys);
  let ret: number;
  if (dev.untrusted && (pad !== 0 || iovaOffset(iovad, phys + size) !== 0)) {
    ret = linkSwiotlb(dev, state, phys, offset, size, dir, attrs);
  } else {
    // the common case, inlined (`iovaLinkRaw` without a second domain lookup): whole granules
    // mapped without an IOTLB sync (__dma_iova_link)
    archSyncDma(dev, attrs);
    ret = iommuMapNosync(
      domain,
      state.addr + offset - pad,
      phys - pad,
      iovaAlign(iovad, size + pad),
      dmaInfoToProt(dir, dev.coherent, attrs),
    );
  }
  if (ret === 0) {
    noteLinked(iovad, state, state.addr + offset - pad, iovaAlign(iovad, size + pad));
    machine.counters.dmaLinks++;
    dev.debug?.addLink(state, offset, size);
  }
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
  return ret;
}

/** Bounced link of an unaligned range (kernel: `iommu_dma_iova_link_swiotlb`). */
function linkSwiotlb(
  dev: Device,
  state: DmaIovaState,
  phys: number,
  offset: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  const iovad = devCookie(dev).iovad;
  const granule = iovad.granule;
  const addr = state.addr + offset;
  const startPad = iovaOffset(iovad, phys);
  const endPad = iovaOffset(iovad, phys + size);
  let mapped = 0;
  let p = phys;
  let left = size;
  let ret = 0;
  if (startPad !== 0) {
    const bounceLen = Math.min(left, granule - startPad);
    ret = bounceAndLink(dev, addr, p, bounceLen, dir, attrs, startPad);
    if (ret !== 0) return ret;
    state.usedSwiotlb = true;
    mapped += bounceLen;
    p += bounceLen;
    left -= bounceLen;
  }
  if (left > endPad && ret === 0) {
    ret = iovaLinkRaw(dev, addr + mapped, p, left - endPad, dir, attrs);
    if (ret === 0) {
      mapped += left - endPad;
      p += left - endPad;
      left = endPad;
    }
  }
  if (left > 0 && ret === 0) {
    ret = bounceAndLink(dev, addr + mapped, p, left, dir, attrs, 0);
    if (ret === 0) {
      state.usedSwiotlb = true;
      mapped += left;
    }
  }
  if (ret !== 0 && mapped > 0)
    unlinkRange(dev, state, offset, mapped, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC, false);
  return ret;
}

/**
 * Makes linked ranges visible to the device (kernel: `dma_iova_sync` → `iommu_sync_map`): needed
 * only by IOMMUs that cache non-present entries, free elsewhere. Returns 0 or -errno.
 */
export function dmaIovaSync(dev: Device, state: DmaIovaState, offset: number, size: number): number {
  dmaEntry(dev, SYNC, DMA_ENTRY_NO_DIR, state, 0, offset, size);
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  const pad = iovaOffset(iovad, state.addr);
  return iommuSyncMap(domain, state.addr + offset - pad, iovaAlign(iovad, size + pad));
}

/** Slow teardown walk: CPU syncs and bounce releases granule by granule (kernel: `iommu_dma_iova_unlink_range_slow`). */
function unlinkSlow(dev: Device, start: number, end: number, dir: DmaDataDirection, attrs: number): void {
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  let addr = start;
  while (addr < end) {
    const len = Math.min(iovad.granule - iovaOffset(iovad, addr), end - addr);
    const phys = iommuIovaToPhys(domain, addr);
    if (phys === 0) {
      throw new DmaError(`dma_iova_unlink: ${dev.name}: ${hex(addr)} has no translation`, {
        rule: 'dma_iova_unlink: no translation',
      });
    }
    archSyncDma(dev, attrs);
    if (dev.swiotlb !== undefined && isSwiotlbBuffer(dev.swiotlb, phys)) {
      swiotlbTblUnmapSingle(dev.swiotlb, phys, len, dir, attrs);
    }
    addr += len;
  }
}

/** Granule-aligned start of the state's IOVA range. */
function iovaBase(iovad: IovaDomain, state: DmaIovaState): number {
  return state.addr - iovaOffset(iovad, state.addr);
}

/** Records a successful link of `len` granule bytes at bus `start` in the state's model-only count. */
function noteLinked(iovad: IovaDomain, state: DmaIovaState, start: number, len: number): void {
  state.linkedBytes += len;
  const end = start + len - iovaBase(iovad, state);
  if (end > state.linkedEnd) state.linkedEnd = end;
}

/** Records an unlink of `[offset, offset + size)` (whole granules) in the model-only count. */
function noteUnlinked(iovad: IovaDomain, state: DmaIovaState, offset: number, size: number): void {
  const addr = state.addr + offset;
  const start = addr - iovaOffset(iovad, addr) - iovaBase(iovad, state);
  const end = start + iovaAlign(iovad, size + iovaOffset(iovad, addr));
  state.linkedBytes -= end - start;
  // the top link went and what is left fills [0, start): still dense
  if (end === state.linkedEnd && state.linkedBytes === start) state.linkedEnd = start;
}

/**
 * Throws before anything changes unless `[offset, offset + size)` lies inside the state's IOVA
 * and is wholly linked, and, when `whole` (destroy), nothing else is linked. Decided from the
 * state's link count when `[0, linkedEnd)` is dense (the common case: no page-table read), else
 * by walking the range's page-table leaves. No kernel counterpart: `dma_iova_unlink` and
 * `dma_iova_destroy` WARN after clearing PTEs when the unmapped length differs, and destroy frees
 * the IOVA regardless.
 */
function checkUnlink(
  dev: Device,
  state: DmaIovaState,
  offset: number,
  size: number,
  whole: boolean,
  what: string,
): void {
  if (!(size > 0) || !(offset >= 0) || offset + size > state.size)
    throwOutside(dev, state, offset, size, what);
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  const addr = state.addr + offset;
  const start = addr - iovaOffset(iovad, addr);
  const end = start + iovaAlign(iovad, size + iovaOffset(iovad, addr));
  const need = end - iovaBase(iovad, state);
  if (whole && state.linkedBytes !== need) {
    throw new DmaError(
      `${what}: ${dev.name}: ${hex(state.linkedBytes)} bytes are linked, [0, ${hex(offset + size)}) takes ${hex(need)}: destroy takes exactly the one linked range from offset 0`,
      { rule: state.linkedBytes > need ? `${what}: links beyond mapped_len` : `${what}: range not mapped` },
    );
  }
  if (state.linkedBytes === state.linkedEnd && need <= state.linkedEnd) return;
  iommuDmaCheckMapped(dev, domain, start, end - start, what);
}

// The opening of each entry point (argument checks, dma-debug hook, tracepoint): see dma-entry.ts.
// Hook arguments: (state, phys, offset, size).
const LINK = new DmaEntry<DmaIovaState, number, number, number>({
  name: 'dma_iova_link',
  category: 'iova',
  check: (dev, state, phys, offset, size) => {
    if (state.size === 0) checkState(dev, state, 'dma_iova_link');
    if (!(size > 0) || offset < 0 || offset + size > state.size) throwOutside(dev, state, offset, size);
    if (phys < 0 || phys + size > dev.machine.phys.size) dev.machine.phys.check(phys, size);
    // all links but the first start on the merge boundary: else -EIO, nothing mapped (kernel WARNs)
    return offset !== 0 && iovaOffset(devCookie(dev).iovad, phys) !== 0 ? -Errno.EIO : 0;
  },
  debug: (debug, state, _phys, offset, size) => debug.checkLink(state, offset, size),
  trace: (dev, _state, phys, offset, size) => ({ dev: dev.name, phys, offset, size }),
});
const SYNC = new DmaEntry<DmaIovaState, 0, number, number>({
  name: 'dma_iova_sync',
  category: 'iova',
  check: (dev, state, _phys, offset, size) => {
    checkState(dev, state, 'dma_iova_sync');
    if (!(size > 0) || !(offset >= 0) || offset + size > state.size)
      throwOutside(dev, state, offset, size, 'dma_iova_sync');
    return 0;
  },
  trace: (dev, _state, _phys, offset, size) => ({ dev: dev.name, offset, size }),
  instant: true,
});
const UNLINK = new DmaEntry<DmaIovaState, 0, number, number>({
  name: 'dma_iova_unlink',
  category: 'iova',
  check: (dev, state) => checkState(dev, state, 'dma_iova_unlink'),
  debug: (debug, state, _phys, offset, size) => debug.checkUnlink(state, offset, size),
  verify: (dev, state, _phys, offset, size) =>
    checkUnlink(dev, state, offset, size, false, 'dma_iova_unlink'),
  trace: (dev, _state, _phys, offset, size) => ({ dev: dev.name, offset, size }),
});
const DESTROY = new DmaEntry<DmaIovaState, 0, 0, number>({
  name: 'dma_iova_destroy',
  category: 'iova',
  check: (dev, state) => checkState(dev, state, 'dma_iova_destroy'),
  debug: (debug, state, _phys, _offset, mappedLen) => debug.checkDestroy(state, mappedLen),
  verify: (dev, state, _phys, _offset, mappedLen) =>
    checkUnlink(dev, state, 0, mappedLen, true, 'dma_iova_destroy'),
  trace: (dev, _state, _phys, _offset, mappedLen) => ({ dev: dev.name, mappedLen }),
});
const FREE = new DmaEntry<DmaIovaState, 0, 0, number>({
  name: 'dma_iova_free',
  category: 'iova',
  check: (dev, state) => checkState(dev, state, 'dma_iova_free'),
  debug: (debug, state) => debug.checkFree(state),
  verify: (dev, state) => {
    if (state.linkedBytes !== 0) {
      throw new DmaError(
        `dma_iova_free: ${dev.name}: ${hex(state.linkedBytes)} bytes are still linked: unlink them first (or use dma_iova_destroy)`,
        { rule: 'dma_iova_free: links left' },
      );
    }
  },
  trace: (dev, _state, _phys, _offset, size) => ({ dev: dev.name, size }),
  instant: true,
});

/** Unlinks `[offset, offset + size)`, optionally freeing the IOVA (kernel: `__iommu_dma_iova_unlink`). */
function unlinkRange(
  dev: Device,
  state: DmaIovaState,
  offset: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
  freeIova: boolean,
): void {
  const domain = devDomain(dev);
  const cookie = iommuDmaCookie(domain);
  const iovad = cookie.iovad;
  const addr = state.addr + offset;
  const pad = iovaOffset(iovad, addr);
  const start = addr - pad;
  const len = iovaAlign(iovad, size + pad);
  if (state.usedSwiotlb || devNeedsCpuSync(dev, attrs)) {
    unlinkSlow(dev, addr, addr + size, dir, attrs);
  }
  const gather = iommuDmaTakeGather(freeIova && cookie.fq !== undefined);
  iommuUnmapFast(domain, start, len, gather);
  if (!gather.queued) iommuIotlbSync(domain, gather);
  if (freeIova) iommuDmaFreeIova(domain, start, len, gather);
  iommuDmaPutGather(gather);
}

/**
 * Unlinks a linked range (kernel: `dma_iova_unlink`): CPU syncs and bounce copy-back where
 * needed, unmap, and an immediate IOTLB invalidation even on lazy domains. The IOVA stays
 * allocated.
 */
export function dmaIovaUnlink(
  dev: Device,
  state: DmaIovaState,
  offset: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): void {
  const open = dmaEntry(dev, UNLINK, dir, state, 0, offset, size);
  unlinkRange(dev, state, offset, size, dir, attrs, false);
  noteUnlinked(devCookie(dev).iovad, state, offset, size);
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
  dev.machine.counters.dmaUnlinks++;
  dev.debug?.removeLinks(state, offset, size);
}

/**
 * Returns the state's IOVA space (kernel: `dma_iova_free`) at once, with no IOTLB work: every
 * link must have been unlinked first.
 */
export function dmaIovaFree(dev: Device, state: DmaIovaState): void {
  dmaEntry(dev, FREE, DMA_ENTRY_NO_DIR, state, 0, 0, state.size);
  const domain = devDomain(dev);
  const iovad = iommuDmaCookie(domain).iovad;
  const pad = iovaOffset(iovad, state.addr);
  iommuDmaFreeIova(domain, state.addr - pad, iovaAlign(iovad, state.size + pad), undefined);
  dev.debug?.iovaRelease(state);
}

/**
 * Unlinks `[0, mappedLen)` and frees the IOVA in one go (kernel: `dma_iova_destroy`): strict
 * domains invalidate once and free at once; lazy domains skip the invalidation and queue the IOVA
 * on the flush queue. `mappedLen` 0 only frees. The linked range must be exactly `[0, mappedLen)`.
 */
export function dmaIovaDestroy(
  dev: Device,
  state: DmaIovaState,
  mappedLen: number,
  dir: DmaDataDirection,
  attrs = 0,
): void {
  if (mappedLen === 0) {
    checkState(dev, state, 'dma_iova_destroy');
    dmaIovaFree(dev, state);
    return;
  }
  const open = dmaEntry(dev, DESTROY, dir, state, 0, 0, mappedLen);
  unlinkRange(dev, state, 0, mappedLen, dir, attrs, true);
  state.linkedBytes = 0;
  state.linkedEnd = 0;
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
  dev.machine.counters.dmaUnlinks++;
  dev.debug?.iovaRelease(state);
}
