/**
 * Reclaiming a range's pages: anonymous pages to swap, file pages written back and dropped from
 * the page cache. Kernel counterpart: mm/vmscan.c (`shrink_folio_list` → `try_to_unmap` in
 * mm/rmap.c, `pageout`), v6.x, driven here per address range instead of from the LRU lists.
 *
 * Deliberate differences: no LRU, no scan control — the caller names the range; pages mapped by
 * more than one process are skipped (no rmap across processes); swap holds copies of the bytes in
 * the page-table entry.
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { ptesIn } from './memory.js';
import { type MmCore, pageAlignedEnd, pteExclusive } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_CLEAR } from './mmu-notifier.js';

/**
 * Reclaims the present pages of `[addr, addr + length)` (kernel: `shrink_folio_list` →
 * `try_to_unmap_one`, `pageout`): per page, an `MMU_NOTIFY_CLEAR` invalidation; anonymous pages
 * go to swap (their bytes kept in the entry), file pages are written back if dirty and dropped
 * from the page cache when no mapping uses them. Pages shared with another process are skipped.
 * Returns the number of pages reclaimed, or -EINVAL.
 */
export function reclaimRange(core: MmCore, addr: number, length: number): number {
  if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
  const end = pageAlignedEnd(addr, length);
  let n = 0;
  for (const vpn of ptesIn(core, addr, end)) {
    const pte = core.ptes.get(vpn)!;
    if (!pteExclusive(pte)) continue;
    const old = pte.page!;
    const start = vpn * PAGE_SIZE;
    const r = mmInvalidate(core, MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
      if (pte.dirty) old.dirty = true;
      if (old.mapping === undefined) {
        pte.swap = core.machine.phys.read(old.pfn * PAGE_SIZE, PAGE_SIZE);
        pte.page = undefined;
        pte.write = false;
        core.stats.swapOuts++;
      } else {
        core.ptes.delete(vpn);
        old.mapping.writeback(old);
        old.mapping.cache.delete(old.index);
        drop.push(old); // the cache's reference
      }
      drop.push(old);
    });
    if (r === 0) n++;
  }
  return n;
}
