import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counters, diffCounters, IOMMU_HW_PRESETS, IOTLB_COMMAND_COUNTERS } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  COST_CATEGORIES,
  COST_MODEL_PRESETS,
  type CostModel,
  CostModelError,
  loadCostModel,
  loadPreset,
  modeledBreakdown,
  modeledNs,
  validateCostModel,
} from '../src/cost-model.js';

/** A small hand-written model: each figure chosen so the sums below can be checked by hand. */
function tinyModel(): CostModel {
  return validateCostModel(
    {
      name: 'tiny',
      events: {
        pteWrites: { ns: 2, category: 'page-table', source: 'test figure', estimate: true },
        iotlbInvRange: { ns: 100, category: 'invalidation', source: 'test figure', estimate: true },
        bounceBytes: { ns: 0.5, category: 'bounce', source: 'test figure', estimate: true },
      },
      metadata: {
        default: { allocNs: 7, freeNs: 3, category: 'metadata', source: 'test figure', estimate: true },
        kinds: {
          scatterlist: {
            allocNs: 11,
            freeNs: 5,
            category: 'scatterlist',
            source: 'test figure',
            estimate: true,
          },
        },
      },
    },
    'tiny',
  );
}

describe('modeledBreakdown', () => {
  it('sums count × cost into the entry category, metadata by kind (default for unlisted kinds)', () => {
    const c = new Counters();
    const before = c.snapshot();
    c.pteWrites += 10;
    c.iotlbInvRange += 3;
    c.bounceBytes += 4096;
    c.iommuMapCalls += 5; // no entry in the model: costs nothing
    c.kmalloc('scatterlist', 64);
    c.kmalloc('scatterlist', 64);
    c.kfree('scatterlist', 64);
    c.kmalloc('prp_list', 4096);
    const b = modeledBreakdown(tinyModel(), diffCounters(before, c.snapshot()));
    expect(Object.keys(b.byCategory).sort()).toEqual([...COST_CATEGORIES].sort());
    expect(b.byCategory['page-table']).toBe(20);
    expect(b.byCategory.invalidation).toBe(300);
    expect(b.byCategory.bounce).toBe(2048);
    expect(b.byCategory.scatterlist).toBe(2 * 11 + 5);
    expect(b.byCategory.metadata).toBe(7);
    expect(b.byCategory.iova).toBe(0);
    expect(b.totalNs).toBe(20 + 300 + 2048 + 27 + 7);
    expect(modeledNs(tinyModel(), diffCounters(before, c.snapshot()))).toBe(b.totalNs);
  });
});

describe('cost model presets', () => {
  it('every shipped entry has a category and a source; estimates say so', () => {
    for (const name of COST_MODEL_PRESETS) {
      const m = loadPreset(name);
      expect(Object.keys(m.events).length).toBeGreaterThan(15);
      const entries = [...Object.values(m.events), m.metadata.default, ...Object.values(m.metadata.kinds)];
      for (const e of entries) {
        expect(COST_CATEGORIES).toContain(e!.category);
        expect(e!.source.length).toBeGreaterThan(10);
        expect(typeof e!.estimate).toBe('boolean');
      }
    }
  });

  it('charges invalidation per command kind and per sync, not per IOTLB-model operation', () => {
    for (const name of COST_MODEL_PRESETS) {
      const m = loadPreset(name);
      for (const k of IOTLB_COMMAND_COUNTERS) expect(m.events[k]).toBeDefined();
      expect(m.events.iotlbInvSyncs!.category).toBe('sync-wait');
      // the IOTLB model's drops are not commands: charging them too would count twice
      expect(m.events.iotlbInvRange).toBeUndefined();
      expect(m.events.iotlbInvAll).toBeUndefined();
      // the tree walk has its own per-step figure
      expect(m.events.iovaTreeWalkSteps!.category).toBe('iova');
    }
  });

  it('every hardware preset names a shipped cost model', () => {
    for (const hw of Object.values(IOMMU_HW_PRESETS)) {
      expect(COST_MODEL_PRESETS as readonly string[]).toContain(hw.costModel);
    }
  });

  it('turns counts into modeled time as counts × costs', () => {
    const m = loadPreset('arm-smmuv3');
    const c = new Counters();
    const before = c.snapshot();
    c.iommuMapCalls += 2;
    c.pteWrites += 10;
    c.iotlbInvPageCmds += 256;
    c.iotlbInvSyncs += 1;
    c.kmalloc('scatterlist', 1024);
    const d = diffCounters(before, c.snapshot());
    const e = m.events;
    const expected =
      2 * e.iommuMapCalls!.ns +
      10 * e.pteWrites!.ns +
      256 * e.iotlbInvPageCmds!.ns +
      e.iotlbInvSyncs!.ns +
      m.metadata.kinds.scatterlist!.allocNs;
    expect(modeledNs(m, d)).toBeCloseTo(expected, 6);
  });
});

describe('validateCostModel / loadCostModel', () => {
  const entry = { ns: 2, category: 'page-table', source: 'measured on my box', estimate: false };
  const meta = { default: { allocNs: 1, freeNs: 1, category: 'metadata', source: 'x', estimate: true } };

  it('loads a user file and names what is wrong in a bad one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'iovalink-cm-'));
    const good = join(dir, 'good.json');
    writeFileSync(good, JSON.stringify({ name: 'mine', events: { pteWrites: entry }, metadata: meta }));
    expect(loadCostModel(good).events.pteWrites!.ns).toBe(2);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ name: 'b', events: { pteWritez: entry }, metadata: meta }));
    expect(() => loadCostModel(bad)).toThrow(CostModelError);
    expect(() => loadCostModel(bad)).toThrow(/unknown event "pteWritez"/);
    expect(() => loadCostModel(join(dir, 'missing.json'))).toThrow(/not a preset .* and not a readable file/);
  });

  it('rejects unknown keys, unknown categories and entries without a source or estimate flag', () => {
    const v =
      (events: unknown, extra: object = {}) =>
      () =>
        validateCostModel({ name: 'x', events, metadata: meta, ...extra }, 'm.json');
    expect(v({ pteWrites: { ...entry, nss: 1 } })).toThrow(/event "pteWrites": unknown key "nss"/);
    expect(v({ pteWrites: { ...entry, category: 'tlb' } })).toThrow(
      /"category" must be one of invalidation, sync-wait/,
    );
    expect(v({ pteWrites: { ...entry, source: '' } })).toThrow(/"source" must be a non-empty string/);
    const { estimate: _e, ...noFlag } = entry;
    expect(v({ pteWrites: noFlag })).toThrow(/"estimate" must be true or false/);
    expect(v({ pteWrites: { ...entry, ns: -1 } })).toThrow(/"ns" must be a number >= 0/);
    expect(v({}, { costs: {} })).toThrow(/unknown key "costs"/);
  });
});
