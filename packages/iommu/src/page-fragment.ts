/**
 * Fragmenting free memory on purpose: what the buddy allocator's free lists (mm/page_alloc.c,
 * v6.17) look like on a long-running host, where order-0 allocations come back physically
 * scattered. Used to build realistic buffers (no two pages adjacent, nothing merges into one DMA
 * segment). No kernel counterpart: the kernel gets there by uptime, not by a call.
 */
import { MachineError } from './errors.js';
import type { Machine } from './machine.js';
import { allocScatteredPageList } from './page-alloc.js';

/**
 * Leaves `pages` isolated free pages in the machine's page allocator by allocating `2 * pages`
 * single pages and freeing every other one in address order (`allocScatteredPageList`). Returns the kept (still allocated)
 * half in ascending address order; free them with `machine.pages.freePages(p, 0)`. Throws a
 * `MachineError` when memory runs out, with nothing left allocated.
 */
export function fragmentMemory(machine: Machine, pages: number): number[] {
  if (!Number.isSafeInteger(pages) || pages < 0) {
    throw new MachineError(`fragmentMemory: pages ${pages} is not a non-negative integer`, {
      rule: 'fragment: page count',
    });
  }
  const kept = allocScatteredPageList(machine.pages, pages);
  if (kept === null) {
    throw new MachineError(
      `fragmentMemory: out of memory taking ${2 * pages} pages to keep ${pages} isolated; expected fewer pages`,
      { rule: 'fragment: out of memory' },
    );
  }
  return kept;
}
