/**
 * The DMA mapping entry points drivers call: argument checks, dispatch to dma-direct or iommu-dma,
 * dma-debug hooks and counters. Kernel counterpart: kernel/dma/mapping.c (v6.18:
 * `dma_map_phys`, `dma_map_page_attrs`, `dma_map_sg_attrs`, `dma_map_sgtable`, unmaps, syncs,
 * `dma_mapping_error`). Differs on purpose: no arch `dma_map_ops` (only direct and iommu-dma).
 */
import { Errno } from '@iovalink/iommu';
import type { Device } from './device.js';
import type { DmaDebug } from './dma-debug.js';
import {
  dmaDirectMapPhys,
  dmaDirectMapSg,
  dmaDirectSyncSingleForCpu,
  dmaDirectSyncSingleForDevice,
  dmaDirectUnmapPhys,
  dmaDirectUnmapSg,
} from './dma-direct.js';
import { DMA_MAPPING_ERROR, type DmaDataDirection } from './dma-direction.js';
import { DMA_ENTRY_SPAN, DmaEntry, dmaEntry } from './dma-entry.js';
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

// The opening of each entry point (argument checks, dma-debug hook, tracepoint): see dma-entry.ts.
const MAP_PHYS = new DmaEntry<number, number, 0, 0>({
  name: 'dma_map_phys',
  category: 'dma',
  needsMask: true,
  check: (dev, phys, size) => {
    dev.machine.phys.check(phys, size);
    return 0;
  },
  trace: (dev, phys, size) => ({ dev: dev.name, phys, size }),
});
const UNMAP_PHYS = new DmaEntry<number, number, 0, 0>({
  name: 'dma_unmap_phys',
  category: 'dma',
  needsMask: true,
  debug: (debug, addr, size, _c, _d, dir) => debug.checkUnmapSingle(addr, size, dir),
  trace: (dev, addr, size) => ({ dev: dev.name, addr, size }),
});
const MAP_SG = new DmaEntry<number, 0, 0, 0>({
  name: 'dma_map_sg',
  category: 'dma',
  needsMask: true,
  trace: (dev, nents) => ({ dev: dev.name, nents }),
});
const UNMAP_SG = new DmaEntry<number, Scatterlist, 0, 0>({
  name: 'dma_unmap_sg',
  category: 'dma',
  needsMask: true,
  debug: (debug, nents, sgl, _c, _d, dir) => debug.checkUnmapSg(sgl, nents, dir),
  trace: (dev, nents) => ({ dev: dev.name, nents }),
});
const checkSync = (debug: DmaDebug, addr: number, size: number, _c: 0, _d: 0, dir: DmaDataDirection) =>
  debug.checkSync(addr, size, dir);
const SYNC_FOR_CPU = new DmaEntry<number, number, 0, 0>({
  name: 'dma_sync_single_for_cpu',
  category: 'dma',
  needsMask: true,
  debug: checkSync,
});
const SYNC_FOR_DEVICE = new DmaEntry<number, number, 0, 0>({
  name: 'dma_sync_single_for_device',
  category: 'dma',
  needsMask: true,
  debug: checkSync,
});

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
  const open = dmaEntry(dev, MAP_PHYS, dir, phys, size, 0, 0);
  const addr = dev.dmaIommu
    ? iommuDmaMapPhys(dev, phys, size, dir, attrs)
    : dmaDirectMapPhys(dev, phys, size, dir, attrs);
  if (addr !== DMA_MAPPING_ERROR) {
    dev.machine.counters.dmaMapCalls++;
    dev.debug?.addSingle(addr, phys, size, dir);
  }
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
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
  const open = dmaEntry(dev, UNMAP_PHYS, dir, addr, size, 0, 0);
  if (dev.dmaIommu) iommuDmaUnmapPhys(dev, addr, size, dir, attrs);
  else dmaDirectUnmapPhys(dev, addr, size, dir, attrs);
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
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
  const open = dmaEntry(dev, MAP_SG, dir, nents, 0, 0, 0);
  if (!(nents > 0)) {
    if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
    return -Errno.EINVAL;
  }
  const ents = dev.dmaIommu
    ? iommuDmaMapSg(dev, sgl, nents, dir, attrs)
    : dmaDirectMapSg(dev, sgl, nents, dir, attrs);
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
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
  const open = dmaEntry(dev, UNMAP_SG, dir, nents, sgl, 0, 0);
  if (dev.dmaIommu) iommuDmaUnmapSg(dev, sgl, nents, dir, attrs);
  else dmaDirectUnmapSg(dev, sgl, nents, dir, attrs);
  if (open === DMA_ENTRY_SPAN) dev.machine.tracer?.end();
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
  dmaEntry(dev, SYNC_FOR_CPU, dir, addr, size, 0, 0);
  if (dev.dmaIommu) iommuDmaSyncSingleForCpu(dev, addr, size, dir);
  else dmaDirectSyncSingleForCpu(dev, addr, size, dir);
}

/** Hands a streaming buffer to the device (kernel: `dma_sync_single_for_device`). */
export function dmaSyncSingleForDevice(dev: Device, addr: number, size: number, dir: DmaDataDirection): void {
  dmaEntry(dev, SYNC_FOR_DEVICE, dir, addr, size, 0, 0);
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
