// Misuse with dma-debug off: each wrong call throws a typed error and changes nothing (PTEs, IOVA
// tree and rcaches, counters); the correct call afterwards works and nothing leaks.
import { type Machine, SZ_4K } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import type { Device } from '../src/device.js';
import { DMA_TO_DEVICE } from '../src/dma-direction.js';
import { iommuDmaCookie } from '../src/dma-iommu.js';
import {
  DmaIovaState,
  dmaIovaDestroy,
  dmaIovaFree,
  dmaIovaLink,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaIovaUnlink,
} from '../src/dma-iova.js';
import { DmaDebugError, DmaError } from '../src/errors.js';
import { dmaMapPage, dmaMapSgtable, dmaUnmapPage, dmaUnmapSgtable } from '../src/mapping.js';
import { SgTable, sgAllocTable, sgFreeTable, sgIter, sgSetPage } from '../src/scatterlist.js';
import { createDmaRig, createKindDevice } from '../src/testing/index.js';
import { deviceReadFaults } from './helpers.js';

/** What a misused call must leave as it was. */
function fingerprint(machine: Machine, dev: Device) {
  const iovad = iommuDmaCookie(dev.domain!).iovad;
  return { counters: machine.counters.snapshot(), ranges: iovad.ranges(), rcache: iovad.rcacheState() };
}

/** Runs `misuse`, expects a DmaError, and that nothing observable changed. */
function expectRefused(machine: Machine, dev: Device, misuse: () => void, rule: RegExp): void {
  const before = fingerprint(machine, dev);
  let err: unknown;
  try {
    misuse();
  } catch (e) {
    err = e;
  }
  // DmaError: what the kernel WARNs on; DmaDebugError: what dma-debug would report
  expect(err instanceof DmaError || err instanceof DmaDebugError).toBe(true);
  expect((err as DmaError).rule).toMatch(rule);
  expect(fingerprint(machine, dev)).toEqual(before);
}

/** Every IOVA handed out came back and no mapping metadata is live. */
function expectNoLeaks(machine: Machine, dev: Device): void {
  machine.clock.advance(20e6); // let a lazy domain's flush queue run
  const c = machine.counters;
  expect(c.iovaFrees).toBe(c.iovaAllocs);
  expect(
    iommuDmaCookie(dev.domain!)
      .iovad.ranges()
      .filter((r) => r.state === 'allocated'),
  ).toEqual([]);
  // per-mapping metadata back to zero (IOVA nodes and rcache magazines live with the domain: the
  // ranges above tell whether one is still handed out)
  for (const [kind, s] of c.meta) {
    if (kind !== 'iova' && kind !== 'iova_magazine') expect(`${kind}: ${s.liveBytes}`).toBe(`${kind}: 0`);
  }
}

for (const kind of ['strict', 'lazy'] as const) {
  describe(`legacy unmap misuse (${kind}, dma-debug off)`, () => {
    function setup(pages: number) {
      const rig = createDmaRig();
      const dev = createKindDevice(rig, kind, { debug: false });
      const phys = rig.machine.pages.allocPages(Math.ceil(Math.log2(pages)));
      const addr = dmaMapPage(dev, phys, 0, pages * SZ_4K, DMA_TO_DEVICE);
      return { m: rig.machine, dev, addr };
    }

    it('dma_unmap_page with a larger size than mapped', () => {
      const { m, dev, addr } = setup(1);
      expectRefused(m, dev, () => dmaUnmapPage(dev, addr, 2 * SZ_4K, DMA_TO_DEVICE), /not mapped/);
      expect(deviceReadFaults(dev, addr, SZ_4K)).toBe(false);
      dmaUnmapPage(dev, addr, SZ_4K, DMA_TO_DEVICE);
      m.clock.advance(20e6); // a lazy domain's IOTLB forgets the page when its flush queue runs
      expect(deviceReadFaults(dev, addr)).toBe(true);
      expectNoLeaks(m, dev);
    });

    it('dma_unmap_page with a smaller size than mapped', () => {
      const { m, dev, addr } = setup(3);
      expectRefused(m, dev, () => dmaUnmapPage(dev, addr, SZ_4K, DMA_TO_DEVICE), /size smaller than mapped/);
      expect(deviceReadFaults(dev, addr, 3 * SZ_4K)).toBe(false);
      dmaUnmapPage(dev, addr, 3 * SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });

    it('dma_unmap_page of an address never mapped, or inside a mapping', () => {
      const { m, dev, addr } = setup(2);
      expectRefused(m, dev, () => dmaUnmapPage(dev, addr - 16 * SZ_4K, SZ_4K, DMA_TO_DEVICE), /./);
      expectRefused(m, dev, () => dmaUnmapPage(dev, addr + SZ_4K, SZ_4K, DMA_TO_DEVICE), /not mapped/);
      dmaUnmapPage(dev, addr, 2 * SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });

    it('double dma_unmap_page', () => {
      const { m, dev, addr } = setup(1);
      dmaUnmapPage(dev, addr, SZ_4K, DMA_TO_DEVICE);
      expectRefused(m, dev, () => dmaUnmapPage(dev, addr, SZ_4K, DMA_TO_DEVICE), /./);
      expectNoLeaks(m, dev);
    });

    it('double dma_unmap_sgtable', () => {
      const rig = createDmaRig();
      const m = rig.machine;
      const dev = createKindDevice(rig, kind, { debug: false });
      const sgt = new SgTable();
      expect(sgAllocTable(m, sgt, 3)).toBe(0);
      for (const sg of sgIter(sgt.sgl!, 3)) sgSetPage(sg, m.pages.allocPages(0), SZ_4K, 0);
      expect(dmaMapSgtable(dev, sgt, DMA_TO_DEVICE)).toBe(0);
      dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE);
      expectRefused(m, dev, () => dmaUnmapSgtable(dev, sgt, DMA_TO_DEVICE), /not mapped/);
      sgFreeTable(m, sgt);
      expectNoLeaks(m, dev);
    });
  });

  describe(`two-step misuse (${kind}, dma-debug off)`, () => {
    /** A 4-page state with pages `linked` (indices) linked. */
    function setup(linked: number[]) {
      const rig = createDmaRig();
      const m = rig.machine;
      const dev = createKindDevice(rig, kind, { debug: false });
      const state = new DmaIovaState();
      expect(dmaIovaTryAlloc(dev, state, 0, 4 * SZ_4K)).toBe(true);
      for (const i of linked) {
        expect(dmaIovaLink(dev, state, m.pages.allocPages(0), i * SZ_4K, SZ_4K, DMA_TO_DEVICE)).toBe(0);
      }
      return { m, dev, state };
    }

    it('dma_iova_destroy with mapped_len larger than what was linked', () => {
      const { m, dev, state } = setup([0, 1]);
      expectRefused(m, dev, () => dmaIovaDestroy(dev, state, 4 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      expect(deviceReadFaults(dev, state.addr, 2 * SZ_4K)).toBe(false);
      dmaIovaDestroy(dev, state, 2 * SZ_4K, DMA_TO_DEVICE);
      m.clock.advance(20e6);
      expect(deviceReadFaults(dev, state.addr)).toBe(true);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_destroy with mapped_len smaller than what was linked', () => {
      const { m, dev, state } = setup([0, 1, 2]);
      expectRefused(
        m,
        dev,
        () => dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE),
        /links beyond mapped_len/,
      );
      dmaIovaDestroy(dev, state, 3 * SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_unlink larger than what was linked, over a hole, or beyond the allocation', () => {
      const { m, dev, state } = setup([0, 2]);
      expectRefused(m, dev, () => dmaIovaUnlink(dev, state, 0, 2 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      expectRefused(m, dev, () => dmaIovaUnlink(dev, state, 0, 3 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      expectRefused(
        m,
        dev,
        () => dmaIovaUnlink(dev, state, 2 * SZ_4K, 4 * SZ_4K, DMA_TO_DEVICE),
        /outside allocated IOVA/,
      );
      dmaIovaUnlink(dev, state, 0, SZ_4K, DMA_TO_DEVICE);
      dmaIovaUnlink(dev, state, 2 * SZ_4K, SZ_4K, DMA_TO_DEVICE);
      // a second unlink of the same range
      expectRefused(m, dev, () => dmaIovaUnlink(dev, state, 0, SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      dmaIovaFree(dev, state);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_free with links left', () => {
      const { m, dev, state } = setup([0, 1]);
      expectRefused(m, dev, () => dmaIovaFree(dev, state), /links left/);
      expectRefused(m, dev, () => dmaIovaDestroy(dev, state, 0, DMA_TO_DEVICE), /links left/);
      dmaIovaUnlink(dev, state, SZ_4K, SZ_4K, DMA_TO_DEVICE);
      expectRefused(m, dev, () => dmaIovaFree(dev, state), /links left/);
      dmaIovaUnlink(dev, state, 0, SZ_4K, DMA_TO_DEVICE);
      dmaIovaFree(dev, state);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_destroy after a partial unlink: the rest, then nothing more', () => {
      const { m, dev, state } = setup([0, 1, 2, 3]);
      dmaIovaUnlink(dev, state, 3 * SZ_4K, SZ_4K, DMA_TO_DEVICE);
      expectRefused(m, dev, () => dmaIovaDestroy(dev, state, 4 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      dmaIovaUnlink(dev, state, SZ_4K, SZ_4K, DMA_TO_DEVICE);
      // pages 0 and 2 linked: as many bytes as [0, 2 pages), but not that range
      expectRefused(m, dev, () => dmaIovaDestroy(dev, state, 2 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      expectRefused(m, dev, () => dmaIovaDestroy(dev, state, 3 * SZ_4K, DMA_TO_DEVICE), /range not mapped/);
      dmaIovaUnlink(dev, state, 2 * SZ_4K, SZ_4K, DMA_TO_DEVICE);
      dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_link past the end of the allocation maps nothing', () => {
      const { m, dev, state } = setup([0]);
      const p = m.pages.allocPages(1);
      expectRefused(m, dev, () => dmaIovaLink(dev, state, p, 3 * SZ_4K, 2 * SZ_4K, DMA_TO_DEVICE), /outside/);
      dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });

    it('dma_iova_sync of a range outside the allocation', () => {
      const { m, dev, state } = setup([0]);
      expectRefused(m, dev, () => dmaIovaSync(dev, state, 2 * SZ_4K, 4 * SZ_4K), /outside allocated IOVA/);
      expect(dmaIovaSync(dev, state, 0, SZ_4K)).toBe(0);
      dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
      expectNoLeaks(m, dev);
    });
  });
}
