import { SZ_4K } from '@iovalink/iommu';
import { allocScatteredPages, patternBytes } from '@iovalink/iommu/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Device } from '../src/device.js';
import { dmaDebugDeviceTeardown } from '../src/dma-debug.js';
import {
  DMA_FROM_DEVICE,
  DMA_MAPPING_ERROR,
  DMA_TO_DEVICE,
  type DmaDataDirection,
} from '../src/dma-direction.js';
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
import { dmaMapPhys, dmaMappingError, dmaMapSgtable, dmaUnmapPhys, dmaUnmapSgtable } from '../src/mapping.js';
import { SgTable, sgAllocTable, sgFreeTable, sgIter, sgSetPage } from '../src/scatterlist.js';
import { createDmaRig, createKindDevice, DEVICE_KINDS, type DmaRig } from '../src/testing/index.js';

const PAGES = 8;

/** Maps `pages` for `dir` through the scatterlist path; returns DMA segments and an unmap. */
function mapSg(rig: DmaRig, dev: Device, pages: number[], dir: DmaDataDirection) {
  const sgt = new SgTable();
  expect(sgAllocTable(rig.machine, sgt, pages.length)).toBe(0);
  let i = 0;
  for (const sg of sgIter(sgt.sgl!, pages.length)) sgSetPage(sg, pages[i++]!, SZ_4K, 0);
  expect(dmaMapSgtable(dev, sgt, dir)).toBe(0);
  const segs = [...sgIter(sgt.sgl!, sgt.nents)].map((s) => [s.dmaAddress, s.dmaLength] as const);
  return {
    segs,
    unmap: () => {
      dmaUnmapSgtable(dev, sgt, dir);
      sgFreeTable(rig.machine, sgt);
    },
  };
}

/** Maps through the two-step API, falling back to per-page streaming maps like the kernel's callers. */
function mapIova(dev: Device, pages: number[], dir: DmaDataDirection) {
  const state = new DmaIovaState();
  const len = pages.length * SZ_4K;
  if (dmaIovaTryAlloc(dev, state, 0, len)) {
    pages.forEach((p, i) => {
      expect(dmaIovaLink(dev, state, p, i * SZ_4K, SZ_4K, dir)).toBe(0);
    });
    expect(dmaIovaSync(dev, state, 0, len)).toBe(0);
    return {
      segs: [[state.addr, len] as const],
      unmap: () => dmaIovaDestroy(dev, state, len, dir),
      iova: true,
    };
  }
  const segs = pages.map((p) => {
    const a = dmaMapPhys(dev, p, SZ_4K, dir);
    expect(dmaMappingError(dev, a)).toBe(false);
    return [a, SZ_4K] as const;
  });
  return {
    segs,
    unmap: () => {
      for (const [a] of segs) dmaUnmapPhys(dev, a, SZ_4K, dir);
    },
    iova: false,
  };
}

describe.each(DEVICE_KINDS)('end to end on a %s device', (kind) => {
  for (const path of ['sg', 'iova'] as const) {
    it(`${path} path: the device reads what the CPU wrote and the CPU reads what the device wrote`, () => {
      const rig = createDmaRig();
      const dev = createKindDevice(rig, kind);
      const pages = allocScatteredPages(rig.machine, PAGES);
      const data = patternBytes(PAGES * SZ_4K, 11);
      pages.forEach((p, i) => {
        rig.machine.phys.write(p, data.subarray(i * SZ_4K, (i + 1) * SZ_4K));
      });
      // to the device
      const out = path === 'sg' ? mapSg(rig, dev, pages, DMA_TO_DEVICE) : mapIova(dev, pages, DMA_TO_DEVICE);
      const got = new Uint8Array(PAGES * SZ_4K);
      let off = 0;
      for (const [a, l] of out.segs) {
        expect(dev.engine.read(a, got.subarray(off, off + l))).toBe(0);
        off += l;
      }
      expect(got).toEqual(data);
      const firstBus = out.segs[0]![0];
      out.unmap();
      if (kind === 'strict' || kind === 'untrusted') {
        expect(dev.engine.read(firstBus, new Uint8Array(1))).not.toBe(0);
      }
      if (kind === 'lazy') {
        rig.machine.clock.advance(10e6);
        expect(dev.engine.read(firstBus, new Uint8Array(1))).not.toBe(0);
      }
      // from the device
      const upd = patternBytes(PAGES * SZ_4K, 12);
      const inn =
        path === 'sg' ? mapSg(rig, dev, pages, DMA_FROM_DEVICE) : mapIova(dev, pages, DMA_FROM_DEVICE);
      off = 0;
      for (const [a, l] of inn.segs) {
        expect(dev.engine.write(a, upd.subarray(off, off + l))).toBe(0);
        off += l;
      }
      inn.unmap();
      for (const [i, p] of pages.entries()) {
        expect(rig.machine.phys.read(p, SZ_4K)).toEqual(upd.subarray(i * SZ_4K, (i + 1) * SZ_4K));
      }
      dmaDebugDeviceTeardown(dev);
      expect(rig.swiotlb.usedSlots).toBe(0);
      if (dev.dmaIommu && path === 'iova') expect(rig.machine.counters.iovaAllocs).toBe(2);
    });
  }
});

describe('two-step API under random interleavings and faults', () => {
  it('never leaves a PTE that no state owns, and leaks nothing when allocations fail', () => {
    fc.assert(
      fc.property(
        fc.constantFrom('strict', 'lazy', 'untrusted'),
        fc.array(
          fc.record({
            op: fc.constantFrom('alloc', 'link', 'link', 'unlink', 'sync', 'destroy', 'free'),
            which: fc.nat(),
            fault: fc.constantFrom('none', 'none', 'none', 'iova_alloc', 'pgtable_page', 'swiotlb'),
          }),
          { maxLength: 60 },
        ),
        (kind, ops) => {
          const rig = createDmaRig();
          const dev = createKindDevice(rig, kind as 'strict');
          const pgtbl = dev.domain!.pgtbl!;
          const pool = rig.machine.pages.allocPages(6); // 64 pages of data
          interface S {
            st: DmaIovaState;
            pages: number;
            linked: boolean[];
            phys: number;
          }
          const states: S[] = [];
          const check = () => {
            let linked = 0;
            for (const s of states) {
              s.linked.forEach((l, i) => {
                if (!l) return;
                linked++;
                expect(dev.engine.read(s.st.addr + i * SZ_4K, new Uint8Array(1))).toBe(0);
              });
            }
            expect(pgtbl.leafCount).toBe(linked);
          };
          for (const { op, which, fault } of ops) {
            if (fault !== 'none') rig.machine.faults.failNth(fault, 1);
            const s = states.length > 0 ? states[which % states.length]! : undefined;
            switch (op) {
              case 'alloc': {
                const pages = 1 + (which % 8);
                const st = new DmaIovaState();
                if (dmaIovaTryAlloc(dev, st, 0, pages * SZ_4K)) {
                  states.push({
                    st,
                    pages,
                    linked: new Array(pages).fill(false),
                    phys: pool + (which % 56) * SZ_4K,
                  });
                }
                break;
              }
              case 'link': {
                if (!s) break;
                const i = s.linked.indexOf(false);
                if (i < 0) break;
                const r = dmaIovaLink(dev, s.st, s.phys + i * SZ_4K, i * SZ_4K, SZ_4K, DMA_TO_DEVICE);
                if (r === 0) s.linked[i] = true;
                break;
              }
              case 'unlink': {
                if (!s) break;
                const i = s.linked.lastIndexOf(true);
                if (i < 0) break;
                dmaIovaUnlink(dev, s.st, i * SZ_4K, SZ_4K, DMA_TO_DEVICE);
                s.linked[i] = false;
                break;
              }
              case 'sync':
                if (s) expect(dmaIovaSync(dev, s.st, 0, s.pages * SZ_4K)).toBe(0);
                break;
              case 'destroy': {
                if (!s) break;
                const n = s.linked.indexOf(false) < 0 ? s.pages : s.linked.indexOf(false);
                if (s.linked.slice(n).some((l) => l)) break; // destroy needs [0, n) exactly
                dmaIovaDestroy(dev, s.st, n * SZ_4K, DMA_TO_DEVICE);
                states.splice(states.indexOf(s), 1);
                break;
              }
              case 'free':
                if (!s || s.linked.some((l) => l)) break;
                dmaIovaFree(dev, s.st);
                states.splice(states.indexOf(s), 1);
                break;
            }
            rig.machine.faults.clear();
            check();
          }
          for (const s of states) {
            s.linked.forEach((l, i) => {
              l && dmaIovaUnlink(dev, s.st, i * SZ_4K, SZ_4K, DMA_TO_DEVICE);
            });
            dmaIovaFree(dev, s.st);
          }
          expect(pgtbl.leafCount).toBe(0);
          dmaDebugDeviceTeardown(dev);
          iommuDmaCookie(dev.domain!).fq?.flushAll();
          expect(rig.machine.counters.iovaAllocs).toBe(rig.machine.counters.iovaFrees);
          expect(rig.swiotlb.usedSlots).toBe(0);
          expect(DMA_MAPPING_ERROR).toBeGreaterThan(0);
        },
      ),
      { numRuns: 80 },
    );
  });
});
