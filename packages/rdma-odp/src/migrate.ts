/**
 * Moving a range's pages to new frames. Kernel counterpart: mm/migrate.c (`migrate_pages` →
 * `migrate_pages_batch`, `try_to_migrate_one` in mm/rmap.c, `migrate_folio`), v6.x.
 *
 * Deliberate differences: pages mapped by more than one process are skipped (no rmap across
 * processes here; the kernel migrates them too); one invalidation per 4 KiB page (the kernel does
 * one per folio, the same for 4 KiB folios); a frame allocation failure stops the walk.
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { ptesIn } from './memory.js';
import { type MmCore, pageAlignedEnd, pteExclusive } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_CLEAR } from './mmu-notifier.js';

/**
 * Migrates the present pages of `[addr, addr + length)` to new frames (kernel: `migrate_pages`
 * → `try_to_migrate_one` + `migrate_folio`): per page, an `MMU_NOTIFY_CLEAR` invalidation,
 * then the contents are copied to a new frame, the entry (and the page cache) switched to it,
 * and the old frame freed after the notifiers ran. Pages shared with another process are skipped.
 * Returns the number of pages migrated, or -EINVAL.
 */
export function migratePages(core: MmCore, addr: number, length: number): number {
  if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
  const end = pageAlignedEnd(addr, length);
  const { machine, memMap } = core;
  let moved = 0;
  for (const vpn of ptesIn(core, addr, end)) {
    const pte = core.ptes.get(vpn)!;
    if (!pteExclusive(pte)) continue;
    const old = pte.page!;
    const page = memMap.allocPage();
    if (page === undefined) break;
    const start = vpn * PAGE_SIZE;
    const r = mmInvalidate(core, MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
      machine.phys.copy(page.pfn * PAGE_SIZE, old.pfn * PAGE_SIZE, PAGE_SIZE);
      page.dirty = old.dirty || pte.dirty;
      if (old.mapping !== undefined) {
        page.mapping = old.mapping;
        page.index = old.index;
        old.mapping.cache.set(old.index, page);
        memMap.getPage(page); // the cache's reference
        drop.push(old); // the cache's reference to the old frame
      }
      pte.page = page;
      drop.push(old);
    });
    if (r !== 0) {
      memMap.putPage(page);
      continue;
    }
    core.stats.migrations++;
    moved++;
  }
  return moved;
}
