import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VirtualClock } from '../src/clock.js';
import { Counters } from '../src/counters.js';
import { isIovalinkError, MachineError } from '../src/errors.js';
import { FaultInjector } from '../src/fault-inject.js';
import { Machine } from '../src/machine.js';
import {
  allocScatteredPageList,
  MAX_PAGE_ORDER,
  PageAllocator,
  RESERVED_LOW_PAGES,
} from '../src/page-alloc.js';
import { PAGE_SIZE, PhysMem } from '../src/phys-mem.js';
import { Prng } from '../src/prng.js';

describe('PhysMem', () => {
  it('reads zeros from frames never written and backs only what is touched', () => {
    const m = new Machine({ memSize: 64 * 2 ** 30 });
    expect(m.phys.size).toBe(64 * 2 ** 30);
    expect(m.phys.read(40 * 2 ** 30, 16)).toEqual(new Uint8Array(16));
    expect(m.phys.backedFrames).toBe(0);
    m.phys.write(63 * 2 ** 30 + 4090, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    expect(m.phys.backedFrames).toBe(2);
    expect(Array.from(m.phys.read(63 * 2 ** 30 + 4092, 4))).toEqual([3, 4, 5, 6]);
  });

  it('rejects access outside RAM with an error naming the address', () => {
    const m = new Machine({ memSize: 1 << 20 });
    expect(() => m.phys.read((1 << 20) - 2, 4)).toThrow(/0xffffe.*outside RAM/);
    try {
      m.phys.write(1 << 20, new Uint8Array(1));
    } catch (e) {
      expect(e).toBeInstanceOf(MachineError);
      expect(isIovalinkError(e)).toBe(true);
      expect((e as MachineError).rule).toBe('phys-mem: outside RAM');
    }
  });

  it('copies and fills across frame boundaries', () => {
    const m = new Machine({ memSize: 1 << 22 });
    m.phys.fill(PAGE_SIZE - 3, 6, 0xab);
    m.phys.copy(3 * PAGE_SIZE - 1, PAGE_SIZE - 3, 6);
    expect(Array.from(m.phys.read(3 * PAGE_SIZE - 2, 8))).toEqual([0, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0]);
  });
});

describe('PhysMem blocks and spans', () => {
  it('lays physically contiguous frames out as contiguous bytes, up to a 64 KiB block', () => {
    const m = new Machine({ memSize: 1 << 22 });
    const s = m.phys.span(3 * PAGE_SIZE + 100, 3 * PAGE_SIZE);
    expect(s.length).toBe(3 * PAGE_SIZE);
    s.fill(0x5a);
    expect(m.phys.backedFrames).toBe(4); // the span touches frames 3..6
    expect(Array.from(m.phys.read(3 * PAGE_SIZE + 98, 4))).toEqual([0, 0, 0x5a, 0x5a]);
    expect(m.phys.read(6 * PAGE_SIZE + 99, 2)).toEqual(new Uint8Array([0x5a, 0]));
    // a span ends where the block ends
    expect(m.phys.span(65_536 - PAGE_SIZE, 4 * PAGE_SIZE).length).toBe(PAGE_SIZE);
    expect(m.phys.span(65_536, 0).length).toBe(0);
    expect(() => m.phys.span((1 << 22) - 8, 16)).toThrow(/outside RAM/);
  });

  it('copies runs in and out at offsets across blocks, reading holes as zeros', () => {
    const m = new Machine({ memSize: 1 << 22 });
    const src = Uint8Array.from({ length: 200_000 }, (_, i) => (i * 7 + 1) & 0xff);
    m.phys.copyIn(60_000, src, 1000, 150_000);
    const out = new Uint8Array(160_000).fill(0xee);
    m.phys.copyOut(55_000, out, 10, 160_000 - 10);
    expect(Array.from(out.subarray(0, 10))).toEqual(new Array(10).fill(0xee));
    expect(out.subarray(10, 5010)).toEqual(new Uint8Array(5000));
    expect(out.subarray(5010, 155_010)).toEqual(src.subarray(1000, 151_000));
    expect(out.subarray(155_010)).toEqual(new Uint8Array(160_000 - 155_010));
  });

  it('discards frames one by one: each reads as zeros, the rest of its block keeps its data', () => {
    const m = new Machine({ memSize: 1 << 22 });
    m.phys.fill(0, 2 * PAGE_SIZE, 0x11);
    const f0 = m.phys.frame(0);
    expect(m.phys.backedFrames).toBe(2);
    m.phys.discardFrame(0);
    expect(m.phys.backedFrames).toBe(1);
    expect(m.phys.peekFrame(0)).toBeUndefined();
    expect(f0[5]).toBe(0); // the frame is RAM: an old view sees the scrub
    expect(m.phys.read(PAGE_SIZE, 2)).toEqual(new Uint8Array([0x11, 0x11]));
    m.phys.discardFrame(0); // twice is harmless
    m.phys.discardFrame(1);
    expect(m.phys.backedFrames).toBe(0);
    expect(m.phys.read(0, 2 * PAGE_SIZE)).toEqual(new Uint8Array(2 * PAGE_SIZE));
    // a block whose frames were all discarded comes back zeroed
    expect(m.phys.frame(1)).toEqual(new Uint8Array(PAGE_SIZE));
  });

  it('counts and discards the last frame of a block like any other', () => {
    const m = new Machine({ memSize: 1 << 22 });
    const last = 65_536 / PAGE_SIZE - 1;
    m.phys.frame(last).fill(3);
    expect(m.phys.backedFrames).toBe(1);
    expect(m.phys.peekFrame(last)?.[0]).toBe(3);
    m.phys.discardFrame(last);
    expect(m.phys.backedFrames).toBe(0);
    expect(m.phys.peekFrame(last)).toBeUndefined();
    m.phys.write(0, new Uint8Array(65_536).fill(1));
    expect(m.phys.backedFrames).toBe(16);
    m.phys.discardFrame(last);
    expect(m.phys.backedFrames).toBe(15);
    expect(m.phys.read(last * PAGE_SIZE - 1, 2)).toEqual(new Uint8Array([1, 0]));
  });

  it('fills with zeros without backing anything', () => {
    const m = new Machine({ memSize: 1 << 22 });
    m.phys.fill(0, 1 << 20, 0);
    expect(m.phys.backedFrames).toBe(0);
  });
});

describe('PhysMem shared between threads', () => {
  it("shares a range: both sides see each other's bytes, and what the range held stays", () => {
    const a = new PhysMem(1 << 22);
    a.write(0x10000 + 5, new Uint8Array([9, 8, 7]));
    const sab = a.share(0x10000, 0x20000);
    expect(sab.byteLength).toBe(0x20000);
    expect(a.backedFrames).toBe(32); // the shared range counts as backed
    const b = new PhysMem(1 << 22);
    b.attachShared(0x10000, sab);
    expect(b.read(0x10000 + 5, 3)).toEqual(new Uint8Array([9, 8, 7]));
    // a span filled on one side is what the other side reads, across the 64 KiB block boundary
    b.span(0x1fffe, 2).set([1, 2]);
    b.span(0x20000, 2).set([3, 4]);
    expect(a.read(0x1fffe, 4)).toEqual(new Uint8Array([1, 2, 3, 4]));
    a.copyIn(0x28000, new Uint8Array([5, 6]), 0, 2);
    expect(b.read(0x28000, 2)).toEqual(new Uint8Array([5, 6]));
    // outside the range nothing is shared
    a.write(0x30000, new Uint8Array([1]));
    expect(b.read(0x30000, 1)).toEqual(new Uint8Array([0]));
  });

  it('keeps a discarded shared frame shared (zeroed), and refuses unaligned ranges with a typed error', () => {
    const a = new PhysMem(1 << 22);
    const sab = a.share(0x10000, 0x10000);
    const b = new PhysMem(1 << 22);
    b.attachShared(0x10000, sab);
    a.write(0x10000, new Uint8Array([1]));
    a.discardFrame(0x10);
    expect(a.read(0x10000, 1)).toEqual(new Uint8Array([0]));
    a.write(0x10000, new Uint8Array([2]));
    expect(b.read(0x10000, 1)).toEqual(new Uint8Array([2]));
    for (const [pa, len] of [
      [0x1000, 0x10000],
      [0x10000, 0x1000],
      [0x10000, 0],
      [(1 << 22) - 0x10000, 0x20000],
    ] as const) {
      const e = (() => {
        try {
          a.share(pa, len);
        } catch (x) {
          return x;
        }
        return undefined;
      })();
      expect(e).toBeInstanceOf(MachineError);
    }
    expect(() => b.attachShared(0x8000, sab)).toThrow(/aligned to 0x10000/);
  });
});

describe('alloc_pages / __free_pages (buddy)', () => {
  it('with firstPfn hands out only frames of its own range, top-order blocks included', () => {
    const first = 4096; // 16 MiB
    const pa = new PageAllocator(first + 2048, new Counters(), new FaultInjector(new Prng(1)), {
      firstPfn: first,
    });
    expect(pa.nrFreePages).toBe(2048);
    const got: number[] = [];
    for (;;) {
      const p = pa.allocPages(MAX_PAGE_ORDER);
      if (p === 0) break;
      got.push(p);
    }
    expect(got).toEqual([first * PAGE_SIZE, (first + 1024) * PAGE_SIZE]);
    expect(pa.allocPages(0)).toBe(0);
    for (const p of got) pa.freePages(p, MAX_PAGE_ORDER);
    expect(pa.nrFreePages).toBe(2048);
    expect(
      () => new PageAllocator(16, new Counters(), new FaultInjector(new Prng(1)), { firstPfn: 0 }),
    ).toThrow(/first frame 0/);
  });

  it('never hands out the reserved low 1 MiB, and splits larger blocks', () => {
    const m = new Machine({ memSize: 8 << 20 });
    const total = m.pages.nrFreePages;
    expect(total).toBe((8 << 20) / PAGE_SIZE - RESERVED_LOW_PAGES);
    const p = m.pages.allocPages(0);
    expect(p).toBeGreaterThanOrEqual(RESERVED_LOW_PAGES * PAGE_SIZE);
    expect(m.pages.nrFreePages).toBe(total - 1);
    const q = m.pages.allocPages(3);
    expect(q % (8 * PAGE_SIZE)).toBe(0);
    m.pages.freePages(p, 0);
    m.pages.freePages(q, 3);
    expect(m.pages.nrFreePages).toBe(total);
  });

  it('coalesces buddies back to the maximal blocks', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const before = m.pages.buddyinfo();
    const pages = Array.from({ length: 1024 }, () => m.pages.allocPages(0));
    expect(new Set(pages).size).toBe(1024);
    for (const p of m.rng.shuffle(pages)) m.pages.freePages(p, 0);
    expect(m.pages.buddyinfo()).toEqual(before);
  });

  it('returns 0 when exhausted and when the page_alloc fault fires, without losing pages', () => {
    const m = new Machine({ memSize: 2 << 20 });
    m.faults.failNth('page_alloc', 2);
    const a = m.pages.allocPages(0);
    expect(a).not.toBe(0);
    expect(m.pages.allocPages(0)).toBe(0);
    const free = m.pages.nrFreePages;
    expect(m.pages.allocPages(MAX_PAGE_ORDER)).toBe(0);
    expect(m.pages.nrFreePages).toBe(free);
  });

  it('throws on double free and order mismatch and changes nothing', () => {
    const m = new Machine({ memSize: 4 << 20 });
    const p = m.pages.allocPages(2);
    expect(() => m.pages.freePages(p, 1)).toThrow(/order 2, freed with 1/);
    m.pages.freePages(p, 2);
    const free = m.pages.nrFreePages;
    expect(() => m.pages.freePages(p, 2)).toThrow(/not an allocated block/);
    expect(m.pages.nrFreePages).toBe(free);
    expect(() => m.pages.allocPages(11)).toThrow(/order 11/);
  });

  it('keeps allocations disjoint and balanced for random alloc/free sequences', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 4 })), { maxLength: 200 }),
        (ops) => {
          const m = new Machine({ memSize: 8 << 20 });
          const total = m.pages.nrFreePages;
          const live: Array<[number, number]> = [];
          for (const [alloc, order] of ops) {
            if (alloc || live.length === 0) {
              const p = m.pages.allocPages(order);
              if (p === 0) continue;
              for (const [q, o] of live) {
                const end = p + (PAGE_SIZE << order);
                const qend = q + (PAGE_SIZE << o);
                expect(p < qend && q < end).toBe(false);
              }
              expect(p % (PAGE_SIZE << order)).toBe(0);
              live.push([p, order]);
            } else {
              const [p, o] = live.splice(order % live.length, 1)[0]!;
              m.pages.freePages(p, o);
            }
          }
          for (const [p, o] of live) m.pages.freePages(p, o);
          expect(m.pages.nrFreePages).toBe(total);
        },
      ),
      { numRuns: 30 },
    );
  });
});

describe('allocScatteredPageList', () => {
  it('n single pages, ascending, no two physically adjacent, exactly n left taken', () => {
    const m = new Machine({ memSize: 16 << 20, seed: 3 });
    // holes in the free lists first, as a running system has
    const holes = allocScatteredPageList(m.pages, 9)!;
    const free0 = m.pages.nrFreePages;
    for (const n of [1, 2, 33]) {
      const pages = allocScatteredPageList(m.pages, n)!;
      expect(pages.length).toBe(n);
      for (const p of pages) expect(m.pages.orderOf(p)).toBe(0);
      // ascending with a gap of at least one page between neighbours: nothing can merge
      for (let i = 1; i < n; i++) expect(pages[i]! - pages[i - 1]!).toBeGreaterThanOrEqual(2 * PAGE_SIZE);
      expect(free0 - m.pages.nrFreePages).toBe(n);
      for (const p of pages) m.pages.freePages(p, 0);
    }
    for (const p of holes) m.pages.freePages(p, 0);
  });

  it('returns null with nothing held when the 2n pages it chooses from are not there', () => {
    const m = new Machine({ memSize: 8 << 20 });
    const free0 = m.pages.nrFreePages;
    expect(allocScatteredPageList(m.pages, Math.floor(free0 / 2) + 1)).toBeNull();
    expect(m.pages.nrFreePages).toBe(free0);
    // exactly half the free pages still fits
    const all = allocScatteredPageList(m.pages, Math.floor(free0 / 2))!;
    expect(all.length).toBe(Math.floor(free0 / 2));
  });
});

describe('VirtualClock', () => {
  it('fires timers in deadline order only when time passes them', () => {
    const c = new VirtualClock();
    const fired: string[] = [];
    c.setTimer(10, () => fired.push('b'));
    c.setTimer(5, () => fired.push('a'));
    const t = c.setTimer(7, () => fired.push('x'));
    c.cancel(t);
    c.advance(4);
    expect(fired).toEqual([]);
    c.advance(6);
    expect(fired).toEqual(['a', 'b']);
    expect(c.nowNs).toBe(10);
  });
});

describe('Prng and FaultInjector', () => {
  it('is reproducible from a seed', () => {
    const a = new Prng(42);
    const b = new Prng(42);
    const xs = Array.from({ length: 5 }, () => a.u32());
    expect(Array.from({ length: 5 }, () => b.u32())).toEqual(xs);
    expect(new Prng(43).u32()).not.toBe(xs[0]);
  });

  it('fails the Nth call, N times, then disarms', () => {
    const f = new FaultInjector(new Prng(1));
    f.failNth('iova_alloc', 3, 2);
    const r = Array.from({ length: 6 }, () => f.shouldFail('iova_alloc'));
    expect(r).toEqual([false, false, true, true, false, false]);
    expect(f.injected.get('iova_alloc')).toBe(2);
    expect(f.shouldFail('pgtable_page')).toBe(false);
  });
});

describe('Machine', () => {
  it('validates cpus and runs code on a chosen CPU', () => {
    expect(() => new Machine({ cpus: 0 })).toThrow(/cpus/);
    const m = new Machine({ cpus: 4, memSize: 1 << 22 });
    expect(m.onCpu(3, () => m.currentCpu)).toBe(3);
    expect(m.currentCpu).toBe(0);
    expect(() => m.setCpu(4)).toThrow(/cpu 4/);
  });
});
