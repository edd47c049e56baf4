import { describe, expect, it } from 'vitest';
import { DmaError, dmaMapBenchmark } from '../src/index.js';
import { createDmaRig, createKindDevice } from '../src/testing/index.js';

describe('dmaMapBenchmark (DMA_MAP_BENCHMARK)', () => {
  it('single mode: one IOVA allocation and free per loop, the transfer delay on the virtual clock, nothing left behind', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const mask0 = dev.dmaMask;
    const c = rig.machine.counters;
    const free0 = rig.machine.pages.nrFreePages;
    const tables0 = c.pgtablePagesAllocated - c.pgtablePagesFreed;
    const t0 = rig.machine.clock.nowNs;
    const r = dmaMapBenchmark(dev, { loops: 10, threads: 3, granule: 4, dmaBits: 40, dmaTransNs: 1000 });
    expect(r.loops).toBe(10);
    expect(rig.machine.counters.iovaAllocs).toBe(10);
    expect(rig.machine.counters.iovaFrees).toBe(10);
    expect(rig.machine.clock.nowNs - t0).toBe(10 * 1000);
    expect(dev.dmaMask).toBe(mask0);
    // the buffers went back; only the page-table pages the mappings needed stay (the kernel keeps
    // them after unmap too)
    expect(free0 - rig.machine.pages.nrFreePages).toBe(
      c.pgtablePagesAllocated - c.pgtablePagesFreed - tables0,
    );
    expect(r.params).toMatchObject({ threads: 3, granule: 4, dmaBits: 40, mode: 'single', loops: 10 });
  });

  it('link mode: try_alloc + link + sync, then destroy, once per loop', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const r = dmaMapBenchmark(dev, { loops: 5, granule: 2, mode: 'link' });
    expect(r.loops).toBe(5);
    expect(rig.machine.counters.iovaAllocs).toBe(5);
    expect(rig.machine.counters.iovaFrees).toBe(5);
  });

  it('link mode without an IOMMU DMA domain fails with -ENOMEM, mask and buffers restored', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'none');
    const mask0 = dev.dmaMask;
    const free0 = rig.machine.pages.nrFreePages;
    expect(() => dmaMapBenchmark(dev, { loops: 1, mode: 'link', dmaBits: 36 })).toThrow(/try_alloc failed/);
    expect(dev.dmaMask).toBe(mask0);
    expect(rig.machine.pages.nrFreePages).toBe(free0);
  });

  it.each([
    ['threads', { threads: 0 }],
    ['threads', { threads: 1025 }],
    ['granule', { granule: 1025 }],
    ['dma_dir', { dmaDir: 3 }],
    ['dma_bits', { dmaBits: 19 }],
    ['seconds', { seconds: 301 }],
  ])('%s out of range is -EINVAL and changes nothing', (name, params) => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const mask0 = dev.dmaMask;
    const free0 = rig.machine.pages.nrFreePages;
    let err: unknown;
    try {
      dmaMapBenchmark(dev, { loops: 1, ...params });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DmaError);
    expect((err as DmaError).errno).toBe(-22);
    expect((err as DmaError).message).toContain(`invalid ${name}`);
    expect(dev.dmaMask).toBe(mask0);
    expect(rig.machine.pages.nrFreePages).toBe(free0);
    expect(rig.machine.counters.iovaAllocs).toBe(0);
  });
});
