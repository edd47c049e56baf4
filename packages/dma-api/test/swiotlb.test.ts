import { type Machine, MachineError } from '@iovalink/iommu';
import { createTestMachine, patternBytes, writePattern } from '@iovalink/iommu/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_BIDIRECTIONAL,
  DMA_FROM_DEVICE,
  DMA_MAPPING_ERROR,
  DMA_NONE,
  DMA_TO_DEVICE,
  type DmaDataDirection,
} from '../src/dma-direction.js';
import { DmaError } from '../src/errors.js';
import {
  IO_TLB_DEFAULT_SIZE,
  IO_TLB_SEGSIZE,
  IO_TLB_SHIFT,
  IO_TLB_SIZE,
  IoTlbMem,
  isSwiotlbBuffer,
  swiotlbMaxMappingSize,
  swiotlbOrigAddr,
  swiotlbSyncSingleForCpu,
  swiotlbSyncSingleForDevice,
  swiotlbTblMapSingle,
  swiotlbTblUnmapSingle,
} from '../src/swiotlb.js';

const MAX_MAPPING = IO_TLB_SEGSIZE * IO_TLB_SIZE;

interface Setup {
  machine: Machine;
  mem: IoTlbMem;
  /** 1 MiB of RAM outside the pool for original buffers. */
  buf: number;
}

function setup(opts: { cpus?: number; size?: number; nareas?: number } = {}): Setup {
  const machine = createTestMachine({ cpus: opts.cpus ?? 2 });
  const mem = IoTlbMem.create(machine, {
    size: opts.size ?? 4 << 20,
    ...(opts.nareas === undefined ? {} : { nareas: opts.nareas }),
  });
  if (mem === undefined) throw new Error('setup: no swiotlb pool');
  const buf = machine.pages.allocPages(8);
  if (buf === 0) throw new Error('setup: no buffer');
  return { machine, mem, buf };
}

function map(
  s: Setup,
  orig: number,
  size: number,
  dir: DmaDataDirection = DMA_BIDIRECTIONAL,
  masks: { alloc?: number; min?: number; untrusted?: boolean } = {},
): number {
  return swiotlbTblMapSingle(
    s.mem,
    orig,
    size,
    masks.alloc ?? 0,
    masks.min ?? 0,
    dir,
    0,
    masks.untrusted ?? false,
  );
}

function expectDmaError(fn: () => unknown, rule: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(DmaError);
  expect((caught as DmaError).rule).toBe(rule);
}

/** Free-run lengths as `swiotlb_init_io_tlb_pool` sets them. */
function initialList(nslabs: number): number[] {
  return Array.from({ length: nslabs }, (_, i) =>
    Math.min(IO_TLB_SEGSIZE - (i % IO_TLB_SEGSIZE), nslabs - i),
  );
}

describe('IO_TLB_* constants (include/linux/swiotlb.h)', () => {
  it('match the kernel', () => {
    expect(IO_TLB_SHIFT).toBe(11);
    expect(IO_TLB_SIZE).toBe(2048);
    expect(IO_TLB_SEGSIZE).toBe(128);
    expect(IO_TLB_DEFAULT_SIZE).toBe(64 << 20);
  });
});

describe('IoTlbMem.create (swiotlb_init_late, swiotlb_init_io_tlb_pool)', () => {
  it('builds a 4 MiB pool from one order-10 block, with areas per CPU and fresh free runs', () => {
    const machine = createTestMachine({ cpus: 2 });
    const free0 = machine.pages.nrFreePages;
    const mem = IoTlbMem.create(machine, { size: 4 << 20 })!;
    expect(mem.nslabs).toBe(2048);
    expect(mem.blocks).toHaveLength(1);
    expect(mem.blockOrder).toBe(10);
    expect(mem.blocks[0]! % (4 << 20)).toBe(0);
    expect(mem.nareas).toBe(2);
    expect(mem.areaNslabs).toBe(1024);
    expect(machine.pages.nrFreePages).toBe(free0 - 1024);
    expect(Array.from(mem.list)).toEqual(initialList(2048));
    expect(mem.list[0]).toBe(128);
    expect(mem.list[127]).toBe(1);
    expect(mem.usedSlots).toBe(0);
    expect(mem.origAddr.every((a) => a === -1)).toBe(true);
    expect(machine.counters.meta.size).toBe(0);
  });

  it('rounds small sizes up to whole segments and a power-of-two block', () => {
    const machine = createTestMachine();
    const a = IoTlbMem.create(machine, { size: 1 })!;
    expect(a.nslabs).toBe(IO_TLB_SEGSIZE);
    expect(a.blockOrder).toBe(6);
    const b = IoTlbMem.create(machine, { size: 300 << 10 })!;
    expect(b.nslabs).toBe(256);
    expect(b.blockOrder).toBe(7);
  });

  it('builds pools above 4 MiB from several 4 MiB blocks', () => {
    const machine = createTestMachine({ cpus: 4 });
    const mem = IoTlbMem.create(machine, { size: 12 << 20 })!;
    expect(mem.blocks).toHaveLength(3);
    expect(mem.nslabs).toBe(3 * 2048);
    expect(mem.nareas).toBe(4);
    expect(mem.areaNslabs % IO_TLB_SEGSIZE).toBe(0);
    const many = IoTlbMem.create(machine, { size: 12 << 20, nareas: 32 })!;
    expect(many.nareas).toBe(16);
    expect(many.areaNslabs).toBe(384);
  });

  it('rounds areas up to a power of two, whole segments each (swiotlb_adjust_nareas, limit_nareas)', () => {
    const m3 = createTestMachine({ cpus: 3 });
    expect(IoTlbMem.create(m3, { size: 4 << 20 })!.nareas).toBe(4);
    expect(IoTlbMem.create(m3, { size: 4 << 20, nareas: 0 })!.nareas).toBe(1);
    const m4 = createTestMachine({ cpus: 4 });
    expect(IoTlbMem.create(m4, { size: 256 << 10 })!.nareas).toBe(1);
    expect(IoTlbMem.create(m4, { size: 512 << 10 })!.nareas).toBe(2);
  });

  it('defaults to 64 MiB', () => {
    const machine = createTestMachine({ memSize: 256 << 20 });
    const mem = IoTlbMem.create(machine)!;
    expect(mem.nslabs).toBe(IO_TLB_DEFAULT_SIZE / IO_TLB_SIZE);
    expect(mem.blocks).toHaveLength(16);
  });

  it('returns undefined and gives back every block when memory runs out', () => {
    const machine = createTestMachine();
    const free0 = machine.pages.nrFreePages;
    expect(IoTlbMem.create(machine)).toBeUndefined();
    expect(machine.pages.nrFreePages).toBe(free0);
  });

  it('returns undefined when the page allocator fails midway (fault injection)', () => {
    const machine = createTestMachine();
    const free0 = machine.pages.nrFreePages;
    machine.faults.failNth('page_alloc', 2);
    expect(IoTlbMem.create(machine, { size: 8 << 20 })).toBeUndefined();
    expect(machine.pages.nrFreePages).toBe(free0);
  });

  it('rejects a bad size', () => {
    const machine = createTestMachine();
    expectDmaError(() => IoTlbMem.create(machine, { size: 0 }), 'swiotlb_init: size');
  });
});

describe('swiotlb_tbl_map_single / swiotlb_tbl_unmap_single: bounce copies', () => {
  const len = 5000;

  it('DMA_TO_DEVICE copies at map only', () => {
    const s = setup();
    const data = writePattern(s.machine, s.buf, len, 1);
    const tlb = map(s, s.buf, len, DMA_TO_DEVICE);
    expect(tlb).not.toBe(DMA_MAPPING_ERROR);
    expect(isSwiotlbBuffer(s.mem, tlb)).toBe(true);
    expect(s.machine.phys.read(tlb, len)).toEqual(data);
    expect(s.machine.counters.bounceBytes).toBe(len);
    s.machine.phys.write(tlb, patternBytes(len, 2)); // the device scribbles on the bounce buffer
    swiotlbTblUnmapSingle(s.mem, tlb, len, DMA_TO_DEVICE, 0);
    expect(s.machine.phys.read(s.buf, len)).toEqual(data);
    expect(s.machine.counters.bounceBytes).toBe(len);
    expect(s.mem.usedSlots).toBe(0);
  });

  it('DMA_FROM_DEVICE copies back at unmap only (the kernel also pre-fills at map)', () => {
    const s = setup();
    const data = writePattern(s.machine, s.buf, len, 1);
    const tlb = map(s, s.buf, len, DMA_FROM_DEVICE);
    // kernel >= v5.18 bounces the original in for every direction, so a partial device write
    // leaves the unwritten bytes as they were
    expect(s.machine.phys.read(tlb, len)).toEqual(data);
    expect(s.machine.counters.bounceBytes).toBe(len);
    const dev = patternBytes(len, 3);
    s.machine.phys.write(tlb, dev);
    expect(s.machine.phys.read(s.buf, len)).toEqual(data);
    swiotlbTblUnmapSingle(s.mem, tlb, len, DMA_FROM_DEVICE, 0);
    expect(s.machine.phys.read(s.buf, len)).toEqual(dev);
    expect(s.machine.counters.bounceBytes).toBe(2 * len);
  });

  it('DMA_BIDIRECTIONAL copies both ways', () => {
    const s = setup();
    const data = writePattern(s.machine, s.buf, len, 4);
    const tlb = map(s, s.buf, len, DMA_BIDIRECTIONAL);
    expect(s.machine.phys.read(tlb, len)).toEqual(data);
    const dev = patternBytes(len, 5);
    s.machine.phys.write(tlb, dev);
    swiotlbTblUnmapSingle(s.mem, tlb, len, DMA_BIDIRECTIONAL, 0);
    expect(s.machine.phys.read(s.buf, len)).toEqual(dev);
    expect(s.machine.counters.bounceBytes).toBe(2 * len);
  });

  it('DMA_ATTR_SKIP_CPU_SYNC skips the copy at unmap', () => {
    const s = setup();
    const data = writePattern(s.machine, s.buf, len, 6);
    const tlb = map(s, s.buf, len, DMA_FROM_DEVICE);
    s.machine.phys.write(tlb, patternBytes(len, 7));
    swiotlbTblUnmapSingle(s.mem, tlb, len, DMA_FROM_DEVICE, DMA_ATTR_SKIP_CPU_SYNC);
    expect(s.machine.phys.read(s.buf, len)).toEqual(data);
    expect(s.machine.counters.bounceBytes).toBe(len);
    expect(s.mem.usedSlots).toBe(0);
  });

  it('keeps bounceSlotsUsed equal to the used slots, and allocates no metadata', () => {
    const s = setup();
    const a = map(s, s.buf, 100);
    const b = map(s, s.buf + 8192, 3 * IO_TLB_SIZE);
    expect(s.mem.usedSlots).toBe(1 + 3);
    expect(s.machine.counters.bounceSlotsUsed).toBe(s.mem.usedSlots);
    swiotlbTblUnmapSingle(s.mem, a, 100, DMA_BIDIRECTIONAL, 0);
    expect(s.machine.counters.bounceSlotsUsed).toBe(3);
    swiotlbTblUnmapSingle(s.mem, b, 3 * IO_TLB_SIZE, DMA_BIDIRECTIONAL, 0);
    expect(s.machine.counters.bounceSlotsUsed).toBe(0);
    expect(s.machine.counters.meta.size).toBe(0);
  });
});

describe('swiotlb_align_offset: min_align_mask', () => {
  it('without a min-align mask the data starts on a slot boundary', () => {
    const s = setup();
    const tlb = map(s, s.buf + 0x5a3, 100);
    expect(tlb % IO_TLB_SIZE).toBe(0);
  });

  it('keeps the original address bits under min_align_mask', () => {
    const s = setup();
    const orig = s.buf + 0x35a3;
    const data = writePattern(s.machine, orig, 3000, 8);
    const tlb = map(s, orig, 3000, DMA_TO_DEVICE, { min: 0xfff });
    expect(tlb & 0xfff).toBe(orig & 0xfff);
    expect(s.machine.phys.read(tlb, 3000)).toEqual(data);
    const tlb2 = map(s, s.buf + 0x7a5, 10, DMA_TO_DEVICE, { min: 0x7ff });
    expect(tlb2 & 0x7ff).toBe(0x7a5);
  });

  it('turns whole slots of the offset into pad_slots and releases them with the mapping', () => {
    const s = setup({ nareas: 1 });
    const orig = s.buf + 0xe10;
    const size = 0x400;
    const tlb = map(s, orig, size, DMA_TO_DEVICE, { alloc: 0xfff, min: 0xfff });
    expect(tlb & 0xfff).toBe(0xe10);
    const dataSlot = s.mem.slotIndex(tlb);
    expect(s.mem.padSlots[dataSlot]).toBe(1);
    const m = s.mem.mappings.get(tlb)!;
    expect(m.padSlots).toBe(1);
    expect(m.index).toBe(dataSlot - 1);
    expect(m.nslots).toBe(4); // ALIGN(0xe10 + 0x400, 4 KiB) = 8 KiB
    expect(s.mem.origAddr[m.index]).toBe(-1); // a padding slot has no original
    expect(s.mem.usedSlots).toBe(4);
    swiotlbTblUnmapSingle(s.mem, tlb, size, DMA_TO_DEVICE, 0);
    expect(s.mem.usedSlots).toBe(0);
    expect(Array.from(s.mem.list)).toEqual(initialList(s.mem.nslabs));
  });
});

describe('swiotlb_search_pool_area: alloc_align_mask', () => {
  it('granule 4 KiB with a matching min-align mask: the bounce address has the original low 12 bits', () => {
    const s = setup();
    map(s, s.buf, 100); // take slot 0 so alignment has to skip
    for (const off of [0x123, 0x800, 0xfff, 0]) {
      const orig = s.buf + 0x10000 + off;
      const tlb = map(s, orig, 700, DMA_TO_DEVICE, { alloc: 0xfff, min: 0xfff });
      expect(tlb % 4096).toBe(orig % 4096);
      const m = s.mem.mappings.get(tlb)!;
      expect(s.mem.slotAddr(m.index) % 4096).toBe(0);
      expect(m.nslots % 2).toBe(0);
    }
  });

  it('granule 4 KiB without a min-align mask: 4 KiB-aligned bounce, offset not kept', () => {
    const s = setup();
    map(s, s.buf, 100);
    const tlb = map(s, s.buf + 0x123, 700, DMA_TO_DEVICE, { alloc: 0xfff });
    expect(tlb % 4096).toBe(0);
  });

  it('honours a 16 KiB granule', () => {
    const s = setup();
    map(s, s.buf, 100);
    const orig = s.buf + 0x2345;
    const tlb = map(s, orig, 0x3000, DMA_TO_DEVICE, { alloc: 0x3fff, min: 0x3fff });
    expect(tlb % 0x4000).toBe(orig % 0x4000);
    expect(s.mem.mappings.get(tlb)!.nslots).toBe(16); // ALIGN(0x2345 + 0x3000, 16 KiB) / 2 KiB
  });

  it('keeps page alignment for mappings of a page or more when no mask is given', () => {
    const s = setup();
    const small = map(s, s.buf, 100);
    expect(s.mem.slotIndex(small)).toBe(0);
    const big = map(s, s.buf + 0x111, 8192);
    expect(big % 4096).toBe(0);
    expect(s.mem.slotIndex(big)).toBe(2);
  });
});

describe('iommu_dma_map_swiotlb: zeroed padding for untrusted devices', () => {
  function dirtyPool(s: Setup): void {
    s.machine.phys.fill(s.mem.blocks[0]!, 64 << 10, 0xee);
  }

  it('zeroes the rest of the granules around the data, nothing beyond', () => {
    const s = setup({ nareas: 1 });
    dirtyPool(s);
    const orig = s.buf + 0x123;
    const size = 0x1200;
    const data = writePattern(s.machine, orig, size, 9);
    const tlb = map(s, orig, size, DMA_TO_DEVICE, { alloc: 0xfff, min: 0xfff, untrusted: true });
    const start = tlb - (tlb % 4096);
    const end = Math.ceil((tlb + size) / 4096) * 4096;
    expect(s.machine.phys.read(start, tlb - start).every((b) => b === 0)).toBe(true);
    expect(s.machine.phys.read(tlb, size)).toEqual(data);
    expect(s.machine.phys.read(tlb + size, end - tlb - size).every((b) => b === 0)).toBe(true);
    expect(s.machine.phys.read(end, 16).every((b) => b === 0xee)).toBe(true);
    expect(s.machine.counters.bounceBytes).toBe(size);
  });

  it('zeroes the padding for DMA_FROM_DEVICE too', () => {
    const s = setup({ nareas: 1 });
    dirtyPool(s);
    const tlb = map(s, s.buf + 0x10, 0x20, DMA_FROM_DEVICE, { alloc: 0xfff, min: 0xfff, untrusted: true });
    expect(s.machine.phys.read(tlb - 0x10, 0x10).every((b) => b === 0)).toBe(true);
    expect(s.machine.phys.read(tlb + 0x20, 4096 - 0x30).every((b) => b === 0)).toBe(true);
  });

  it('leaves the padding alone for trusted devices', () => {
    const s = setup({ nareas: 1 });
    dirtyPool(s);
    const tlb = map(s, s.buf + 0x123, 0x100, DMA_TO_DEVICE, { alloc: 0xfff, min: 0xfff });
    expect(s.machine.phys.read(tlb - 0x123, 0x123).every((b) => b === 0xee)).toBe(true);
    expect(s.machine.phys.read(tlb + 0x100, 16).every((b) => b === 0xee)).toBe(true);
  });
});

describe('swiotlb_sync_single_for_device / swiotlb_sync_single_for_cpu', () => {
  const off = 0x321;
  const size = 10000;

  function mapped(): Setup & { orig: number; tlb: number; data: Uint8Array } {
    const s = setup();
    const orig = s.buf + off;
    const data = writePattern(s.machine, orig, size, 10);
    const tlb = map(s, orig, size, DMA_BIDIRECTIONAL, { min: 0xfff });
    return { ...s, orig, tlb, data };
  }

  it('copies a partial range to the device for DMA_TO_DEVICE and BIDIRECTIONAL only', () => {
    const s = mapped();
    const cpu = patternBytes(500, 11);
    s.machine.phys.write(s.orig + 3000, cpu);
    const before = s.machine.counters.bounceBytes;
    swiotlbSyncSingleForDevice(s.mem, s.tlb + 3000, 500, DMA_FROM_DEVICE);
    expect(s.machine.phys.read(s.tlb + 3000, 500)).toEqual(s.data.subarray(3000, 3500));
    swiotlbSyncSingleForDevice(s.mem, s.tlb + 3000, 500, DMA_TO_DEVICE);
    expect(s.machine.phys.read(s.tlb + 3000, 500)).toEqual(cpu);
    expect(s.machine.phys.read(s.tlb + 2990, 10)).toEqual(s.data.subarray(2990, 3000));
    expect(s.machine.phys.read(s.tlb + 3500, 10)).toEqual(s.data.subarray(3500, 3510));
    expect(s.machine.counters.bounceBytes - before).toBe(500);
  });

  it('copies a partial range to the CPU for DMA_FROM_DEVICE and BIDIRECTIONAL only', () => {
    const s = mapped();
    const dev = patternBytes(1000, 12);
    s.machine.phys.write(s.tlb + 5000, dev);
    swiotlbSyncSingleForCpu(s.mem, s.tlb + 5000, 1000, DMA_TO_DEVICE);
    expect(s.machine.phys.read(s.orig + 5000, 1000)).toEqual(s.data.subarray(5000, 6000));
    swiotlbSyncSingleForCpu(s.mem, s.tlb + 5000, 1000, DMA_BIDIRECTIONAL);
    expect(s.machine.phys.read(s.orig + 5000, 1000)).toEqual(dev);
    expect(s.machine.phys.read(s.orig + 4990, 10)).toEqual(s.data.subarray(4990, 5000));
    expect(s.machine.phys.read(s.orig + 6000, 10)).toEqual(s.data.subarray(6000, 6010));
  });

  it('finds the original from any slot of the mapping, also before the in-slot offset', () => {
    const s = mapped();
    const k = IO_TLB_SIZE - off + 5; // first bytes of the second slot: in-slot offset < min-align offset
    const dev = patternBytes(300, 13);
    s.machine.phys.write(s.tlb + k, dev);
    swiotlbSyncSingleForCpu(s.mem, s.tlb + k, 300, DMA_FROM_DEVICE);
    expect(s.machine.phys.read(s.orig + k, 300)).toEqual(dev);
    for (const j of [0, 1, k, size - 1]) expect(swiotlbOrigAddr(s.mem, s.tlb + j)).toBe(s.orig + j);
    expect(swiotlbOrigAddr(s.mem, s.tlb - 1)).toBeUndefined();
    expect(swiotlbOrigAddr(s.mem, s.buf)).toBeUndefined();
  });

  it('rejects a range past the allocation and one before the data, copying nothing', () => {
    const s = mapped();
    const before = s.machine.counters.bounceBytes;
    const avail = size; // alloc_align_mask 0: the allocation is the data, not whole slots
    expectDmaError(
      () => swiotlbSyncSingleForCpu(s.mem, s.tlb, avail + 1, DMA_FROM_DEVICE),
      'swiotlb_bounce: buffer overflow',
    );
    expectDmaError(
      () => swiotlbSyncSingleForDevice(s.mem, s.tlb - 1, 2, DMA_TO_DEVICE),
      'swiotlb_bounce: before mapping',
    );
    expect(s.machine.counters.bounceBytes).toBe(before);
    swiotlbSyncSingleForCpu(s.mem, s.tlb, avail, DMA_FROM_DEVICE); // up to the end of the allocation is fine
  });

  it('ignores addresses outside the pool and slots with no original; BUGs on DMA_NONE', () => {
    const s = mapped();
    const before = s.machine.counters.bounceBytes;
    swiotlbSyncSingleForCpu(s.mem, s.buf, 100, DMA_FROM_DEVICE);
    swiotlbSyncSingleForDevice(s.mem, s.mem.slotAddr(s.mem.nslabs - 1), 100, DMA_TO_DEVICE);
    expect(s.machine.counters.bounceBytes).toBe(before);
    expectDmaError(
      () => swiotlbSyncSingleForCpu(s.mem, s.tlb, 1, DMA_NONE as DmaDataDirection),
      'swiotlb_sync_single_for_cpu: direction',
    );
  });
});

describe('swiotlb_find_slots: exhaustion', () => {
  it('returns DMA_MAPPING_ERROR when the pool is full and recovers after unmaps', () => {
    const s = setup({ nareas: 1 });
    const tlbs: number[] = [];
    for (let i = 0; i < s.mem.nslabs / IO_TLB_SEGSIZE; i++) {
      const t = map(s, s.buf, MAX_MAPPING, DMA_TO_DEVICE);
      expect(t).not.toBe(DMA_MAPPING_ERROR);
      tlbs.push(t);
    }
    expect(s.mem.usedSlots).toBe(s.mem.nslabs);
    expect(map(s, s.buf, 1)).toBe(DMA_MAPPING_ERROR);
    expect(s.mem.usedSlots).toBe(s.mem.nslabs);
    swiotlbTblUnmapSingle(s.mem, tlbs[5]!, MAX_MAPPING, DMA_TO_DEVICE, 0);
    const again = map(s, s.buf, MAX_MAPPING);
    expect(again).toBe(tlbs[5]);
    for (const t of tlbs) swiotlbTblUnmapSingle(s.mem, t, MAX_MAPPING, DMA_TO_DEVICE, 0);
    expect(s.mem.usedSlots).toBe(0);
    expect(s.machine.counters.bounceSlotsUsed).toBe(0);
  });
});

describe('io_tlb_area: areas per CPU', () => {
  it('searches the current CPU area first', () => {
    const s = setup({ cpus: 4 });
    expect(s.mem.nareas).toBe(4);
    for (const cpu of [2, 3, 0, 1]) {
      s.machine.setCpu(cpu);
      const tlb = map(s, s.buf, 3000);
      expect(Math.floor(s.mem.slotIndex(tlb) / s.mem.areaNslabs)).toBe(cpu);
      expect(s.mem.areas[cpu]!.used).toBe(2);
    }
  });

  it('moves the search index past the last allocation', () => {
    const s = setup({ cpus: 4 });
    s.machine.setCpu(1);
    const a = map(s, s.buf, 3000);
    const b = map(s, s.buf, 100);
    expect(s.mem.slotIndex(b)).toBe(s.mem.slotIndex(a) + 2);
    expect(s.mem.areas[1]!.index).toBe(3);
  });

  it('falls over to the next area when the current one is full', () => {
    const s = setup({ cpus: 4 });
    s.machine.setCpu(3);
    for (let i = 0; i < s.mem.areaNslabs / IO_TLB_SEGSIZE; i++)
      expect(map(s, s.buf, MAX_MAPPING)).not.toBe(DMA_MAPPING_ERROR);
    expect(s.mem.areas[3]!.used).toBe(s.mem.areaNslabs);
    const tlb = map(s, s.buf, 100);
    expect(Math.floor(s.mem.slotIndex(tlb) / s.mem.areaNslabs)).toBe(0);
  });
});

describe('swiotlb_max_mapping_size and oversized mappings', () => {
  it('subtracts the min-align padding rounded up to a slot', () => {
    expect(swiotlbMaxMappingSize(0)).toBe(256 << 10);
    expect(swiotlbMaxMappingSize(0x7ff)).toBe((256 << 10) - 2048);
    expect(swiotlbMaxMappingSize(0xfff)).toBe((256 << 10) - 4096);
  });

  it('rejects a mapping larger than IO_TLB_SEGSIZE slots, holding nothing', () => {
    const s = setup();
    expect(map(s, s.buf, MAX_MAPPING + 1)).toBe(DMA_MAPPING_ERROR);
    expect(map(s, s.buf + 0x800, MAX_MAPPING, DMA_TO_DEVICE, { min: 0xfff })).toBe(DMA_MAPPING_ERROR);
    expect(s.mem.usedSlots).toBe(0);
    expect(s.machine.counters.bounceBytes).toBe(0);
  });

  it('always maps swiotlbMaxMappingSize bytes, whatever the offset', () => {
    const s = setup();
    const max = swiotlbMaxMappingSize(0xfff);
    for (const off of [0, 0x7ff, 0x800, 0xfff]) {
      expect(map(s, s.buf + off, max, DMA_TO_DEVICE, { min: 0xfff })).not.toBe(DMA_MAPPING_ERROR);
    }
  });
});

describe('fault injection (swiotlb)', () => {
  it('fails the map with nothing held', () => {
    const s = setup();
    writePattern(s.machine, s.buf, 4096, 14);
    s.machine.faults.failNth('swiotlb', 1);
    expect(map(s, s.buf, 4096)).toBe(DMA_MAPPING_ERROR);
    expect(s.mem.usedSlots).toBe(0);
    expect(s.mem.mappings.size).toBe(0);
    expect(s.machine.counters.bounceSlotsUsed).toBe(0);
    expect(s.machine.counters.bounceBytes).toBe(0);
    expect(Array.from(s.mem.list)).toEqual(initialList(s.mem.nslabs));
    expect(map(s, s.buf, 4096)).not.toBe(DMA_MAPPING_ERROR);
  });
});

describe('misuse', () => {
  it('unmapping an address that is not the start of a live mapping throws and changes nothing', () => {
    const s = setup();
    const data = writePattern(s.machine, s.buf, 5000, 15);
    const tlb = map(s, s.buf, 5000, DMA_FROM_DEVICE);
    s.machine.phys.write(tlb, patternBytes(5000, 16));
    const list = Array.from(s.mem.list);
    const counters = s.machine.counters.snapshot();
    for (const bad of [tlb + 1, tlb + IO_TLB_SIZE, s.mem.slotAddr(100), s.buf, 0]) {
      expectDmaError(
        () => swiotlbTblUnmapSingle(s.mem, bad, 10, DMA_FROM_DEVICE, 0),
        'swiotlb_tbl_unmap_single: not mapped',
      );
    }
    expect(Array.from(s.mem.list)).toEqual(list);
    expect(s.machine.counters.snapshot()).toEqual(counters);
    expect(s.mem.usedSlots).toBe(3);
    expect(s.machine.phys.read(s.buf, 5000)).toEqual(data);
    swiotlbTblUnmapSingle(s.mem, tlb, 5000, DMA_FROM_DEVICE, 0);
    expectDmaError(
      () => swiotlbTblUnmapSingle(s.mem, tlb, 5000, DMA_FROM_DEVICE, 0),
      'swiotlb_tbl_unmap_single: not mapped',
    );
  });

  it('an unmap size past the allocation throws and keeps the mapping', () => {
    const s = setup();
    const tlb = map(s, s.buf, 100);
    expectDmaError(
      () => swiotlbTblUnmapSingle(s.mem, tlb, 3000, DMA_FROM_DEVICE, 0),
      'swiotlb_bounce: buffer overflow',
    );
    expect(s.mem.usedSlots).toBe(1);
    swiotlbTblUnmapSingle(s.mem, tlb, 100, DMA_FROM_DEVICE, 0);
  });

  it('rejects bad arguments before taking slots', () => {
    const s = setup();
    expectDmaError(
      () => map(s, s.buf, 100, DMA_NONE as DmaDataDirection),
      'swiotlb_tbl_map_single: direction',
    );
    expectDmaError(() => map(s, s.buf, 0), 'swiotlb_tbl_map_single: size');
    expectDmaError(() => map(s, s.buf, 10, DMA_TO_DEVICE, { alloc: -1 }), 'swiotlb: alloc_align_mask');
    expect(() => map(s, s.machine.phys.size - 10, 100)).toThrow(MachineError);
    expect(s.mem.usedSlots).toBe(0);
    expect(s.mem.mappings.size).toBe(0);
  });
});

describe('swiotlb_release_slots: free-run merging', () => {
  it('merges with the runs after and before, inside the segment', () => {
    const s = setup({ nareas: 1 });
    const a = map(s, s.buf, 3000);
    const b = map(s, s.buf, 3000);
    const c = map(s, s.buf, 3000);
    expect([a, b, c].map((t) => s.mem.slotIndex(t))).toEqual([0, 2, 4]);
    expect(Array.from(s.mem.list.subarray(0, 7))).toEqual([0, 0, 0, 0, 0, 0, 122]);
    swiotlbTblUnmapSingle(s.mem, b, 3000, DMA_BIDIRECTIONAL, 0);
    expect(Array.from(s.mem.list.subarray(0, 7))).toEqual([0, 0, 2, 1, 0, 0, 122]);
    swiotlbTblUnmapSingle(s.mem, a, 3000, DMA_BIDIRECTIONAL, 0);
    expect(Array.from(s.mem.list.subarray(0, 7))).toEqual([4, 3, 2, 1, 0, 0, 122]);
    swiotlbTblUnmapSingle(s.mem, c, 3000, DMA_BIDIRECTIONAL, 0);
    expect(Array.from(s.mem.list)).toEqual(initialList(s.mem.nslabs));
  });

  it('never merges across a segment boundary', () => {
    const s = setup({ nareas: 1 });
    const a = map(s, s.buf, (IO_TLB_SEGSIZE - 1) * IO_TLB_SIZE);
    const b = map(s, s.buf, 2 * IO_TLB_SIZE); // does not fit the last slot: goes to the next segment
    expect(s.mem.slotIndex(b)).toBe(IO_TLB_SEGSIZE);
    expect(s.mem.list[IO_TLB_SEGSIZE - 1]).toBe(1);
    swiotlbTblUnmapSingle(s.mem, a, 0, DMA_TO_DEVICE, 0);
    expect(s.mem.list[0]).toBe(IO_TLB_SEGSIZE);
    expect(s.mem.list[IO_TLB_SEGSIZE + 2]).toBe(IO_TLB_SEGSIZE - 2);
  });
});

describe('IoTlbMem.destroy (swiotlb_exit)', () => {
  it('returns every page and disables the pool', () => {
    const machine = createTestMachine();
    const free0 = machine.pages.nrFreePages;
    const mem = IoTlbMem.create(machine, { size: 8 << 20 })!;
    const buf = machine.pages.allocPages(0);
    const tlb = swiotlbTblMapSingle(mem, buf, 100, 0, 0, DMA_TO_DEVICE, 0);
    expectDmaError(() => mem.destroy(), 'swiotlb_exit: live mappings');
    swiotlbTblUnmapSingle(mem, tlb, 100, DMA_TO_DEVICE, 0);
    mem.destroy();
    machine.pages.freePages(buf, 0);
    expect(machine.pages.nrFreePages).toBe(free0);
    expect(mem.nslabs).toBe(0);
    expect(isSwiotlbBuffer(mem, tlb)).toBe(false);
    expect(swiotlbTblMapSingle(mem, buf, 100, 0, 0, DMA_TO_DEVICE, 0)).toBe(DMA_MAPPING_ERROR);
    expectDmaError(() => mem.destroy(), 'swiotlb_exit: destroyed');
  });
});

describe('swiotlb_tbl_map_single / swiotlb_tbl_unmap_single: random interleavings (property)', () => {
  type Op =
    | {
        kind: 'map';
        size: number;
        off: number;
        cpu: number;
        min: number;
        alloc: number;
        dir: DmaDataDirection;
      }
    | { kind: 'unmap'; pick: number };

  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('map' as const),
      size: fc.oneof(fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 1, max: 256 << 10 })),
      off: fc.integer({ min: 0, max: 0xffff }),
      cpu: fc.integer({ min: 0, max: 3 }),
      min: fc.constantFrom(0, 0x7ff, 0xfff),
      alloc: fc.constantFrom(0, 0xfff),
      dir: fc.constantFrom<DmaDataDirection>(DMA_TO_DEVICE, DMA_FROM_DEVICE, DMA_BIDIRECTIONAL),
    }),
    fc.record({ kind: fc.constant('unmap' as const), pick: fc.nat() }),
  );

  function checkInvariants(s: Setup): void {
    const used = new Uint8Array(s.mem.nslabs);
    let total = 0;
    let overlaps = 0;
    let crossing = 0;
    for (const m of s.mem.mappings.values()) {
      for (let i = m.index; i < m.index + m.nslots; i++) {
        if (used[i]) overlaps++; // no two live mappings share a slot
        used[i] = 1;
      }
      total += m.nslots;
      // a mapping stays inside one segment (hence inside one block and one area)
      if (Math.floor(m.index / IO_TLB_SEGSIZE) !== Math.floor((m.index + m.nslots - 1) / IO_TLB_SEGSIZE))
        crossing++;
    }
    expect(overlaps).toBe(0);
    expect(crossing).toBe(0);
    expect(s.mem.usedSlots).toBe(total);
    expect(s.machine.counters.bounceSlotsUsed).toBe(total);
    // every free slot's list value is the free run up to its segment's end; used slots hold 0
    let run = 0;
    let badList = -1;
    for (let i = s.mem.nslabs - 1; i >= 0; i--) {
      if (i % IO_TLB_SEGSIZE === IO_TLB_SEGSIZE - 1) run = 0;
      run = used[i] ? 0 : run + 1;
      if (s.mem.list[i] !== run) badList = i;
    }
    expect(badList).toBe(-1);
  }

  it('never overlaps live mappings, keeps the free runs exact, and recovers completely', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), (ops) => {
        const s = setup({ cpus: 4 });
        const data = writePattern(s.machine, s.buf, 1 << 20, 17);
        const live: { tlb: number; size: number; dir: DmaDataDirection }[] = [];
        for (const op of ops) {
          if (op.kind === 'map') {
            const size = Math.min(op.size, (1 << 20) - op.off);
            s.machine.setCpu(op.cpu);
            const before = s.mem.usedSlots;
            const tlb = map(s, s.buf + op.off, size, op.dir, { min: op.min, alloc: op.alloc });
            if (tlb === DMA_MAPPING_ERROR) {
              expect(s.mem.usedSlots).toBe(before);
            } else {
              expect(tlb & op.min).toBe((s.buf + op.off) & op.min);
              const head = Math.min(size, 64);
              expect(s.machine.phys.read(tlb, head)).toEqual(data.subarray(op.off, op.off + head));
              expect(s.machine.phys.read(tlb + size - head, head)).toEqual(
                data.subarray(op.off + size - head, op.off + size),
              );
              live.push({ tlb, size, dir: op.dir });
            }
          } else if (live.length > 0) {
            const [m] = live.splice(op.pick % live.length, 1);
            swiotlbTblUnmapSingle(s.mem, m!.tlb, m!.size, m!.dir, DMA_ATTR_SKIP_CPU_SYNC);
          }
          checkInvariants(s);
        }
        for (const m of live) swiotlbTblUnmapSingle(s.mem, m.tlb, m.size, m.dir, DMA_ATTR_SKIP_CPU_SYNC);
        expect(s.mem.usedSlots).toBe(0);
        expect(s.machine.counters.bounceSlotsUsed).toBe(0);
        expect(Array.from(s.mem.list)).toEqual(initialList(s.mem.nslabs));
        for (let cpu = 0; cpu < s.machine.cpus; cpu++) {
          s.machine.setCpu(cpu);
          const tlb = map(s, s.buf, MAX_MAPPING);
          expect(tlb).not.toBe(DMA_MAPPING_ERROR);
          swiotlbTblUnmapSingle(s.mem, tlb, MAX_MAPPING, DMA_BIDIRECTIONAL, 0);
        }
      }),
      { numRuns: 100 },
    );
  });
});
