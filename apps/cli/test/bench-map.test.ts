/**
 * `bench map`'s modeled figures, checked against the cost model and the drivers' command rules:
 * the same work on two SMMUv3 presets differs in modeled unmap time by exactly the invalidation
 * commands each driver issues, priced by the cost model's own entries.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type BenchMapOptions, type BenchMapResult, benchMap } from '../src/commands/bench-map.js';
import { loadPreset } from '../src/cost-model.js';

function bench(extra: Partial<BenchMapOptions>): {
  hw: string;
  costModel: string;
  results: BenchMapResult[];
} {
  const o: BenchMapOptions = {
    threads: 1,
    seconds: 1,
    node: -1,
    bits: 32,
    dir: 0,
    delay: 0,
    granule: 1,
    mode: 'single',
    iommu: 'strict',
    loops: 40,
    json: true,
    ...extra,
  };
  return JSON.parse(benchMap(o));
}

describe('bench map --json (modeled)', () => {
  it('1 MiB strict unmap: smmuv3-norange costs 256 per-page TLBIs where smmuv3-range costs one range TLBI', () => {
    const m = loadPreset('arm-smmuv3');
    const no = bench({ hw: 'smmuv3-norange', granule: 256 }).results[0]!;
    const rng = bench({ hw: 'smmuv3-range', granule: 256 }).results[0]!;
    const page = m.events.iotlbInvPageCmds!.ns;
    const range = m.events.iotlbInvRangeCmds!.ns;
    expect((no.modeled.unmap.us - rng.modeled.unmap.us) * 1000).toBeCloseTo(256 * page - range, 6);
    expect(no.modeled.unmap.byCategoryNs.invalidation).toBeCloseTo(256 * page, 6);
    expect(rng.modeled.unmap.byCategoryNs.invalidation).toBeCloseTo(range, 6);
    // one CMD_SYNC per strict unmap on both; map issues no invalidation at all
    expect(no.modeled.unmap.byCategoryNs['sync-wait']).toBeCloseTo(m.events.iotlbInvSyncs!.ns, 6);
    expect(no.modeled.map.us).toBeCloseTo(rng.modeled.map.us, 9);
    expect(no.modeled.map.byCategoryNs.invalidation).toBe(0);
  });

  it('intel-vtd: one PSI + one wait per strict unmap, whatever the size (aligned IOVAs)', () => {
    const m = loadPreset('intel-vtd');
    for (const g of [1, 32, 256, 512]) {
      const j = bench({ hw: 'intel-vtd', granule: g });
      expect(j.costModel).toBe('intel-vtd');
      const r = j.results[0]!;
      const expected = g === 1 ? m.events.iotlbInvPageCmds!.ns : m.events.iotlbInvRangeCmds!.ns;
      expect(r.modeled.unmap.byCategoryNs.invalidation).toBeCloseTo(expected, 6);
      expect(r.modeled.unmap.byCategoryNs['sync-wait']).toBeCloseTo(m.events.iotlbInvSyncs!.ns, 6);
    }
  });

  it('--cost-model overrides the hardware default; the breakdown sums to the total', () => {
    const j = bench({ hw: 'amd-vi', costModel: 'arm-smmuv3', granule: 32 });
    expect(j.hw).toBe('amd-vi');
    expect(j.costModel).toBe('arm-smmuv3');
    const r = j.results[0]!;
    for (const op of [r.modeled.map, r.modeled.unmap]) {
      const sum = Object.values(op.byCategoryNs).reduce((a, b) => a + b, 0);
      expect(sum / 1000).toBeCloseTo(op.us, 9);
    }
  });

  it('simulator percentiles are ordered and labelled per batch', () => {
    for (const mode of ['single', 'link'] as const) {
      const r = bench({ mode, loops: 60 }).results[0]!;
      for (const s of [r.sim.map, r.sim.unmap]) {
        expect(s.min).toBeLessThanOrEqual(s.p50);
        expect(s.p50).toBeLessThanOrEqual(s.p90);
        expect(s.p90).toBeLessThanOrEqual(s.p99);
        expect(s.p99).toBeLessThanOrEqual(s.max);
        expect(s.batch).toBeGreaterThanOrEqual(1);
        expect(s.samples).toBe(Math.ceil(60 / s.batch));
      }
      expect(r.loops).toBe(60);
    }
  });

  it('--hw takes a JSON description and names what is wrong in a bad one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'iovalink-hw-'));
    const good = join(dir, 'vtd-small-mamv.json');
    writeFileSync(
      good,
      JSON.stringify({
        name: 'vtd-small-mamv',
        description: 'VT-d with CAP.MAMV = 4',
        kernel: 'v6.17',
        featureBits: ['cap_pgsel_inv', 'cap_max_amask_val=4'],
        costModel: 'intel-vtd',
        pgsizeBitmap: 0x40201000,
        iotlbEntries: 256,
        cachesNonPresent: false,
        invalidation: { kind: 'intel-vtd', pageSelective: true, maxAddressMask: 4 },
      }),
    );
    // 128 KiB = 32 pages: mask 5 > CAP.MAMV 4, so a domain-selective descriptor
    const m = loadPreset('intel-vtd');
    const r = bench({ hw: good, granule: 32 }).results[0]!;
    expect(r.modeled.unmap.byCategoryNs.invalidation).toBeCloseTo(m.events.iotlbInvDomainCmds!.ns, 6);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ name: 'x', tlbEntries: 3 }));
    expect(() => bench({ hw: bad })).toThrow(/unknown key "tlbEntries"/);
    expect(() => bench({ hw: 'smmuv4' })).toThrow(
      /not a preset \(smmuv3-norange, smmuv3-range, intel-vtd, amd-vi\)/,
    );
  });
});
