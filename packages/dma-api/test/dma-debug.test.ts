import { iommuIovaToPhys, SZ_4K } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import type { Device } from '../src/device.js';
import { dmaDebugDeviceTeardown } from '../src/dma-debug.js';
import { type DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE } from '../src/dma-direction.js';
import { DmaIovaState, dmaIovaDestroy, dmaIovaFree, dmaIovaLink, dmaIovaTryAlloc } from '../src/dma-iova.js';
import { DmaDebugError, DmaError } from '../src/errors.js';
import {
  dmaMapPhys,
  dmaMappingError,
  dmaMapSgtable,
  dmaSyncSingleForCpu,
  dmaUnmapPhys,
  dmaUnmapSgAttrs,
  dmaUnmapSgtable,
} from '../src/mapping.js';
import { SgTable, sgAllocTable, sgFreeTable, sgIter, sgSetPage } from '../src/scatterlist.js';
import { createDmaRig, createKindDevice } from '../src/testing/index.js';

function rule(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DmaDebugError);
    return (e as DmaDebugError).rule;
  }
  throw new Error('expected a DmaDebugError');
}

function mapped(): { dev: Device; addr: number; phys: number; snapshot: () => unknown } {
  const rig = createDmaRig();
  const dev = createKindDevice(rig, 'strict');
  const phys = rig.machine.pages.allocPages(0);
  const addr = dmaMapPhys(dev, phys, SZ_4K, DMA_TO_DEVICE);
  const snapshot = () => ({
    c: rig.machine.counters.snapshot().events,
    t: iommuIovaToPhys(dev.domain!, addr),
    live: dev.debug!.liveCount,
  });
  return { dev, addr, phys, snapshot };
}

describe('dma-debug check_unmap', () => {
  it('unmapping something never mapped', () => {
    const { dev, snapshot } = mapped();
    const before = snapshot();
    expect(rule(() => dmaUnmapPhys(dev, 0x12340000, SZ_4K, DMA_TO_DEVICE))).toBe('dma_unmap: not mapped');
    expect(snapshot()).toEqual(before);
  });

  it('wrong size at unmap', () => {
    const { dev, addr, snapshot } = mapped();
    dmaMappingError(dev, addr);
    const before = snapshot();
    expect(rule(() => dmaUnmapPhys(dev, addr, 2 * SZ_4K, DMA_TO_DEVICE))).toBe('dma_unmap: wrong size');
    expect(snapshot()).toEqual(before);
  });

  it('wrong direction at unmap', () => {
    const { dev, addr, snapshot } = mapped();
    dmaMappingError(dev, addr);
    const before = snapshot();
    expect(rule(() => dmaUnmapPhys(dev, addr, SZ_4K, DMA_FROM_DEVICE))).toBe('dma_unmap: wrong direction');
    expect(snapshot()).toEqual(before);
  });

  it('double unmap', () => {
    const { dev, addr, snapshot } = mapped();
    dmaMappingError(dev, addr);
    dmaUnmapPhys(dev, addr, SZ_4K, DMA_TO_DEVICE);
    const before = snapshot();
    expect(rule(() => dmaUnmapPhys(dev, addr, SZ_4K, DMA_TO_DEVICE))).toBe('dma_unmap: double unmap');
    expect(snapshot()).toEqual(before);
  });

  it('missing dma_mapping_error check', () => {
    const { dev, addr, snapshot } = mapped();
    const before = snapshot();
    expect(rule(() => dmaUnmapPhys(dev, addr, SZ_4K, DMA_TO_DEVICE))).toBe(
      'dma_unmap: mapping error not checked',
    );
    expect(snapshot()).toEqual(before);
    dmaMappingError(dev, addr);
    dmaUnmapPhys(dev, addr, SZ_4K, DMA_TO_DEVICE);
  });

  it('scatterlist unmapped with the returned count instead of the original nents', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const sgt = new SgTable();
    expect(sgAllocTable(rig.machine, sgt, 2)).toBe(0);
    const base = rig.machine.pages.allocPages(1);
    let i = 0;
    for (const sg of sgIter(sgt.sgl!, 2)) sgSetPage(sg, base + SZ_4K * i++, SZ_4K, 0);
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(0);
    expect(sgt.nents).toBe(1);
    expect(rule(() => dmaUnmapSgAttrs(dev, sgt.sgl!, sgt.nents, DMA_TO_DEVICE))).toBe(
      'dma_unmap_sg: wrong nents',
    );
    expect(dev.debug!.liveCount).toBe(1);
    dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE);
    sgFreeTable(rig.machine, sgt);
  });
});

describe('dma-debug check_sync', () => {
  it('sync outside a mapping', () => {
    const { dev, addr } = mapped();
    expect(rule(() => dmaSyncSingleForCpu(dev, addr + SZ_4K, 16, DMA_TO_DEVICE))).toBe(
      'dma_sync: outside a mapping',
    );
  });

  it('sync in the wrong direction', () => {
    const { dev, addr } = mapped();
    expect(rule(() => dmaSyncSingleForCpu(dev, addr, 16, DMA_FROM_DEVICE))).toBe('dma_sync: wrong direction');
    dmaSyncSingleForCpu(dev, addr + 16, 16, DMA_TO_DEVICE);
  });
});

describe('dma-debug and the two-step API', () => {
  it('linking outside the allocated IOVA / over a linked range / free with links left', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const phys = rig.machine.pages.allocPages(1);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
    const w0 = rig.machine.counters.pteWrites;
    expect(rule(() => dmaIovaLink(dev, state, phys, SZ_4K, 2 * SZ_4K, DMA_TO_DEVICE))).toBe(
      'dma_iova_link: outside allocated IOVA',
    );
    expect(dmaIovaLink(dev, state, phys, 0, 2 * SZ_4K, DMA_TO_DEVICE)).toBe(0);
    const w1 = rig.machine.counters.pteWrites;
    expect(w1).toBeGreaterThan(w0);
    expect(rule(() => dmaIovaLink(dev, state, phys, SZ_4K, SZ_4K, DMA_TO_DEVICE))).toBe(
      'dma_iova_link: over a linked range',
    );
    expect(rule(() => dmaIovaFree(dev, state))).toBe('dma_iova_free: links left');
    expect(rig.machine.counters.pteWrites).toBe(w1);
    dmaIovaDestroy(dev, state, 2 * SZ_4K, DMA_TO_DEVICE);
    expect(rule(() => dmaIovaLink(dev, state, phys, 0, SZ_4K, DMA_TO_DEVICE))).toBe(
      'dma_iova_link: no IOVA allocated',
    );
  });

  it('a link after one that ended inside a granule', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const phys = rig.machine.pages.allocPages(1);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
    expect(dmaIovaLink(dev, state, phys, 0, 0x800, DMA_TO_DEVICE)).toBe(0);
    expect(rule(() => dmaIovaLink(dev, state, phys + SZ_4K, SZ_4K, SZ_4K, DMA_TO_DEVICE))).toBe(
      'dma_iova_link: link after an unaligned end',
    );
    dmaIovaDestroy(dev, state, 0x800, DMA_TO_DEVICE);
  });
});

describe('dma_debug_device_change (leaks at teardown)', () => {
  it('lists every live mapping', () => {
    const { dev, addr } = mapped();
    expect(rule(() => dmaDebugDeviceTeardown(dev))).toBe('dma-debug: leak at teardown');
    dmaMappingError(dev, addr);
    dmaUnmapPhys(dev, addr, SZ_4K, DMA_TO_DEVICE);
    expect(() => dmaDebugDeviceTeardown(dev)).not.toThrow();
  });
});

describe('argument checks the kernel BUGs on', () => {
  it('an invalid direction throws DmaError before anything is mapped', () => {
    const { dev, snapshot } = mapped();
    const before = snapshot();
    expect(() => dmaMapPhys(dev, 0x200000, 16, 3 as typeof DMA_BIDIRECTIONAL)).toThrow(DmaError);
    expect(snapshot()).toEqual(before);
  });
});

describe('dma-debug with two mappings at one bus address', () => {
  it('tracks both (same page mapped twice on a direct device) and unmaps each once', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'none');
    const page = rig.machine.pages.allocPages(0);
    const a = dmaMapPhys(dev, page, SZ_4K, DMA_TO_DEVICE);
    const b = dmaMapPhys(dev, page, SZ_4K, DMA_TO_DEVICE);
    expect(a).toBe(b);
    dmaMappingError(dev, a);
    dmaMappingError(dev, b);
    expect(dev.debug!.liveCount).toBe(2);
    dmaUnmapPhys(dev, a, SZ_4K, DMA_TO_DEVICE);
    expect(dev.debug!.liveCount).toBe(1);
    dmaUnmapPhys(dev, b, SZ_4K, DMA_TO_DEVICE);
    expect(rule(() => dmaUnmapPhys(dev, a, SZ_4K, DMA_TO_DEVICE))).toBe('dma_unmap: double unmap');
    expect(() => dmaDebugDeviceTeardown(dev)).not.toThrow();
  });
});
