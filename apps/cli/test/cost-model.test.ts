import { Counters, diffCounters } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  COST_CATEGORIES,
  type CostModel,
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
