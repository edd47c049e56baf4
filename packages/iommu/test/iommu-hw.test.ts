/**
 * The invalidation commands each hardware preset's driver issues, with every expected count
 * derived from the driver rule it models (kernel v6.17): arm-smmu-v3 `__arm_smmu_tlb_inv_range` +
 * cmdq batching, intel `cache_tag_flush_range` + `calculate_psi_aligned_address`, amd
 * `amd_iommu_domain_flush_pages` + `build_inv_address`.
 */
import { describe, expect, it } from 'vitest';
import { amdBuildInvAddress } from '../src/amd-iommu-inv.js';
import { armSmmuRangeTlbiCount } from '../src/arm-smmu-v3-tlbi.js';
import { IommuError } from '../src/errors.js';
import { calculatePsiAlignedAddress } from '../src/intel-cache-tag.js';
import { iommuFlushIotlbAll, iommuIotlbSync, iommuMap, iommuUnmap, iommuUnmapFast } from '../src/iommu.js';
import { IommuDevice, SZ_1G, SZ_2M, SZ_4K } from '../src/iommu-device.js';
import { IOMMU_DOMAIN_UNMANAGED } from '../src/iommu-domain.js';
import { iommuIotlbGatherInit } from '../src/iommu-gather.js';
import {
  IOMMU_HW_PRESET_NAMES,
  IOMMU_HW_PRESETS,
  type IommuHw,
  iommuHwPreset,
  validateIommuHw,
} from '../src/iommu-hw.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';

const RW = IOMMU_READ | IOMMU_WRITE;
const MiB = 2 ** 20;
const BASE = 0x40000000; // 1 GiB: aligned to every page size

function setup(hw: string | IommuHw, extra: { cachesNonPresent?: boolean } = {}, memSize = 64 * MiB) {
  const machine = new Machine({ memSize });
  const iommu = new IommuDevice(machine, { hw, ...extra });
  const domain = iommu.domainAlloc(IOMMU_DOMAIN_UNMANAGED)!;
  return { machine, iommu, domain };
}

/** Maps `size` bytes at `iova` from a physical address that is only 4 KiB aligned: 4 KiB leaves only. */
function map4k(domain: ReturnType<typeof setup>['domain'], iova: number, size: number): void {
  expect(iommuMap(domain, iova, 0x1000, size, RW)).toBe(0);
}

/** The command counters after `fn`, as a diff. */
function cmds(machine: Machine, fn: () => void) {
  const c = machine.counters;
  const b = [c.iotlbInvPageCmds, c.iotlbInvRangeCmds, c.iotlbInvDomainCmds, c.iotlbInvSyncs];
  fn();
  return {
    page: c.iotlbInvPageCmds - b[0]!,
    range: c.iotlbInvRangeCmds - b[1]!,
    domain: c.iotlbInvDomainCmds - b[2]!,
    sync: c.iotlbInvSyncs - b[3]!,
  };
}

function withInv(name: string, inv: Partial<IommuHw['invalidation']>): IommuHw {
  const base = iommuHwPreset(name);
  return { ...base, invalidation: { ...base.invalidation, ...inv } as IommuHw['invalidation'] };
}

describe('smmuv3-norange (arm-smmu-v3 without ARM_SMMU_FEAT_RANGE_INV)', () => {
  it('strict 1 MiB unmap: one CMD_TLBI_NH_VA per 4 KiB granule (256) and one CMD_SYNC at submit', () => {
    const { machine, domain } = setup('smmuv3-norange');
    map4k(domain, BASE, MiB);
    // __arm_smmu_tlb_inv_range steps `granule` (4 KiB) over 1 MiB: 1 MiB / 4 KiB commands;
    // batch_add issues full lists of 64 without sync, batch_submit the rest with one CMD_SYNC.
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB))).toEqual({
      page: MiB / SZ_4K,
      range: 0,
      domain: 0,
      sync: 1,
    });
  });

  it('a 2 MiB block leaf is one TLBI (granule = the gathered leaf size)', () => {
    const { machine, domain } = setup('smmuv3-norange');
    expect(iommuMap(domain, BASE, SZ_2M, SZ_2M, RW)).toBe(0);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, SZ_2M))).toEqual({
      page: 1,
      range: 0,
      domain: 0,
      sync: 1,
    });
  });

  it('a page-size change syncs the gather first (iommu_iotlb_gather_add_page): 511 x 4K, 1 x 2M, 1 x 4K', () => {
    const { machine, domain } = setup('smmuv3-norange');
    // iova = paddr = 0x1000, 4 MiB: 511 x 4 KiB up to 2 MiB, one 2 MiB leaf, one 4 KiB tail
    expect(iommuMap(domain, 0x1000, 0x1000, 4 * MiB, RW)).toBe(0);
    // three gathers, each synced: 511 granule-4K TLBIs, 1 granule-2M TLBI, 1 granule-4K TLBI
    expect(cmds(machine, () => iommuUnmap(domain, 0x1000, 4 * MiB))).toEqual({
      page: 511 + 1 + 1,
      range: 0,
      domain: 0,
      sync: 3,
    });
  });

  it('ARM_SMMU_OPT_CMDQ_FORCE_SYNC adds a CMD_SYNC each time a 64th command would join the batch', () => {
    const { machine, domain } = setup(withInv('smmuv3-norange', { cmdqForceSync: true }));
    map4k(domain, BASE, MiB);
    // 256 commands: a sync before the 64th, 127th, 190th and 253rd (every 63), plus the submit
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB))).toEqual({
      page: 256,
      range: 0,
      domain: 0,
      sync: 5,
    });
  });

  it('with the CMDQ_MAX_TLBI_OPS fallback, granule/8 granules or more become one CMD_TLBI_NH_ASID', () => {
    const { machine, domain } = setup(withInv('smmuv3-norange', { maxTlbiOpsFallback: true }));
    // threshold: 1 << (ilog2(4096) - 3) = 512 granules = 2 MiB of 4 KiB pages
    map4k(domain, BASE, SZ_2M);
    map4k(domain, BASE + SZ_1G, SZ_2M - SZ_4K);
    expect(cmds(machine, () => iommuUnmap(domain, BASE + SZ_1G, SZ_2M - SZ_4K))).toEqual({
      page: 511,
      range: 0,
      domain: 0,
      sync: 1,
    });
    expect(cmds(machine, () => iommuUnmap(domain, BASE, SZ_2M))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
  });

  it('flush_iotlb_all is CMD_TLBI_NH_ASID + CMD_SYNC', () => {
    const { machine, domain } = setup('smmuv3-norange');
    expect(cmds(machine, () => iommuFlushIotlbAll(domain))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
  });
});

describe('smmuv3-range (ARM_SMMU_FEAT_RANGE_INV: TG/SCALE/NUM)', () => {
  it('armSmmuRangeTlbiCount: one command per 5-bit group of the page count from its lowest set bit', () => {
    expect(armSmmuRangeTlbiCount(1)).toBe(1);
    expect(armSmmuRangeTlbiCount(256)).toBe(1); // scale 8, num 1
    expect(armSmmuRangeTlbiCount(31)).toBe(1); // scale 0, num 31
    expect(armSmmuRangeTlbiCount(33)).toBe(2); // 0b100001: num 1 at scale 0, then num 1 at scale 5
    expect(armSmmuRangeTlbiCount(255)).toBe(2); // 31 at scale 0, then 7 at scale 5
    // 2^15 + 1: num 1 at scale 0, then num 1 at scale 15 (empty groups cost nothing)
    expect(armSmmuRangeTlbiCount(2 ** 15 + 1)).toBe(2);
  });

  it('strict 1 MiB unmap: one range TLBI (256 pages = 1 << 8) and one CMD_SYNC', () => {
    const { machine, domain } = setup('smmuv3-range');
    map4k(domain, BASE, MiB);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('1 MiB - 4 KiB (255 pages) needs two range commands', () => {
    const { machine, domain } = setup('smmuv3-range');
    map4k(domain, BASE, MiB - SZ_4K);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB - SZ_4K))).toEqual({
      page: 0,
      range: 2,
      domain: 0,
      sync: 1,
    });
  });
});

describe('intel-vtd (cache_tag_flush_range, CAP.MAMV = 18)', () => {
  it('calculatePsiAlignedAddress: the aligned power-of-two block holding the range', () => {
    expect(calculatePsiAlignedAddress(BASE, BASE + MiB - 1)).toEqual({ addr: BASE, pages: 256, mask: 8 });
    // pfn 1..1024: 1024 pages rounded to 2^10, pfn not aligned: lowest shared bit above 9 is 11
    expect(calculatePsiAlignedAddress(0x1000, 0x401000 - 1)).toEqual({ addr: 0, pages: 2048, mask: 11 });
    // two pages across the 1 GiB boundary: pfns 0x3ffff and 0x40000 first agree at bit 19
    expect(calculatePsiAlignedAddress(BASE - SZ_4K, BASE + SZ_4K - 1).mask).toBe(19);
  });

  it('aligned 1 MiB unmap: one PSI descriptor with mask 8 and one wait descriptor', () => {
    const { machine, domain } = setup('intel-vtd');
    map4k(domain, BASE, MiB);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('a 4 KiB unmap is a PSI with mask 0', () => {
    const { machine, domain } = setup('intel-vtd');
    map4k(domain, BASE, SZ_4K);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, SZ_4K))).toEqual({
      page: 1,
      range: 0,
      domain: 0,
      sync: 1,
    });
  });

  it('mixed page sizes stay one gather (intel_iommu_unmap only widens it): one PSI with mask 11', () => {
    const { machine, domain } = setup('intel-vtd');
    expect(iommuMap(domain, 0x1000, 0x1000, 4 * MiB, RW)).toBe(0);
    expect(cmds(machine, () => iommuUnmap(domain, 0x1000, 4 * MiB))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('PSI up to CAP.MAMV (1 GiB, mask 18); domain-selective above: 2 GiB and 8 KiB across 1 GiB (mask 19)', () => {
    const { machine, domain } = setup('intel-vtd', {}, 4 * SZ_1G);
    // exactly at the limit: 1 GiB aligned is mask 18 = CAP.MAMV, still page-selective
    expect(iommuMap(domain, SZ_1G, 0, SZ_1G, RW)).toBe(0);
    expect(cmds(machine, () => iommuUnmap(domain, SZ_1G, SZ_1G))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
    expect(iommuMap(domain, 2 * SZ_1G, 0, 2 * SZ_1G, RW)).toBe(0);
    expect(cmds(machine, () => iommuUnmap(domain, 2 * SZ_1G, 2 * SZ_1G))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
    map4k(domain, BASE - SZ_4K, 2 * SZ_4K);
    expect(cmds(machine, () => iommuUnmap(domain, BASE - SZ_4K, 2 * SZ_4K))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
  });

  it('a DSI drops every IOTLB entry of the domain; a PSI keeps entries outside its block', () => {
    const { iommu, domain } = setup('intel-vtd');
    map4k(domain, BASE - SZ_4K, 2 * SZ_4K);
    map4k(domain, 3 * SZ_1G, SZ_4K);
    map4k(domain, 3 * SZ_1G + MiB, SZ_4K);
    for (const a of [BASE - SZ_4K, 3 * SZ_1G, 3 * SZ_1G + MiB])
      expect(iommu.translate(domain, a, false, 't')).toBeGreaterThan(0);
    iommuUnmap(domain, 3 * SZ_1G + MiB, SZ_4K); // PSI mask 0
    expect(iommu.iotlb.lookup(domain.id, 3 * SZ_1G)).toBeDefined();
    iommuUnmap(domain, BASE - SZ_4K, 2 * SZ_4K); // DSI
    expect(iommu.iotlb.lookup(domain.id, 3 * SZ_1G)).toBeUndefined();
  });

  it('flush_iotlb_all is one DSI + wait', () => {
    const { machine, domain } = setup('intel-vtd');
    expect(cmds(machine, () => iommuFlushIotlbAll(domain))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
  });

  it('caching mode: iotlb_sync_map issues a PSI + wait for the new range', () => {
    const { machine, domain } = setup('intel-vtd', { cachesNonPresent: true });
    expect(cmds(machine, () => map4k(domain, BASE, MiB))).toEqual({ page: 0, range: 1, domain: 0, sync: 1 });
  });
});

describe('amd-vi (INVALIDATE_IOMMU_PAGES with the S bit)', () => {
  it('amdBuildInvAddress: one page without S; otherwise the aligned block up to the highest differing bit', () => {
    expect(amdBuildInvAddress(BASE, SZ_4K)).toEqual({ all: false, sBit: false, start: BASE, size: SZ_4K });
    expect(amdBuildInvAddress(BASE, MiB)).toEqual({ all: false, sBit: true, start: BASE, size: MiB });
    // 0x40001000..0x40002fff: bit 13 is the highest that flips: a 16 KiB block
    expect(amdBuildInvAddress(BASE + SZ_4K, 2 * SZ_4K)).toEqual({
      all: false,
      sBit: true,
      start: BASE,
      size: 0x4000,
    });
  });

  it('aligned 1 MiB unmap: one INVALIDATE_IOMMU_PAGES with S and one COMPLETION_WAIT', () => {
    const { machine, domain } = setup('amd-vi');
    map4k(domain, BASE, MiB);
    expect(cmds(machine, () => iommuUnmap(domain, BASE, MiB))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('4 MiB of mixed leaves from 0x1000: still one command (no split without NpCache)', () => {
    const { machine, domain } = setup('amd-vi');
    expect(iommuMap(domain, 0x1000, 0x1000, 4 * MiB, RW)).toBe(0);
    expect(cmds(machine, () => iommuUnmap(domain, 0x1000, 4 * MiB))).toEqual({
      page: 0,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('the IOTLB drops the whole S-bit block, not just the range', () => {
    const { iommu, domain } = setup('amd-vi');
    map4k(domain, BASE, 5 * SZ_4K);
    for (let i = 0; i < 5; i++) iommu.translate(domain, BASE + i * SZ_4K, false, 't');
    iommuUnmap(domain, BASE + SZ_4K, 2 * SZ_4K); // block [BASE, BASE + 16 KiB)
    expect(iommu.iotlb.lookup(domain.id, BASE)).toBeUndefined();
    expect(iommu.iotlb.lookup(domain.id, BASE + 3 * SZ_4K)).toBeUndefined();
    expect(iommu.iotlb.lookup(domain.id, BASE + 4 * SZ_4K)).toBeDefined();
  });

  it('NpCache splits the range into naturally aligned pieces before one wait: 12 KiB at +4K = 4K + 8K', () => {
    const { machine, domain } = setup('amd-vi', { cachesNonPresent: true });
    map4k(domain, BASE + SZ_4K, 3 * SZ_4K);
    expect(cmds(machine, () => iommuUnmap(domain, BASE + SZ_4K, 3 * SZ_4K))).toEqual({
      page: 1,
      range: 1,
      domain: 0,
      sync: 1,
    });
  });

  it('flush_iotlb_all is one all-pages command + COMPLETION_WAIT', () => {
    const { machine, domain } = setup('amd-vi');
    expect(cmds(machine, () => iommuFlushIotlbAll(domain))).toEqual({
      page: 0,
      range: 0,
      domain: 1,
      sync: 1,
    });
  });

  it('with NpCache, flush_iotlb_all goes through the split loop: 51 pieces of 2^62 down to 2^12', () => {
    const { machine, iommu, domain } = setup('amd-vi', { cachesNonPresent: true });
    map4k(domain, BASE, SZ_4K);
    iommu.translate(domain, BASE, false, 't');
    // 2^63 - 2^12 from 0: pieces 2^62, 2^61, ..., 2^12; msb_diff = log2(piece) - 1 > 51 (all pages)
    // for 2^53..2^62 (10 pieces), S-bit ranges for 2^13..2^52 (40), one page without S (2^12)
    expect(cmds(machine, () => iommuFlushIotlbAll(domain))).toEqual({
      page: 1,
      range: 40,
      domain: 10,
      sync: 1,
    });
    expect(iommu.iotlb.lookup(domain.id, BASE)).toBeUndefined();
  });
});

describe('every preset', () => {
  it.each(IOMMU_HW_PRESET_NAMES)(
    '%s: a missing sync leaves a stale translation; the sync removes it',
    (name) => {
      const { iommu, domain } = setup(name);
      map4k(domain, BASE, 4 * SZ_4K);
      const pa = iommu.translate(domain, BASE + SZ_4K, false, 't');
      expect(pa).toBeGreaterThan(0);
      const gather = iommuIotlbGatherInit();
      iommuUnmapFast(domain, BASE, 4 * SZ_4K, gather);
      expect(iommu.translate(domain, BASE + SZ_4K, false, 't')).toBe(pa); // stale, still usable
      iommuIotlbSync(domain, gather);
      expect(iommu.translate(domain, BASE + SZ_4K, false, 't')).toBe(-1);
    },
  );

  it.each(IOMMU_HW_PRESET_NAMES)(
    '%s passes its own validator and names its kernel and feature bits',
    (name) => {
      const hw = IOMMU_HW_PRESETS[name];
      expect(validateIommuHw(JSON.parse(JSON.stringify(hw)), name)).toEqual(hw);
      expect(hw.kernel).toMatch(/^v\d+\.\d+/);
      expect(hw.featureBits.length).toBeGreaterThan(0);
    },
  );
});

describe('validateIommuHw', () => {
  const good = () => JSON.parse(JSON.stringify(IOMMU_HW_PRESETS['intel-vtd'])) as Record<string, unknown>;

  it('rejects unknown keys, bad page sizes and capabilities that do not fit the kind, naming them', () => {
    expect(() => validateIommuHw({ ...good(), iotlbSize: 3 }, 'f.json')).toThrow(
      /f\.json: unknown key "iotlbSize"/,
    );
    expect(() => validateIommuHw({ ...good(), pgsizeBitmap: 0x200000 }, 'f')).toThrow(/must include 4K/);
    expect(() =>
      validateIommuHw(
        { ...good(), invalidation: { kind: 'intel-vtd', pageSelective: true, maxAddressMask: 99 } },
        'f',
      ),
    ).toThrow(/maxAddressMask/);
    expect(() =>
      validateIommuHw(
        {
          ...good(),
          invalidation: {
            kind: 'intel-vtd',
            pageSelective: true,
            maxAddressMask: 9,
            rangeInvalidation: true,
          },
        },
        'f',
      ),
    ).toThrow(/unknown key "rangeInvalidation"/);
    expect(() => validateIommuHw({ ...good(), invalidation: { kind: 'riscv' } }, 'f')).toThrow(
      /invalidation.kind/,
    );
    const smmu = JSON.parse(JSON.stringify(IOMMU_HW_PRESETS['smmuv3-range'])) as Record<string, unknown>;
    expect(() => validateIommuHw({ ...smmu, cachesNonPresent: true }, 'f')).toThrow(/no iotlb_sync_map/);
    expect(() => validateIommuHw({ ...good(), cachesNonPresent: true }, 'f')).not.toThrow();
  });

  it('rejects an unknown preset name with the list', () => {
    expect(() => iommuHwPreset('smmuv2')).toThrow(IommuError);
    expect(() => iommuHwPreset('smmuv2')).toThrow(/smmuv3-norange, smmuv3-range, intel-vtd, amd-vi/);
  });
});
