import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import {
  HMM_PFN_BITS,
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_FLAGS,
  HMM_PFN_HI_SHIFT,
  HMM_PFN_INOUT_FLAGS,
  HMM_PFN_ORDER_SHIFT,
  HMM_PFN_P2PDMA,
  HMM_PFN_P2PDMA_BUS,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmPfnList,
  type HmmRange,
  hmmPfnToMapOrder,
  hmmPfnToPhys,
  hmmRangeFault,
} from '../src/hmm.js';
import { Mm } from '../src/mm.js';
import { PROT_NONE, PROT_READ } from '../src/mm-types.js';
import {
  MmuIntervalNotifier,
  mmuIntervalNotifierInsert,
  mmuIntervalReadBegin,
  mmuIntervalSetSeq,
} from '../src/mmu-notifier.js';
import { mmapAnon } from '../src/testing/index.js';

/** A subscription over `[start, start + pages)` that records invalidations like a driver. */
function subscribe(mm: Mm, start: number, pages: number): MmuIntervalNotifier {
  const sub = new MmuIntervalNotifier();
  mmuIntervalNotifierInsert(sub, mm, start, pages * PAGE_SIZE, {
    invalidate(s, _r, seq) {
      mmuIntervalSetSeq(s, seq);
      return true;
    },
  });
  return sub;
}

function range(
  sub: MmuIntervalNotifier,
  start: number,
  pages: number,
  defaultFlags: number,
  list?: HmmPfnList,
): HmmRange {
  return {
    notifier: sub,
    notifierSeq: mmuIntervalReadBegin(sub),
    start,
    end: start + pages * PAGE_SIZE,
    hmmPfns: list ?? new HmmPfnList(pages),
    pfnOffset: 0,
    defaultFlags,
    pfnFlagsMask: 0,
  };
}

describe('HMM_PFN_* (include/linux/hmm.h, v6.16+)', () => {
  it('places the flags at bits 63..58 and the order at 53..57 of a little-endian 64-bit word', () => {
    expect(HMM_PFN_BITS).toEqual({
      VALID: 63,
      WRITE: 62,
      ERROR: 61,
      DMA_MAPPED: 60,
      P2PDMA: 59,
      P2PDMA_BUS: 58,
      ORDER_SHIFT: 53,
    });
    const hiBit = (mask: number) => 31 - Math.clz32(mask) + HMM_PFN_HI_SHIFT;
    expect(hiBit(HMM_PFN_VALID)).toBe(63);
    expect(hiBit(HMM_PFN_WRITE)).toBe(62);
    expect(hiBit(HMM_PFN_ERROR)).toBe(61);
    expect(hiBit(HMM_PFN_DMA_MAPPED)).toBe(60);
    expect(hiBit(HMM_PFN_P2PDMA)).toBe(59);
    expect(hiBit(HMM_PFN_P2PDMA_BUS)).toBe(58);
    expect(HMM_PFN_ORDER_SHIFT).toBe(53);
    // HMM_PFN_FLAGS = ~((1 << 53) - 1): bits 53..63
    expect(HMM_PFN_FLAGS >>> 0).toBe(0xffe00000);
    expect(HMM_PFN_INOUT_FLAGS >>> 0).toBe((HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS) >>> 0);
    expect(HMM_PFN_REQ_FAULT).toBe(HMM_PFN_VALID);
    expect(HMM_PFN_REQ_WRITE).toBe(HMM_PFN_WRITE);

    const list = new HmmPfnList(2);
    const pfn = 0x1_2345_6789; // above 2^32: pfn bits spill into the high half
    list.set(1, pfn, HMM_PFN_VALID | HMM_PFN_WRITE | HMM_PFN_DMA_MAPPED);
    const view = new DataView(list.words.buffer);
    expect(view.getUint32(8, true)).toBe(0x2345_6789); // bits 0..31
    expect(view.getUint32(12, true)).toBe((0xd0000000 | 0x1) >>> 0); // bits 63, 62, 60 and pfn bit 32
    expect(list.pfn(1)).toBe(pfn);
    expect(list.flags(1)).toBe(0xd0000000);
    expect(hmmPfnToPhys(list, 1)).toBe(pfn * PAGE_SIZE);
    expect(hmmPfnToMapOrder(list, 1)).toBe(0);
    expect(list.byteLength).toBe(16);
    list.clearFlags(1, HMM_PFN_FLAGS);
    expect(list.pfn(1)).toBe(pfn);
    expect(list.flags(1)).toBe(0);
  });
});

describe('hmm_range_fault', () => {
  it('without fault flags reports present pages only (snapshot)', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, 3 * PAGE_SIZE);
    mm.write(a + PAGE_SIZE, new Uint8Array([1]));
    const sub = subscribe(mm, a, 3);
    const r = range(sub, a, 3, 0);
    expect(hmmRangeFault(r)).toBe(0);
    expect(r.hmmPfns.flags(0)).toBe(0);
    expect(r.hmmPfns.flags(1)).toBe((HMM_PFN_VALID | HMM_PFN_WRITE) >>> 0);
    expect(r.hmmPfns.pfn(1)).toBe(mm.followPte(a + PAGE_SIZE)!.pfn);
    expect(mm.stats.faults).toBe(1);
  });

  it('with HMM_PFN_REQ_FAULT faults pages in; REQ_WRITE asks for writable ones', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, 4 * PAGE_SIZE);
    const sub = subscribe(mm, a, 4);
    const r = range(sub, a, 4, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
    expect(hmmRangeFault(r)).toBe(0);
    for (let i = 0; i < 4; i++) {
      expect(r.hmmPfns.test(i, HMM_PFN_VALID | HMM_PFN_WRITE)).toBe(true);
      expect(r.hmmPfns.pfn(i)).toBe(mm.followPte(a + i * PAGE_SIZE)!.pfn);
    }
    expect(mm.stats.hmmPagesFaulted).toBe(4);
  });

  it('fills HMM_PFN_ERROR where there is no VMA or no read permission, and fails a fault there with -EFAULT', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    const b = mmapAnon(mm, PAGE_SIZE, PROT_NONE, a + 2 * PAGE_SIZE);
    expect(b).toBe(a + 2 * PAGE_SIZE);
    const sub = subscribe(mm, a, 3);
    const r = range(sub, a, 3, 0);
    expect(hmmRangeFault(r)).toBe(0);
    expect(r.hmmPfns.flags(1)).toBe(HMM_PFN_ERROR);
    expect(r.hmmPfns.flags(2)).toBe(HMM_PFN_ERROR);
    expect(hmmRangeFault(range(sub, a, 3, HMM_PFN_REQ_FAULT))).toBe(-Errno.EFAULT);
  });

  it('returns -EPERM for a write request on a read-only VMA', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE, PROT_READ);
    const sub = subscribe(mm, a, 1);
    expect(hmmRangeFault(range(sub, a, 1, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE))).toBe(-Errno.EPERM);
    const r = range(sub, a, 1, HMM_PFN_REQ_FAULT);
    expect(hmmRangeFault(r)).toBe(0);
    expect(r.hmmPfns.flags(0)).toBe(HMM_PFN_VALID);
  });

  it('returns -EBUSY when the notifier sequence changed since read_begin', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    const sub = subscribe(mm, a, 1);
    const r = range(sub, a, 1, HMM_PFN_REQ_FAULT);
    mm.migratePages(a, PAGE_SIZE);
    expect(hmmRangeFault(r)).toBe(-Errno.EBUSY);
    expect(mm.stats.hmmBusy).toBe(1);
  });

  it('returns -EBUSY when its own write fault breaks COW (which invalidates the range), then succeeds on retry', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([5]));
    const child = mm.fork();
    const sub = subscribe(mm, a, 1);
    const r = range(sub, a, 1, HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE);
    expect(hmmRangeFault(r)).toBe(-Errno.EBUSY);
    r.notifierSeq = mmuIntervalReadBegin(sub);
    expect(hmmRangeFault(r)).toBe(0);
    expect(r.hmmPfns.pfn(0)).toBe(mm.followPte(a)!.pfn);
    expect(r.hmmPfns.pfn(0)).not.toBe(child.followPte(a)!.pfn);
    expect(mm.stats.cowBreaks).toBe(1);
  });

  it('carries the sticky DMA flags; a per-entry request faults to the end of the PMD, as hmm_vma_fault does', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, 2 * PAGE_SIZE);
    const sub = subscribe(mm, a, 2);
    const list = new HmmPfnList(2);
    list.set(0, 0, HMM_PFN_DMA_MAPPED | HMM_PFN_REQ_FAULT);
    const r = range(sub, a, 2, 0, list);
    r.pfnFlagsMask = HMM_PFN_REQ_FAULT;
    expect(hmmRangeFault(r)).toBe(0);
    expect(list.test(0, HMM_PFN_VALID | HMM_PFN_DMA_MAPPED)).toBe(true);
    // entry 1 was not requested, but hmm_vma_fault faults [addr, end of PMD) and the walk restarts
    expect(list.test(1, HMM_PFN_VALID)).toBe(true);
    expect(list.test(1, HMM_PFN_DMA_MAPPED)).toBe(false);
    expect(mm.nrPtes).toBe(2);
  });
});
