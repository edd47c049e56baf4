/**
 * Fragmenting free memory on purpose: what the buddy allocator's free lists (mm/page_alloc.c,
 * v6.17) look like on a long-running host, where order-0 allocations come back physically
 * scattered. Used to build realistic buffers (no two pages adjacent, nothing merges into one DMA
 * segment). No kernel counterpart: the kernel gets there by uptime, not by a call.
 */
import { MachineError } from './errors.js';
import type { Machine } from './machine.js';

/**
 * Leaves `pages` isolated free pages in the machine's page allocator by allocating `2 * pages`
 * single pages and freeing every other one in address order. Returns the kept (still allocated)
 * half in ascending address order; free them with `machine.pages.freePages(p, 0)`. Throws a
 * `MachineError` when memory runs out, with nothing left allocated.
 */
export function fragmentMemory(machine: Machine, pages: number): number[] {
  if (!Number.isSafeInteger(pages) || pages < 0) {
    throw new MachineError(`fragmentMemory: pages ${pages} is not a non-negative integer`, {
      rule: 'fragment: page count',
    });
  }
  const all: number[] = [];
  for (let i = 0; i < 2 * pages; i++) {
    const p = machine.pages.allocPages(0);
    if (p === 0) {
      for (const q of all) machine.pages.freePages(q, 0);
      throw new MachineError(
        `fragmentMemory: out of memory after ${i} of ${2 * pages} pages; expected fewer pages`,
        {
          rule: 'fragment: out of memory',
        },
      );
    }
    all.push(p);
  }
  all.sort((a, b) => a - b);
  const keep: number[] = [];
  for (let i = 0; i < all.length; i++) {
    if (i % 2 === 0) keep.push(all[i] as number);
    else machine.pages.freePages(all[i] as number, 0);
  }
  return keep;
}
