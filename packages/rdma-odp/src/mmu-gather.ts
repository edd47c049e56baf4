/**
 * The bracket every page-changing event runs in: the mmu interval notifiers are told first, the
 * page table changes, the notifiers are told the invalidation ended, and only then are the old
 * frames released. Kernel counterparts: `mmu_notifier_invalidate_range_start` / `_end` around the
 * page-table change, and the mmu_gather that holds the pages until `tlb_finish_mmu` frees them
 * (mm/mmu_gather.c, include/asm-generic/tlb.h), v6.x.
 *
 * Deliberate differences: no CPU TLB (nothing to flush on the CPU side); the gathered pages are a
 * plain list freed after `invalidate_range_end`.
 */
import type { StructPage } from './mem-map.js';
import type { MmCore } from './mm-types.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  type MmuNotifierEvent,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierRangeInit,
} from './mmu-notifier.js';

/**
 * Runs the notifiers for `[start, end)`, lets `change` update the page table, ends the
 * invalidation, then drops the frames `change` collected — so no subscriber can still use a
 * frame when it is freed or reused. Returns 0 or -EAGAIN (non-blockable, nothing changed).
 * Kernel: the start / change / end / `tlb_finish_mmu` sequence of `zap_page_range_single`,
 * `change_protection`, `try_to_migrate_one` and `try_to_unmap_one`.
 */
export function mmInvalidate(
  core: MmCore,
  event: MmuNotifierEvent,
  start: number,
  end: number,
  blockable: boolean,
  change: (drop: StructPage[]) => void,
): number {
  const range = mmuNotifierRangeInit(
    event,
    blockable ? MMU_NOTIFIER_RANGE_BLOCKABLE : 0,
    core.mm,
    start,
    end,
  );
  const r = mmuNotifierInvalidateRangeStart(range);
  if (r !== 0) return r;
  core.stats.invalidations++;
  const drop: StructPage[] = [];
  try {
    change(drop);
  } finally {
    mmuNotifierInvalidateRangeEnd(range);
  }
  for (const p of drop) core.memMap.putPage(p);
  return 0;
}
