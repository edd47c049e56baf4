import { Errno, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { allocScatteredPages, createTestMachine, patternBytes } from '@iovalink/iommu/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaError } from '../src/errors.js';
import {
  forEachSg,
  forEachSgtableDmaSg,
  forEachSgtableSg,
  Scatterlist,
  SG_CHAIN,
  SG_CHUNK_SIZE,
  SG_DMA_BUS_ADDRESS,
  SG_DMA_SWIOTLB,
  SG_END,
  SG_ENTRY_SIZE,
  SG_MAX_SINGLE_ALLOC,
  SG_META_KIND,
  SG_TABLE_SIZE,
  SgAppendTable,
  SgTable,
  sgAllocAppendTableFromPages,
  sgAllocTable,
  sgAllocTableFromPages,
  sgAllocTableFromPagesSegment,
  sgArray,
  sgChain,
  sgCopyFromBuffer,
  sgCopyToBuffer,
  sgDmaAddress,
  sgDmaIsBusAddress,
  sgDmaIsSwiotlb,
  sgDmaLen,
  sgDmaMarkBusAddress,
  sgDmaMarkSwiotlb,
  sgDmaUnmarkBusAddress,
  sgFreeAppendTable,
  sgFreeTable,
  sgInitOne,
  sgInitTable,
  sgIsChain,
  sgIsLast,
  sgIter,
  sgLast,
  sgMarkEnd,
  sgNents,
  sgNentsForLen,
  sgNext,
  sgPage,
  sgPhys,
  sgSetPage,
  sgUnmarkEnd,
} from '../src/scatterlist.js';

const P = PAGE_SIZE;

const machine = createTestMachine;

function meta(m: Machine) {
  return m.counters.meta.get(SG_META_KIND) ?? { allocs: 0, frees: 0, bytes: 0, liveBytes: 0, peakBytes: 0 };
}

/** Every entry of a list in order, as [phys, length]. */
function ranges(sgl: Scatterlist | null, nents: number): Array<[number, number]> {
  return [...sgIter(sgl, nents)].map((s) => [sgPhys(s), s.length]);
}

/** Coalesces adjacent [start, length] ranges. */
function coalesce(rs: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [start, len] of rs) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === start) last[1] += len;
    else out.push([start, len]);
  }
  return out;
}

/** The byte ranges [offset, offset + size) of `pages`, page by page. */
function pageRanges(pages: readonly number[], offset: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let left = size;
  pages.forEach((pg, i) => {
    const start = i === 0 ? offset : 0;
    const len = Math.min(P - start, left);
    out.push([pg + start, len]);
    left -= len;
  });
  return out;
}

/** Chunk sizes of the kernel's __sg_alloc_table for `nents` entries in chunks of at most 128. */
function kernelChunks(nents: number): number[] {
  const out: number[] = [];
  let left = nents;
  while (left > SG_MAX_SINGLE_ALLOC) {
    out.push(SG_MAX_SINGLE_ALLOC);
    left -= SG_MAX_SINGLE_ALLOC - 1;
  }
  out.push(left);
  return out;
}

function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

/** The `rule` of the DmaError `fn` throws. */
function ruleOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof DmaError) return e.rule;
    throw e;
  }
  return undefined;
}

/** Page addresses for `runs` of contiguous pfns (no memory is touched). */
function pagesOf(...runs: Array<[pfn: number, count: number]>): number[] {
  return runs.flatMap(([pfn, count]) => Array.from({ length: count }, (_, i) => (pfn + i) * P));
}

describe('struct scatterlist constants', () => {
  it('a chunk is one page of 32-byte entries', () => {
    expect(SG_ENTRY_SIZE).toBe(32);
    expect(SG_MAX_SINGLE_ALLOC).toBe(128);
    expect(SG_MAX_SINGLE_ALLOC * SG_ENTRY_SIZE).toBe(PAGE_SIZE);
    expect(SG_CHUNK_SIZE).toBe(128);
    expect(SG_TABLE_SIZE).toBe(16);
    expect([SG_CHAIN, SG_END, SG_DMA_BUS_ADDRESS, SG_DMA_SWIOTLB]).toEqual([1, 2, 1, 2]);
  });
});

describe('sg_init_table', () => {
  it('clears the entries and marks only the last as the end', () => {
    const sg = sgArray(4);
    sgSetPage(sg[1]!, 5 * P, 100, 7);
    sg[2]!.dmaAddress = 1234;
    sgInitTable(sg[0]!, 4);
    expect(sg.map((s) => [s.page, s.length, s.dmaAddress, sgIsLast(s)])).toEqual([
      [0, 0, 0, false],
      [0, 0, 0, false],
      [0, 0, 0, false],
      [0, 0, 0, true],
    ]);
    expect(sgNents(sg[0]!)).toBe(4);
  });

  it('can initialise a prefix of an array', () => {
    const sg = sgArray(8);
    sgInitTable(sg[0]!, 3);
    expect(sgNents(sg[0]!)).toBe(3);
  });

  it('throws beyond the array, or for zero entries', () => {
    const sg = sgArray(2);
    expect(() => sgInitTable(sg[0]!, 3)).toThrow(DmaError);
    expect(ruleOf(() => sgInitTable(sg[1]!, 2))).toBe('sg_init_table: out of bounds');
    expect(() => sgInitTable(sg[0]!, 0)).toThrow(DmaError);
  });
});

describe('sg_set_page / sg_page / sg_phys', () => {
  it('sets page, offset and length and keeps the end mark', () => {
    const sg = sgArray(1);
    sgInitTable(sg[0]!, 1);
    sgSetPage(sg[0]!, 300 * P, 512, 100);
    expect(sgPage(sg[0]!)).toBe(300 * P);
    expect(sgPhys(sg[0]!)).toBe(300 * P + 100);
    expect(sg[0]!.length).toBe(512);
    expect(sgIsLast(sg[0]!)).toBe(true);
  });

  it('rejects a page address that is not page aligned', () => {
    const sg = new Scatterlist();
    expect(() => sgSetPage(sg, 300 * P + 8, 1, 0)).toThrow(/page-aligned/);
  });

  it('rejects setting a page on a chain entry', () => {
    const a = sgArray(2);
    const b = sgArray(1);
    sgInitTable(a[0]!, 2);
    sgInitTable(b[0]!, 1);
    sgChain(a[0]!, 2, b[0]!);
    expect(() => sgSetPage(a[1]!, 0, 1, 0)).toThrow(DmaError);
    expect(() => sgPage(a[1]!)).toThrow(DmaError);
  });
});

describe('sg_init_one', () => {
  it('makes a one-entry list from a physical buffer', () => {
    const sg = new Scatterlist();
    sgInitOne(sg, 77 * P + 123, 4000);
    expect([sg.page, sg.offset, sg.length, sgIsLast(sg)]).toEqual([77 * P, 123, 4000, true]);
    expect(sgNext(sg)).toBeNull();
  });
});

describe('sg_dma_address / sg_dma_len / dma flags', () => {
  it('reads the mapped fields and toggles the flags', () => {
    const sg = new Scatterlist();
    sg.dmaAddress = 0xfeed_0000;
    sg.dmaLength = 8192;
    expect(sgDmaAddress(sg)).toBe(0xfeed_0000);
    expect(sgDmaLen(sg)).toBe(8192);
    sgDmaMarkBusAddress(sg);
    sgDmaMarkSwiotlb(sg);
    expect([sgDmaIsBusAddress(sg), sgDmaIsSwiotlb(sg)]).toEqual([true, true]);
    sgDmaUnmarkBusAddress(sg);
    expect([sgDmaIsBusAddress(sg), sgDmaIsSwiotlb(sg)]).toEqual([false, true]);
  });
});

describe('sg_mark_end / sg_unmark_end', () => {
  it('moves the end of a list', () => {
    const sg = sgArray(5);
    sgInitTable(sg[0]!, 5);
    sgMarkEnd(sg[1]!);
    expect(sgNents(sg[0]!)).toBe(2);
    sgUnmarkEnd(sg[1]!);
    expect(sgNents(sg[0]!)).toBe(5);
  });

  it('turns a chain entry back into an end', () => {
    const a = sgArray(2);
    const b = sgArray(3);
    sgInitTable(a[0]!, 2);
    sgInitTable(b[0]!, 3);
    sgChain(a[0]!, 2, b[0]!);
    expect(sgNents(a[0]!)).toBe(4);
    sgMarkEnd(a[1]!);
    expect([sgIsChain(a[1]!), sgIsLast(a[1]!)]).toEqual([false, true]);
    expect(sgNents(a[0]!)).toBe(2);
  });
});

describe('sg_chain / sg_next', () => {
  it('jumps from the slot before a chain link to the next array', () => {
    const a = sgArray(3);
    const b = sgArray(2);
    sgInitTable(a[0]!, 3);
    sgInitTable(b[0]!, 2);
    sgChain(a[0]!, 3, b[0]!);
    expect(sgIsChain(a[2]!)).toBe(true);
    expect(sgIsLast(a[2]!)).toBe(false);
    expect(sgNext(a[0]!)).toBe(a[1]);
    expect(sgNext(a[1]!)).toBe(b[0]);
    expect(sgNext(b[0]!)).toBe(b[1]);
    expect(sgNext(b[1]!)).toBeNull();
    expect(sgNents(a[0]!)).toBe(4);
  });

  it('throws when an array runs out without an end mark', () => {
    const a = sgArray(2);
    expect(() => sgNents(a[0]!)).toThrow(/no end mark/);
  });
});

describe('sg_alloc_table', () => {
  // [nents, chunk sizes the kernel allocates]
  const cases: Array<[number, number[]]> = [
    [1, [1]],
    [127, [127]],
    [128, [128]],
    [129, [128, 2]],
    [254, [128, 127]],
    [255, [128, 128]],
    [256, [128, 128, 2]],
    [1000, [128, 128, 128, 128, 128, 128, 128, 111]],
  ];
  it.each(cases)('%i entries are chunks of %j, counted in bytes', (nents, chunks) => {
    expect(kernelChunks(nents)).toEqual(chunks);
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTable(m, t, nents)).toBe(0);
    expect([t.nents, t.origNents]).toEqual([nents, nents]);
    const st = meta(m);
    expect(st.allocs).toBe(chunks.length);
    expect(st.bytes).toBe(chunks.reduce((a, c) => a + c * SG_ENTRY_SIZE, 0));
    expect(st.liveBytes).toBe(st.bytes);
    expect(sgNents(t.sgl)).toBe(nents);
    // the chunks really are the sizes counted, linked through their last slots
    const seen: number[] = [];
    let s: Scatterlist | null = t.sgl;
    while (s !== null) {
      seen.push(s.chunk.length);
      const link = s.chunk[s.chunk.length - 1]!;
      s = sgIsChain(link) ? link.chainPtr : null;
    }
    expect(seen).toEqual(chunks);
    sgFreeTable(m, t);
    expect(meta(m).liveBytes).toBe(0);
    expect(meta(m).frees).toBe(chunks.length);
    expect([t.sgl, t.nents, t.origNents]).toEqual([null, 0, 0]);
  });

  it('keeps 128 entries in one chunk with no chain link; 129 chains at slot 127', () => {
    const m = machine();
    const t128 = new SgTable();
    sgAllocTable(m, t128, 128);
    const c = t128.sgl!.chunk;
    expect(c.some((s) => sgIsChain(s))).toBe(false);
    expect(sgIsLast(c[127]!)).toBe(true);

    const t129 = new SgTable();
    sgAllocTable(m, t129, 129);
    const first = t129.sgl!.chunk;
    expect(first.length).toBe(128);
    expect(sgIsChain(first[127]!)).toBe(true);
    expect(sgNext(first[126]!)).toBe(first[127]!.chainPtr);
    expect(sgLast(t129.sgl!, 129).chunk.length).toBe(2);
  });

  it('returns -EINVAL for zero entries and allocates nothing', () => {
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTable(m, t, 0)).toBe(-Errno.EINVAL);
    expect(meta(m).allocs).toBe(0);
    expect(t.sgl).toBeNull();
  });

  it('walks a chained table in order', () => {
    const m = machine();
    const t = new SgTable();
    sgAllocTable(m, t, 300);
    forEachSgtableSg(t, (s, i) => sgSetPage(s, (1000 + i) * P, i + 1, 0));
    const seen: number[] = [];
    for (const s of sgIter(t.sgl, t.origNents)) seen.push(s.length);
    expect(seen).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    const pages: number[] = [];
    forEachSg(t.sgl, 300, (s, i) => {
      expect(s.page).toBe((1000 + i) * P);
      pages.push(i);
    });
    expect(pages.length).toBe(300);
    sgFreeTable(m, t);
  });

  it.each([1, 2, 3])('fails cleanly when chunk %i cannot be allocated', (nth) => {
    const m = machine();
    const t = new SgTable();
    m.faults.failNth('sg_alloc', nth);
    expect(sgAllocTable(m, t, 1000)).toBe(-Errno.ENOMEM);
    expect(meta(m).allocs).toBe(nth - 1);
    expect(meta(m).liveBytes).toBe(0);
    expect(meta(m).frees).toBe(nth - 1);
    expect([t.sgl, t.nents, t.origNents]).toEqual([null, 0, 0]);
  });

  it('throws DmaError for a non-integer count', () => {
    const m = machine();
    expect(() => sgAllocTable(m, new SgTable(), 1.5)).toThrow(DmaError);
  });
});

describe('sg_free_table', () => {
  it('does nothing on an empty table and refuses counts that do not match the chunks', () => {
    const m = machine();
    const empty = new SgTable();
    sgFreeTable(m, empty);
    const t = new SgTable();
    sgAllocTable(m, t, 200);
    t.origNents = 50; // a caller corrupting orig_nents
    expect(() => sgFreeTable(m, t)).toThrow(/do not describe the allocated chunks/);
    expect(meta(m).liveBytes).toBe(128 * 32 + 73 * 32);
    t.origNents = 200;
    sgFreeTable(m, t);
    expect(meta(m).liveBytes).toBe(0);
  });
});

describe('sg_nents / sg_nents_for_len / sg_last', () => {
  it('counts entries and entries needed for a length', () => {
    const m = machine();
    const t = new SgTable();
    sgAllocTable(m, t, 130);
    forEachSgtableSg(t, (s, i) => sgSetPage(s, (2000 + 2 * i) * P, 1000, 0));
    expect(sgNents(t.sgl)).toBe(130);
    expect(sgNents(null)).toBe(0);
    expect(sgNentsForLen(t.sgl, 0)).toBe(0);
    expect(sgNentsForLen(t.sgl, 1)).toBe(1);
    expect(sgNentsForLen(t.sgl, 1000)).toBe(1);
    expect(sgNentsForLen(t.sgl, 1001)).toBe(2);
    expect(sgNentsForLen(t.sgl, 130_000)).toBe(130);
    expect(sgNentsForLen(t.sgl, 130_001)).toBe(-Errno.EINVAL);
    expect(sgPhys(sgLast(t.sgl!, 130))).toBe((2000 + 2 * 129) * P);
    expect(() => sgLast(t.sgl!, 129)).toThrow(/not marked as the end/);
    sgFreeTable(m, t);
  });
});

describe('for_each_sgtable_dma_sg', () => {
  it('visits the mapped segments (nents), not the CPU entries (orig_nents)', () => {
    const m = machine();
    const t = new SgTable();
    sgAllocTable(m, t, 5);
    // as if dma_map_sgtable merged five entries into two segments
    t.sgl!.dmaAddress = 0x1000;
    t.sgl!.dmaLength = 3 * P;
    sgNext(t.sgl!)!.dmaAddress = 0x9000;
    sgNext(t.sgl!)!.dmaLength = 2 * P;
    t.nents = 2;
    const segs: Array<[number, number]> = [];
    forEachSgtableDmaSg(t, (s) => segs.push([sgDmaAddress(s), sgDmaLen(s)]));
    expect(segs).toEqual([
      [0x1000, 3 * P],
      [0x9000, 2 * P],
    ]);
    let cpu = 0;
    forEachSgtableSg(t, () => cpu++);
    expect(cpu).toBe(5);
    sgFreeTable(m, t);
  });
});

describe('sgIter (for_each_sg)', () => {
  it('works with for…of and break, and yields nothing for zero entries', () => {
    const m = machine();
    const t = new SgTable();
    sgAllocTable(m, t, 200);
    let n = 0;
    for (const s of sgIter(t.sgl, 200)) {
      if (n === 150) break;
      expect(sgIsChain(s)).toBe(false);
      n++;
    }
    expect(n).toBe(150);
    expect([...sgIter(t.sgl, 0)]).toEqual([]);
    expect(() => [...sgIter(t.sgl, 201)]).toThrow(/list shorter than nents|ends after/);
    sgFreeTable(m, t);
  });
});

describe('sg_copy_from_buffer / sg_copy_to_buffer', () => {
  it('moves bytes through the described memory in list order', () => {
    const m = machine();
    const pages = allocScatteredPages(m, 3);
    const t = new SgTable();
    expect(sgAllocTableFromPages(m, t, pages, 3, 100, 3 * P - 300)).toBe(0);
    const data = patternBytes(3 * P - 300, 7);
    expect(sgCopyFromBuffer(m, t.sgl!, t.nents, data)).toBe(data.length);
    expect(m.phys.read(pages[0]! + 100, 10)).toEqual(data.subarray(0, 10));
    expect(m.phys.read(pages[1]!, 10)).toEqual(data.subarray(P - 100, P - 90));
    const back = new Uint8Array(data.length);
    expect(sgCopyToBuffer(m, t.sgl!, t.nents, back)).toBe(data.length);
    expect(back).toEqual(data);
    sgFreeTable(m, t);
  });
});

describe('sg_alloc_table_from_pages', () => {
  it('merges physically contiguous pages into one entry', () => {
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTableFromPages(m, t, pagesOf([500, 8]), 8, 0, 8 * P)).toBe(0);
    expect([t.nents, t.origNents]).toEqual([1, 1]);
    expect(ranges(t.sgl, t.nents)).toEqual([[500 * P, 8 * P]]);
    expect(meta(m).bytes).toBe(32);
    sgFreeTable(m, t);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('keeps scattered pages apart', () => {
    const m = machine();
    const pages = allocScatteredPages(m, 5);
    const t = new SgTable();
    expect(sgAllocTableFromPages(m, t, pages, 5, 0, 5 * P)).toBe(0);
    expect(ranges(t.sgl, t.nents)).toEqual(pages.map((pg) => [pg, P]));
    expect(meta(m).bytes).toBe(5 * 32);
    sgFreeTable(m, t);
  });

  it('honours the offset in the first page and the size in the last', () => {
    const m = machine();
    const t = new SgTable();
    const pages = pagesOf([700, 2], [800, 1], [900, 2]);
    expect(sgAllocTableFromPages(m, t, pages, 5, 300, 5 * P - 300 - 1000)).toBe(0);
    expect(ranges(t.sgl, t.nents)).toEqual([
      [700 * P + 300, 2 * P - 300],
      [800 * P, P],
      [900 * P, 2 * P - 1000],
    ]);
    expect(sgIsLast(sgLast(t.sgl!, t.nents))).toBe(true);
    sgFreeTable(m, t);
  });

  it('chains when there are more than 128 entries, and frees them all', () => {
    const m = machine();
    const pages = Array.from({ length: 300 }, (_, i) => (1000 + 2 * i) * P);
    const t = new SgTable();
    expect(sgAllocTableFromPages(m, t, pages, 300, 0, 300 * P)).toBe(0);
    expect(t.origNents).toBe(300);
    expect(sgNents(t.sgl)).toBe(300);
    // the append path sizes chunks by what is still needed: 128, 128, then 300 - 254 = 46
    expect(meta(m).allocs).toBe(3);
    expect(meta(m).bytes).toBe((128 + 128 + 46) * 32);
    sgFreeTable(m, t);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('checks its arguments', () => {
    const m = machine();
    const t = new SgTable();
    expect(() => sgAllocTableFromPages(m, t, [P * 10 + 1], 1, 0, 10)).toThrow(/page-aligned/);
    expect(() => sgAllocTableFromPages(m, t, [P * 10], 1, P, 10)).toThrow(/offset/);
    expect(() => sgAllocTableFromPages(m, t, [P * 10, P * 11], 2, 0, P)).toThrow(/size/);
    expect(() => sgAllocTableFromPages(m, t, [P * 10], 1, 0, P + 1)).toThrow(/size/);
    expect(() => sgAllocTableFromPages(m, t, [], 0, 0, 1)).toThrow(/n_pages/);
    expect(meta(m).allocs).toBe(0);
  });

  it('leaves the table untouched and nothing allocated when allocation fails', () => {
    const m = machine();
    const t = new SgTable();
    m.faults.failNth('sg_alloc', 2);
    const pages = Array.from({ length: 200 }, (_, i) => (1000 + 2 * i) * P);
    expect(sgAllocTableFromPages(m, t, pages, 200, 0, 200 * P)).toBe(-Errno.ENOMEM);
    expect([t.sgl, t.nents, t.origNents]).toEqual([null, 0, 0]);
    expect(meta(m).liveBytes).toBe(0);
  });
});

describe('sg_alloc_table_from_pages_segment', () => {
  it('caps entries at max_segment', () => {
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTableFromPagesSegment(m, t, pagesOf([500, 10]), 10, 0, 10 * P, 4 * P)).toBe(0);
    expect(ranges(t.sgl, t.nents)).toEqual([
      [500 * P, 4 * P],
      [504 * P, 4 * P],
      [508 * P, 2 * P],
    ]);
    sgFreeTable(m, t);
  });

  it('counts the first-page offset inside the first segment', () => {
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTableFromPagesSegment(m, t, pagesOf([500, 5]), 5, 1000, 5 * P - 1000, 2 * P)).toBe(0);
    expect(ranges(t.sgl, t.nents)).toEqual([
      [500 * P + 1000, 2 * P - 1000],
      [502 * P, 2 * P],
      [504 * P, P],
    ]);
    sgFreeTable(m, t);
  });

  it('aligns max_segment down to a page and rejects one below a page with -EINVAL', () => {
    const m = machine();
    const t = new SgTable();
    expect(sgAllocTableFromPagesSegment(m, t, pagesOf([500, 4]), 4, 0, 4 * P, 2 * P + 5)).toBe(0);
    expect(ranges(t.sgl, t.nents).map(([, len]) => len)).toEqual([2 * P, 2 * P]);
    sgFreeTable(m, t);
    expect(sgAllocTableFromPagesSegment(m, t, pagesOf([500, 4]), 4, 0, 4 * P, P - 1)).toBe(-Errno.EINVAL);
    expect(t.sgl).toBeNull();
    expect(meta(m).liveBytes).toBe(0);
  });

  it('entries cover exactly [offset, offset + size) of the pages and never exceed max_segment', () => {
    const runs = fc.array(fc.tuple(fc.integer({ min: 256, max: 4000 }), fc.integer({ min: 1, max: 9 })), {
      minLength: 1,
      maxLength: 40,
    });
    fc.assert(
      fc.property(
        runs,
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 0, max: P - 1 }),
        fc.integer({ min: 1, max: P }),
        fc.integer({ min: 0, max: P - 1 }),
        (rs, maxPages, offset, lastLen, slack) => {
          const pages = pagesOf(...rs);
          const n = pages.length;
          // size ends somewhere in the last page, after the offset when there is a single page
          const size = Math.max((n - 1) * P + lastLen - offset, 1);
          const maxSegment = maxPages * P + (slack % P);
          const m = machine();
          const t = new SgTable();
          expect(sgAllocTableFromPagesSegment(m, t, pages, n, offset, size, maxSegment)).toBe(0);
          const got = ranges(t.sgl, t.nents);
          expect(coalesce(got)).toEqual(coalesce(pageRanges(pages, offset, size)));
          for (const [, len] of got) expect(len).toBeLessThanOrEqual(maxPages * P);
          // entry count: each contiguous run split greedily into pieces of maxPages pages
          let expected = 0;
          let inSeg = 0;
          pages.forEach((pg, i) => {
            if (i === 0 || pg !== pages[i - 1]! + P || inSeg === maxPages) {
              expected++;
              inSeg = 0;
            }
            inSeg++;
          });
          expect(t.nents).toBe(expected);
          // a single call allocates exactly the chunks sg_alloc_table would for that many entries
          expect(meta(m).bytes).toBe(sum(kernelChunks(expected)) * SG_ENTRY_SIZE);
          expect(meta(m).allocs).toBe(kernelChunks(expected).length);
          sgFreeTable(m, t);
          expect(meta(m).liveBytes).toBe(0);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('sg_alloc_append_table_from_pages', () => {
  it('continues the previous last entry when the next pages are contiguous with it', () => {
    const m = machine();
    const a = new SgAppendTable();
    expect(sgAllocAppendTableFromPages(m, a, pagesOf([500, 3]), 3, 0, 3 * P, 0xffff_ffff, 3)).toBe(0);
    expect(a.sgt.nents).toBe(1);
    expect(a.prv?.length).toBe(3 * P);
    expect(sgAllocAppendTableFromPages(m, a, pagesOf([503, 2], [600, 1]), 3, 0, 3 * P, 0xffff_ffff, 0)).toBe(
      0,
    );
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual([
      [500 * P, 5 * P],
      [600 * P, P],
    ]);
    expect([a.sgt.nents, a.sgt.origNents]).toEqual([2, 2]);
    expect(sgIsLast(a.prv!)).toBe(true);
    // one chunk sized for 1 entry + 3 pages still to come
    expect(a.totalNents).toBe(4);
    expect(meta(m).bytes).toBe(4 * 32);
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
    expect([a.prv, a.totalNents, a.sgt.sgl]).toEqual([null, 0, null]);
  });

  it('starts a new entry when the appended pages are not contiguous', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 2]), 2, 0, 2 * P, 0xffff_ffff, 2);
    sgAllocAppendTableFromPages(m, a, pagesOf([700, 2]), 2, 0, 2 * P, 0xffff_ffff, 0);
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual([
      [500 * P, 2 * P],
      [700 * P, 2 * P],
    ]);
    sgFreeAppendTable(m, a);
  });

  it('stops extending the previous entry at max_segment', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 3]), 3, 0, 3 * P, 4 * P, 5);
    sgAllocAppendTableFromPages(m, a, pagesOf([503, 5]), 5, 0, 5 * P, 4 * P, 0);
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual([
      [500 * P, 4 * P],
      [504 * P, 4 * P],
    ]);
    sgFreeAppendTable(m, a);
  });

  it('marks no end while more pages are promised, and the last entry once left_pages is 0', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 1], [600, 1]), 2, 0, 2 * P, P, 4);
    expect(sgIsLast(a.prv!)).toBe(false);
    expect(a.totalNents).toBe(6);
    sgAllocAppendTableFromPages(m, a, pagesOf([700, 1]), 1, 0, P, P, 0);
    expect(sgIsLast(a.prv!)).toBe(true);
    expect(sgNents(a.sgt.sgl)).toBe(3);
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('returns -EINVAL for an offset on an append and changes nothing', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 1]), 1, 0, P, P, 1);
    expect(sgAllocAppendTableFromPages(m, a, pagesOf([501, 1]), 1, 8, P - 8, P, 0)).toBe(-Errno.EINVAL);
    expect(a.prv?.length).toBe(P);
    sgFreeAppendTable(m, a);
  });

  it('chains 128-entry chunks when the caller keeps promising more pages (mlx5 style)', () => {
    const m = machine();
    const a = new SgAppendTable();
    for (let call = 0; call < 3; call++) {
      const pages = Array.from({ length: 100 }, (_, i) => (1000 + 2 * (call * 100 + i)) * P);
      expect(
        sgAllocAppendTableFromPages(m, a, pages, 100, 0, 100 * P, 0xffff_ffff, SG_MAX_SINGLE_ALLOC),
      ).toBe(0);
    }
    expect(a.sgt.nents).toBe(300);
    expect(meta(m).allocs).toBe(3);
    expect(meta(m).bytes).toBe(3 * 4096);
    expect(a.totalNents).toBe(128 + 127 + 127);
    expect(ranges(a.sgt.sgl, 300).length).toBe(300);
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('sizes chunks by left_pages (umem style) and frees them with the kernel walk', () => {
    const m = machine();
    const a = new SgAppendTable();
    const all = Array.from({ length: 200 }, (_, i) => (1000 + 2 * i) * P);
    expect(sgAllocAppendTableFromPages(m, a, all.slice(0, 100), 100, 0, 100 * P, 0xffff_ffff, 100)).toBe(0);
    expect(meta(m).bytes).toBe(128 * 32);
    expect(sgAllocAppendTableFromPages(m, a, all.slice(100), 100, 0, 100 * P, 0xffff_ffff, 0)).toBe(0);
    // 100 + 27 entries fill chunk 1; slot 127 becomes the link to a chunk of 73
    expect(meta(m).bytes).toBe((128 + 73) * 32);
    expect(a.totalNents).toBe(200);
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual(all.map((pg) => [pg, P]));
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
  });

  it.each([1, 2, 3])('leaves the table as it was when chunk %i of an append fails', (nth) => {
    const m = machine();
    const a = new SgAppendTable();
    const first = pagesOf([500, 2], [600, 1]);
    sgAllocAppendTableFromPages(m, a, first, 3, 0, 3 * P, 0xffff_ffff, SG_MAX_SINGLE_ALLOC);
    const before = { ...meta(m) };
    const snap = ranges(a.sgt.sgl, a.sgt.nents);
    const prv = a.prv;
    const total = a.totalNents;
    // 500 pages: the first continues the last entry, 499 scattered ones need three more chunks
    const more = [601 * P, ...Array.from({ length: 499 }, (_, i) => (2000 + 2 * i) * P)];
    m.faults.failNth('sg_alloc', nth);
    expect(sgAllocAppendTableFromPages(m, a, more, 500, 0, 500 * P, 0xffff_ffff, 0)).toBe(-Errno.ENOMEM);
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual(snap);
    expect([a.prv, a.totalNents, a.sgt.nents]).toEqual([prv, total, 2]);
    expect(meta(m).liveBytes).toBe(before.liveBytes);
    expect(meta(m).allocs - meta(m).frees).toBe(before.allocs - before.frees);
    // the table still works
    expect(sgAllocAppendTableFromPages(m, a, more, 500, 0, 500 * P, 0xffff_ffff, 0)).toBe(0);
    expect(a.sgt.nents).toBe(501);
    expect(meta(m).allocs - meta(m).frees).toBe(before.allocs - before.frees + 3);
    expect(coalesce(ranges(a.sgt.sgl, a.sgt.nents))).toEqual(
      coalesce([...pageRanges(first, 0, 3 * P), ...pageRanges(more, 0, 500 * P)]),
    );
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('fails cleanly on the very first chunk of an empty table', () => {
    const m = machine();
    const a = new SgAppendTable();
    m.faults.failNth('sg_alloc', 1);
    expect(sgAllocAppendTableFromPages(m, a, pagesOf([500, 1]), 1, 0, P, P, 0)).toBe(-Errno.ENOMEM);
    expect([a.sgt.sgl, a.prv, a.totalNents]).toEqual([null, null, 0]);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('throws, changing nothing, when appending after the list was ended', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 1]), 1, 0, P, 2 * P, 0);
    expect(() =>
      sgAllocAppendTableFromPages(m, a, pagesOf([501, 1], [700, 1]), 2, 0, 2 * P, 2 * P, 0),
    ).toThrow(/after the list was ended/);
    expect(a.prv?.length).toBe(P);
    expect(meta(m).liveBytes).toBe(32);
    sgFreeAppendTable(m, a);
  });

  it('throws when an understated left_pages would make a short chunk need a chain link', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 1]), 1, 0, P, P, 1);
    expect(
      ruleOf(() => sgAllocAppendTableFromPages(m, a, pagesOf([700, 1], [800, 1]), 2, 0, 2 * P, P, 0)),
    ).toBe('sg_alloc_append_table_from_pages: left_pages understated');
    expect(a.sgt.nents).toBe(1);
    expect(meta(m).liveBytes).toBe(2 * 32);
    sgFreeAppendTable(m, a);
    expect(meta(m).liveBytes).toBe(0);
  });

  it('kernel quirk: pages merged into the previous entry count whole pages whatever size says', () => {
    const m = machine();
    const a = new SgAppendTable();
    sgAllocAppendTableFromPages(m, a, pagesOf([500, 1]), 1, 0, P, 0xffff_ffff, 1);
    sgAllocAppendTableFromPages(m, a, pagesOf([501, 1]), 1, 0, 100, 0xffff_ffff, 0);
    expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual([[500 * P, 2 * P]]);
    sgFreeAppendTable(m, a);
  });

  it('two appends build the same entries as one call (property)', () => {
    const runs = fc.array(fc.tuple(fc.integer({ min: 256, max: 3000 }), fc.integer({ min: 1, max: 9 })), {
      minLength: 2,
      maxLength: 60,
    });
    fc.assert(
      fc.property(
        runs,
        fc.integer({ min: 1, max: 8 }),
        fc.nat(),
        fc.integer({ min: 0, max: P - 1 }),
        (rs, mp, cut, offset) => {
          const pages = pagesOf(...rs);
          const n = pages.length;
          const k = 1 + (cut % (n - 1)); // pages in the first call, at least one in each
          const maxSegment = mp * P;
          const m = machine();
          const one = new SgTable();
          expect(sgAllocTableFromPagesSegment(m, one, pages, n, offset, n * P - offset, maxSegment)).toBe(0);
          const a = new SgAppendTable();
          expect(sgAllocAppendTableFromPages(m, a, pages, k, offset, k * P - offset, maxSegment, n - k)).toBe(
            0,
          );
          expect(
            sgAllocAppendTableFromPages(m, a, pages.slice(k), n - k, 0, (n - k) * P, maxSegment, 0),
          ).toBe(0);
          expect(ranges(a.sgt.sgl, a.sgt.nents)).toEqual(ranges(one.sgl, one.nents));
          expect(sgIsLast(a.prv!)).toBe(true);
          sgFreeTable(m, one);
          sgFreeAppendTable(m, a);
          expect(meta(m).liveBytes).toBe(0);
        },
      ),
      { numRuns: 150 },
    );
  });
});
