/**
 * `iovaTreeWalkSteps`: the nodes `__alloc_and_insert_iova_range` visits (one per `rb_prev` step of
 * its top-down search), the quantity the cost model charges per step for a tree allocation.
 */
import { describe, expect, it } from 'vitest';
import { IovaDomain } from '../src/iova.js';
import { Machine } from '../src/machine.js';

const LIMIT = 0xfffff; // last pfn below 4 GiB with a 4 KiB granule

function setup() {
  const m = new Machine({ memSize: 16 << 20 });
  return { m, d: new IovaDomain(m, 4096, 1) };
}

describe('iovaTreeWalkSteps', () => {
  it('is one step per allocation in an unfragmented space (the cached node is the lowest)', () => {
    const { m, d } = setup();
    for (let i = 0; i < 33; i++) d.allocIova(1, LIMIT, false);
    expect(m.counters.iovaTreeWalkSteps).toBe(33);
    expect(m.counters.iovaTreeAllocs).toBe(33);
  });

  it('grows with the live nodes the search must pass: 16 one-page holes before a two-page fit', () => {
    const { m, d } = setup();
    const pfns: number[] = [];
    for (let i = 0; i < 33; i++) pfns.push(d.allocIova(1, LIMIT, false)!.pfnLo);
    // free A0, A2, ..., A30 (A0 is the highest): freeing A0 moves the 32-bit cached node to the
    // anchor (__cached_rbnode_delete_update), so the next search starts at the top
    for (let i = 0; i <= 30; i += 2) d.freeIova(pfns[i]!);
    const before = m.counters.iovaTreeWalkSteps;
    const got = d.allocIova(2, LIMIT, false)!;
    // anchor, then the 16 live odd nodes A1..A31 (each hole is one page), then A32, then nothing
    expect(m.counters.iovaTreeWalkSteps - before).toBe(1 + 16 + 1);
    expect(got.pfnLo).toBe(pfns[32]! - 2);
  });
});
