import { type Device, DMA_MAPPING_ERROR, dmaDebugDeviceTeardown, dmaUseIova } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, type DeviceKind } from '@iovalink/dma-api/testing';
import { Errno, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { HMM_PFN_DMA_MAPPED, HMM_PFN_VALID } from '../src/hmm.js';
import {
  HMM_DMA_DMA_LIST,
  HMM_DMA_PFN_LIST,
  HmmDmaMap,
  hmmDmaMapAlloc,
  hmmDmaMapFree,
  hmmDmaMapPfn,
  hmmDmaUnmapPfn,
} from '../src/hmm-dma.js';
import { busToPhys, odpPattern } from '../src/testing/index.js';

function live(machine: Machine, kind: string): number {
  return machine.counters.meta.get(kind)?.liveBytes ?? 0;
}

/** A map of `n` entries whose pfns point at freshly written frames. */
function setup(kind: DeviceKind, n: number, debug = true) {
  const rig = createDmaRig();
  const dev = createKindDevice(rig, kind, { debug });
  const map = new HmmDmaMap();
  const before = rig.machine.counters.iovaAllocs;
  expect(hmmDmaMapAlloc(dev, map, n, PAGE_SIZE)).toBe(0);
  const pages: number[] = [];
  for (let i = 0; i < n; i++) {
    const p = rig.machine.pages.allocPages(0);
    rig.machine.phys.write(p, odpPattern(PAGE_SIZE, i + 1));
    pages.push(p);
    map.pfnList!.set(i, p / PAGE_SIZE, HMM_PFN_VALID);
  }
  return { rig, dev, map, pages, iovaAllocsAtAlloc: rig.machine.counters.iovaAllocs - before };
}

function deviceReads(dev: Device, bus: number, len: number): Uint8Array | undefined {
  const out = new Uint8Array(len);
  return dev.engine.read(bus, out) === 0 ? out : undefined;
}

describe('hmm_dma_map_alloc', () => {
  for (const kind of ['strict', 'lazy', 'untrusted'] as const) {
    it(`${kind}: one IOVA range for the whole map, the pfn list only (8 bytes an entry)`, () => {
      const { rig, map, iovaAllocsAtAlloc } = setup(kind, 64);
      expect(iovaAllocsAtAlloc).toBe(1);
      expect(dmaUseIova(map.state)).toBe(true);
      expect(map.dmaList).toBeUndefined();
      expect(live(rig.machine, HMM_DMA_PFN_LIST)).toBe(64 * 8);
      expect(live(rig.machine, HMM_DMA_DMA_LIST)).toBe(0);
    });
  }

  for (const kind of ['identity', 'none'] as const) {
    it(`${kind}: no IOVA path; a dma_list when dma_need_unmap (dma-debug on), none otherwise`, () => {
      const a = setup(kind, 16);
      expect(dmaUseIova(a.map.state)).toBe(false);
      expect(a.map.dmaList?.length).toBe(16);
      expect(live(a.rig.machine, HMM_DMA_DMA_LIST)).toBe(16 * 8);
      const b = setup(kind, 16, false);
      expect(b.map.dmaList).toBeUndefined();
      expect(live(b.rig.machine, HMM_DMA_DMA_LIST)).toBe(0);
    });
  }

  it('refuses devices that need cache syncs or would bounce (-EOPNOTSUPP), leaving nothing allocated', () => {
    const rig = createDmaRig();
    const nonCoherent = createKindDevice(rig, 'strict', { coherent: false });
    expect(hmmDmaMapAlloc(nonCoherent, new HmmDmaMap(), 8, PAGE_SIZE)).toBe(-Errno.EOPNOTSUPP);
    const limited = createKindDevice(rig, 'none', { dmaBits: 27 });
    expect(hmmDmaMapAlloc(limited, new HmmDmaMap(), 8, PAGE_SIZE)).toBe(-Errno.EOPNOTSUPP);
    const remapped = createKindDevice(rig, 'strict', { dmaBits: 27 });
    const ok = new HmmDmaMap();
    expect(hmmDmaMapAlloc(remapped, ok, 8, PAGE_SIZE)).toBe(0);
    hmmDmaMapFree(remapped, ok);
    expect(live(rig.machine, HMM_DMA_PFN_LIST)).toBe(0);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
  });

  it('returns -EINVAL for entries larger than the array and -ENOMEM when kvcalloc fails', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'none');
    expect(hmmDmaMapAlloc(dev, new HmmDmaMap(), 1, 2 * PAGE_SIZE)).toBe(-Errno.EINVAL);
    rig.machine.faults.failNth('kvcalloc', 2);
    expect(hmmDmaMapAlloc(dev, new HmmDmaMap(), 4, PAGE_SIZE)).toBe(-Errno.ENOMEM);
    expect(rig.machine.counters.metaTotals([HMM_DMA_PFN_LIST, HMM_DMA_DMA_LIST]).liveBytes).toBe(0);
  });
});

describe('hmm_dma_map_pfn', () => {
  it('IOVA mode: entry i lives at state.addr + i * entry size, one link + sync each, idempotent', () => {
    const { rig, dev, map } = setup('strict', 8);
    const links = rig.machine.counters.dmaLinks;
    for (const i of [3, 0, 7]) {
      const addr = hmmDmaMapPfn(dev, map, i);
      expect(addr).toBe(map.state.addr + i * PAGE_SIZE);
      expect(map.pfnList!.test(i, HMM_PFN_DMA_MAPPED)).toBe(true);
      expect(deviceReads(dev, addr, PAGE_SIZE)).toEqual(odpPattern(PAGE_SIZE, i + 1));
    }
    expect(rig.machine.counters.dmaLinks - links).toBe(3);
    expect(hmmDmaMapPfn(dev, map, 3)).toBe(map.state.addr + 3 * PAGE_SIZE);
    expect(rig.machine.counters.dmaLinks - links).toBe(3);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
  });

  it('fallback: dma_map_page per entry, address kept in the dma_list and returned again when mapped', () => {
    const { rig, dev, map, pages } = setup('identity', 4);
    const addr = hmmDmaMapPfn(dev, map, 2);
    expect(addr).toBe(pages[2]);
    expect(map.dmaList![2]).toBe(addr);
    const maps = rig.machine.counters.dmaMapCalls;
    expect(hmmDmaMapPfn(dev, map, 2)).toBe(addr);
    expect(rig.machine.counters.dmaMapCalls).toBe(maps);
  });

  it('fallback without a dma_list (coherent direct device, no dma-debug): maps again, statelessly', () => {
    const { rig, dev, map, pages } = setup('none', 2, false);
    expect(hmmDmaMapPfn(dev, map, 1)).toBe(pages[1]);
    const maps = rig.machine.counters.dmaMapCalls;
    expect(hmmDmaMapPfn(dev, map, 1)).toBe(pages[1]);
    expect(rig.machine.counters.dmaMapCalls).toBe(maps + 1);
  });

  it('returns DMA_MAPPING_ERROR and leaves the entry unmapped when the link fails', () => {
    const { rig, dev, map } = setup('strict', 2);
    rig.machine.faults.failAlways('pgtable_page');
    const r = hmmDmaMapPfn(dev, map, 1);
    rig.machine.faults.clear();
    if (r === DMA_MAPPING_ERROR) {
      expect(map.pfnList!.test(1, HMM_PFN_DMA_MAPPED)).toBe(false);
    } else {
      // page-table pages already present: the link needed none
      expect(r).toBe(map.state.addr + PAGE_SIZE);
    }
  });
});

describe('hmm_dma_unmap_pfn', () => {
  for (const kind of ['strict', 'lazy'] as const) {
    it(`${kind}: unlinks the entry and invalidates the IOTLB at once, even on a flush-queue domain`, () => {
      const { rig, dev, map, pages } = setup(kind, 4);
      const addr = hmmDmaMapPfn(dev, map, 1);
      expect(deviceReads(dev, addr, 16)).toBeDefined(); // fills the IOTLB
      const inv = rig.machine.counters.iotlbInvRange;
      expect(hmmDmaUnmapPfn(dev, map, 1)).toBe(true);
      expect(rig.machine.counters.iotlbInvRange - inv).toBe(1);
      expect(map.pfnList!.test(1, HMM_PFN_DMA_MAPPED)).toBe(false);
      expect(map.pfnList!.pfn(1)).toBe(pages[1]! / PAGE_SIZE);
      expect(deviceReads(dev, addr, 16)).toBeUndefined();
      expect(busToPhys(dev, addr)).toBe(0);
      expect(hmmDmaUnmapPfn(dev, map, 1)).toBe(false);
      expect(hmmDmaUnmapPfn(dev, map, 0)).toBe(false);
    });
  }
});

describe('hmm_dma_map_free', () => {
  for (const kind of ['strict', 'lazy', 'identity', 'none', 'untrusted'] as const) {
    it(`${kind}: after unmapping every entry, frees lists and IOVA; dma-debug finds no leak`, () => {
      const { rig, dev, map } = setup(kind, 8);
      for (let i = 0; i < 8; i++) hmmDmaMapPfn(dev, map, i);
      for (let i = 0; i < 8; i++) expect(hmmDmaUnmapPfn(dev, map, i)).toBe(true);
      hmmDmaMapFree(dev, map);
      expect(map.pfnList).toBeUndefined();
      expect(rig.machine.counters.metaTotals([HMM_DMA_PFN_LIST, HMM_DMA_DMA_LIST]).liveBytes).toBe(0);
      expect(() => dmaDebugDeviceTeardown(dev)).not.toThrow();
    });
  }

  it('with entries still linked, dma-debug reports the free', () => {
    const { dev, map } = setup('strict', 2);
    hmmDmaMapPfn(dev, map, 0);
    expect(() => hmmDmaMapFree(dev, map)).toThrow(/links left/);
  });
});
