// Shared by the IOVA tests (iova.test.ts, iova-rcache.test.ts).
import { expect } from 'vitest';
import { IommuError } from '../src/errors.js';
import type { IovaDomain } from '../src/iova.js';
import type { Machine } from '../src/machine.js';

/**
 * Expects `fn` to throw an IommuError for `rule` and to leave the domain exactly as it was: its
 * ranges, rcaches, cached nodes and 32-bit hint, and the machine's counters.
 */
export function expectRejected(m: Machine, d: IovaDomain, rule: string, fn: () => void): void {
  const ranges = d.ranges();
  const rc = d.rcacheState();
  const counters = m.counters.snapshot();
  const cached = [d.cachedNode, d.cached32Node, d.max32AllocSize];
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(IommuError);
  expect((err as IommuError).rule).toBe(rule);
  expect(d.ranges()).toEqual(ranges);
  expect(d.rcacheState()).toEqual(rc);
  expect(m.counters.snapshot()).toEqual(counters);
  expect([d.cachedNode, d.cached32Node, d.max32AllocSize]).toEqual(cached);
  d.check();
}
