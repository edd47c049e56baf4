/**
 * dma-direct: DMA without IOMMU translation (no IOMMU, or an identity domain). The bus address is
 * the physical address, unless the device's mask cannot reach the buffer or the device is
 * untrusted: then the data bounces through swiotlb. Kernel counterpart: kernel/dma/direct.c and
 * direct.h (`dma_direct_map_phys`, `dma_direct_unmap_phys`, `dma_direct_map_sg`, syncs).
 * Differs on purpose: no bus offsets (`dma_range_map`), no memory encryption; CPU cache
 * maintenance for non-coherent devices is counted, not simulated.
 */
import { Errno } from '@iovalink/iommu';
import { archSyncDma } from './cpu-sync.js';
import type { Device } from './device.js';
import {
  DMA_ATTR_MMIO,
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_MAPPING_ERROR,
  type DmaDataDirection,
} from './dma-direction.js';
import { type Scatterlist, SG_DMA_SWIOTLB, sgIter } from './scatterlist.js';
import {
  isSwiotlbBuffer,
  swiotlbSyncSingleForCpu,
  swiotlbSyncSingleForDevice,
  swiotlbTblMapSingle,
  swiotlbTblUnmapSingle,
} from './swiotlb.js';

/** True when `[addr, addr + size)` is reachable with the device's mask (kernel: `dma_capable`). */
export function dmaCapable(dev: Device, addr: number, size: number): boolean {
  return size === 0 || addr + size - 1 <= dev.dmaMask;
}

/** True when every mapping of the device must bounce (kernel: `is_swiotlb_force_bounce`). */
export function isSwiotlbForceBounce(dev: Device): boolean {
  return dev.untrusted;
}

/**
 * Maps a buffer without translation (kernel: `dma_direct_map_phys`): bounces through swiotlb when
 * forced or when the mask cannot reach it, else returns the physical address. Returns the bus
 * address or DMA_MAPPING_ERROR.
 */
export function dmaDirectMapPhys(
  dev: Device,
  phys: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  if (isSwiotlbForceBounce(dev) || !dmaCapable(dev, phys, size)) {
    if (attrs & DMA_ATTR_MMIO) return DMA_MAPPING_ERROR;
    const mem = dev.swiotlb;
    if (mem === undefined) return DMA_MAPPING_ERROR;
    const tlb = swiotlbTblMapSingle(mem, phys, size, 0, dev.dmaParms.minAlignMask, dir, attrs, dev.untrusted);
    if (tlb === DMA_MAPPING_ERROR) return DMA_MAPPING_ERROR;
    if (!dmaCapable(dev, tlb, size)) {
      swiotlbTblUnmapSingle(mem, tlb, size, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC);
      return DMA_MAPPING_ERROR;
    }
    dev.usedSwiotlb = true;
    return tlb;
  }
  archSyncDma(dev, attrs);
  return phys;
}

/**
 * Unmaps a direct mapping (kernel: `dma_direct_unmap_phys`): CPU sync for non-coherent devices,
 * then releases a bounce slot, copying back for FROM_DEVICE/BIDIRECTIONAL.
 */
export function dmaDirectUnmapPhys(
  dev: Device,
  addr: number,
  size: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  archSyncDma(dev, attrs);
  const mem = dev.swiotlb;
  if (mem !== undefined && isSwiotlbBuffer(mem, addr)) swiotlbTblUnmapSingle(mem, addr, size, dir, attrs);
}

/** Syncs for the CPU (kernel: `dma_direct_sync_single_for_cpu`). */
export function dmaDirectSyncSingleForCpu(
  dev: Device,
  addr: number,
  size: number,
  dir: DmaDataDirection,
): void {
  if (!dev.coherent) dev.machine.counters.cpuCacheSyncs++;
  const mem = dev.swiotlb;
  if (mem !== undefined && isSwiotlbBuffer(mem, addr)) swiotlbSyncSingleForCpu(mem, addr, size, dir);
}

/** Syncs for the device (kernel: `dma_direct_sync_single_for_device`). */
export function dmaDirectSyncSingleForDevice(
  dev: Device,
  addr: number,
  size: number,
  dir: DmaDataDirection,
): void {
  const mem = dev.swiotlb;
  if (mem !== undefined && isSwiotlbBuffer(mem, addr)) swiotlbSyncSingleForDevice(mem, addr, size, dir);
  if (!dev.coherent) dev.machine.counters.cpuCacheSyncs++;
}

/**
 * Maps each entry on its own (kernel: `dma_direct_map_sg`): no merging, one DMA segment per
 * entry. Returns nents, or -EIO after unmapping the entries already mapped.
 */
export function dmaDirectMapSg(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): number {
  let i = 0;
  for (const s of sgIter(sgl, nents)) {
    const addr = dmaDirectMapPhys(dev, s.page + s.offset, s.length, dir, attrs);
    if (addr === DMA_MAPPING_ERROR) {
      dmaDirectUnmapSg(dev, sgl, i, dir, attrs | DMA_ATTR_SKIP_CPU_SYNC);
      return -Errno.EIO;
    }
    s.dmaAddress = addr;
    s.dmaLength = s.length;
    if (addr !== s.page + s.offset) s.dmaFlags |= SG_DMA_SWIOTLB;
    i++;
  }
  return nents;
}

/** Unmaps a direct-mapped list (kernel: `dma_direct_unmap_sg`). */
export function dmaDirectUnmapSg(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  for (const s of sgIter(sgl, nents)) {
    dmaDirectUnmapPhys(dev, s.dmaAddress, s.dmaLength, dir, attrs);
    s.dmaFlags &= ~SG_DMA_SWIOTLB;
  }
}
