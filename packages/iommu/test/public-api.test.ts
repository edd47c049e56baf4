// The public entry's key signatures (checked by `tsc` over this file: `pnpm typecheck`) and what
// it must not export (checked at run time). The full surface is in api/index.api.md.
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../src/index.js';
import * as internal from '../src/internal.js';

describe('@iovalink/iommu public API', () => {
  it('counters: snapshot() and diffCounters compare two runs', () => {
    expectTypeOf<api.Counters['snapshot']>().returns.toEqualTypeOf<api.CounterSnapshot>();
    expectTypeOf(api.diffCounters).parameters.toEqualTypeOf<[api.CounterSnapshot, api.CounterSnapshot]>();
    expectTypeOf(api.diffCounters).returns.toEqualTypeOf<api.CounterSnapshot>();
    expectTypeOf<api.CounterSnapshot['events']>().toEqualTypeOf<Record<api.CounterName, number>>();
  });

  it('the machine, the IOMMU core and the page allocator helpers', () => {
    expectTypeOf(api.Machine).constructorParameters.toEqualTypeOf<[options?: api.MachineOptions]>();
    expectTypeOf(api.iommuMap).parameters.toEqualTypeOf<[api.IommuDomain, number, number, number, number]>();
    expectTypeOf(api.iommuMap).returns.toEqualTypeOf<number>(); // 0 or -errno
    expectTypeOf(api.iommuUnmap).returns.toEqualTypeOf<number>(); // bytes unmapped
    expectTypeOf(api.fragmentMemory).toEqualTypeOf<(machine: api.Machine, pages: number) => number[]>();
  });

  it('keeps the shared helpers out of the main entry and in ./internal', () => {
    const names = Object.keys(api);
    for (const n of ['hex', 'lo32', 'TWO32', 'INV_TWO32', 'getLe64', 'putLe64', 'alignUp', 'freeTablePage']) {
      expect(names, n).not.toContain(n);
      expect(Object.keys(internal), n).toContain(n);
    }
  });
});
