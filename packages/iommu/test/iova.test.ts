// The rbtree IOVA allocator (drivers/iommu/iova.c, v6.17): placement, alignment, limits,
// reservations, the 32-bit fast-fail hint, misuse, fault injection, and a model-based property
// test against a plain interval list. The rcache fast path is in iova-rcache.test.ts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IommuError } from '../src/errors.js';
import {
  type Iova,
  IovaDomain,
  iovaAlign,
  iovaDmaAddr,
  iovaMask,
  iovaOffset,
  iovaPfn,
  iovaShift,
  iovaSize,
} from '../src/iova.js';
import {
  IOVA_DEPOT_DELAY_MS,
  IOVA_MAG_SIZE,
  IOVA_RANGE_CACHE_MAX_SIZE,
  iovaRcacheRange,
} from '../src/iova-rcache.js';
import { Machine } from '../src/machine.js';
import { RbNode, RbRoot, rbNext, rbPrev } from '../src/rbtree.js';
import { expectRejected } from './iova-helpers.js';

/** Last pfn below 4 GiB with 4 KiB granules. */
const LIMIT_4G = 0xfffff;

function domain(granule = 4096, startPfn = 1, cpus = 2): { m: Machine; d: IovaDomain } {
  const m = new Machine({ cpus });
  return { m, d: new IovaDomain(m, granule, startPfn) };
}

function alloc(d: IovaDomain, size: number, limit: number, aligned = true): Iova {
  const iova = d.allocIova(size, limit, aligned);
  if (iova === undefined) throw new Error(`allocIova(${size}, ${limit}) failed`);
  return iova;
}

function iovaLive(m: Machine): number {
  return m.counters.meta.get('iova')?.liveBytes ?? 0;
}

describe('lib/rbtree.c: rb_insert_color / rb_erase / rb_next / rb_prev', () => {
  it('stays balanced and ordered under random inserts and erases', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 200 })), { maxLength: 400 }),
        (ops) => {
          const tree = new RbRoot<RbNode>();
          const byKey = new Map<number, RbNode>();
          for (const [ins, key] of ops) {
            if (ins) {
              const node = new RbNode(key * 2, key * 2 + 1);
              expect(tree.insert(node)).toBe(!byKey.has(key));
              if (!byKey.has(key)) byKey.set(key, node);
            } else {
              const node = byKey.get(key);
              if (node !== undefined) {
                tree.erase(node);
                byKey.delete(key);
              }
            }
            tree.check();
          }
          const keys = [...byKey.keys()].sort((a, b) => a - b);
          const walked: number[] = [];
          for (let n = tree.first(); n !== null; n = rbNext(n)) walked.push(n.pfnLo / 2);
          expect(walked).toEqual(keys);
          const back: number[] = [];
          for (let n = tree.last(); n !== null; n = rbPrev(n)) back.push(n.pfnLo / 2);
          expect(back).toEqual([...keys].reverse());
          for (const k of keys) {
            expect(tree.findContaining(k * 2 + 1)).toBe(byKey.get(k));
            expect(tree.firstEndingAtOrAbove(k * 2)).toBe(byKey.get(k));
          }
        },
      ),
    );
  });

  it('keeps its height logarithmic for 1 M sequential inserts (the allocator pattern)', () => {
    const tree = new RbRoot<RbNode>();
    let succ = new RbNode(2 ** 40, 2 ** 40);
    tree.insert(succ);
    // insert downwards, each new node right before the previous one, as alloc_iova does
    for (let i = 1; i <= 1_000_000; i++) {
      const n = new RbNode(2 ** 40 - i, 2 ** 40 - i);
      tree.insertBefore(n, succ);
      succ = n;
    }
    const depth = (n: RbNode | null): number =>
      n === null ? 0 : 1 + Math.max(depth(n.rbLeft), depth(n.rbRight));
    expect(tree.size).toBe(1_000_001);
    expect(depth(tree.root)).toBeLessThanOrEqual(2 * Math.log2(1_000_002));
  });
});

describe('init_iova_domain', () => {
  it('rejects a granule that is not a power of two <= PAGE_SIZE', () => {
    const m = new Machine();
    for (const g of [0, 3, 1.5, 8192, -4096, Number.NaN]) {
      expect(() => new IovaDomain(m, g, 1)).toThrow(IommuError);
      try {
        new IovaDomain(m, g, 1);
      } catch (e) {
        expect((e as IommuError).rule).toBe('init_iova_domain: granule');
      }
    }
    for (const g of [1, 2, 512, 4096]) expect(new IovaDomain(m, g, 1).granule).toBe(g);
  });

  it('sets dma_32bit_pfn, max32_alloc_size and the anchor', () => {
    const { d } = domain(4096, 1);
    expect(d.shift).toBe(12);
    expect(d.startPfn).toBe(1);
    expect(d.dma32BitPfn).toBe(0x100000);
    expect(d.max32AllocSize).toBe(d.dma32BitPfn);
    expect(d.cachedNode).toBe(d.anchor);
    expect(d.cached32Node).toBe(d.anchor);
    expect(d.anchor.pfnLo).toBeGreaterThan(d.maxPfn);
    expect(d.nodeCount).toBe(0);
    expect(new IovaDomain(new Machine(), 512, 1).dma32BitPfn).toBe(2 ** 23);
    d.check();
  });

  it('allocates the per-CPU magazines (iova_domain_init_rcaches): 6 orders x 2 per CPU', () => {
    const { m, d } = domain(4096, 1, 3);
    expect(d.magazineCount).toBe(IOVA_RANGE_CACHE_MAX_SIZE * 3 * 2);
    expect(m.counters.meta.get('iova_magazine')?.liveBytes).toBe(36 * 1024);
  });
});

describe('include/linux/iova.h helpers', () => {
  it('computes shift, mask, offset, align and pfn without 32-bit truncation', () => {
    const { d } = domain(4096, 1);
    const addr = 0x1_2345_6789; // above 2^32
    expect(iovaShift(d)).toBe(12);
    expect(iovaMask(d)).toBe(0xfff);
    expect(iovaOffset(d, addr)).toBe(0x789);
    expect(iovaPfn(d, addr)).toBe(0x12345_6);
    expect(iovaAlign(d, addr)).toBe(0x1_2345_7000);
    expect(iovaAlign(d, 0x2000)).toBe(0x2000);
    expect(iovaPfn(d, 2 ** 52 - 1)).toBe(2 ** 40 - 1);
    const iova = alloc(d, 4, LIMIT_4G);
    expect(iovaDmaAddr(d, iova)).toBe(0xffffc000);
    expect(iovaSize(iova)).toBe(4);
    expect(iovaRcacheRange()).toBe(128 * 1024);
  });

  it('exports the kernel constants', () => {
    expect(IOVA_MAG_SIZE).toBe(127);
    expect(IOVA_RANGE_CACHE_MAX_SIZE).toBe(6);
    expect(IOVA_DEPOT_DELAY_MS).toBe(100);
  });
});

describe('alloc_iova', () => {
  it('places allocations top-down below the limit: 0xFFFFC, then 0xFFFF8', () => {
    const { m, d } = domain();
    const a = alloc(d, 4, LIMIT_4G);
    const b = alloc(d, 4, LIMIT_4G);
    expect([a.pfnLo, a.pfnHi]).toEqual([0xffffc, 0xfffff]);
    expect([b.pfnLo, b.pfnHi]).toEqual([0xffff8, 0xffffb]);
    expect(d.cached32Node).toBe(b);
    expect(m.counters.iovaTreeAllocs).toBe(2);
    expect(iovaLive(m)).toBe(80);
    d.check();
  });

  it('aligns the start to roundup_pow_of_two(size) only when asked', () => {
    const { d } = domain();
    expect(alloc(d, 3, LIMIT_4G, false).pfnLo).toBe(0xffffd);
    const c = alloc(d, 3, LIMIT_4G, true); // below 0xffffd, aligned to 4
    expect(c.pfnLo).toBe(0xffff8);
    expect(c.pfnHi).toBe(0xffffa);
    const e = alloc(d, 5, LIMIT_4G, true); // aligned to 8
    expect(e.pfnLo % 8).toBe(0);
    expect(e.pfnLo).toBe(0xffff0);
    const big = alloc(d, 0x300, LIMIT_4G, true); // aligned to 0x400
    expect(big.pfnLo % 0x400).toBe(0);
    d.check();
  });

  it('respects the limit and start_pfn', () => {
    const { d } = domain(4096, 0x100);
    const hi = alloc(d, 1, 0x1000, false);
    expect(hi.pfnLo).toBe(0x1000);
    const a = alloc(d, 4, 0x103);
    expect(a.pfnLo).toBe(0x100);
    expect(d.allocIova(1, 0x103, false)).toBeUndefined();
    expect(d.allocIova(1, 0xff, false)).toBeUndefined(); // limit below start_pfn
    d.check();
  });

  it('serves limits above 4 GiB from cached_node, from the top of the limit', () => {
    const { d } = domain();
    const limit = 2 ** 40 - 1;
    const a = alloc(d, 16, limit);
    expect(a.pfnHi).toBe(limit);
    expect(d.cachedNode).toBe(a);
    expect(d.cached32Node).toBe(d.anchor);
    const b = alloc(d, 16, LIMIT_4G);
    expect(b.pfnHi).toBe(LIMIT_4G);
    expect(d.cached32Node).toBe(b);
    d.check();
  });

  it('clamps a limit beyond the 52-bit space and rejects nonsense sizes and limits', () => {
    const { m, d } = domain();
    expect(alloc(d, 1, Number.MAX_SAFE_INTEGER, false).pfnLo).toBe(d.maxPfn);
    expectRejected(m, d, 'alloc_iova: size', () => d.allocIova(0, LIMIT_4G, false));
    expectRejected(m, d, 'alloc_iova: size', () => d.allocIova(1.5, LIMIT_4G, false));
    expectRejected(m, d, 'alloc_iova: limit_pfn', () => d.allocIova(1, -1, false));
  });

  it('fills a window exactly, then fails and records max32_alloc_size', () => {
    const { m, d } = domain(4096, 0);
    const got: number[] = [];
    for (let i = 0; i < 4; i++) got.push(alloc(d, 4, 15).pfnLo);
    expect(got).toEqual([12, 8, 4, 0]);
    expect(d.allocIova(4, 15, true)).toBeUndefined();
    expect(d.max32AllocSize).toBe(4);
    expect(m.counters.iovaAllocFailures).toBe(1);
    d.check();
  });

  it('retries once from the limit when the space below the cached node is full', () => {
    const { d } = domain(4096, 0);
    for (let i = 0; i < 4; i++) alloc(d, 4, 15);
    expect(d.cached32Node.pfnLo).toBe(0);
    // a higher limit: nothing fits below cached32_node, the retry searches [cached.hi + 1, limit)
    const r = alloc(d, 4, 31);
    expect(r.pfnLo).toBe(28);
    d.check();
  });

  it('fast-fails 32-bit requests at or above max32_alloc_size until a free below 4 GiB', () => {
    const { d } = domain(4096, 0);
    const ranges = [0, 1, 2, 3].map(() => alloc(d, 4, 15));
    expect(d.allocIova(4, 15, true)).toBeUndefined();
    expect(d.max32AllocSize).toBe(4);
    // [16, 31] is free, but the hint says size-4 32-bit requests fail: the kernel does not look
    expect(d.allocIova(4, 31, true)).toBeUndefined();
    expect(d.allocIova(8, 1000, true)).toBeUndefined();
    // smaller requests still search
    expect(alloc(d, 2, 31).pfnLo).toBe(30);
    // a 64-bit limit is not subject to the hint
    expect(alloc(d, 4, 2 ** 32).pfnHi).toBe(2 ** 32 - 1);
    // a free below 4 GiB resets the hint
    d.freeIova((ranges[0] as Iova).pfnLo);
    expect(d.max32AllocSize).toBe(d.dma32BitPfn);
    expect(alloc(d, 4, 31).pfnLo).toBe(24);
    d.check();
  });

  it('records max32_alloc_size on any failed search, even above 4 GiB (kernel quirk)', () => {
    const { d } = domain(4096, 2 ** 40 - 16);
    alloc(d, 16, 2 ** 40 - 1);
    expect(d.allocIova(2, 2 ** 40 - 1, false)).toBeUndefined();
    expect(d.max32AllocSize).toBe(2);
  });

  it('reuses the top after freeing it (cached node moves up on free)', () => {
    const { d } = domain();
    const a = alloc(d, 4, LIMIT_4G);
    alloc(d, 4, LIMIT_4G);
    const c = alloc(d, 4, LIMIT_4G);
    expect(d.cached32Node).toBe(c);
    d.freeIova(a.pfnLo);
    expect(d.cached32Node).toBe(d.anchor);
    expect(alloc(d, 4, LIMIT_4G).pfnLo).toBe(0xffffc);
    d.check();
  });

  it('refills a hole freed above the cached node (cached node moves to the next node up)', () => {
    const { d } = domain();
    const r = [0, 1, 2, 3].map(() => alloc(d, 4, LIMIT_4G));
    expect(d.cached32Node).toBe(r[3]);
    d.freeIova((r[1] as Iova).pfnLo);
    expect(d.cached32Node).toBe(r[0]);
    expect(alloc(d, 4, LIMIT_4G).pfnLo).toBe((r[1] as Iova).pfnLo);
    d.check();
  });

  it('is first fit downwards from the cached node, not best fit: a hole above it stays unused', () => {
    const { d } = domain();
    const r = [0, 1, 2, 3].map(() => alloc(d, 4, LIMIT_4G));
    d.freeIova((r[1] as Iova).pfnLo); // 4-page hole at 0xffff8
    const big = alloc(d, 8, LIMIT_4G); // does not fit the hole: goes below r[3]
    expect(big.pfnHi).toBeLessThan((r[3] as Iova).pfnLo);
    expect(d.cached32Node).toBe(big);
    // the next 4-page request searches down from the cached node and never sees the hole
    expect(alloc(d, 4, LIMIT_4G).pfnHi).toBeLessThan(big.pfnLo);
    d.check();
  });
});

describe('free_iova', () => {
  it('frees the range containing the pfn, even from its middle', () => {
    const { m, d } = domain();
    const a = alloc(d, 8, LIMIT_4G);
    d.freeIova(a.pfnLo + 5);
    expect(d.findIova(a.pfnLo)).toBeUndefined();
    expect(d.nodeCount).toBe(0);
    expect(m.counters.iovaTreeFrees).toBe(1);
    expect(iovaLive(m)).toBe(0);
    d.check();
  });

  it('throws on a double free and on an unknown pfn, changing nothing', () => {
    const { m, d } = domain();
    const a = alloc(d, 4, LIMIT_4G);
    alloc(d, 4, LIMIT_4G);
    d.freeIova(a.pfnLo);
    expectRejected(m, d, 'free_iova: not allocated', () => d.freeIova(a.pfnLo));
    expectRejected(m, d, 'free_iova: not allocated', () => d.freeIova(0x1234));
    expectRejected(m, d, 'free_iova: not allocated', () => d.freeIova(Number.NaN));
    expectRejected(m, d, 'free_iova: not allocated', () => d.freeIova(d.anchor.pfnLo));
  });

  it('refuses to free a reserved range', () => {
    const { m, d } = domain();
    d.reserveIova(0xfee00, 0xfeeff);
    expectRejected(m, d, 'free_iova: not allocated', () => d.freeIova(0xfee10));
  });
});

describe('find_iova', () => {
  it('finds the allocated or reserved range containing a pfn', () => {
    const { d } = domain();
    const a = alloc(d, 4, LIMIT_4G);
    const r = d.reserveIova(0x100, 0x1ff) as Iova;
    expect(d.findIova(a.pfnLo)).toBe(a);
    expect(d.findIova(a.pfnHi)).toBe(a);
    expect(d.findIova(a.pfnLo - 1)).toBeUndefined();
    expect(d.findIova(0x180)).toBe(r);
    expect(d.findIova(d.anchor.pfnLo)).toBeUndefined();
    expect(d.findIova(Number.NaN)).toBeUndefined();
  });
});

describe('reserve_iova', () => {
  it('blocks allocation of the reserved window', () => {
    const { d } = domain();
    d.reserveIova(0xfee00, 0xfffff);
    const a = alloc(d, 4, LIMIT_4G);
    expect(a.pfnHi).toBe(0xfedff);
    // a limit inside the reservation also lands below it
    expect(alloc(d, 4, 0xfef00).pfnHi).toBe(0xfedfb);
    d.check();
  });

  it('merges overlapping reservations into one range', () => {
    const { m, d } = domain();
    const a = d.reserveIova(10, 20) as Iova;
    const b = d.reserveIova(15, 30) as Iova;
    expect(b).toBe(a);
    expect([b.pfnLo, b.pfnHi]).toEqual([10, 30]);
    expect(d.reserveIova(12, 14)).toBe(a);
    d.reserveIova(40, 50);
    const c = d.reserveIova(5, 45) as Iova;
    expect([c.pfnLo, c.pfnHi]).toEqual([5, 50]);
    expect(d.ranges()).toEqual([{ pfnLo: 5, pfnHi: 50, state: 'reserved' }]);
    expect(iovaLive(m)).toBe(40);
    // adjacent ranges are not merged (neither does the kernel)
    d.reserveIova(51, 60);
    expect(d.nodeCount).toBe(2);
    d.check();
  });

  it('rejects reserving over a live allocation and nonsensical ranges', () => {
    const { m, d } = domain();
    const a = alloc(d, 4, LIMIT_4G);
    expectRejected(m, d, 'reserve_iova: overlaps allocation', () => d.reserveIova(a.pfnLo - 10, a.pfnLo));
    expectRejected(m, d, 'reserve_iova: bad range', () => d.reserveIova(20, 10));
    expectRejected(m, d, 'reserve_iova: bad range', () => d.reserveIova(0, d.maxPfn + 1));
  });

  it('returns undefined when the node allocation fails (fault point iova_alloc)', () => {
    const { m, d } = domain();
    m.faults.failNth('iova_alloc', 1);
    expect(d.reserveIova(100, 200)).toBeUndefined();
    expect(d.nodeCount).toBe(0);
    expect(iovaLive(m)).toBe(0);
  });
});

describe('put_iova_domain', () => {
  it('frees every range and magazine, cancels the depot timers, and refuses later use', () => {
    const { m, d } = domain();
    d.reserveIova(0x10, 0x20);
    for (let i = 0; i < 3 * IOVA_MAG_SIZE; i++) alloc(d, 1, LIMIT_4G, false);
    const pfns = d.ranges().filter((r) => r.state === 'allocated');
    for (const r of pfns) d.freeIovaFast(r.pfnLo, 1); // fills magazines and the depot
    expect(m.clock.pending).toBe(1);
    d.putIovaDomain();
    expect(iovaLive(m)).toBe(0);
    expect(m.counters.meta.get('iova_magazine')?.liveBytes).toBe(0);
    expect(m.clock.pending).toBe(0);
    expect(d.nodeCount).toBe(0);
    d.check();
    expect(() => d.allocIova(1, LIMIT_4G, false)).toThrow(/after put_iova_domain/);
    expect(() => d.allocIovaFast(1, LIMIT_4G, false)).toThrow(IommuError);
    expect(() => d.freeIovaFast(1, 1)).toThrow(IommuError);
  });
});

describe('alloc_iova: fault injection', () => {
  it('fails exactly the Nth allocation, changes nothing, and leaks nothing', () => {
    for (let nth = 1; nth <= 6; nth++) {
      const { m, d } = domain();
      m.faults.failNth('iova_alloc', nth);
      const got: Array<Iova | undefined> = [];
      for (let i = 0; i < 6; i++) {
        const before = d.ranges();
        const r = d.allocIova(2, LIMIT_4G, true);
        if (r === undefined) expect(d.ranges()).toEqual(before);
        got.push(r);
      }
      expect(got.map((r) => r === undefined)).toEqual([1, 2, 3, 4, 5, 6].map((i) => i === nth));
      expect(m.counters.iovaAllocFailures).toBe(1);
      expect(m.counters.iovaTreeAllocs).toBe(5);
      expect(iovaLive(m)).toBe(5 * 40);
      // the failure did not record max32_alloc_size: it was a memory failure, not a full space
      expect(d.max32AllocSize).toBe(d.dma32BitPfn);
      // the ranges stay contiguous from the top: nothing was consumed by the failed call
      expect(d.ranges().map((r) => r.pfnLo)).toEqual([0xffff6, 0xffff8, 0xffffa, 0xffffc, 0xffffe]);
      for (const r of got) if (r !== undefined) d.freeIova(r.pfnLo);
      expect(iovaLive(m)).toBe(0);
      d.check();
    }
  });
});

// ------------------------------------------------------------------------------------------------
// Model-based property test: random alloc/free sequences against a plain list of live ranges.

interface Live {
  lo: number;
  hi: number;
}

/** Does an (optionally aligned) range of `size` fit in [start, limit] around `occupied`? */
function fitsSomewhere(occupied: Live[], start: number, limit: number, size: number, align: number): boolean {
  const sorted = [...occupied].sort((a, b) => a.lo - b.lo);
  let high = limit + 1; // exclusive top of the current gap
  for (let i = sorted.length; i >= 0; i--) {
    const below = i > 0 ? (sorted[i - 1] as Live) : undefined;
    const top = Math.min(high, i < sorted.length ? (sorted[i] as Live).lo : high);
    const bottom = Math.max(start, below === undefined ? start : below.hi + 1);
    const cand = Math.floor((top - size) / align) * align;
    if (cand >= bottom && cand + size <= top) return true;
    if (below !== undefined) high = Math.min(high, below.lo);
  }
  return false;
}

function overlaps(a: Live, b: Live): boolean {
  return a.lo <= b.hi && b.lo <= a.hi;
}

describe('alloc_iova / free_iova: property', () => {
  const layouts = [
    { name: 'below 4 GiB', start: 1, space: 256 },
    { name: 'across the 4 GiB boundary', start: 0x100000 - 128, space: 256 },
  ];
  for (const layout of layouts) {
    it(`never overlaps, respects limit/start/alignment, fails only when full (${layout.name})`, () => {
      const op = fc.oneof(
        fc.record({
          kind: fc.constant('alloc' as const),
          size: fc.integer({ min: 1, max: 40 }),
          limitDown: fc.integer({ min: 0, max: 200 }),
          aligned: fc.boolean(),
        }),
        fc.record({ kind: fc.constant('free' as const), pick: fc.nat(), mid: fc.nat() }),
      );
      fc.assert(
        fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
          const { m, d } = domain(4096, layout.start);
          const top = layout.start + layout.space - 1;
          const live: Live[] = [];
          for (const o of ops) {
            if (o.kind === 'alloc') {
              const limit = top - o.limitDown;
              const before32 = d.max32AllocSize;
              const r = d.allocIova(o.size, limit, o.aligned);
              const align = o.aligned ? 2 ** Math.ceil(Math.log2(o.size)) : 1;
              if (r === undefined) {
                const hinted = limit + 1 <= d.dma32BitPfn && o.size >= before32;
                if (!hinted) expect(fitsSomewhere(live, layout.start, limit, o.size, align)).toBe(false);
              } else {
                const got = { lo: r.pfnLo, hi: r.pfnHi };
                expect(got.hi - got.lo + 1).toBe(o.size);
                expect(got.lo).toBeGreaterThanOrEqual(layout.start);
                expect(got.hi).toBeLessThanOrEqual(limit);
                expect(got.lo % align).toBe(0);
                for (const l of live) expect(overlaps(l, got)).toBe(false);
                live.push(got);
              }
            } else if (live.length > 0) {
              const [victim] = live.splice(o.pick % live.length, 1) as [Live];
              d.freeIova(victim.lo + (o.mid % (victim.hi - victim.lo + 1)));
            }
            const inTree = d
              .ranges()
              .map((r) => ({ lo: r.pfnLo, hi: r.pfnHi }))
              .sort((a, b) => a.lo - b.lo);
            expect(inTree).toEqual([...live].sort((a, b) => a.lo - b.lo));
            d.check();
          }
          expect(iovaLive(m)).toBe(live.length * 40);
          // free everything: the whole window can be allocated again, in one piece
          for (const l of live) d.freeIova(l.lo);
          if (live.length === 0 && d.max32AllocSize <= layout.space && top < d.dma32BitPfn) {
            // the kernel's hint outlives an empty tree until some free below 4 GiB resets it
            d.freeIova(alloc(d, 1, top, false).pfnLo);
          }
          const whole = alloc(d, layout.space, top, false);
          expect([whole.pfnLo, whole.pfnHi]).toEqual([layout.start, top]);
          d.freeIova(whole.pfnLo);
          expect(iovaLive(m)).toBe(0);
          d.check();
        }),
        { numRuns: 150 },
      );
    });
  }
});
