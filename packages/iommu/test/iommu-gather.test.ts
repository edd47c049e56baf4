// The IOTLB gather (include/linux/iommu.h, v6.17): when a new range counts as disjoint from what
// is gathered, and what that means for the number of IOTLB invalidations an unmap issues.
import { describe, expect, it } from 'vitest';
import { iommuIotlbSync, iommuMap, iommuUnmapFast } from '../src/iommu.js';
import { IommuDevice, SZ_4K } from '../src/iommu-device.js';
import { IOMMU_DOMAIN_UNMANAGED } from '../src/iommu-domain.js';
import {
  iommuIotlbGatherAddRange,
  iommuIotlbGatherInit,
  iommuIotlbGatherIsDisjoint,
} from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';

describe('iommu_iotlb_gather_is_disjoint', () => {
  // The gather holds [0x10000, 0x11fff]. A range is disjoint only when at least one byte separates
  // it from the gathered range: a range that ends on the byte before the start, or starts on the
  // byte after the end, touches it and extends the gather instead.
  const gathered = () => {
    const g = iommuIotlbGatherInit();
    iommuIotlbGatherAddRange(g, 0x10000, 2 * SZ_4K);
    return g;
  };

  it('an empty gather is disjoint from nothing', () => {
    expect(iommuIotlbGatherIsDisjoint(iommuIotlbGatherInit(), 0x10000, SZ_4K)).toBe(false);
  });

  it('a range ending on the byte before the gathered start touches it', () => {
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x10000 - SZ_4K, SZ_4K)).toBe(false);
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x10000 - 1, 1)).toBe(false);
  });

  it('a range ending two bytes before the gathered start is disjoint', () => {
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x10000 - 2 * SZ_4K, SZ_4K)).toBe(true);
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x10000 - 2, 1)).toBe(true);
  });

  it('a range starting on the byte after the gathered end touches it; one byte further is disjoint', () => {
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x12000, SZ_4K)).toBe(false);
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x12001, SZ_4K)).toBe(true);
  });

  it('overlapping ranges are not disjoint', () => {
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0x11000, SZ_4K)).toBe(false);
    expect(iommuIotlbGatherIsDisjoint(gathered(), 0xf000, 4 * SZ_4K)).toBe(false);
  });
});

describe('iommu_iotlb_gather_add_page through iommu_unmap_fast', () => {
  // Two 4 KiB unmaps into one gather: the driver syncs early only when the second page is
  // disjoint from the first, so a touching pair costs one ranged invalidation and a pair with a
  // page of gap between them costs two.
  function invalidationsFor(first: number, second: number): { inv: number; start: number; end: number } {
    const machine = new Machine({ memSize: 16 << 20 });
    const iommu = new IommuDevice(machine, {});
    const domain = iommu.domainAlloc(IOMMU_DOMAIN_UNMANAGED)!;
    for (const iova of [first, second]) {
      expect(iommuMap(domain, iova, machine.pages.allocPages(0), SZ_4K, IOMMU_READ | IOMMU_WRITE)).toBe(0);
    }
    const before = machine.counters.iotlbInvRange;
    const g = iommuIotlbGatherInit();
    expect(iommuUnmapFast(domain, first, SZ_4K, g)).toBe(SZ_4K);
    expect(iommuUnmapFast(domain, second, SZ_4K, g)).toBe(SZ_4K);
    const { start, end } = g;
    iommuIotlbSync(domain, g);
    return { inv: machine.counters.iotlbInvRange - before, start, end };
  }

  it('a page just below the gathered one joins the gather: one invalidation for both', () => {
    expect(invalidationsFor(0x200000, 0x1ff000)).toEqual({ inv: 1, start: 0x1ff000, end: 0x200fff });
  });

  it('a page just above the gathered one joins the gather: one invalidation for both', () => {
    expect(invalidationsFor(0x200000, 0x201000)).toEqual({ inv: 1, start: 0x200000, end: 0x201fff });
  });

  it('a page with a one-page gap below or above forces a sync first: two invalidations', () => {
    expect(invalidationsFor(0x200000, 0x1fe000)).toEqual({ inv: 2, start: 0x1fe000, end: 0x1fefff });
    expect(invalidationsFor(0x200000, 0x202000)).toEqual({ inv: 2, start: 0x202000, end: 0x202fff });
  });
});
