/**
 * Discarding a range's pages on request. Kernel counterpart: mm/madvise.c, `MADV_DONTNEED`
 * (`madvise_dontneed_single_vma` → `zap_page_range_single`), v6.x.
 *
 * Deliberate differences: only `MADV_DONTNEED`; one invalidation over the whole range (the kernel
 * does one per VMA).
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { ptesIn, zapPteRange } from './memory.js';
import { type MmCore, pageAlignedEnd } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_CLEAR } from './mmu-notifier.js';

/**
 * Discards the pages of `[addr, addr + length)` (kernel: `madvise(MADV_DONTNEED)`): one
 * `MMU_NOTIFY_CLEAR` invalidation; private anonymous pages read back as zeros, file pages are
 * read again from the page cache. Returns 0 or -EINVAL.
 */
export function madviseDontneed(core: MmCore, addr: number, length: number): number {
  if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
  const end = pageAlignedEnd(addr, length);
  if (ptesIn(core, addr, end).length === 0) return 0;
  return mmInvalidate(core, MMU_NOTIFY_CLEAR, addr, end, true, (drop) => zapPteRange(core, addr, end, drop));
}
