/**
 * `IoTlbMem` slot-search rules: `'v6.1'` (swiotlb_do_find_slots in v6.1) against the default
 * `'current'` (v6.9+). Expected slots are derived from the two kernels' stride rules for a device
 * with NVMe's 4 KiB - 1 min_align_mask, the case a recorded Debian 6.1 kernel showed to differ.
 */
import { Machine } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { DMA_TO_DEVICE } from '../src/dma-direction.js';
import { DmaError } from '../src/errors.js';
import {
  IO_TLB_SIZE,
  IoTlbMem,
  type SwiotlbSlotSearch,
  swiotlbTblMapSingle,
  swiotlbTblUnmapSingle,
} from '../src/swiotlb.js';

const NVME_MIN_ALIGN = 0xfff;

function pool(slotSearch?: SwiotlbSlotSearch): { mem: IoTlbMem; buf: number } {
  const machine = new Machine({ memSize: 64 << 20, cpus: 1 });
  const mem = IoTlbMem.create(machine, { size: 1 << 20, nareas: 1, ...(slotSearch ? { slotSearch } : {}) });
  if (mem === undefined) throw new Error('no pool');
  const buf = machine.pages.allocPages(4);
  return { mem, buf };
}

/** Slot index of a bounce address. */
const slotOf = (mem: IoTlbMem, tlb: number): number => mem.slotIndex(tlb);

describe('IoTlbMem slotSearch', () => {
  it("defaults to 'current' and rejects unknown rules", () => {
    expect(pool().mem.slotSearch).toBe('current');
    const machine = new Machine({ memSize: 64 << 20, cpus: 1 });
    expect(() => IoTlbMem.create(machine, { size: 1 << 20, slotSearch: 'v5' as SwiotlbSlotSearch })).toThrow(
      DmaError,
    );
  });

  for (const [rules, expectedSlot] of [
    // area index 2 after a 2-slot bounce; min-align bits above a slot: 0x800 -> 2 slots;
    // v6.1 doubles that for a page-sized bounce (stride 4) and starts at ALIGN(2, 4) = 4;
    // v6.9+ keeps stride 2 and starts at 2
    ['v6.1', 4],
    ['current', 2],
  ] as const) {
    it(`${rules}: a page-sized bounce after a 2-slot one starts at slot ${expectedSlot}`, () => {
      const { mem, buf } = pool(rules);
      const first = swiotlbTblMapSingle(mem, buf, 4096, 0, NVME_MIN_ALIGN, DMA_TO_DEVICE, 0);
      expect(slotOf(mem, first)).toBe(0);
      swiotlbTblUnmapSingle(mem, first, 4096, DMA_TO_DEVICE, 0);
      const second = swiotlbTblMapSingle(mem, buf + 4096, 4096, 0, NVME_MIN_ALIGN, DMA_TO_DEVICE, 0);
      expect(slotOf(mem, second)).toBe(expectedSlot);
      expect(second - mem.slotAddr(expectedSlot)).toBe(0);
    });
  }

  it('v6.1: sub-page bounces keep the 2-slot stride and the min-align offset, as before', () => {
    const { mem, buf } = pool('v6.1');
    // 512 bytes at in-page offset 0x800 + 0x10: the slot must match bit 11, the offset 0x10 is kept
    const orig = buf + 0x810;
    const tlb = swiotlbTblMapSingle(mem, orig, 512, 0, NVME_MIN_ALIGN, DMA_TO_DEVICE, 0);
    const slot = slotOf(mem, tlb);
    expect(slot % 2).toBe(1);
    expect(tlb - mem.slotAddr(slot)).toBe(0x10);
    expect(tlb % (2 * IO_TLB_SIZE)).toBe(orig % (2 * IO_TLB_SIZE));
  });
});
