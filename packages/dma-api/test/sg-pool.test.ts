import { Errno, type Machine } from '@iovalink/iommu';
import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { DmaError } from '../src/errors.js';
import {
  forEachSgtableSg,
  type Scatterlist,
  SG_ENTRY_SIZE,
  SG_META_KIND,
  SgTable,
  sgArray,
  sgIsChain,
  sgIsLast,
  sgIter,
  sgNents,
  sgSetPage,
} from '../src/scatterlist.js';
import {
  SG_MEMPOOL_NR,
  SG_POOL_FAULT,
  SG_POOL_META_KIND,
  SG_POOL_SIZES,
  sgAllocTableChained,
  sgFreeTableChained,
  sgPoolIndex,
} from '../src/sg-pool.js';

/** Inline entries NVMe-PCI and SCSI keep in each request (NVME_INLINE_SG_CNT, SCSI_INLINE_SG_CNT). */
const INLINE_SG_CNT = 2;

const machine = createTestMachine;

function pool(m: Machine) {
  return (
    m.counters.meta.get(SG_POOL_META_KIND) ?? { allocs: 0, frees: 0, bytes: 0, liveBytes: 0, peakBytes: 0 }
  );
}

/** Chunk sizes of a table, following its chain links. */
function chunkSizes(sgl: Scatterlist | null): number[] {
  const out: number[] = [];
  let s = sgl;
  while (s !== null) {
    out.push(s.chunk.length);
    const link = s.chunk[s.chunk.length - 1]!;
    s = sgIsChain(link) ? link.chainPtr : null;
  }
  return out;
}

describe('sg_pools', () => {
  it('are the five mempools of lib/sg_pool.c', () => {
    expect(SG_POOL_SIZES).toEqual([8, 16, 32, 64, 128]);
    expect(SG_MEMPOOL_NR).toBe(5);
  });
});

describe('sg_pool_index', () => {
  it('picks the smallest pool that fits', () => {
    const expected = (n: number) => SG_POOL_SIZES.findIndex((size) => size >= n);
    for (let n = 1; n <= 128; n++) expect(sgPoolIndex(n)).toBe(expected(n));
    expect([sgPoolIndex(8), sgPoolIndex(9), sgPoolIndex(16), sgPoolIndex(17), sgPoolIndex(65)]).toEqual([
      0, 1, 1, 2, 4,
    ]);
  });

  it('throws above SG_CHUNK_SIZE (kernel: BUG_ON)', () => {
    expect(() => sgPoolIndex(129)).toThrow(DmaError);
  });
});

describe('sg_alloc_table_chained', () => {
  it('uses the inline first chunk and allocates nothing when nents fits it', () => {
    const m = machine();
    const inline = sgArray(INLINE_SG_CNT);
    for (const nents of [1, 2]) {
      const t = new SgTable();
      expect(sgAllocTableChained(m, t, nents, inline, INLINE_SG_CNT)).toBe(0);
      expect(t.sgl).toBe(inline[0]);
      expect([t.nents, t.origNents, sgNents(t.sgl)]).toEqual([nents, nents, nents]);
      sgFreeTableChained(m, t, INLINE_SG_CNT);
    }
    expect(pool(m).allocs).toBe(0);
    expect(m.counters.meta.get(SG_META_KIND)).toBeUndefined();
  });

  it('chains from the inline chunk into a pool chunk for more entries', () => {
    const m = machine();
    const inline = sgArray(INLINE_SG_CNT);
    const t = new SgTable();
    expect(sgAllocTableChained(m, t, 3, inline, INLINE_SG_CNT)).toBe(0);
    // inline: one entry + link; then a 2-entry chunk from sgpool-8
    expect(chunkSizes(t.sgl)).toEqual([2, 2]);
    expect(sgIsChain(inline[1]!)).toBe(true);
    expect(pool(m).bytes).toBe(8 * SG_ENTRY_SIZE);
    expect(sgNents(t.sgl)).toBe(3);
    forEachSgtableSg(t, (s, i) => sgSetPage(s, (400 + i) * 4096, 512, 0));
    expect([...sgIter(t.sgl, 3)].map((s) => s.page / 4096)).toEqual([400, 401, 402]);
    sgFreeTableChained(m, t, INLINE_SG_CNT);
    expect(pool(m).liveBytes).toBe(0);
    expect(pool(m).frees).toBe(1);
  });

  // [nents, nents_first_chunk, pool object sizes allocated]
  const cases: Array<[number, number, number[]]> = [
    [1, 0, [8]],
    [8, 0, [8]],
    [9, 0, [16]],
    [10, 0, [16]],
    [33, 0, [64]],
    [128, 0, [128]],
    [129, 0, [128, 8]],
    [300, 0, [128, 128, 64]],
    [3, INLINE_SG_CNT, [8]],
    [20, INLINE_SG_CNT, [32]],
    [130, INLINE_SG_CNT, [128, 8]],
    [200, 128, [128]],
    [5, 1, [8]], // a one-entry first chunk cannot chain: ignored
  ];
  it.each(cases)('%i entries with an inline chunk of %i take pool objects %j', (nents, inlineCnt, objs) => {
    const m = machine();
    const inline = inlineCnt > 0 ? sgArray(inlineCnt) : undefined;
    const t = new SgTable();
    expect(sgAllocTableChained(m, t, nents, inline, inlineCnt)).toBe(0);
    expect(pool(m).allocs).toBe(objs.length);
    expect(pool(m).bytes).toBe(objs.reduce((a, n) => a + n * SG_ENTRY_SIZE, 0));
    expect(sgNents(t.sgl)).toBe(nents);
    expect([t.nents, t.origNents]).toEqual([nents, nents]);
    expect(sgIsLast([...sgIter(t.sgl, nents)].at(-1)!)).toBe(true);
    sgFreeTableChained(m, t, inlineCnt);
    expect(pool(m).liveBytes).toBe(0);
    expect(pool(m).frees).toBe(objs.length);
    expect(m.counters.meta.get(SG_META_KIND)).toBeUndefined();
  });

  it('a 200-entry table with a 128-entry inline chunk: 127 inline, 73 from sgpool-128', () => {
    const m = machine();
    const inline = sgArray(128);
    const t = new SgTable();
    sgAllocTableChained(m, t, 200, inline, 128);
    expect(chunkSizes(t.sgl)).toEqual([128, 73]);
    sgFreeTableChained(m, t, 128);
    expect(pool(m).liveBytes).toBe(0);
  });

  it.each([1, 2])('fails cleanly when pool chunk %i cannot be had', (nth) => {
    const m = machine();
    const inline = sgArray(INLINE_SG_CNT);
    const t = new SgTable();
    m.faults.failNth(SG_POOL_FAULT, nth);
    expect(sgAllocTableChained(m, t, 300, inline, INLINE_SG_CNT)).toBe(-Errno.ENOMEM);
    expect(pool(m).allocs).toBe(nth - 1);
    expect(pool(m).liveBytes).toBe(0);
    expect([t.sgl, t.nents, t.origNents]).toEqual([null, 0, 0]);
  });

  it('fails cleanly without an inline chunk', () => {
    const m = machine();
    const t = new SgTable();
    m.faults.failNth(SG_POOL_FAULT, 3);
    expect(sgAllocTableChained(m, t, 400, undefined, 0)).toBe(-Errno.ENOMEM);
    expect(pool(m).allocs).toBe(2);
    expect(pool(m).liveBytes).toBe(0);
    expect(t.sgl).toBeNull();
  });

  it('throws for misuse the kernel BUGs on or would corrupt memory with', () => {
    const m = machine();
    expect(() => sgAllocTableChained(m, new SgTable(), 0, undefined, 0)).toThrow(DmaError);
    expect(() => sgAllocTableChained(m, new SgTable(), 4, sgArray(2), 3)).toThrow(/exceeds the first chunk/);
    expect(() => sgAllocTableChained(m, new SgTable(), 4, undefined, 2)).toThrow(/without a first chunk/);
    expect(pool(m).allocs).toBe(0);
  });
});

describe('sg_free_table_chained', () => {
  it('leaves a table that fits the inline chunk alone', () => {
    const m = machine();
    const inline = sgArray(4);
    const t = new SgTable();
    sgAllocTableChained(m, t, 4, inline, 4);
    sgFreeTableChained(m, t, 4);
    expect(t.sgl).toBe(inline[0]);
    expect(pool(m).frees).toBe(0);
  });
});
