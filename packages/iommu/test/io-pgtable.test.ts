// Tests for the IOMMU page-table format: the io-pgtable-arm selftest and generic_pt KUnit cases
// ported to our format (kernel-reference.md 8.1, 8.2), plus the format's own rules.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Errno } from '../src/errno.js';
import { IommuError } from '../src/errors.js';
import {
  freeTablePage,
  IOPTE_CACHE,
  IOPTE_LEAF,
  IOPTE_READ,
  IOPTE_VALID,
  IOPTE_WRITE,
  IoPgtable,
  type IoPgtableCfg,
  type IoPgtableTlbOps,
  type PteLookup,
} from '../src/io-pgtable.js';
import { type IommuIotlbGather, iommuIotlbGatherInit, iommuIotlbGatherReset } from '../src/iommu-gather.js';
import {
  IOMMU_CACHE,
  IOMMU_MMIO,
  IOMMU_NOEXEC,
  IOMMU_PRIV,
  IOMMU_READ,
  IOMMU_WRITE,
} from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';

const SZ_4K = 0x1000;
const SZ_2M = 0x200000;
const SZ_1G = 0x40000000;
const SZ_2G = 2 * SZ_1G;
const ALL = SZ_4K | SZ_2M | SZ_1G;
const RW = IOMMU_READ | IOMMU_WRITE;

/** Free pages (`nr_free_pages`), cross-checked against the buddy lists. */
function freeCount(m: Machine): number {
  const fromBuddy = m.pages.buddyinfo().reduce((sum, n, order) => sum + n * 2 ** order, 0);
  expect(m.pages.nrFreePages).toBe(fromBuddy);
  return fromBuddy;
}

function setup(
  cfg: Partial<IoPgtableCfg> = {},
  tlb?: IoPgtableTlbOps,
  memSize = 64 << 20,
): { m: Machine; pt: IoPgtable; free0: number } {
  const m = new Machine({ memSize });
  const free0 = freeCount(m);
  const pt = IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48, ...cfg }, tlb);
  if (pt === undefined) throw new Error('IoPgtable.create failed');
  return { m, pt, free0 };
}

/** Unmaps and frees the unlinked tables, as iommu_unmap + iommu_iotlb_sync would. */
function unmapSync(m: Machine, pt: IoPgtable, iova: number, pgsize: number, pgcount: number): number {
  const g = iommuIotlbGatherInit();
  const n = pt.unmapPages(iova, pgsize, pgcount, g);
  drain(m, g);
  return n;
}

function drain(m: Machine, g: IommuIotlbGather): void {
  for (const pa of g.freelist) freeTablePage(m, pa);
  iommuIotlbGatherReset(g);
}

/**
 * Page-table memory is accounted for: every page allocated and not freed is a live table of `pt`
 * (call with every gather drained), and `nr_free_pages` is `free0` (before the root) less those.
 */
function expectTablesAccounted(m: Machine, pt: IoPgtable, free0: number): void {
  expect(m.counters.pgtablePagesAllocated - m.counters.pgtablePagesFreed).toBe(pt.tablePages);
  expect(freeCount(m)).toBe(free0 - pt.tablePages);
}

/** `destroy()` returns every table page: the counters balance and `nr_free_pages` is back to `free0`. */
function destroyAndCheck(m: Machine, pt: IoPgtable, free0: number): void {
  pt.destroy();
  expect(pt.tablePages).toBe(0);
  expect(m.counters.pgtablePagesAllocated).toBe(m.counters.pgtablePagesFreed);
  expect(freeCount(m)).toBe(free0);
}

function sizesOf(bitmap: number): number[] {
  return [SZ_4K, SZ_2M, SZ_1G].filter((s) => (bitmap & s) !== 0);
}

/**
 * Reference page-size selection (kernel-reference.md 3.3, drivers/iommu/iommu.c `iommu_pgsize`):
 * the largest size allowed by the bitmap, the alignment of iova and paddr and the remaining size,
 * with the run shortened so the next run can use the next larger size.
 */
function iommuPgsize(
  bitmap: number,
  iova: number,
  paddr: number,
  size: number,
): { pgsize: number; count: number } {
  const cands = sizesOf(bitmap).filter((s) => s <= size && iova % s === 0 && paddr % s === 0);
  const pgsize = cands[cands.length - 1];
  if (pgsize === undefined) throw new Error('iommu_pgsize: no candidate');
  const next = sizesOf(bitmap).find((s) => s > pgsize);
  if (next !== undefined && iova % next === paddr % next) {
    const offset = next - (iova % next);
    if (offset + next <= size) size = offset;
  }
  return { pgsize, count: Math.floor(size / pgsize) };
}

/** Maps `[iova, iova + size)` → paddr run by run as iommu_map does; returns the runs. */
function mapLikeCore(
  pt: IoPgtable,
  iova: number,
  paddr: number,
  size: number,
  prot = RW,
): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  const out = { mapped: 0 };
  while (size > 0) {
    const { pgsize, count } = iommuPgsize(pt.cfg.pgsizeBitmap, iova, paddr, size);
    const ret = pt.mapPages(iova, paddr, pgsize, count, prot, out);
    if (ret !== 0) throw new Error(`mapPages ${ret}`);
    runs.push([pgsize, count]);
    iova += out.mapped;
    paddr += out.mapped;
    size -= out.mapped;
  }
  return runs;
}

/** Reads the 64-bit PTE at `tablePhys[idx]` from physical memory as [low word, high word]. */
function readPte(m: Machine, tablePhys: number, idx: number): [number, number] {
  const b = m.phys.read(tablePhys + idx * 8, 8);
  const dv = new DataView(b.buffer, b.byteOffset, 8);
  return [dv.getUint32(0, true), dv.getUint32(4, true)];
}

function pteAddress([lo, hi]: [number, number]): number {
  return Math.floor(lo / SZ_4K) * SZ_4K + hi * 2 ** 32;
}

/**
 * The free-entry invariant `mapPages` relies on (io-pgtable.ts): every entry without VALID has both
 * words zero, so a leaf below 4 GiB is written with its low word alone. Walks the whole tree
 * from the root through physical memory and returns the entries that break it.
 */
function staleFreeEntries(m: Machine, pt: IoPgtable): string[] {
  const bad: string[] = [];
  const walk = (phys: number, level: number): void => {
    const b = m.phys.read(phys, SZ_4K);
    const w = new Uint32Array(b.buffer, b.byteOffset, SZ_4K / 4);
    for (let i = 0; i < 512; i++) {
      const lo = w[2 * i]!;
      const hi = w[2 * i + 1]!;
      if ((lo & IOPTE_VALID) === 0) {
        if (lo !== 0 || hi !== 0)
          bad.push(`level ${level} table ${phys.toString(16)} entry ${i}: ${hi}:${lo}`);
      } else if (level > 0 && (lo & IOPTE_LEAF) === 0) {
        walk(pteAddress([lo, hi]), level - 1);
      }
    }
  };
  walk(pt.rootPhys, 3);
  return bad;
}

describe('arm_lpae_run_tests (io-pgtable-arm selftest, ported)', () => {
  const addressSizes = [32, 36, 40, 42, 44, 48];
  const bitmaps: Array<[string, number]> = [
    ['4K|2M|1G', ALL],
    ['4K', SZ_4K],
    ['4K|2M', SZ_4K | SZ_2M],
  ];
  const cases: Array<[string, number, number, number]> = [];
  for (const [name, bitmap] of bitmaps) {
    for (let j = 0; j < addressSizes.length; j++) {
      for (let k = 0; k <= j; k++) cases.push([name, bitmap, addressSizes[k]!, addressSizes[j]!]);
    }
  }

  it('covers 3 bitmaps × 21 (ias ≤ oas) address-size pairs', () => {
    expect(cases).toHaveLength(63);
  });

  it.each(cases)('pgsize_bitmap %s, IAS %i, OAS %i', (_name, bitmap, ias, oas) => {
    const { m, pt, free0 } = setup({ pgsizeBitmap: bitmap, ias, oas });
    const out = { mapped: 0 };
    // Empty page tables shouldn't provide any translations.
    expect(pt.iovaToPhys(42)).toBe(0);
    expect(pt.iovaToPhys(SZ_1G + 42)).toBe(0);
    expect(pt.iovaToPhys(SZ_2G + 42)).toBe(0);

    // Distinct mappings of different granule sizes.
    let iova = 0;
    for (const size of sizesOf(bitmap)) {
      expect(pt.mapPages(iova, iova, size, 1, RW | IOMMU_NOEXEC | IOMMU_CACHE, out)).toBe(0);
      expect(out.mapped).toBe(size);
      // Overlapping mappings must fail.
      expect(pt.mapPages(iova, iova + size, size, 1, IOMMU_READ | IOMMU_NOEXEC, out)).toBe(-Errno.EEXIST);
      expect(out.mapped).toBe(0);
      expect(pt.iovaToPhys(iova + 42)).toBe(iova + 42);
      iova += SZ_1G;
    }
    expect(pt.leafCount).toBe(sizesOf(bitmap).length);

    // Full unmap, then remap with WRITE only.
    iova = 0;
    for (const size of sizesOf(bitmap)) {
      expect(unmapSync(m, pt, iova, size, 1)).toBe(size);
      expect(pt.iovaToPhys(iova + 42)).toBe(0);
      expect(pt.mapPages(iova, iova, size, 1, IOMMU_WRITE, out)).toBe(0);
      expect(pt.iovaToPhys(iova + 42)).toBe(iova + 42);
      iova += SZ_1G;
    }

    // The last largest page below 2^IAS.
    const size = Math.max(...sizesOf(bitmap));
    iova = 2 ** ias - size;
    expect(pt.mapPages(iova, iova, size, 1, RW | IOMMU_NOEXEC | IOMMU_CACHE, out)).toBe(0);
    expect(out.mapped).toBe(size);
    expect(pt.iovaToPhys(iova + 42)).toBe(iova + 42);
    expect(unmapSync(m, pt, iova, size, 1)).toBe(size);

    pt.destroy();
    expect(freeCount(m)).toBe(free0);
  });
});

describe('generic_pt kunit_iommu_pt (ported)', () => {
  it('map_simple: one page of every size, one entry each, unmap all → zero entries, tables kept', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    const at = [0, SZ_1G, SZ_2G];
    const mapAll = (): void => {
      sizesOf(ALL).forEach((size, i) => {
        expect(pt.mapPages(at[i]!, 0x10_0000_0000 + i * SZ_1G, size, 1, RW, out)).toBe(0);
      });
    };
    mapAll();
    expect(pt.leafCount).toBe(3);
    // root, level 2, level-1 tables for GiB 0 and 1, the level-0 table for the first 2 MiB
    expect(pt.tablePages).toBe(5);
    sizesOf(ALL).forEach((size, i) => {
      const l: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
      expect(pt.lookup(at[i]! + size - 1, l)).toBe(true);
      expect(l).toEqual({
        leafIova: at[i],
        leafPhys: 0x10_0000_0000 + i * SZ_1G,
        leafSize: size,
        prot: RW,
        dirty: false,
      });
    });
    sizesOf(ALL).forEach((size, i) => {
      expect(unmapSync(m, pt, at[i]!, size, 1)).toBe(size);
      expect(pt.iovaToPhys(at[i]!)).toBe(0);
    });
    expect(pt.leafCount).toBe(0);
    // No unmap covered a whole table's span: the emptied tables stay linked.
    expect(pt.tablePages).toBe(5);
    expect(m.counters.pgtablePagesFreed).toBe(0);
    expectTablesAccounted(m, pt, free0);
    // ...and mapping the same again reuses them.
    const allocated = m.counters.pgtablePagesAllocated;
    mapAll();
    expect(m.counters.pgtablePagesAllocated).toBe(allocated);
    expect(pt.leafCount).toBe(3);
    destroyAndCheck(m, pt, free0);
  });

  it('map_table_to_oa: fill a 2 MiB region with 4K pages, unmap in pieces (tables kept), remap, unmap whole', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    const c = m.counters;
    const base = 5 * SZ_1G + 7 * SZ_2M;
    expect(pt.mapPages(base, 0x2000_0000, SZ_4K, 512, RW, out)).toBe(0);
    expect(out.mapped).toBe(SZ_2M);
    expect(pt.leafCount).toBe(512);
    expect(pt.tablePages).toBe(4);
    for (let i = 0; i < 512; i += 37)
      expect(pt.iovaToPhys(base + i * SZ_4K + 5)).toBe(0x2000_0000 + i * SZ_4K + 5);

    const g = iommuIotlbGatherInit();
    expect(pt.unmapPages(base, SZ_4K, 256, g)).toBe(SZ_2M / 2);
    expect(g.freelist).toHaveLength(0);
    for (let i = 256; i < 511; i++) expect(pt.unmapPages(base + i * SZ_4K, SZ_4K, 1, g)).toBe(SZ_4K);
    expect(g.freelist).toHaveLength(0);
    expect(pt.unmapPages(base + 511 * SZ_4K, SZ_4K, 1, g)).toBe(SZ_4K);
    // The level-0 table is empty, but no single unmap covered its 2 MiB: it stays linked.
    expect(g.freelist).toHaveLength(0);
    expect(pt.leafCount).toBe(0);
    expect(pt.tablePages).toBe(4);
    expect(c.pgtablePagesFreed).toBe(0);
    expect(freeCount(m)).toBe(free0 - 4);

    // Mapping the region again reuses every table.
    expect(pt.mapPages(base, 0x3000_0000, SZ_4K, 512, RW, out)).toBe(0);
    expect(c.pgtablePagesAllocated).toBe(4);
    expect(pt.iovaToPhys(base + 300 * SZ_4K)).toBe(0x3000_0000 + 300 * SZ_4K);

    // Unmapping the whole 2 MiB-aligned region as one range frees the level-0 table via the
    // freelist; the level-1 table (1 GiB span) and level-2 table stay.
    expect(pt.unmapPages(base, SZ_4K, 512, g)).toBe(SZ_2M);
    expect(g.freelist).toHaveLength(1);
    expect(pt.leafCount).toBe(0);
    expect(pt.tablePages).toBe(3);
    // Unlinked, not yet freed.
    expect(freeCount(m)).toBe(free0 - 4);
    drain(m, g);
    expect(freeCount(m)).toBe(free0 - 3);
    expect(c.pgtablePagesFreed).toBe(1);
    expectTablesAccounted(m, pt, free0);
    destroyAndCheck(m, pt, free0);
  });

  it('unmap_split: a small unmap at the start of a large leaf removes it whole, not the neighbour', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x4000_0000, SZ_2M, 2, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 0, SZ_4K, 1)).toBe(SZ_2M);
    expect(pt.iovaToPhys(42)).toBe(0);
    expect(pt.iovaToPhys(SZ_2M + 42)).toBe(0x4000_0000 + SZ_2M + 42);

    expect(pt.mapPages(SZ_1G, SZ_1G, SZ_1G, 2, RW, out)).toBe(0);
    expect(unmapSync(m, pt, SZ_1G, SZ_2M, 1)).toBe(SZ_1G);
    expect(pt.iovaToPhys(SZ_1G)).toBe(0);
    expect(pt.iovaToPhys(SZ_2G)).toBe(SZ_2G);
    expect(pt.leafCount).toBe(2);
  });

  it('an unmap starting inside a large leaf stops there (nothing removed)', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(SZ_2M, SZ_2M, SZ_2M, 1, RW, out)).toBe(0);
    expect(unmapSync(m, pt, SZ_2M + SZ_4K, SZ_4K, 1)).toBe(0);
    expect(pt.iovaToPhys(SZ_2M + SZ_4K)).toBe(SZ_2M + SZ_4K);
  });

  it('pgsize_boundary: 0xfef80000..0xfef9ffff → 0x208b95d000', () => {
    const { pt } = setup();
    const runs = mapLikeCore(pt, 0xfef80000, 0x208b95d000, 0x20000);
    expect(runs).toEqual([[SZ_4K, 32]]);
    for (let off = 0; off < 0x20000; off += SZ_4K) {
      expect(pt.iovaToPhys(0xfef80000 + off + 0x123)).toBe(0x208b95d000 + off + 0x123);
    }
  });

  it('mixed: [0x3fe400000, 0x4c0600000) IOVA=OA is exactly 20 leaves (14 × 2M, 3 × 1G, 3 × 2M)', () => {
    const { m, pt, free0 } = setup();
    const start = 0x3fe400000;
    const end = 0x4c0600000;
    const runs = mapLikeCore(pt, start, start, end - start);
    expect(runs).toEqual([
      [SZ_2M, 14],
      [SZ_1G, 3],
      [SZ_2M, 3],
    ]);
    expect(pt.leafCount).toBe(20);
    // root + one level-2 table + level-1 tables for the 1 GiB regions at 15 and 19
    expect(pt.tablePages).toBe(4);
    for (const iova of [start, 0x3ffffffff, 0x400000000, 0x4bfffffff, 0x4c0000000, end - 1]) {
      expect(pt.iovaToPhys(iova)).toBe(iova);
    }
    expect(pt.iovaToPhys(start - 1)).toBe(0);
    expect(pt.iovaToPhys(end)).toBe(0);
    // iommu_unmap-style teardown
    const teardown = (): void => {
      let iova = start;
      while (iova < end) {
        const { pgsize, count } = iommuPgsize(ALL, iova, iova, end - iova);
        const n = unmapSync(m, pt, iova, pgsize, count);
        expect(n).toBe(pgsize * count);
        iova += n;
      }
    };
    teardown();
    expect(pt.leafCount).toBe(0);
    expect(pt.iovaToPhys(start)).toBe(0);
    expect(pt.iovaToPhys(end - 1)).toBe(0);
    // No run covered a whole 1 GiB level-1 table (nor the 512 GiB level-2 table): all stay.
    expect(pt.tablePages).toBe(4);
    expect(m.counters.pgtablePagesFreed).toBe(0);
    expectTablesAccounted(m, pt, free0);
    // The same map again needs no new table page.
    expect(mapLikeCore(pt, start, start, end - start)).toHaveLength(3);
    expect(m.counters.pgtablePagesAllocated).toBe(4);
    expect(pt.leafCount).toBe(20);
    teardown();
    expect(pt.leafCount).toBe(0);
    destroyAndCheck(m, pt, free0);
  });

  it('iommu_pgsize shortens a run so the next can use a larger page (4 MiB at 0x1000)', () => {
    const { pt } = setup();
    expect(mapLikeCore(pt, 0x1000, 0x1000, (4 * SZ_2M) / 2)).toEqual([
      [SZ_4K, 511],
      [SZ_2M, 1],
      [SZ_4K, 1],
    ]);
    expect(pt.leafCount).toBe(513);
  });
});

describe('arm_lpae_map_pages', () => {
  it('writes PTEs in the documented layout into physical memory', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    const iova = 2 * 2 ** 39 + 3 * SZ_1G + 5 * SZ_2M + 7 * SZ_4K;
    const paddr = 0x12_3456_7000;
    expect(pt.mapPages(iova, paddr, SZ_4K, 1, RW | IOMMU_CACHE, out)).toBe(0);
    let table = pt.rootPhys;
    for (const idx of [2, 3, 5]) {
      const pte = readPte(m, table, idx);
      expect(pte[0] & 0xfff).toBe(IOPTE_VALID);
      table = pteAddress(pte);
      expect(m.pages.orderOf(table)).toBe(0);
    }
    const leaf = readPte(m, table, 7);
    expect(leaf).toEqual([
      (0x3456_7000 | IOPTE_VALID | IOPTE_LEAF | IOPTE_READ | IOPTE_WRITE | IOPTE_CACHE) >>> 0,
      0x12,
    ]);
    expect(pteAddress(leaf)).toBe(paddr);
    expect(readPte(m, table, 6)).toEqual([0, 0]);

    // A 2 MiB block is a level-1 entry with LEAF set.
    expect(pt.mapPages(SZ_2M, 0xabc0_0000, SZ_2M, 1, IOMMU_READ, out)).toBe(0);
    const l2 = pteAddress(readPte(m, pt.rootPhys, 0));
    const l1 = pteAddress(readPte(m, l2, 0));
    expect(readPte(m, l1, 1)).toEqual([(0xabc0_0000 | IOPTE_VALID | IOPTE_LEAF | IOPTE_READ) >>> 0, 0]);
  });

  it('counts PTE writes, table pages, and a run of pages as one write each', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    const c = m.counters;
    expect(c.pgtablePagesAllocated).toBe(1);
    expect(pt.mapPages(0, 0x100000, SZ_4K, 1, RW, out)).toBe(0);
    expect(c.pteWrites).toBe(4); // 3 table links + 1 leaf
    expect(c.pgtablePagesAllocated).toBe(4);
    expect(pt.mapPages(SZ_4K, 0x200000, SZ_4K, 255, RW, out)).toBe(0);
    expect(c.pteWrites).toBe(4 + 255);
    expect(pt.tablePages).toBe(4);
    expect(pt.leafCount).toBe(256);
    // Not covering the level-0 table's 2 MiB: leaves cleared, tables kept.
    expect(unmapSync(m, pt, 0, SZ_4K, 256)).toBe(256 * SZ_4K);
    expect(c.pteClears).toBe(256);
    expect(c.pgtablePagesFreed).toBe(0);
    expect(pt.tablePages).toBe(4);
    // Remapping reuses the tables: only the leaf run is written.
    expect(pt.mapPages(0, 0x300000, SZ_4K, 256, RW, out)).toBe(0);
    expect(c.pteWrites).toBe(4 + 255 + 256);
    expect(c.pgtablePagesAllocated).toBe(4);
    // An unmap covering the whole level-2 span (512 GiB) unlinks all three tables: 3 link clears.
    expect(unmapSync(m, pt, 0, SZ_1G, 512)).toBe(256 * SZ_4K);
    expect(c.pteClears).toBe(256 + 256 + 3);
    expect(c.pgtablePagesFreed).toBe(3);
    expect(pt.tablePages).toBe(1);
  });

  it('maps a run across table boundaries', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    const iova = SZ_1G - 3 * SZ_4K;
    expect(pt.mapPages(iova, 0x8000_0000, SZ_4K, 1030, RW, out)).toBe(0);
    expect(out.mapped).toBe(1030 * SZ_4K);
    expect(pt.tablePages).toBe(1 + 1 + 2 + 4);
    for (let i = 0; i < 1030; i++) expect(pt.iovaToPhys(iova + i * SZ_4K)).toBe(0x8000_0000 + i * SZ_4K);
  });

  it('carries the output address across the 4 GiB word boundary', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    const paddr = 2 ** 32 - 2 * SZ_4K;
    expect(pt.mapPages(0, paddr, SZ_4K, 4, RW, out)).toBe(0);
    for (let i = 0; i < 4; i++) expect(pt.iovaToPhys(i * SZ_4K + 1)).toBe(paddr + i * SZ_4K + 1);
  });

  it('-EINVAL: size not supported or not in the bitmap, unaligned iova/paddr, no pages, no R/W prot', () => {
    const { m, pt } = setup({ pgsizeBitmap: SZ_4K | SZ_2M });
    const out = { mapped: 123 };
    const E = -Errno.EINVAL;
    expect(pt.mapPages(0, 0, 0x2000, 1, RW, out)).toBe(E);
    expect(out.mapped).toBe(0);
    expect(pt.mapPages(0, 0, 0, 1, RW, out)).toBe(E);
    expect(pt.mapPages(0, 0, SZ_1G, 1, RW, out)).toBe(E);
    expect(pt.mapPages(SZ_4K, 0, SZ_2M, 1, RW, out)).toBe(E);
    expect(pt.mapPages(0, SZ_4K, SZ_2M, 1, RW, out)).toBe(E);
    expect(pt.mapPages(0x800, 0, SZ_4K, 1, RW, out)).toBe(E);
    expect(pt.mapPages(0, 0, SZ_4K, 0, RW, out)).toBe(E);
    expect(pt.mapPages(0, 0, SZ_4K, -1, RW, out)).toBe(E);
    expect(pt.mapPages(0, 0, SZ_4K, 1, 0, out)).toBe(E);
    expect(pt.mapPages(0, 0, SZ_4K, 1, IOMMU_CACHE | IOMMU_NOEXEC, out)).toBe(E);
    expect(out.mapped).toBe(0);
    expect(pt.leafCount).toBe(0);
    expect(pt.tablePages).toBe(1);
    expect(m.counters.pteWrites).toBe(0);
  });

  it('-ERANGE: input beyond 2^ias or output beyond 2^oas, nothing mapped', () => {
    const { pt } = setup({ ias: 32, oas: 36 });
    const out = { mapped: 0 };
    const R = -Errno.ERANGE;
    expect(pt.mapPages(2 ** 32, 0, SZ_4K, 1, RW, out)).toBe(R);
    expect(pt.mapPages(2 ** 32 - SZ_4K, 0, SZ_4K, 2, RW, out)).toBe(R);
    expect(pt.mapPages(0, 2 ** 36, SZ_4K, 1, RW, out)).toBe(R);
    expect(pt.mapPages(0, 2 ** 36 - SZ_4K, SZ_4K, 2, RW, out)).toBe(R);
    expect(out.mapped).toBe(0);
    expect(pt.tablePages).toBe(1);
    expect(pt.mapPages(2 ** 32 - SZ_4K, 2 ** 36 - SZ_4K, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.iovaToPhys(2 ** 32 - 1)).toBe(2 ** 36 - 1);
    expect(pt.iovaToPhys(2 ** 32)).toBe(0);
  });

  it('-EEXIST: leaves written before the collision stay and are reported in out.mapped', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(5 * SZ_4K, 0x500000, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.mapPages(0, 0x100000, SZ_4K, 10, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(5 * SZ_4K);
    for (let i = 0; i < 5; i++) expect(pt.iovaToPhys(i * SZ_4K)).toBe(0x100000 + i * SZ_4K);
    expect(pt.iovaToPhys(5 * SZ_4K)).toBe(0x500000);
    expect(pt.iovaToPhys(6 * SZ_4K)).toBe(0);
    expect(pt.leafCount).toBe(6);
  });

  it('-EEXIST: the collision is found wherever the occupied entry came from (page, run, table link)', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    // a single page from mapOne4K, at an even and at an odd index
    expect(pt.mapOne4K(8 * SZ_4K, 0x500000, RW)).toBe(0);
    expect(pt.mapPages(0, 0x100000, SZ_4K, 20, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(8 * SZ_4K);
    expect(pt.mapOne4K(SZ_2M + 7 * SZ_4K, 0x500000, RW)).toBe(0);
    expect(pt.mapPages(SZ_2M, 0x100000, SZ_4K, 20, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(7 * SZ_4K);
    // after a partial unmap the rest of the run still collides; the freed part maps again
    expect(pt.mapPages(2 * SZ_2M, 0x100000, SZ_4K, 300, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 2 * SZ_2M, SZ_4K, 100)).toBe(100 * SZ_4K);
    expect(pt.mapPages(2 * SZ_2M, 0x100000, SZ_4K, 101, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(100 * SZ_4K);
    expect(pt.mapPages(2 * SZ_2M + 300 * SZ_4K, 0x100000, SZ_4K, 212, RW, out)).toBe(0);
    // 2 MiB blocks over a level-1 table whose entry 3 links a level-0 table holding a page
    expect(pt.mapPages(SZ_1G + 3 * SZ_2M + 5 * SZ_4K, 0, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_1G, 0, SZ_2M, 8, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(3 * SZ_2M);
    expect(pt.iovaToPhys(SZ_1G + 3 * SZ_2M + 5 * SZ_4K)).toBe(0);
    expect(pt.iovaToPhys(SZ_1G + 2 * SZ_2M + 1)).toBe(2 * SZ_2M + 1);
  });

  it('carries the output address across 4 GiB for 2 MiB and 1 GiB leaves too', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(SZ_1G, 2 ** 32 - 2 * SZ_2M, SZ_2M, 5, RW, out)).toBe(0);
    for (let i = 0; i < 5; i++)
      expect(pt.iovaToPhys(SZ_1G + i * SZ_2M + 8)).toBe(2 ** 32 - 2 * SZ_2M + i * SZ_2M + 8);
    expect(pt.mapPages(4 * SZ_1G, 2 ** 33 - SZ_1G, SZ_1G, 3, RW, out)).toBe(0);
    for (let i = 0; i < 3; i++)
      expect(pt.iovaToPhys(4 * SZ_1G + i * SZ_1G + 8)).toBe(2 ** 33 - SZ_1G + i * SZ_1G + 8);
  });

  it('-EEXIST: a page inside a block, a block over a table, a 1 GiB block over a level-1 table', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(SZ_2M, SZ_2M, SZ_2M, 1, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_2M + 8 * SZ_4K, 0, SZ_4K, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(pt.mapPages(SZ_1G + 511 * SZ_4K, 0, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_1G, 0, SZ_2M, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(pt.mapPages(SZ_1G, 0, SZ_1G, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(pt.mapPages(0, 0, SZ_1G, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(0);
    expect(pt.leafCount).toBe(2);
  });

  it('new table pages start zeroed even when the frame held data', () => {
    // 2 MiB of RAM: 1 MiB reserved, 256 allocatable pages; dirty all of them first.
    const m = new Machine({ memSize: 2 << 20 });
    const pages: number[] = [];
    for (;;) {
      const pa = m.pages.allocPages(0);
      if (pa === 0) break;
      m.phys.fill(pa, SZ_4K, 0xff);
      pages.push(pa);
    }
    expect(pages).toHaveLength(256);
    for (const pa of pages) m.pages.freePages(pa, 0);
    const pt = IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })!;
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x100000, SZ_4K, 1, RW, out)).toBe(0);
    for (const iova of [SZ_4K, SZ_2M, SZ_1G, 2 ** 39, 2 ** 47]) expect(pt.iovaToPhys(iova)).toBe(0);
    expect(pt.iovaToPhys(0)).toBe(0x100000);
  });
});

describe('arm_lpae_unmap_pages', () => {
  it('stops at the first hole and returns 0 at a hole', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x100000, SZ_4K, 4, RW, out)).toBe(0);
    expect(pt.mapPages(5 * SZ_4K, 0x200000, SZ_4K, 3, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 4 * SZ_4K, SZ_4K, 1)).toBe(0);
    expect(unmapSync(m, pt, 0, SZ_4K, 8)).toBe(4 * SZ_4K);
    expect(pt.iovaToPhys(5 * SZ_4K)).toBe(0x200000);
    expect(unmapSync(m, pt, 3 * SZ_1G, SZ_2M, 1)).toBe(0);
    expect(pt.leafCount).toBe(3);
  });

  it('removes a block then the pages after it in one call', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(0, SZ_1G, SZ_2M, 1, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_2M, 0x100000, SZ_4K, 4, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 0, SZ_4K, 516)).toBe(SZ_2M + 4 * SZ_4K);
    expect(pt.leafCount).toBe(0);
    expect(pt.iovaToPhys(0)).toBe(0);
    expect(pt.iovaToPhys(SZ_2M)).toBe(0);
    // The range covers only 16 KiB of the level-0 table under [2M, 4M): it stays.
    expect(pt.tablePages).toBe(4);
    expect(m.counters.pgtablePagesFreed).toBe(0);
  });

  it('returns 0 for a size not in the bitmap, an unaligned iova, or a range beyond 2^ias', () => {
    const { m, pt } = setup({ pgsizeBitmap: SZ_4K | SZ_2M, ias: 39 });
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0, SZ_2M, 1, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 0, SZ_1G, 1)).toBe(0);
    expect(unmapSync(m, pt, 0, 0x2000, 1)).toBe(0);
    expect(unmapSync(m, pt, 0x800, SZ_4K, 1)).toBe(0);
    expect(unmapSync(m, pt, 0, SZ_4K, 0)).toBe(0);
    expect(unmapSync(m, pt, 2 ** 39, SZ_4K, 1)).toBe(0);
    expect(pt.leafCount).toBe(1);
  });

  it('calls the driver addPage hook once per cleared leaf, before the tables are unlinked', () => {
    const calls: Array<[number, number, number]> = [];
    const { pt } = setup(
      {},
      {
        addPage(g, iova, size) {
          calls.push([iova, size, g.freelist.length]);
        },
      },
    );
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x100000, SZ_4K, 512, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_2M, SZ_1G, SZ_2M, 1, RW, out)).toBe(0);
    const g = iommuIotlbGatherInit();
    // [0, 2M): covers the level-0 table, which empties and is unlinked after its leaves were added.
    expect(pt.unmapPages(0, SZ_4K, 512, g)).toBe(SZ_2M);
    expect(calls).toHaveLength(512);
    expect(calls.slice(0, 3)).toEqual([
      [0, SZ_4K, 0],
      [SZ_4K, SZ_4K, 0],
      [2 * SZ_4K, SZ_4K, 0],
    ]);
    expect(calls.every(([iova, size, freed], i) => iova === i * SZ_4K && size === SZ_4K && freed === 0)).toBe(
      true,
    );
    expect(g.freelist).toHaveLength(1); // the level-0 table; the level-1 table still holds the block
    expect(pt.unmapPages(SZ_2M, SZ_2M, 1, g)).toBe(SZ_2M);
    expect(calls[512]).toEqual([SZ_2M, SZ_2M, 1]);
    // The level-1 table is now empty, but [2M, 4M) does not cover its 1 GiB: it stays linked.
    expect(g.freelist).toHaveLength(1);
    expect(pt.tablePages).toBe(3);
  });

  it('skips the hook for a queued (flush-queue) gather but still hands over the tables', () => {
    const calls: number[] = [];
    const { pt } = setup({}, { addPage: (_g, iova) => calls.push(iova) });
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x100000, SZ_4K, 512, RW, out)).toBe(0);
    const g = iommuIotlbGatherInit(true);
    // One range covering the whole 512 GiB level-2 span: level-0, level-1 and level-2 tables go.
    expect(pt.unmapPages(0, SZ_1G, 512, g)).toBe(SZ_2M);
    expect(calls).toEqual([]);
    expect(g.freelist).toHaveLength(3);
    expect(g.end).toBe(0);
    expect(pt.tablePages).toBe(1);
  });

  it('without a hook, widens the gather range itself', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(SZ_2M - 2 * SZ_4K, 0x100000, SZ_4K, 2, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_2M, SZ_1G, SZ_2M, 1, RW, out)).toBe(0);
    const g = iommuIotlbGatherInit();
    expect(pt.unmapPages(SZ_2M - 2 * SZ_4K, SZ_4K, 3, g)).toBe(2 * SZ_4K + SZ_2M);
    expect(g.start).toBe(SZ_2M - 2 * SZ_4K);
    expect(g.end).toBe(2 * SZ_2M - 1);
    expect(g.pgsize).toBe(SZ_4K);
  });
});

describe('page-table pages on unmap and on block maps (generic_pt __unmap_range, VT-d dma_pte_clear_level)', () => {
  /** Physical address of the table linked at `tablePhys[idx]`. */
  function linkAt(m: Machine, tablePhys: number, idx: number): number {
    const pte = readPte(m, tablePhys, idx);
    expect(pte[0] & (IOPTE_VALID | IOPTE_LEAF)).toBe(IOPTE_VALID);
    return pteAddress(pte);
  }

  it('an emptied table goes to the freelist only when one unmap range covers its whole span', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    const c = m.counters;
    const base = 3 * SZ_1G + 2 * SZ_2M;
    // Level-0 table A = [base, base + 2M) full, B = [base + 2M, base + 4M) holding 8 pages.
    expect(pt.mapPages(base, 0x100000, SZ_4K, 520, RW, out)).toBe(0);
    expect(pt.tablePages).toBe(5);
    const l1 = linkAt(m, linkAt(m, pt.rootPhys, 0), 3);
    const a = linkAt(m, l1, 2);
    const b = linkAt(m, l1, 3);
    const g = iommuIotlbGatherInit();

    // Non-covering: A is emptied by two calls, neither covering [base, base + 2M); the second runs
    // past A's end into B and empties B too, but covers neither A's start nor B's end.
    expect(pt.unmapPages(base, SZ_4K, 1, g)).toBe(SZ_4K);
    expect(pt.unmapPages(base + SZ_4K, SZ_4K, 519, g)).toBe(519 * SZ_4K);
    expect(pt.leafCount).toBe(0);
    expect(g.freelist).toHaveLength(0);
    expect(pt.tablePages).toBe(5);
    expect(linkAt(m, l1, 2)).toBe(a);
    expect(linkAt(m, l1, 3)).toBe(b);
    drain(m, g);
    expect(c.pgtablePagesFreed).toBe(0);
    expectTablesAccounted(m, pt, free0);

    // The empty tables are reused by the next map of the range.
    expect(pt.mapPages(base, 0x200000, SZ_4K, 520, RW, out)).toBe(0);
    expect(c.pgtablePagesAllocated).toBe(5);
    expect(pt.iovaToPhys(base + 519 * SZ_4K)).toBe(0x200000 + 519 * SZ_4K);

    // Covering A (one 2 MiB unmap): A is unlinked onto the freelist; the rest stays.
    expect(pt.unmapPages(base, SZ_2M, 1, g)).toBe(SZ_2M);
    expect(g.freelist).toEqual([a]);
    expect(readPte(m, l1, 2)).toEqual([0, 0]);
    // Covering B ([base + 2M, base + 4M) as 512 pages; the unmap stops at B's first hole, after
    // B emptied): B goes too. The level-1 table is now empty but its 1 GiB is not covered.
    expect(pt.unmapPages(base + SZ_2M, SZ_4K, 512, g)).toBe(8 * SZ_4K);
    expect(g.freelist).toEqual([a, b]);
    expect(pt.tablePages).toBe(3);
    expect(freeCount(m)).toBe(free0 - 5); // unlinked, not yet freed
    drain(m, g);
    expect(c.pgtablePagesFreed).toBe(2);
    expectTablesAccounted(m, pt, free0);

    // A table that was already empty is not visited by a later covering unmap: the walk stops at
    // the first hole, so unmapping nothing frees nothing.
    expect(pt.unmapPages(3 * SZ_1G, SZ_1G, 1, g)).toBe(0);
    expect(g.freelist).toHaveLength(0);
    expect(pt.tablePages).toBe(3);
    destroyAndCheck(m, pt, free0);
  });

  it('a block mapped where only empty tables are linked frees that subtree at once and writes the block', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    const c = m.counters;
    const l: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
    const x = 5 * SZ_1G + 2 * SZ_2M;
    // Leave an empty level-0 table at x's 2 MiB slot.
    expect(pt.mapPages(x + 5 * SZ_4K, 0x100000, SZ_4K, 3, RW, out)).toBe(0);
    expect(unmapSync(m, pt, x + 5 * SZ_4K, SZ_4K, 3)).toBe(3 * SZ_4K);
    expect(pt.tablePages).toBe(4);
    const l2 = linkAt(m, pt.rootPhys, 0);
    const l1 = linkAt(m, l2, 5);
    linkAt(m, l1, 2);
    const free = freeCount(m);

    // 2 MiB block over the empty level-0 table.
    expect(pt.mapPages(x, 0x4000_0000, SZ_2M, 1, RW, out)).toBe(0);
    expect(out.mapped).toBe(SZ_2M);
    expect(c.pgtablePagesFreed).toBe(1); // freed immediately (freeTablePage), not via a gather
    expect(c.pgtablePagesAllocated).toBe(4);
    expect(pt.tablePages).toBe(3);
    expect(freeCount(m)).toBe(free + 1);
    expect(readPte(m, l1, 2)).toEqual([
      (0x4000_0000 | IOPTE_VALID | IOPTE_LEAF | IOPTE_READ | IOPTE_WRITE) >>> 0,
      0,
    ]);
    expect(pt.lookup(x + 0x12345, l)).toBe(true);
    expect(l).toEqual({ leafIova: x, leafPhys: 0x4000_0000, leafSize: SZ_2M, prot: RW, dirty: false });
    expect(pt.leafCount).toBe(1);
    expectTablesAccounted(m, pt, free0);

    // 1 GiB block over a level-1 table whose subtree holds only an empty level-0 table: both go.
    expect(unmapSync(m, pt, x, SZ_2M, 1)).toBe(SZ_2M);
    expect(pt.mapPages(5 * SZ_1G + 100 * SZ_2M, 0x100000, SZ_4K, 1, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 5 * SZ_1G + 100 * SZ_2M, SZ_4K, 1)).toBe(SZ_4K);
    expect(pt.tablePages).toBe(4);
    expect(pt.mapPages(5 * SZ_1G, 8 * SZ_1G, SZ_1G, 1, RW, out)).toBe(0);
    expect(c.pgtablePagesFreed).toBe(3);
    expect(pt.tablePages).toBe(2);
    // 8 GiB = 2 * 2^32: low address word 0, high word 2.
    expect(readPte(m, l2, 5)).toEqual([IOPTE_VALID | IOPTE_LEAF | IOPTE_READ | IOPTE_WRITE, 2]);
    expect(pt.iovaToPhys(5 * SZ_1G + 0x1234567)).toBe(8 * SZ_1G + 0x1234567);
    expectTablesAccounted(m, pt, free0);

    // A run of blocks over empty slots and an empty table: every block is written.
    expect(pt.mapPages(7 * SZ_1G + SZ_2M + 2 * SZ_4K, 0x100000, SZ_4K, 1, RW, out)).toBe(0);
    expect(unmapSync(m, pt, 7 * SZ_1G + SZ_2M + 2 * SZ_4K, SZ_4K, 1)).toBe(SZ_4K);
    const freed = c.pgtablePagesFreed;
    expect(pt.mapPages(7 * SZ_1G, 0x8000_0000, SZ_2M, 3, RW, out)).toBe(0);
    expect(out.mapped).toBe(3 * SZ_2M);
    expect(c.pgtablePagesFreed).toBe(freed + 1);
    for (let i = 0; i < 3; i++)
      expect(pt.iovaToPhys(7 * SZ_1G + i * SZ_2M + 8)).toBe(0x8000_0000 + i * SZ_2M + 8);
    expect(pt.leafCount).toBe(4);
    expectTablesAccounted(m, pt, free0);
    destroyAndCheck(m, pt, free0);
  });

  it('a block over a table that still holds a 4K leaf below it is -EEXIST, nothing changed', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    const c = m.counters;
    const x = 5 * SZ_1G + 2 * SZ_2M;
    // Slot 2 holds one 4K leaf (its last entry); slot 3 is an empty leftover table.
    expect(pt.mapPages(x + 511 * SZ_4K, 0x100000, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.mapPages(x + SZ_2M, 0x200000, SZ_4K, 1, RW, out)).toBe(0);
    expect(unmapSync(m, pt, x + SZ_2M, SZ_4K, 1)).toBe(SZ_4K);
    expect(pt.tablePages).toBe(5);
    const l2 = linkAt(m, pt.rootPhys, 0);
    const l1 = linkAt(m, l2, 5);
    const snapshot = () => ({
      tablePages: pt.tablePages,
      leafCount: pt.leafCount,
      allocated: c.pgtablePagesAllocated,
      freed: c.pgtablePagesFreed,
      pteWrites: c.pteWrites,
      pteClears: c.pteClears,
      free: freeCount(m),
      links: [readPte(m, l2, 5), readPte(m, l1, 2), readPte(m, l1, 3)],
    });
    const before = snapshot();

    expect(pt.mapPages(x, 0x4000_0000, SZ_2M, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(0);
    // The level-1 table's subtree holds the leaf (beside the empty slot-3 table): the 1 GiB
    // block is refused, and the empty table is not freed either.
    expect(pt.mapPages(5 * SZ_1G, SZ_1G, SZ_1G, 1, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(0);
    expect(snapshot()).toEqual(before);
    expect(pt.iovaToPhys(x + 511 * SZ_4K + 7)).toBe(0x100007);
    expect(pt.iovaToPhys(x)).toBe(0);

    // In a run, the block before the collision is written and reported; the table is untouched.
    expect(pt.mapPages(x - SZ_2M, 0x4000_0000, SZ_2M, 2, RW, out)).toBe(-Errno.EEXIST);
    expect(out.mapped).toBe(SZ_2M);
    expect(pt.leafCount).toBe(2);
    expect(readPte(m, l1, 2)).toEqual(before.links[1]);
    expect(pt.iovaToPhys(x + 511 * SZ_4K)).toBe(0x100000);

    // Once the leaf is gone, the block fits (and frees the emptied table).
    expect(unmapSync(m, pt, x + 511 * SZ_4K, SZ_4K, 1)).toBe(SZ_4K);
    expect(pt.mapPages(x, 0x4000_0000, SZ_2M, 1, RW, out)).toBe(0);
    expect(pt.iovaToPhys(x + 5)).toBe(0x4000_0005);
    expect(pt.tablePages).toBe(4);
    expectTablesAccounted(m, pt, free0);
    destroyAndCheck(m, pt, free0);
  });
});

describe('arm_lpae_iova_to_phys and the hardware walk', () => {
  it('translates with the offset inside 4K, 2M and 1G leaves; 0 when unmapped or beyond ias', () => {
    const { pt } = setup({ ias: 40 });
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0x7000, SZ_4K, 1, RW, out)).toBe(0);
    expect(pt.mapPages(4 * SZ_2M, SZ_1G, SZ_2M, 1, RW, out)).toBe(0);
    expect(pt.mapPages(4 * SZ_1G, 8 * SZ_1G, SZ_1G, 1, RW, out)).toBe(0);
    expect(pt.iovaToPhys(0xabc)).toBe(0x7abc);
    expect(pt.iovaToPhys(4 * SZ_2M + 0x12345)).toBe(SZ_1G + 0x12345);
    expect(pt.iovaToPhys(4 * SZ_1G + 0x3456789)).toBe(8 * SZ_1G + 0x3456789);
    expect(pt.iovaToPhys(SZ_4K)).toBe(0);
    expect(pt.iovaToPhys(2 ** 40)).toBe(0);
    expect(pt.iovaToPhys(-1)).toBe(0);
  });

  it('lookup reports the leaf, its permissions and dirty state', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    const l: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
    expect(pt.mapPages(0, 0x10000, SZ_4K, 1, IOMMU_READ, out)).toBe(0);
    expect(pt.mapPages(SZ_4K, 0x20000, SZ_4K, 1, IOMMU_WRITE | IOMMU_PRIV | IOMMU_MMIO, out)).toBe(0);
    expect(pt.mapPages(SZ_2M, SZ_2M, SZ_2M, 1, RW | IOMMU_CACHE | IOMMU_NOEXEC, out)).toBe(0);
    expect(pt.lookup(0x10, l)).toBe(true);
    expect(l).toEqual({ leafIova: 0, leafPhys: 0x10000, leafSize: SZ_4K, prot: IOMMU_READ, dirty: false });
    expect(pt.lookup(SZ_4K + 1, l)).toBe(true);
    expect(l.prot).toBe(IOMMU_WRITE | IOMMU_PRIV | IOMMU_MMIO);
    expect(pt.lookup(SZ_2M + 0x1234, l)).toBe(true);
    expect(l).toEqual({
      leafIova: SZ_2M,
      leafPhys: SZ_2M,
      leafSize: SZ_2M,
      prot: RW | IOMMU_CACHE,
      dirty: false,
    });
    expect(pt.lookup(2 * SZ_4K, l)).toBe(false);
  });
});

describe('arm_lpae_read_and_clear_dirty', () => {
  it('records whole dirty leaves in the range, clears unless noClear', () => {
    const { pt } = setup();
    const out = { mapped: 0 };
    const l: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
    expect(pt.mapPages(0, 0x100000, SZ_4K, 8, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_2M, SZ_1G, SZ_2M, 1, RW, out)).toBe(0);
    expect(pt.mapPages(SZ_1G, SZ_1G, SZ_1G, 1, RW, out)).toBe(0);
    expect(pt.mapPages(8 * SZ_4K, 0x200000, SZ_4K, 1, IOMMU_READ, out)).toBe(0);
    pt.setDirty(3 * SZ_4K + 5);
    pt.setDirty(SZ_2M + 0x1000);
    pt.setDirty(SZ_1G + 0x12345678);
    pt.setDirty(8 * SZ_4K); // read-only: no dirty bit
    pt.setDirty(100 * SZ_4K); // unmapped: no-op
    expect(pt.lookup(3 * SZ_4K, l) && l.dirty).toBe(true);
    expect(pt.lookup(8 * SZ_4K, l) && l.dirty).toBe(false);

    const seen: Array<[number, number]> = [];
    const rec = (iova: number, size: number): void => {
      seen.push([iova, size]);
    };
    pt.readAndClearDirty(SZ_4K, 2 * SZ_1G, true, rec);
    expect(seen).toEqual([
      [3 * SZ_4K, SZ_4K],
      [SZ_2M, SZ_2M],
      [SZ_1G, SZ_1G],
    ]);
    seen.length = 0;
    // A range touching only the middle of the 2 MiB leaf still reports the whole leaf.
    pt.readAndClearDirty(SZ_2M + 0x5000, SZ_4K, false, rec);
    expect(seen).toEqual([[SZ_2M, SZ_2M]]);
    seen.length = 0;
    pt.readAndClearDirty(0, 2 * SZ_1G, false, rec);
    expect(seen).toEqual([
      [3 * SZ_4K, SZ_4K],
      [SZ_1G, SZ_1G],
    ]);
    seen.length = 0;
    pt.readAndClearDirty(0, 2 * SZ_1G, false, rec);
    expect(seen).toEqual([]);
    expect(pt.lookup(3 * SZ_4K, l) && l.dirty).toBe(false);
  });

  it('throws for an empty range or one beyond ias (kernel: WARN, -EINVAL)', () => {
    const { pt } = setup({ ias: 32 });
    expect(() => pt.readAndClearDirty(0, 0, false, () => {})).toThrow(IommuError);
    expect(() => pt.readAndClearDirty(2 ** 32 - SZ_4K, 2 * SZ_4K, false, () => {})).toThrow(
      expect.objectContaining({ rule: 'read_and_clear_dirty: beyond ias' }),
    );
  });
});

describe('alloc_io_pgtable_ops / free_io_pgtable_ops and page-table memory', () => {
  it('rejects configurations the format cannot build', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const free0 = freeCount(m);
    for (const cfg of [
      { pgsizeBitmap: 0, ias: 48, oas: 48 },
      { pgsizeBitmap: 0x2000, ias: 48, oas: 48 },
      { pgsizeBitmap: ALL | (1 << 31), ias: 48, oas: 48 },
      { pgsizeBitmap: ALL, ias: 49, oas: 48 },
      { pgsizeBitmap: ALL, ias: 48, oas: 53 },
      { pgsizeBitmap: ALL, ias: 32.5, oas: 48 },
    ]) {
      expect(IoPgtable.create(m, cfg)).toBeUndefined();
    }
    expect(freeCount(m)).toBe(free0);
  });

  it('returns undefined when the root page cannot be allocated', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const free0 = freeCount(m);
    m.faults.failNth('pgtable_page', 1);
    expect(IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })).toBeUndefined();
    m.faults.failNth('page_alloc', 1);
    expect(IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })).toBeUndefined();
    expect(freeCount(m)).toBe(free0);
    expect(m.counters.pgtablePagesAllocated).toBe(0);
  });

  it.each([1, 2, 3, 4, 5])(
    "fault 'pgtable_page' at table page %i → -ENOMEM, out.mapped correct, nothing leaked",
    (nth) => {
      const { m, pt, free0 } = setup();
      const out = { mapped: 0 };
      // 1536 pages from a 2 MiB boundary need level-2, level-1 and three level-0 tables.
      const iova = 3 * SZ_1G;
      m.faults.failNth('pgtable_page', nth);
      const ret = pt.mapPages(iova, 0x4000_0000, SZ_4K, 1536, RW, out);
      expect(ret).toBe(-Errno.ENOMEM);
      const expectedMapped = nth <= 3 ? 0 : (nth - 3) * SZ_2M;
      expect(out.mapped).toBe(expectedMapped);
      expect(pt.leafCount).toBe(expectedMapped / SZ_4K);
      for (let off = 0; off < 1536 * SZ_4K; off += 64 * SZ_4K) {
        expect(pt.iovaToPhys(iova + off)).toBe(off < expectedMapped ? 0x4000_0000 + off : 0);
      }
      // The empty tables the failed walk allocated are freed at once: with nothing mapped, only
      // the root is left.
      if (nth <= 3) expect(pt.tablePages).toBe(1);
      // As iommu_map does on error: unmap what was mapped, sync, free.
      if (out.mapped > 0) expect(unmapSync(m, pt, iova, SZ_4K, out.mapped / SZ_4K)).toBe(out.mapped);
      expect(pt.leafCount).toBe(0);
      // That unmap covers each filled 2 MiB level-0 table whole, so those go through the freelist;
      // the level-1 table (1 GiB span) and level-2 table stay for reuse.
      expect(pt.tablePages).toBe(nth <= 3 ? 1 : 3);
      expectTablesAccounted(m, pt, free0);
      // And the table still works: the remap allocates only the tables that are missing.
      const allocated = m.counters.pgtablePagesAllocated;
      expect(pt.mapPages(iova, 0x4000_0000, SZ_4K, 1536, RW, out)).toBe(0);
      expect(m.counters.pgtablePagesAllocated - allocated).toBe(nth <= 3 ? 5 : 3);
      expect(pt.tablePages).toBe(6);
      // Nothing leaked.
      destroyAndCheck(m, pt, free0);
    },
  );

  it("'page_alloc' failure while growing the tree is -ENOMEM too", () => {
    const { m, pt } = setup();
    const start = freeCount(m);
    const out = { mapped: 0 };
    m.faults.failNth('page_alloc', 2);
    expect(pt.mapPages(0, 0, SZ_4K, 1, RW, out)).toBe(-Errno.ENOMEM);
    expect(out.mapped).toBe(0);
    expect(pt.tablePages).toBe(1);
    expect(freeCount(m)).toBe(start);
  });

  it('destroy frees every table page; the table cannot be used afterwards', () => {
    const { m, pt, free0 } = setup();
    const out = { mapped: 0 };
    mapLikeCore(pt, 0x3fe400000, 0x3fe400000, 0x4c0600000 - 0x3fe400000);
    expect(pt.mapPages(0, 0x100000, SZ_4K, 700, RW, out)).toBe(0);
    expect(pt.tablePages).toBeGreaterThan(4);
    pt.destroy();
    expect(pt.tablePages).toBe(0);
    expect(pt.leafCount).toBe(0);
    expect(freeCount(m)).toBe(free0);
    expect(m.counters.pgtablePagesAllocated).toBe(m.counters.pgtablePagesFreed);
    expect(() => pt.iovaToPhys(0)).toThrow(expect.objectContaining({ rule: 'io-pgtable: use after free' }));
    expect(() => pt.mapPages(0, 0, SZ_4K, 1, RW, out)).toThrow(IommuError);
    expect(() => pt.destroy()).toThrow(IommuError);
  });

  it('freeTablePage refuses a page that is not allocated', () => {
    const { m, pt } = setup();
    const out = { mapped: 0 };
    expect(pt.mapPages(0, 0, SZ_4K, 1, RW, out)).toBe(0);
    const g = iommuIotlbGatherInit();
    // Covering the level-0 table's 2 MiB, so it is unlinked onto the freelist.
    expect(pt.unmapPages(0, SZ_4K, 512, g)).toBe(SZ_4K);
    expect(g.freelist).toHaveLength(1);
    const pa = g.freelist[0]!;
    freeTablePage(m, pa);
    expect(() => freeTablePage(m, pa)).toThrow(
      expect.objectContaining({ rule: 'io-pgtable: free of unallocated table page' }),
    );
  });
});

describe('map_pages/unmap_pages against a reference model (fast-check)', () => {
  interface Leaf {
    start: number;
    size: number;
    phys: number;
  }
  interface Model {
    /** 4 KiB page index (relative to BASE) → the leaf covering it. */
    pages: Map<number, Leaf>;
    leaves: number;
    /** Check the free-entry invariant after every command. */
    checkFree?: boolean;
  }
  interface Real {
    m: Machine;
    pt: IoPgtable;
  }
  // An 8 MiB window straddling a 1 GiB boundary: two level-1 tables, four 2 MiB slots.
  const BASE = SZ_1G - 2 * SZ_2M;
  const WINDOW_PAGES = (4 * SZ_2M) / SZ_4K;
  const PHYS_BASE = 0x10_0000_0000;

  function checkPages(model: Model, pt: IoPgtable, from: number, to: number): void {
    const wrong: string[] = [];
    for (let p = Math.max(0, from); p < Math.min(WINDOW_PAGES, to); p++) {
      const leaf = model.pages.get(p);
      const iova = BASE + p * SZ_4K + 0x10;
      const want = leaf === undefined ? 0 : leaf.phys + (iova - leaf.start);
      const got = pt.iovaToPhys(iova);
      if (got !== want) wrong.push(`page ${p}: got ${got.toString(16)}, want ${want.toString(16)}`);
    }
    expect(wrong).toEqual([]);
  }

  class MapCmd implements fc.Command<Model, Real> {
    readonly pgsize: number;
    readonly first: number;
    readonly count: number;
    readonly physIdx: number;
    readonly physBase: number;
    constructor(pgsize: number, first: number, count: number, physIdx: number, physBase = PHYS_BASE) {
      this.pgsize = pgsize;
      this.first = first;
      this.count = count;
      this.physIdx = physIdx;
      this.physBase = physBase;
    }
    check(): boolean {
      return true;
    }
    run(model: Model, real: Real): void {
      const per = this.pgsize / SZ_4K;
      const iova = BASE + this.first * this.pgsize;
      const paddr = this.physBase + this.physIdx * this.pgsize;
      let expectRet = 0;
      let written = 0;
      for (let k = 0; k < this.count; k++) {
        const p0 = this.first * per + k * per;
        let busy = false;
        for (let p = p0; p < p0 + per; p++) if (model.pages.has(p)) busy = true;
        if (busy) {
          expectRet = -Errno.EEXIST;
          break;
        }
        const leaf = { start: BASE + p0 * SZ_4K, size: this.pgsize, phys: paddr + k * this.pgsize };
        for (let p = p0; p < p0 + per; p++) model.pages.set(p, leaf);
        model.leaves++;
        written++;
      }
      if (this.pgsize === SZ_4K && this.count === 1 && this.physIdx % 2 === 1) {
        // the one-page entry point must agree, and leave the table as mapPages would
        expect(real.pt.mapOne4K(iova, paddr, RW)).toBe(expectRet);
      } else {
        const out = { mapped: -1 };
        expect(real.pt.mapPages(iova, paddr, this.pgsize, this.count, RW, out)).toBe(expectRet);
        expect(out.mapped).toBe(written * this.pgsize);
      }
      expect(real.pt.leafCount).toBe(model.leaves);
      checkPages(model, real.pt, this.first * per - 1, (this.first + this.count) * per + 1);
      if (model.checkFree) expect(staleFreeEntries(real.m, real.pt)).toEqual([]);
    }
    toString(): string {
      return `map(${this.pgsize === SZ_4K ? '4K' : '2M'} #${this.first} ×${this.count})`;
    }
  }

  class UnmapCmd implements fc.Command<Model, Real> {
    readonly pgsize: number;
    readonly first: number;
    readonly count: number;
    constructor(pgsize: number, first: number, count: number) {
      this.pgsize = pgsize;
      this.first = first;
      this.count = count;
    }
    check(): boolean {
      return true;
    }
    run(model: Model, real: Real): void {
      const iova = BASE + this.first * this.pgsize;
      const end = iova + this.count * this.pgsize;
      let pos = iova;
      let expected = 0;
      while (pos < end) {
        const leaf = model.pages.get((pos - BASE) / SZ_4K);
        if (leaf === undefined || leaf.start !== pos) break;
        for (let a = leaf.start; a < leaf.start + leaf.size; a += SZ_4K)
          model.pages.delete((a - BASE) / SZ_4K);
        model.leaves--;
        expected += leaf.size;
        pos += leaf.size;
      }
      if (this.pgsize === SZ_4K && this.count === 1 && this.first % 2 === 1) {
        // the one-page entry point (never frees a table)
        expect(real.pt.unmapOne4K(iova, iommuIotlbGatherInit())).toBe(expected);
      } else {
        expect(unmapSync(real.m, real.pt, iova, this.pgsize, this.count)).toBe(expected);
      }
      expect(real.pt.leafCount).toBe(model.leaves);
      const p0 = (iova - BASE) / SZ_4K;
      checkPages(model, real.pt, p0 - 512, p0 + expected / SZ_4K + 512);
      if (model.checkFree) expect(staleFreeEntries(real.m, real.pt)).toEqual([]);
    }
    toString(): string {
      return `unmap(${this.pgsize === SZ_4K ? '4K' : '2M'} #${this.first} ×${this.count})`;
    }
  }

  const commands = [
    fc
      .record({
        first: fc.nat(WINDOW_PAGES - 1),
        count: fc.integer({ min: 1, max: 600 }),
        phys: fc.nat(1 << 20),
      })
      .map(({ first, count, phys }) => new MapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first), phys)),
    // output runs that cross a 4 GiB boundary (PHYS_BASE + 2^20 pages), where the PTE high word steps
    fc
      .record({
        first: fc.nat(WINDOW_PAGES - 1),
        count: fc.integer({ min: 1, max: 600 }),
        phys: fc.integer({ min: (1 << 20) - 600, max: (1 << 20) - 1 }),
      })
      .map(({ first, count, phys }) => new MapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first), phys)),
    fc
      .record({
        first: fc.nat(3),
        count: fc.integer({ min: 1, max: 4 }),
        phys: fc.integer({ min: 2045, max: 2047 }),
      })
      .map(({ first, count, phys }) => new MapCmd(SZ_2M, first, Math.min(count, 4 - first), phys)),
    fc
      .record({ first: fc.nat(3), count: fc.integer({ min: 1, max: 2 }), phys: fc.nat(1 << 10) })
      .map(({ first, count, phys }) => new MapCmd(SZ_2M, first, Math.min(count, 4 - first), phys)),
    fc
      .record({ first: fc.nat(WINDOW_PAGES - 1), count: fc.integer({ min: 1, max: 600 }) })
      .map(({ first, count }) => new UnmapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first))),
    fc
      .record({ first: fc.nat(3), count: fc.integer({ min: 1, max: 2 }) })
      .map(({ first, count }) => new UnmapCmd(SZ_2M, first, Math.min(count, 4 - first))),
  ];

  it('agrees with the model; after unmapping everything, 2M blocks fit anywhere and destroy returns every page', () => {
    fc.assert(
      fc.property(fc.commands(commands, { maxCommands: 40 }), (cmds) => {
        const m = new Machine({ memSize: 16 << 20 });
        const free0 = freeCount(m);
        const pt = IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })!;
        const model: Model = { pages: new Map(), leaves: 0 };
        fc.modelRun(() => ({ model, real: { m, pt } }), cmds);
        checkPages(model, pt, 0, WINDOW_PAGES);
        expectTablesAccounted(m, pt, free0);
        for (const leaf of new Set(model.pages.values())) {
          expect(unmapSync(m, pt, leaf.start, leaf.size, 1)).toBe(leaf.size);
        }
        expect(pt.leafCount).toBe(0);
        checkPages({ pages: new Map(), leaves: 0 }, pt, 0, WINDOW_PAGES);
        expectTablesAccounted(m, pt, free0);
        // Whatever tables were left behind hold no leaf, so 2 MiB blocks map over the whole
        // window, freeing any leftover level-0 table: root, level 2 and the two level-1 tables remain.
        const out = { mapped: 0 };
        expect(pt.mapPages(BASE, PHYS_BASE, SZ_2M, 4, RW, out)).toBe(0);
        expect(out.mapped).toBe(4 * SZ_2M);
        expect(pt.leafCount).toBe(4);
        expect(pt.tablePages).toBe(4);
        expectTablesAccounted(m, pt, free0);
        expect(unmapSync(m, pt, BASE, SZ_2M, 4)).toBe(4 * SZ_2M);
        expect(pt.leafCount).toBe(0);
        destroyAndCheck(m, pt, free0);
      }),
      { numRuns: 100 },
    );
  });

  // Outputs below 4 GiB (high word 0, written with one store) mixed with outputs above (high word
  // set), so an entry freed by any path and reused below 4 GiB would show a stale high word.
  const lowCommands = [
    fc
      .record({
        first: fc.nat(WINDOW_PAGES - 1),
        count: fc.integer({ min: 1, max: 600 }),
        phys: fc.nat(1 << 16),
      })
      .map(
        ({ first, count, phys }) => new MapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first), phys, 0),
      ),
    fc
      .record({
        first: fc.nat(WINDOW_PAGES - 1),
        count: fc.integer({ min: 1, max: 8 }),
        phys: fc.nat(1 << 16),
      })
      .map(
        ({ first, count, phys }) => new MapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first), phys, 0),
      ),
    fc
      .record({ first: fc.nat(3), count: fc.integer({ min: 1, max: 2 }), phys: fc.nat(1 << 10) })
      .map(({ first, count, phys }) => new MapCmd(SZ_2M, first, Math.min(count, 4 - first), phys, 0)),
    fc
      .record({ first: fc.nat(WINDOW_PAGES - 1), count: fc.integer({ min: 1, max: 4 }) })
      .map(({ first, count }) => new UnmapCmd(SZ_4K, first, Math.min(count, WINDOW_PAGES - first))),
  ];

  it('free entries have both words zero after any map/unmap sequence (the one-store leaf write relies on it)', () => {
    fc.assert(
      fc.property(fc.commands([...commands, ...lowCommands], { maxCommands: 40 }), (cmds) => {
        const m = new Machine({ memSize: 16 << 20 });
        const pt = IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })!;
        const model: Model = { pages: new Map(), leaves: 0, checkFree: true };
        fc.modelRun(() => ({ model, real: { m, pt } }), cmds);
        checkPages(model, pt, 0, WINDOW_PAGES);
        for (const leaf of new Set(model.pages.values())) {
          expect(unmapSync(m, pt, leaf.start, leaf.size, 1)).toBe(leaf.size);
        }
        expect(staleFreeEntries(m, pt)).toEqual([]);
        // a 2 MiB block over each slot replaces whatever empty tables are left
        const out = { mapped: 0 };
        expect(pt.mapPages(BASE, 0, SZ_2M, 4, RW, out)).toBe(0);
        expect(staleFreeEntries(m, pt)).toEqual([]);
        expect(unmapSync(m, pt, BASE, SZ_2M, 4)).toBe(4 * SZ_2M);
        expect(staleFreeEntries(m, pt)).toEqual([]);
        pt.destroy();
      }),
      { numRuns: 100 },
    );
  });

  it('free entries have both words zero after a failed map is pruned, and a leaf below 4 GiB reuses them', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const pt = IoPgtable.create(m, { pgsizeBitmap: ALL, ias: 48, oas: 48 })!;
    const out = { mapped: 0 };
    // a leaf above 4 GiB; then a walk that allocates one table and fails on the next is pruned
    expect(pt.mapPages(BASE, PHYS_BASE, SZ_4K, 1, RW, out)).toBe(0);
    m.faults.failNth('pgtable_page', 2);
    expect(pt.mapPages(BASE + 8 * SZ_1G, PHYS_BASE, SZ_4K, 1, RW, out)).toBe(-Errno.ENOMEM);
    expect(staleFreeEntries(m, pt)).toEqual([]);
    expect(pt.tablePages).toBe(4);
    // the leaf above 4 GiB is cleared; its table stays, and a run below 4 GiB (one store a leaf)
    // reuses the entry
    expect(unmapSync(m, pt, BASE, SZ_4K, 1)).toBe(SZ_4K);
    expect(staleFreeEntries(m, pt)).toEqual([]);
    expect(pt.mapPages(BASE, 0x5000, SZ_4K, 512, RW, out)).toBe(0);
    expect(pt.iovaToPhys(BASE + 511 * SZ_4K + 3)).toBe(0x5000 + 511 * SZ_4K + 3);
    expect(pt.iovaToPhys(BASE + 3)).toBe(0x5000 + 3);
    pt.destroy();
  });
});
