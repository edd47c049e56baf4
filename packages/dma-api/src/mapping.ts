/**
 * The DMA mapping entry points drivers call: argument checks, dispatch to dma-direct or iommu-dma,
 * dma-debug hooks and counters. Kernel counterpart: kernel/dma/mapping.c (v6.18:
 * `dma_map_phys`, `dma_map_page_attrs`, `dma_map_sg_attrs`, `dma_map_sgtable`, unmaps, syncs,
 * `dma_mapping_error`). Differs on purpose: no arch `dma_map_ops` (only direct and iommu-dma).
 */
import { Errno } from '@iovalink/iommu';
import type { Device } from './device.js';
import {
  dmaDirectMapPhys,
  dmaDirectMapSg,
  dmaDirectSyncSingleForCpu,
  dmaDirectSyncSingleForDevice,
  dmaDirectUnmapPhys,
  dmaDirectUnmapSg,
} from './dma-direct.js';
import {
  DMA_MAPPING_ERROR,
  type DmaDataDirection,
  dmaDirectionName,
  validDmaDirection,
} from './dma-direction.js';
import {
  iommuDmaMapPhys,
  iommuDmaMapSg,
  iommuDmaSyncSingleForCpu,
  iommuDmaSyncSingleForDevice,
  iommuDmaUnmapPhys,
  iommuDmaUnmapSg,
} from './dma-iommu.js';
import { DmaError } from './errors.js';
import { type Scatterlist, type SgTable, sgIter } from './scatterlist.js';

/** Throws the kernel's BUG/WARN for a bad direction or a device without a DMA mask. */
export function checkDmaArgs(dev: Device, dir: number, what: string): asserts dir is DmaDataDirection {
  if (!validDmaDirection(dir)) {
    throw new DmaError(`${what}: ${dev.name}: invalid direction ${dmaDirectionName(dir)}`, {
      rule: `${what}: invalid direction`,
    });
  }
  if (dev.dmaMask === 0) {
    throw new DmaError(`${what}: ${dev.name}: device has no DMA mask`, { rule: `${what}: no dma_mask` });
  }
}

/**
 * Maps a physically contiguous buffer for streaming DMA (kernel: `dma_map_phys`). Returns the bus
 * address, or DMA_MAPPING_ERROR (test it with `dmaMappingError`).
 */
export function dmaMapPhys(
  dev: Device,
  phys: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): number {
  checkDmaArgs(dev, dir, 'dma_map_phys');
  dev.machine.phys.check(phys, size);
  const tr = dev.machine.tracer;
  tr?.begin('dma_map_phys', 'dma', { dev: dev.name, phys, size });
  const addr = dev.dmaIommu
    ? iommuDmaMapPhys(dev, phys, size, dir, attrs)
    : dmaDirectMapPhys(dev, phys, size, dir, attrs);
  if (addr !== DMA_MAPPING_ERROR) {
    dev.machine.counters.dmaMapCalls++;
    dev.debug?.addSingle(addr, phys, size, dir);
  }
  tr?.end();
  return addr;
}

/** Maps `size` bytes at `offset` in `page` (kernel: `dma_map_page_attrs`); `page` is a physical address. */
export function dmaMapPage(
  dev: Device,
  page: number,
  offset: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): number {
  return dmaMapPhys(dev, page + offset, size, dir, attrs);
}

/** True when `addr` is DMA_MAPPING_ERROR (kernel: `dma_mapping_error`); tells dma-debug the check was made. */
export function dmaMappingError(dev: Device, addr: number): boolean {
  dev.debug?.mappingErrorChecked(addr);
  return addr === DMA_MAPPING_ERROR;
}

/** Unmaps a buffer mapped by `dmaMapPhys` (kernel: `dma_unmap_phys`). */
export function dmaUnmapPhys(
  dev: Device,
  addr: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): void {
  checkDmaArgs(dev, dir, 'dma_unmap_phys');
  dev.debug?.checkUnmapSingle(addr, size, dir);
  const tr = dev.machine.tracer;
  tr?.begin('dma_unmap_phys', 'dma', { dev: dev.name, addr, size });
  if (dev.dmaIommu) iommuDmaUnmapPhys(dev, addr, size, dir, attrs);
  else dmaDirectUnmapPhys(dev, addr, size, dir, attrs);
  tr?.end();
  dev.machine.counters.dmaUnmapCalls++;
  dev.debug?.removeSingle(addr, size, dir);
}

/** Unmaps a page mapping (kernel: `dma_unmap_page_attrs`). */
export function dmaUnmapPage(
  dev: Device,
  addr: number,
  size: number,
  dir: DmaDataDirection,
  attrs = 0,
): void {
  dmaUnmapPhys(dev, addr, size, dir, attrs);
}

function segmentsOf(sgl: Scatterlist, count: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const s of sgIter(sgl, count)) out.push([s.dmaAddress, s.dmaLength]);
  return out;
}

/**
 * Maps a scatterlist (kernel: `__dma_map_sg_attrs`). Returns the number of DMA segments, which may
 * be fewer than `nents`, or -errno (-EINVAL, -ENOMEM, -EIO, -EREMOTEIO) with nothing mapped.
 */
function mapSg(dev: Device, sgl: Scatterlist, nents: number, dir: DmaDataDirection, attrs: number): number {
  checkDmaArgs(dev, dir, 'dma_map_sg');
  if (!(nents > 0)) return -Errno.EINVAL;
  const tr = dev.machine.tracer;
  tr?.begin('dma_map_sg', 'dma', { dev: dev.name, nents });
  const ents = dev.dmaIommu
    ? iommuDmaMapSg(dev, sgl, nents, dir, attrs)
    : dmaDirectMapSg(dev, sgl, nents, dir, attrs);
  tr?.end();
  if (ents > 0) {
    dev.machine.counters.dmaMapCalls++;
    dev.debug?.addSg(sgl, nents, ents, dir, segmentsOf(sgl, ents));
    return ents;
  }
  if (ents === -Errno.EINVAL || ents === -Errno.ENOMEM || ents === -Errno.EIO || ents === -Errno.EREMOTEIO)
    return ents;
  return -Errno.EIO;
}

/**
 * Maps a scatterlist (kernel: `dma_map_sg_attrs`): returns the number of DMA segments, or 0 on
 * any error. Unmap with the original `nents`, not the returned count.
 */
export function dmaMapSgAttrs(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs = 0,
): number {
  return Math.max(0, mapSg(dev, sgl, nents, dir, attrs));
}

/** Unmaps a scatterlist (kernel: `dma_unmap_sg_attrs`); `nents` must be the count passed to map. */
export function dmaUnmapSgAttrs(
  dev: Device,
  sgl: Scatterlist,
  nents: number,
  dir: DmaDataDirection,
  attrs = 0,
): void {
  checkDmaArgs(dev, dir, 'dma_unmap_sg');
  dev.debug?.checkUnmapSg(sgl, nents, dir);
  const tr = dev.machine.tracer;
  tr?.begin('dma_unmap_sg', 'dma', { dev: dev.name, nents });
  if (dev.dmaIommu) iommuDmaUnmapSg(dev, sgl, nents, dir, attrs);
  else dmaDirectUnmapSg(dev, sgl, nents, dir, attrs);
  tr?.end();
  dev.machine.counters.dmaUnmapCalls++;
  dev.debug?.removeSg(sgl);
}

/**
 * Maps an sg_table (kernel: `dma_map_sgtable`): returns 0 and sets `sgt.nents` to the DMA segment
 * count, or -EINVAL / -ENOMEM / -EIO / -EREMOTEIO with nothing mapped.
 */
export function dmaMapSgtable(dev: Device, sgt: SgTable, dir: DmaDataDirection, attrs = 0): number {
  if (sgt.sgl === null) return -Errno.EINVAL;
  const r = mapSg(dev, sgt.sgl, sgt.origNents, dir, attrs);
  if (r < 0) return r;
  sgt.nents = r;
  return 0;
}

/** Unmaps an sg_table (kernel: `dma_unmap_sgtable`). */
export function dmaUnmapSgtable(dev: Device, sgt: SgTable, dir: DmaDataDirection, attrs = 0): void {
  if (sgt.sgl === null) {
    throw new DmaError(`dma_unmap_sgtable: ${dev.name}: the table has no entries`, {
      rule: 'dma_unmap_sg: not mapped',
    });
  }
  dmaUnmapSgAttrs(dev, sgt.sgl, sgt.origNents, dir, attrs);
}

/** Gives a streaming buffer back to the CPU (kernel: `dma_sync_single_for_cpu`). */
export function dmaSyncSingleForCpu(dev: Device, addr: number, size: number, dir: DmaDataDirection): void {
  checkDmaArgs(dev, dir, 'dma_sync_single_for_cpu');
  dev.debug?.checkSync(addr, size, dir);
  if (dev.dmaIommu) iommuDmaSyncSingleForCpu(dev, addr, size, dir);
  else dmaDirectSyncSingleForCpu(dev, addr, size, dir);
}

/** Hands a streaming buffer to the device (kernel: `dma_sync_single_for_device`). */
export function dmaSyncSingleForDevice(dev: Device, addr: number, size: number, dir: DmaDataDirection): void {
  checkDmaArgs(dev, dir, 'dma_sync_single_for_device');
  dev.debug?.checkSync(addr, size, dir);
  if (dev.dmaIommu) iommuDmaSyncSingleForDevice(dev, addr, size, dir);
  else dmaDirectSyncSingleForDevice(dev, addr, size, dir);
}

/** Syncs every DMA segment of a table for the CPU (kernel: `dma_sync_sgtable_for_cpu`). */
export function dmaSyncSgtableForCpu(dev: Device, sgt: SgTable, dir: DmaDataDirection): void {
  if (sgt.sgl === null) return;
  for (const s of sgIter(sgt.sgl, sgt.nents)) dmaSyncSingleForCpu(dev, s.dmaAddress, s.dmaLength, dir);
}

/** Syncs every DMA segment of a table for the device (kernel: `dma_sync_sgtable_for_device`). */
export function dmaSyncSgtableForDevice(dev: Device, sgt: SgTable, dir: DmaDataDirection): void {
  if (sgt.sgl === null) return;
  for (const s of sgIter(sgt.sgl, sgt.nents)) dmaSyncSingleForDevice(dev, s.dmaAddress, s.dmaLength, dir);
}
