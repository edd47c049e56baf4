// Tests for the IOTLB model: LRU replacement, per-domain tags, range/all/non-present invalidation,
// and the hazard it exists to show: a stale translation survives an unmap until invalidated.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IommuError } from '../src/errors.js';
import { freeTablePage, IoPgtable, type PteLookup } from '../src/io-pgtable.js';
import { iommuIotlbGatherInit } from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { IOTLB_MAX_DOMAIN_ID, Iotlb, type IotlbEntry, walkFill, walkLookup } from '../src/iotlb.js';
import { Machine } from '../src/machine.js';

const SZ_4K = 0x1000;
const SZ_2M = 0x200000;
const SZ_1G = 0x40000000;
const RW = IOMMU_READ | IOMMU_WRITE;

function entry(
  leafIova: number,
  leafSize = SZ_4K,
  leafPhys = 0x100000 + leafIova,
  present = true,
): IotlbEntry {
  return { leafIova, leafPhys, leafSize, prot: RW, present };
}

/** The walker's job in miniature: IOTLB first, then the page table, filling the IOTLB. */
function translate(tlb: Iotlb, pt: IoPgtable, domainId: number, iova: number): number {
  const hit = tlb.lookup(domainId, iova);
  if (hit !== undefined) return hit.present ? hit.leafPhys + (iova - hit.leafIova) : -1;
  const l: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
  if (!pt.lookup(iova, l)) return -1;
  tlb.insert(domainId, {
    leafIova: l.leafIova,
    leafPhys: l.leafPhys,
    leafSize: l.leafSize,
    prot: l.prot,
    present: true,
  });
  return l.leafPhys + (iova - l.leafIova);
}

describe('Iotlb lookup/insert (LRU)', () => {
  it('evicts the least recently used entry; a hit refreshes it', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 3);
    tlb.insert(1, entry(0x1000));
    tlb.insert(1, entry(0x2000));
    tlb.insert(1, entry(0x3000));
    expect(tlb.lookup(1, 0x1000)?.leafPhys).toBe(0x101000); // 0x1000 is now most recent
    tlb.insert(1, entry(0x4000)); // evicts 0x2000
    expect(tlb.size).toBe(3);
    expect(tlb.lookup(1, 0x2000)).toBeUndefined();
    expect(tlb.lookup(1, 0x1000)).toBeDefined();
    expect(tlb.lookup(1, 0x3000)).toBeDefined();
    expect(tlb.lookup(1, 0x4000)).toBeDefined();
    tlb.insert(1, entry(0x5000)); // LRU is now 0x1000
    expect(tlb.lookup(1, 0x1000)).toBeUndefined();
  });

  it('re-inserting the same leaf replaces it without evicting another', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 2);
    tlb.insert(1, entry(0x1000));
    tlb.insert(1, entry(0x2000));
    tlb.insert(1, entry(0x1000, SZ_4K, 0x999000));
    expect(tlb.size).toBe(2);
    expect(tlb.lookup(1, 0x1fff)?.leafPhys).toBe(0x999000);
    expect(tlb.lookup(1, 0x2000)).toBeDefined();
  });

  it('stores a copy: later changes to the caller object do not leak in', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 4);
    const e = entry(0x1000);
    tlb.insert(1, e);
    e.leafPhys = 0xdead000;
    expect(tlb.lookup(1, 0x1000)?.leafPhys).toBe(0x101000);
  });

  it('finds 2 MiB and 1 GiB leaves from any page inside them', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 8);
    tlb.insert(1, entry(SZ_2M * 3, SZ_2M, 0x4000_0000));
    tlb.insert(1, entry(SZ_1G * 5, SZ_1G, 0x8_0000_0000));
    tlb.insert(1, entry(SZ_2M * 8)); // a 4K leaf on a 2 MiB-aligned page
    expect(tlb.lookup(1, SZ_2M * 3 + 0x1234)?.leafPhys).toBe(0x4000_0000);
    expect(tlb.lookup(1, SZ_2M * 4 - 1)?.leafSize).toBe(SZ_2M);
    expect(tlb.lookup(1, SZ_2M * 4)).toBeUndefined();
    expect(tlb.lookup(1, SZ_1G * 5 + 0x3456789)?.leafPhys).toBe(0x8_0000_0000);
    expect(tlb.lookup(1, SZ_2M * 8 + SZ_4K)).toBeUndefined(); // the 4K entry does not cover its neighbour
    expect(tlb.lookup(1, SZ_2M * 8 + 5)?.leafSize).toBe(SZ_4K);
  });

  it('counts hits and misses', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 8);
    tlb.insert(1, entry(0x1000));
    tlb.lookup(1, 0x1000);
    tlb.lookup(1, 0x1800);
    tlb.lookup(1, 0x2000);
    tlb.lookup(2, 0x1000);
    expect(m.counters.iotlbHits).toBe(2);
    expect(m.counters.iotlbMisses).toBe(2);
  });

  it('keeps domains apart', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 8);
    tlb.insert(1, entry(0x1000, SZ_4K, 0xa000));
    tlb.insert(2, entry(0x1000, SZ_4K, 0xb000));
    tlb.insert(IOTLB_MAX_DOMAIN_ID, entry(2 ** 48 - SZ_4K, SZ_4K, 0xc000));
    expect(tlb.lookup(1, 0x1000)?.leafPhys).toBe(0xa000);
    expect(tlb.lookup(2, 0x1000)?.leafPhys).toBe(0xb000);
    expect(tlb.lookup(IOTLB_MAX_DOMAIN_ID, 2 ** 48 - 1)?.leafPhys).toBe(0xc000);
    tlb.invalidateRange(1, 0, SZ_2M);
    expect(tlb.lookup(1, 0x1000)).toBeUndefined();
    expect(tlb.lookup(2, 0x1000)?.leafPhys).toBe(0xb000);
  });

  it('rejects bad capacities, domain ids and leaves', () => {
    const m = new Machine({ memSize: 16 << 20 });
    expect(() => new Iotlb(m, 0)).toThrow(IommuError);
    expect(() => new Iotlb(m, 1.5)).toThrow(expect.objectContaining({ rule: 'iotlb: capacity' }));
    const tlb = new Iotlb(m, 4);
    expect(() => tlb.lookup(-1, 0)).toThrow(expect.objectContaining({ rule: 'iotlb: domain id' }));
    expect(() => tlb.insert(IOTLB_MAX_DOMAIN_ID + 1, entry(0))).toThrow(IommuError);
    expect(() => tlb.insert(1, entry(0, 0x10000))).toThrow(
      expect.objectContaining({ rule: 'iotlb: leaf size' }),
    );
    expect(() => tlb.insert(1, entry(SZ_4K, SZ_2M))).toThrow(
      expect.objectContaining({ rule: 'iotlb: leaf alignment' }),
    );
    expect(tlb.size).toBe(0);
  });
});

describe('Iotlb invalidation (stale translations)', () => {
  it('after unmap without invalidation the stale translation is still used; invalidateRange drops it', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const pt = IoPgtable.create(m, { pgsizeBitmap: SZ_4K | SZ_2M | SZ_1G, ias: 48, oas: 48 })!;
    const tlb = new Iotlb(m, 64);
    const out = { mapped: 0 };
    const dom = 7;
    expect(pt.mapPages(0x10000, 0x300000, SZ_4K, 4, RW, out)).toBe(0);
    expect(translate(tlb, pt, dom, 0x11234)).toBe(0x301234); // miss, walk, fill
    expect(translate(tlb, pt, dom, 0x11234)).toBe(0x301234); // hit
    expect(m.counters.iotlbHits).toBe(1);

    const g = iommuIotlbGatherInit();
    expect(pt.unmapPages(0x10000, SZ_4K, 4, g)).toBe(4 * SZ_4K);
    expect(pt.iovaToPhys(0x11234)).toBe(0);
    // The hazard: the device still reaches the old page through the IOTLB.
    expect(translate(tlb, pt, dom, 0x11234)).toBe(0x301234);

    tlb.invalidateRange(dom, g.start, g.end - g.start + 1);
    expect(m.counters.iotlbInvRange).toBe(1);
    expect(translate(tlb, pt, dom, 0x11234)).toBe(-1);
    for (const pa of g.freelist) freeTablePage(m, pa);
  });

  it('drops a 2 MiB entry when only a page in its middle is invalidated (small and large ranges)', () => {
    const m = new Machine({ memSize: 16 << 20 });
    for (const size of [SZ_4K, 64 * SZ_2M]) {
      const tlb = new Iotlb(m, 16);
      tlb.insert(3, entry(SZ_2M * 5, SZ_2M, SZ_1G));
      tlb.insert(3, entry(SZ_1G * 2, SZ_1G, SZ_1G * 4));
      tlb.insert(3, entry(SZ_2M * 7));
      const iova = size === SZ_4K ? SZ_2M * 5 + 100 * SZ_4K : SZ_2M * 5 + SZ_4K;
      tlb.invalidateRange(3, iova, size);
      expect(tlb.lookup(3, SZ_2M * 5)).toBeUndefined();
      tlb.invalidateRange(3, SZ_1G * 3 - SZ_4K, SZ_4K);
      expect(tlb.lookup(3, SZ_1G * 2)).toBeUndefined();
      // the 4K leaf at 2M*7 intersects the large range only
      expect(tlb.lookup(3, SZ_2M * 7) === undefined).toBe(size !== SZ_4K);
    }
  });

  it('leaves entries outside the range alone', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 16);
    tlb.insert(1, entry(0x0000));
    tlb.insert(1, entry(0x1000));
    tlb.insert(1, entry(0x2000));
    tlb.insert(1, entry(SZ_2M, SZ_2M));
    tlb.invalidateRange(1, 0x1000, 0x1000);
    expect(tlb.lookup(1, 0x0000)).toBeDefined();
    expect(tlb.lookup(1, 0x1000)).toBeUndefined();
    expect(tlb.lookup(1, 0x2000)).toBeDefined();
    tlb.invalidateRange(1, 0x3000, SZ_2M - 0x3000);
    expect(tlb.lookup(1, SZ_2M)).toBeDefined();
    expect(tlb.size).toBe(3);
  });

  it('invalidateAll drops one domain or everything, counted once per call', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 16);
    for (const d of [1, 2]) for (let i = 0; i < 4; i++) tlb.insert(d, entry(i * SZ_4K));
    tlb.invalidateAll(1);
    expect(tlb.size).toBe(4);
    expect(tlb.lookup(1, 0)).toBeUndefined();
    expect(tlb.lookup(2, 0)).toBeDefined();
    tlb.invalidateAll();
    expect(tlb.size).toBe(0);
    expect(m.counters.iotlbInvAll).toBe(2);
    expect(m.counters.iotlbInvRange).toBe(0);
  });

  it('invalidateNonPresent drops only cached non-present entries, and counts nothing', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 16);
    tlb.insert(1, entry(0x1000, SZ_4K, 0, false));
    tlb.insert(1, entry(0x2000));
    tlb.insert(1, entry(0x3000, SZ_4K, 0, false));
    tlb.insert(2, entry(0x1000, SZ_4K, 0, false));
    expect(tlb.lookup(1, 0x1000)?.present).toBe(false);
    const before = m.counters.snapshot().events;
    tlb.invalidateNonPresent(1, 0, 0x3000);
    expect(tlb.lookup(1, 0x1000)).toBeUndefined();
    expect(tlb.lookup(1, 0x2000)?.present).toBe(true);
    expect(tlb.lookup(1, 0x3000)?.present).toBe(false); // outside [0, 0x3000)
    expect(tlb.lookup(2, 0x1000)?.present).toBe(false); // other domain
    tlb.invalidateNonPresent(1, 0, 2 ** 40); // scan path
    expect(tlb.lookup(1, 0x3000)).toBeUndefined();
    expect(tlb.lookup(1, 0x2000)).toBeDefined();
    const after = m.counters.snapshot().events;
    expect(after.iotlbInvRange - before.iotlbInvRange).toBe(0);
    expect(after.iotlbInvAll - before.iotlbInvAll).toBe(0);
    expect(after.iotlbSyncMap - before.iotlbSyncMap).toBe(0);
  });

  it('invalidateRange drops exactly the intersecting entries of the domain (fast-check vs brute force)', () => {
    const leafArb = fc.oneof(
      fc.record({ size: fc.constant(SZ_4K), idx: fc.nat(3 * 512 - 1) }),
      fc.record({ size: fc.constant(SZ_2M), idx: fc.nat(2) }),
      fc.record({ size: fc.constant(SZ_1G), idx: fc.nat(1) }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.record({ dom: fc.nat(2), leaf: leafArb, present: fc.boolean() }), { maxLength: 40 }),
        fc.nat(2),
        fc.nat(3 * SZ_2M),
        fc.integer({ min: 1, max: 2 * SZ_1G }),
        fc.boolean(),
        (inserts, dom, iova, size, nonPresentOnly) => {
          const m = new Machine({ memSize: 16 << 20 });
          const tlb = new Iotlb(m, 64);
          const ref = new Map<string, { dom: number; e: IotlbEntry }>();
          for (const { dom: d, leaf, present } of inserts) {
            const e = entry(leaf.idx * leaf.size, leaf.size, 0x1000, present);
            tlb.insert(d, e);
            ref.set(`${d}:${e.leafIova}`, { dom: d, e });
          }
          if (nonPresentOnly) tlb.invalidateNonPresent(dom, iova, size);
          else tlb.invalidateRange(dom, iova, size);
          for (const { dom: d, e } of ref.values()) {
            const hit = d === dom && e.leafIova < iova + size && e.leafIova + e.leafSize > iova;
            const dropped = hit && (!nonPresentOnly || !e.present);
            const found = tlb.lookup(d, e.leafIova);
            expect(found !== undefined && found.leafIova === e.leafIova).toBe(!dropped);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

/** A plain reference IOTLB: Map order is LRU order, every search a brute-force scan. */
class RefIotlb {
  readonly map = new Map<string, { dom: number; e: IotlbEntry }>();
  readonly capacity: number;
  constructor(capacity: number) {
    this.capacity = capacity;
  }

  lookup(dom: number, iova: number): IotlbEntry | undefined {
    // The smallest leaf covering `iova` wins: it is the one the page-first probe order finds.
    let best: [string, { dom: number; e: IotlbEntry }] | undefined;
    for (const kv of this.map) {
      const { dom: d, e } = kv[1];
      if (d !== dom || iova < e.leafIova || iova >= e.leafIova + e.leafSize) continue;
      if (best === undefined || e.leafSize < best[1].e.leafSize) best = kv;
    }
    if (best === undefined) return undefined;
    this.map.delete(best[0]);
    this.map.set(best[0], best[1]);
    return best[1].e;
  }

  insert(dom: number, e: IotlbEntry): void {
    const k = `${dom}:${e.leafIova}`;
    if (this.map.has(k)) this.map.delete(k);
    else if (this.map.size >= this.capacity) this.map.delete(this.map.keys().next().value as string);
    this.map.set(k, { dom, e: { ...e } });
  }

  drop(dom: number | undefined, iova: number, size: number, onlyNonPresent: boolean): void {
    for (const [k, { dom: d, e }] of this.map) {
      if (dom !== undefined && d !== dom) continue;
      if (onlyNonPresent && e.present) continue;
      if (e.leafIova < iova + size && e.leafIova + e.leafSize > iova) this.map.delete(k);
    }
  }
}

describe('Iotlb slot storage (hash index, LRU list, free slots)', () => {
  type Op =
    | {
        t: 'insert';
        dom: number;
        leafIova: number;
        leafSize: number;
        phys: number;
        present: boolean;
        fast: boolean;
      }
    | { t: 'lookup'; dom: number; iova: number; pick: number | null; fast: boolean }
    | {
        t: 'walk';
        dom: number;
        leafIova: number;
        leafSize: number;
        off: number;
        phys: number;
        pick: number | null;
      }
    | { t: 'invRange' | 'invNonPresent'; dom: number; iova: number; size: number }
    | { t: 'invAll'; dom: number | undefined };
  const domArb = fc.nat(2);
  // A small key space, with pages on both sides of 2 MiB and 1 GiB boundaries, so lookups hit,
  // leaves overlap and hash chains collide.
  const pages4k = [0, 1, 2, 3, 5, 8, 511, 512, 513, 1023, 1024, 262143, 262144, 262145];
  const leafArb = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.constantFrom(...pages4k).map((p) => ({ leafIova: p * SZ_4K, leafSize: SZ_4K })),
    },
    { weight: 2, arbitrary: fc.nat(2).map((i) => ({ leafIova: i * SZ_2M, leafSize: SZ_2M })) },
    { weight: 1, arbitrary: fc.nat(1).map((i) => ({ leafIova: i * SZ_1G, leafSize: SZ_1G })) },
  );
  const iovaArb = fc.oneof(
    {
      weight: 4,
      arbitrary: fc.tuple(leafArb, fc.nat(SZ_1G - 1)).map(([l, off]) => l.leafIova + (off % l.leafSize)),
    },
    { weight: 1, arbitrary: fc.nat(2 * SZ_1G) },
  );
  const opArb: fc.Arbitrary<Op> = fc
    .oneof(
      {
        weight: 5,
        arbitrary: fc
          .record({
            dom: domArb,
            leaf: leafArb,
            phys: fc.nat(2 ** 20),
            present: fc.boolean(),
            fast: fc.boolean(),
          })
          .map(({ dom, leaf, phys, present, fast }) => ({
            t: 'insert' as const,
            dom,
            ...leaf,
            phys: phys * SZ_4K,
            present,
            fast,
          })),
      },
      {
        weight: 6,
        arbitrary: fc.record({
          t: fc.constant('lookup' as const),
          dom: domArb,
          iova: iovaArb,
          pick: fc.option(fc.nat(), { freq: 3 }), // null (1 in 3): the random iova; else a cached leaf
          fast: fc.boolean(),
        }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          t: fc.constantFrom('invRange' as const, 'invNonPresent' as const),
          dom: domArb,
          iova: iovaArb,
          size: fc.oneof(fc.integer({ min: 1, max: 8 * SZ_4K }), fc.integer({ min: 1, max: 2 * SZ_1G })),
        }),
      },
      {
        // The hardware walk's path (`IommuDevice.translate`): walkLookup, and on a miss walkFill of
        // a leaf covering the IOVA (as the page table would return).
        weight: 6,
        arbitrary: fc
          .record({
            dom: domArb,
            leaf: leafArb,
            off: fc.nat(SZ_1G - 1),
            phys: fc.nat(2 ** 20),
            pick: fc.option(fc.nat(), { freq: 3 }),
          })
          .map(({ dom, leaf, off, phys, pick }) => ({
            t: 'walk' as const,
            dom,
            ...leaf,
            off: off % leaf.leafSize,
            phys: phys * SZ_4K,
            pick,
          })),
      },
      { weight: 1, arbitrary: fc.record({ t: fc.constant('invAll' as const), dom: fc.option(domArb) }) },
    )
    .map((op) => (op.t === 'invAll' ? { t: 'invAll' as const, dom: op.dom ?? undefined } : op));

  it('behaves like a reference LRU under random lookups, inserts and invalidations (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(opArb, { minLength: 10, maxLength: 120, size: 'max' }),
        (cap, ops) => {
          const m = new Machine({ memSize: 16 << 20 });
          const tlb = new Iotlb(m, cap);
          const ref = new RefIotlb(cap);
          let hits = 0;
          let misses = 0;
          for (const op of ops) {
            if (op.t === 'insert') {
              const e = {
                leafIova: op.leafIova,
                leafPhys: op.phys,
                leafSize: op.leafSize,
                prot: RW,
                present: op.present,
              };
              if (op.fast) {
                const s = tlb.insertLeaf(op.dom, e.leafIova, e.leafPhys, e.leafSize, e.prot, e.present);
                expect(s >= 0 && s < cap).toBe(true);
              } else {
                tlb.insert(op.dom, e);
              }
              ref.insert(op.dom, e);
            } else if (op.t === 'lookup') {
              let { dom, iova } = op;
              const cached = [...ref.map.values()];
              if (op.pick !== null && cached.length > 0) {
                const c = cached[op.pick % cached.length]!;
                dom = c.dom;
                iova = c.e.leafIova + (op.iova % c.e.leafSize);
              }
              const want = ref.lookup(dom, iova);
              if (want === undefined) misses++;
              else hits++;
              if (op.fast) {
                const s = tlb.lookupSlot(dom, iova);
                expect(s >= 0).toBe(want !== undefined);
                if (want !== undefined) {
                  expect(tlb.slotPhys(s, iova)).toBe(want.leafPhys + (iova - want.leafIova));
                  expect(tlb.slotPresent(s)).toBe(want.present);
                  expect(tlb.slotProt(s)).toBe(want.prot);
                }
              } else {
                expect(tlb.lookup(dom, iova)).toEqual(want);
              }
            } else if (op.t === 'walk') {
              let { dom } = op;
              let iova = op.leafIova + op.off;
              const cached = [...ref.map.values()];
              if (op.pick !== null && cached.length > 0) {
                const c = cached[op.pick % cached.length]!;
                dom = c.dom;
                iova = c.e.leafIova + (op.off % c.e.leafSize);
              }
              let want = ref.lookup(dom, iova);
              let s = walkLookup(tlb, dom, iova);
              expect(s >= 0).toBe(want !== undefined);
              if (want === undefined) {
                misses++;
                // On a miss the walk fills the leaf the page table holds: here the op's leaf, or
                // (for a picked iova that missed, impossible) none.
                expect(op.pick === null || cached.length === 0).toBe(true);
                want = {
                  leafIova: op.leafIova,
                  leafPhys: op.phys,
                  leafSize: op.leafSize,
                  prot: RW,
                  present: true,
                };
                s = walkFill(tlb, dom, { ...want, dirty: false });
                ref.insert(dom, want);
                expect(s >= 0 && s < cap).toBe(true);
              } else {
                hits++;
              }
              expect(tlb.slotPhys(s, iova)).toBe(want.leafPhys + (iova - want.leafIova));
              expect(tlb.slotPresent(s)).toBe(want.present);
              expect(tlb.slotProt(s)).toBe(want.prot);
            } else if (op.t === 'invAll') {
              tlb.invalidateAll(op.dom);
              ref.drop(op.dom, 0, 2 ** 48, false);
            } else {
              if (op.t === 'invRange') tlb.invalidateRange(op.dom, op.iova, op.size);
              else tlb.invalidateNonPresent(op.dom, op.iova, op.size);
              ref.drop(op.dom, op.iova, op.size, op.t === 'invNonPresent');
            }
            expect(tlb.size).toBe(ref.map.size);
          }
          expect(m.counters.iotlbHits).toBe(hits);
          expect(m.counters.iotlbMisses).toBe(misses);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('hits reorder the LRU list across many evictions', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 4);
    for (let i = 0; i < 4; i++) tlb.insert(1, entry(i * SZ_4K));
    // Keep page 0 hot while 100 other pages stream through: it must never be evicted.
    for (let i = 4; i < 104; i++) {
      expect(tlb.lookupSlot(1, 0)).toBeGreaterThanOrEqual(0);
      tlb.insert(1, entry(i * SZ_4K));
    }
    expect(tlb.size).toBe(4);
    expect(tlb.lookup(1, 0)).toBeDefined();
    for (let i = 101; i < 104; i++) expect(tlb.lookup(1, i * SZ_4K)).toBeDefined();
    expect(tlb.lookup(1, 100 * SZ_4K)).toBeUndefined();
  });

  it('reuses slots freed by invalidation without evicting live entries', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 4);
    const slots = [0, 1, 2, 3].map((i) => tlb.insertLeaf(1, i * SZ_4K, i * SZ_4K, SZ_4K, RW, true));
    expect(new Set(slots).size).toBe(4);
    tlb.invalidateRange(1, SZ_4K, 2 * SZ_4K); // frees the slots of pages 1 and 2
    expect(tlb.size).toBe(2);
    const reused = [8, 9].map((i) => tlb.insertLeaf(2, i * SZ_4K, 0, SZ_4K, RW, true));
    expect(reused.sort((a, b) => a - b)).toEqual([slots[1]!, slots[2]!].sort((a, b) => a - b));
    expect(tlb.size).toBe(4);
    expect(tlb.lookup(1, 0)).toBeDefined(); // nothing was evicted
    expect(tlb.lookup(1, 3 * SZ_4K)).toBeDefined();
    tlb.invalidateAll(2);
    tlb.invalidateAll();
    expect(tlb.size).toBe(0);
    for (let i = 0; i < 4; i++) tlb.insert(3, entry(i * SZ_2M, SZ_2M));
    for (let i = 0; i < 4; i++) expect(tlb.lookup(3, i * SZ_2M + 5)?.leafSize).toBe(SZ_2M);
  });

  it('keeps keys apart that differ only in the domain (same low 32 bits)', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 64);
    const doms = [0, 1, 16, 256, 4096, IOTLB_MAX_DOMAIN_ID];
    for (const d of doms) tlb.insert(d, entry(0x5000, SZ_4K, d * SZ_4K));
    for (const d of doms) expect(tlb.lookup(d, 0x5000)?.leafPhys).toBe(d * SZ_4K);
    tlb.invalidateRange(256, 0x5000, 1);
    expect(tlb.lookup(256, 0x5000)).toBeUndefined();
    for (const d of doms.filter((x) => x !== 256)) expect(tlb.lookup(d, 0x5000)).toBeDefined();
  });

  it('fast path and object API agree, and count the same', () => {
    const m = new Machine({ memSize: 16 << 20 });
    const tlb = new Iotlb(m, 8);
    const s = tlb.insertLeaf(5, SZ_2M, 0x7_0000_0000, SZ_2M, IOMMU_READ, true);
    const np = tlb.insertLeaf(5, 0x3000, 0, SZ_4K, 0, false);
    expect(tlb.lookupSlot(5, SZ_2M + 0x1234)).toBe(s);
    expect(tlb.slotPhys(s, SZ_2M + 0x1234)).toBe(0x7_0000_1234);
    expect(tlb.slotProt(s)).toBe(IOMMU_READ);
    expect(tlb.lookup(5, SZ_2M + 0x1234)).toEqual({
      leafIova: SZ_2M,
      leafPhys: 0x7_0000_0000,
      leafSize: SZ_2M,
      prot: IOMMU_READ,
      present: true,
    });
    expect(tlb.lookupSlot(5, 0x3fff)).toBe(np);
    expect(tlb.slotPresent(np)).toBe(false);
    expect(tlb.lookup(5, 0x3fff)?.present).toBe(false);
    expect(tlb.lookupSlot(5, 0x4000)).toBe(-1);
    expect(tlb.lookup(5, 0x4000)).toBeUndefined();
    expect(m.counters.iotlbHits).toBe(4);
    expect(m.counters.iotlbMisses).toBe(2);
    // Re-inserting the same leaf keeps its slot; validation matches insert's.
    expect(tlb.insertLeaf(5, SZ_2M, 0x8_0000_0000, SZ_2M, RW, true)).toBe(s);
    expect(() => tlb.insertLeaf(5, SZ_4K, 0, SZ_2M, RW, true)).toThrow(
      expect.objectContaining({ rule: 'iotlb: leaf alignment' }),
    );
    expect(() => tlb.lookupSlot(IOTLB_MAX_DOMAIN_ID + 1, 0)).toThrow(
      expect.objectContaining({ rule: 'iotlb: domain id' }),
    );
  });
});
