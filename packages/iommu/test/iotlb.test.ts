// Tests for the IOTLB model: LRU replacement, per-domain tags, range/all/non-present invalidation,
// and the hazard it exists to show: a stale translation survives an unmap until invalidated.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { IommuError } from '../src/errors.js';
import { freeTablePage, IoPgtable, type PteLookup } from '../src/io-pgtable.js';
import { iommuIotlbGatherInit } from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { IOTLB_MAX_DOMAIN_ID, Iotlb, type IotlbEntry } from '../src/iotlb.js';
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
