import { Errno, SZ_4K } from '@iovalink/iommu';
import { patternBytes } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import type { Device } from '../src/device.js';
import { dmaDebugDeviceTeardown } from '../src/dma-debug.js';
import {
  DMA_BIDIRECTIONAL,
  DMA_FROM_DEVICE,
  DMA_MAPPING_ERROR,
  DMA_TO_DEVICE,
} from '../src/dma-direction.js';
import { iommuDmaPutGather, iommuDmaTakeGather } from '../src/dma-iommu.js';
import {
  dmaMapPage,
  dmaMapPhys,
  dmaMappingError,
  dmaMapSgAttrs,
  dmaMapSgtable,
  dmaUnmapPhys,
  dmaUnmapSgtable,
} from '../src/mapping.js';
import { SgTable, sgAllocTable, sgFreeTable, sgIter, sgSetPage } from '../src/scatterlist.js';
import { createDmaRig, createKindDevice, type DmaRig } from '../src/testing/index.js';
import { deviceRead, deviceReadFaults } from './helpers.js';

/** Builds a table from [phys, length] pairs. */
function table(rig: DmaRig, entries: Array<[number, number]>): SgTable {
  const sgt = new SgTable();
  expect(sgAllocTable(rig.machine, sgt, entries.length)).toBe(0);
  let i = 0;
  for (const sg of sgIter(sgt.sgl!, entries.length)) {
    const [phys, len] = entries[i++]!;
    sgSetPage(sg, phys - (phys % SZ_4K), len, phys % SZ_4K);
  }
  return sgt;
}

function segments(sgt: SgTable): Array<[number, number]> {
  return [...sgIter(sgt.sgl!, sgt.nents)].map((s) => [s.dmaAddress, s.dmaLength]);
}

describe('iommu_dma_map_sg', () => {
  it('merges whole granules and keeps an offset entry separate (kernel-reference §2.4 worked example)', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const sgt = table(rig, [
      [0x1000000, SZ_4K],
      [0x2000000, SZ_4K],
      [0x3000800, 0x800],
    ]);
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(0);
    expect(sgt.nents).toBe(2);
    const [[a0, l0], [a1, l1]] = segments(sgt) as [[number, number], [number, number]];
    expect(l0).toBe(2 * SZ_4K);
    expect(a1).toBe(a0 + 2 * SZ_4K + 0x800);
    expect(l1).toBe(0x800);
    // one IOVA allocation (3 granules rounded to 4, 16 KiB aligned), three maps, one sync
    expect(rig.machine.counters.iovaAllocs).toBe(1);
    expect(a0 % (4 * SZ_4K)).toBe(0);
    expect(rig.machine.counters.iommuMapCalls).toBe(3);
    // entries are restored to their original offsets and lengths
    expect([...sgIter(sgt.sgl!, 3)].map((s) => [s.offset, s.length])).toEqual([
      [0, SZ_4K],
      [0, SZ_4K],
      [0x800, 0x800],
    ]);
    dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE);
    expect(rig.machine.counters.iotlbInvRange).toBe(1);
    sgFreeTable(rig.machine, sgt);
    dmaDebugDeviceTeardown(dev);
  });

  it('coalesces physically contiguous entries into one iommu_map and cuts segments at max_segment_size', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict', { dmaParms: { maxSegmentSize: 3 * SZ_4K } });
    const base = 0x4000000;
    const sgt = table(
      rig,
      Array.from({ length: 8 }, (_, i) => [base + i * SZ_4K, SZ_4K] as [number, number]),
    );
    expect(dmaMapSgtable(dev, sgt, DMA_BIDIRECTIONAL)).toBe(0);
    expect(rig.machine.counters.iommuMapCalls).toBe(1);
    expect(segments(sgt).map(([, l]) => l)).toEqual([3 * SZ_4K, 3 * SZ_4K, 2 * SZ_4K]);
    dmaUnmapSgtable(dev, sgt, DMA_BIDIRECTIONAL);
    sgFreeTable(rig.machine, sgt);
  });

  it('pads so that no entry straddles the segment boundary, and never merges across it', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict', {
      dmaParms: { segmentBoundaryMask: 0x3fff, maxSegmentSize: 1 << 20 },
    });
    // 3 pages then 2 pages: the second entry would straddle a 16 KiB boundary → padded
    const sgt = table(rig, [
      [0x5000000, 3 * SZ_4K],
      [0x6000000, 2 * SZ_4K],
    ]);
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(0);
    const segs = segments(sgt);
    expect(segs.length).toBe(2);
    for (const [a, l] of segs) expect(Math.floor(a / 0x4000)).toBe(Math.floor((a + l - 1) / 0x4000));
    expect(segs[1]![0] - segs[0]![0]).toBe(4 * SZ_4K);
    dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE);
    sgFreeTable(rig.machine, sgt);
  });

  it('the device reads the scattered data through the DMA segments; after unmap it faults', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict', { dmaParms: { maxSegmentSize: 1 << 20 } });
    const pages = [0x7000000, 0x7100000, 0x7200000, 0x7300000];
    const data = patternBytes(4 * SZ_4K - 0x300, 5);
    const entries: Array<[number, number]> = [
      [pages[0]! + 0x300, SZ_4K - 0x300],
      [pages[1]!, SZ_4K],
      [pages[2]!, SZ_4K],
      [pages[3]!, SZ_4K],
    ];
    let off = 0;
    for (const [p, l] of entries) {
      rig.machine.phys.write(p, data.subarray(off, off + l));
      off += l;
    }
    const sgt = table(rig, entries);
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(0);
    expect(sgt.nents).toBe(1);
    const [[addr, len]] = segments(sgt) as [[number, number]];
    expect(len).toBe(data.length);
    expect(deviceRead(dev, addr, len)).toEqual(data);
    dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE);
    expect(deviceReadFaults(dev, addr)).toBe(true);
    sgFreeTable(rig.machine, sgt);
  });

  it('restores the list and frees the IOVA when mapping fails; dma_map_sg_attrs returns 0', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const sgt = table(rig, [
      [0x8000000, SZ_4K],
      [0x9000100, 0x100],
    ]);
    rig.machine.faults.failAlways('iova_alloc');
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(-Errno.ENOMEM);
    expect(dmaMapSgAttrs(dev, sgt.sgl!, 2, DMA_TO_DEVICE)).toBe(0);
    rig.machine.faults.clear();
    rig.machine.faults.failNth('pgtable_page', 1);
    // -ENOMEM from the page table passes through; other map errors become -EINVAL
    expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(-Errno.ENOMEM);
    expect([...sgIter(sgt.sgl!, 2)].map((s) => [s.offset, s.length, s.dmaLength])).toEqual([
      [0, SZ_4K, 0],
      [0x100, 0x100, 0],
    ]);
    expect(dev.domain!.pgtbl!.leafCount).toBe(0);
    expect(rig.machine.counters.iovaAllocs).toBe(rig.machine.counters.iovaFrees);
    rig.machine.faults.clear();
    expect(dev.debug!.liveCount).toBe(0);
    sgFreeTable(rig.machine, sgt);
  });
});

describe('iommu_dma_map_phys / unmap_phys', () => {
  it('maps one buffer with one IOVA allocation and keeps the offset in the granule', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const phys = rig.machine.pages.allocPages(1) + 0x234;
    rig.machine.phys.write(phys, patternBytes(5000, 1));
    const addr = dmaMapPhys(dev, phys, 5000, DMA_TO_DEVICE);
    expect(dmaMappingError(dev, addr)).toBe(false);
    expect(addr % SZ_4K).toBe(0x234);
    expect(deviceRead(dev, addr, 5000)).toEqual(patternBytes(5000, 1));
    dmaUnmapPhys(dev, addr, 5000, DMA_TO_DEVICE);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
    expect(rig.machine.counters.iovaFrees).toBe(1);
    expect(rig.machine.counters.iotlbInvRange).toBe(1);
    dmaDebugDeviceTeardown(dev);
  });

  it('lazy domains defer the invalidation to the flush queue (one flush for many unmaps)', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'lazy');
    const page = rig.machine.pages.allocPages(0);
    for (let i = 0; i < 50; i++) {
      const a = dmaMapPage(dev, page, 0, SZ_4K, DMA_FROM_DEVICE);
      expect(dmaMappingError(dev, a)).toBe(false);
      dmaUnmapPhys(dev, a, SZ_4K, DMA_FROM_DEVICE);
    }
    expect(rig.machine.counters.iotlbInvRange).toBe(0);
    expect(rig.machine.counters.fqEnqueued).toBe(50);
    rig.machine.clock.advance(10e6);
    expect(rig.machine.counters.iotlbInvAll).toBe(1);
  });

  it('uses the full mask after the 32-bit space runs out, for good', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    expect(dev.pci32bitWorkaround).toBe(true);
    rig.machine.faults.failNth('iova_alloc', 1);
    const a = dmaMapPhys(dev, 0x100000, SZ_4K, DMA_TO_DEVICE);
    expect(dmaMappingError(dev, a)).toBe(false);
    expect(a).toBeGreaterThan(0xffffffff);
    expect(dev.pci32bitWorkaround).toBe(false);
    dmaUnmapPhys(dev, a, SZ_4K, DMA_TO_DEVICE);
  });

  it('returns DMA_MAPPING_ERROR and leaks nothing when IOVA space or page tables run out', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    rig.machine.faults.failAlways('iova_alloc');
    expect(dmaMapPhys(dev, 0x100000, SZ_4K, DMA_TO_DEVICE)).toBe(DMA_MAPPING_ERROR);
    rig.machine.faults.clear();
    rig.machine.faults.failNth('pgtable_page', 1);
    const addr = dmaMapPhys(dev, 0x100000, SZ_4K, DMA_TO_DEVICE);
    expect(dmaMappingError(dev, addr)).toBe(true);
    expect(rig.machine.counters.iovaAllocs).toBe(rig.machine.counters.iovaFrees);
    expect(dev.domain!.pgtbl!.leafCount).toBe(0);
    expect(dev.debug!.liveCount).toBe(0);
  });
});

describe('dma-direct and swiotlb', () => {
  it('no IOMMU: bus address = physical address; a 32-bit device bounces high memory', () => {
    const rig = createDmaRig({ machine: { memSize: 8 * 2 ** 30 } });
    const dev: Device = createKindDevice(rig, 'none', { dmaBits: 32 });
    const low = rig.machine.pages.allocPages(0);
    expect(dmaMapPhys(dev, low, 64, DMA_TO_DEVICE)).toBe(low);
    dmaMappingError(dev, low);
    dmaUnmapPhys(dev, low, 64, DMA_TO_DEVICE);
    const high = 5 * 2 ** 30;
    rig.machine.phys.write(high, patternBytes(100, 4));
    const a = dmaMapPhys(dev, high, 100, DMA_BIDIRECTIONAL);
    expect(dmaMappingError(dev, a)).toBe(false);
    expect(a).toBeLessThan(2 ** 32);
    expect(deviceRead(dev, a, 100)).toEqual(patternBytes(100, 4));
    expect(dev.engine.write(a, patternBytes(100, 8))).toBe(0);
    dmaUnmapPhys(dev, a, 100, DMA_BIDIRECTIONAL);
    expect(rig.machine.phys.read(high, 100)).toEqual(patternBytes(100, 8));
    expect(rig.swiotlb.usedSlots).toBe(0);
  });

  it('untrusted behind an IOMMU: an unaligned buffer is bounced, the rest of its granule is zeros', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'untrusted');
    const base = rig.machine.pages.allocPages(0);
    rig.machine.phys.fill(base, SZ_4K, 0xee);
    rig.machine.phys.write(base + 0x40, patternBytes(64, 2));
    const a = dmaMapPhys(dev, base + 0x40, 64, DMA_TO_DEVICE);
    expect(dmaMappingError(dev, a)).toBe(false);
    expect(deviceRead(dev, a, 64)).toEqual(patternBytes(64, 2));
    expect(deviceRead(dev, a - 0x40, SZ_4K).filter((b) => b === 0xee).length).toBe(0);
    dmaUnmapPhys(dev, a, 64, DMA_TO_DEVICE);
    expect(rig.swiotlb.usedSlots).toBe(0);
  });
});

describe('the unmap gather (kernel: on the unmapping function stack), kept between unmaps', () => {
  it('comes back emptied; a freelist handed on is replaced, not cleared; a lent one is not handed out twice', () => {
    const g = iommuDmaTakeGather(true);
    expect(g.queued).toBe(true);
    const other = iommuDmaTakeGather(false);
    expect(other).not.toBe(g);
    g.start = 0x10000;
    g.end = 0x1ffff;
    g.pgsize = SZ_4K;
    const held = g.freelist;
    held.push(0x5000);
    iommuDmaPutGather(g);
    expect(held).toEqual([0x5000]);
    const again = iommuDmaTakeGather(false);
    expect(again).toBe(g);
    expect(again).toMatchObject({ start: Number.MAX_SAFE_INTEGER, end: 0, pgsize: 0, queued: false });
    expect(again.freelist).not.toBe(held);
    expect(again.freelist).toEqual([]);
    iommuDmaPutGather(again);
  });

  for (const kind of ['strict', 'lazy'] as const) {
    it(`${kind}: page-table pages freed by one unmap are freed once, after its own invalidation`, () => {
      const rig = createDmaRig();
      const dev = createKindDevice(rig, kind);
      const c = rig.machine.counters;
      // 2 MiB from 4 KiB into a 4 MiB block: 4 KiB leaves filling a whole leaf table
      const block = rig.machine.pages.allocPages(10);
      const tables0 = c.pgtablePagesAllocated - c.pgtablePagesFreed;
      const freed0 = c.pgtablePagesFreed;
      const a = dmaMapPhys(dev, block + SZ_4K, 2 << 20, DMA_TO_DEVICE);
      const b = dmaMapPhys(dev, block + SZ_4K, 2 << 20, DMA_TO_DEVICE);
      expect(dmaMappingError(dev, a) || dmaMappingError(dev, b)).toBe(false);
      const grown = c.pgtablePagesAllocated - c.pgtablePagesFreed - tables0;
      expect(grown).toBeGreaterThanOrEqual(2);
      dmaUnmapPhys(dev, a, 2 << 20, DMA_TO_DEVICE);
      const afterA = c.pgtablePagesFreed - freed0;
      dmaUnmapPhys(dev, b, 2 << 20, DMA_TO_DEVICE);
      if (kind === 'lazy') {
        // queued with their IOVAs: nothing freed before the flush queue's invalidation
        expect(c.pgtablePagesFreed - freed0).toBe(0);
        rig.machine.clock.advance(20e6);
      } else {
        expect(afterA).toBeGreaterThanOrEqual(1);
      }
      // every leaf table of both mappings went back, each once
      expect(c.pgtablePagesFreed - freed0).toBeGreaterThanOrEqual(2);
      expect(dev.domain!.pgtbl!.leafCount).toBe(0);
      dmaDebugDeviceTeardown(dev);
    });
  }
});
