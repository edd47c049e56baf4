/**
 * Page faults and page-table walks of a process address space: demand paging (zeroed anonymous
 * page, page-cache page, swap-in), write-protect faults (reuse or copy-on-write), zapping a range,
 * and copying a VMA's entries at fork. Kernel counterpart: mm/memory.c (`handle_mm_fault`,
 * `do_anonymous_page`, `do_read_fault` / `do_cow_fault` / `do_shared_fault`, `do_swap_page`,
 * `do_wp_page` → `wp_page_reuse` / `wp_page_copy`, `zap_pte_range`, `copy_page_range`), v6.x.
 *
 * Deliberate differences: 4 KiB pages only; no shared zero page — a read fault on anonymous memory
 * allocates a zeroed private page (as when `mm_forbids_zeropage()`); a swap entry holds the bytes.
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import type { StructPage } from './mem-map.js';
import { type MmCore, type Pte, VM_SHARED, VM_WRITE, type VmAreaStruct } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_CLEAR } from './mmu-notifier.js';

const VM_FAULT_OK = 0;

/** Virtual page numbers with an entry in `[start, end)`, ascending (the walk of `walk_page_range`). */
export function ptesIn(core: MmCore, start: number, end: number): number[] {
  const ptes = core.ptes;
  const first = Math.floor(start / PAGE_SIZE);
  const last = Math.ceil(end / PAGE_SIZE);
  const out: number[] = [];
  if (last - first <= ptes.size) {
    for (let vpn = first; vpn < last; vpn++) if (ptes.has(vpn)) out.push(vpn);
  } else {
    for (const vpn of ptes.keys()) if (vpn >= first && vpn < last) out.push(vpn);
    out.sort((a, b) => a - b);
  }
  return out;
}

/** Removes the entries of `[start, end)`, collecting their frames (kernel: `zap_pte_range`). */
export function zapPteRange(core: MmCore, start: number, end: number, drop: StructPage[]): void {
  for (const vpn of ptesIn(core, start, end)) {
    const pte = core.ptes.get(vpn)!;
    if (pte.page !== undefined) {
      if (pte.dirty) pte.page.dirty = true;
      drop.push(pte.page);
    }
    core.ptes.delete(vpn);
  }
}

/**
 * Handles a fault at `addr` in `vma` (kernel: `handle_mm_fault`): populates a missing page
 * (zeroed anonymous page, page-cache page, or swap-in) and, for a write to a read-only entry,
 * reuses an exclusive anonymous page (no notifier, like `wp_page_reuse`) or copies it (COW: an
 * `MMU_NOTIFY_CLEAR` invalidation of the page before the entry is replaced). The caller has
 * checked that the address space is alive. Returns 0, or -ENOMEM / -EFAULT (kernel:
 * `VM_FAULT_ERROR`).
 */
export function handleMmFault(core: MmCore, vma: VmAreaStruct, addr: number, write: boolean): number {
  if (addr < vma.vmStart || addr >= vma.vmEnd) return -Errno.EFAULT;
  if (write && (vma.vmFlags & VM_WRITE) === 0) return -Errno.EFAULT;
  const vpn = Math.floor(addr / PAGE_SIZE);
  const pte = core.ptes.get(vpn);
  if (pte === undefined) {
    core.stats.faults++;
    return vma.vmFile === undefined
      ? doAnonymousPage(core, vma, vpn, write)
      : doFileFault(core, vma, vpn, addr, write);
  }
  if (pte.page === undefined) return doSwapPage(core, vma, pte, write);
  if (!write || pte.write) {
    if (write) pte.dirty = true;
    return VM_FAULT_OK;
  }
  core.stats.faults++;
  const old = pte.page;
  if ((vma.vmFlags & VM_SHARED) !== 0 || (old.mapping === undefined && old.refcount === 1)) {
    // wp_page_reuse: exclusive (or shared-mapping) page becomes writable, no notifier
    pte.write = true;
    pte.dirty = true;
    return VM_FAULT_OK;
  }
  return wpPageCopy(core, vpn, pte);
}

/** A fresh zeroed private page for a missing anonymous entry (kernel: `do_anonymous_page`). */
function doAnonymousPage(core: MmCore, vma: VmAreaStruct, vpn: number, write: boolean): number {
  const page = core.memMap.allocPage();
  if (page === undefined) return -Errno.ENOMEM;
  core.ptes.set(vpn, { page, write: (vma.vmFlags & VM_WRITE) !== 0, dirty: write, swap: undefined });
  return VM_FAULT_OK;
}

/**
 * A missing file-backed entry (kernel: `do_fault` → `do_shared_fault` / `do_read_fault` /
 * `do_cow_fault`): the page-cache page itself for a shared mapping or a private read, a private
 * copy of it for a private write.
 */
function doFileFault(core: MmCore, vma: VmAreaStruct, vpn: number, addr: number, write: boolean): number {
  const cache = vma.vmFile!.getCachePage(vma.pgoffOf(addr));
  if (cache === undefined) return -Errno.ENOMEM;
  if ((vma.vmFlags & VM_SHARED) !== 0) {
    core.memMap.getPage(cache);
    core.ptes.set(vpn, { page: cache, write: (vma.vmFlags & VM_WRITE) !== 0, dirty: write, swap: undefined });
    if (write) cache.dirty = true;
    return VM_FAULT_OK;
  }
  if (!write) {
    // private file page: map the page-cache copy read-only, copy on the first write
    core.memMap.getPage(cache);
    core.ptes.set(vpn, { page: cache, write: false, dirty: false, swap: undefined });
    return VM_FAULT_OK;
  }
  const page = core.memMap.allocPage();
  if (page === undefined) return -Errno.ENOMEM;
  core.machine.phys.copy(page.pfn * PAGE_SIZE, cache.pfn * PAGE_SIZE, PAGE_SIZE);
  core.ptes.set(vpn, { page, write: true, dirty: true, swap: undefined });
  return VM_FAULT_OK;
}

/** Reads a swapped-out page back into a new frame (kernel: `do_swap_page`). */
function doSwapPage(core: MmCore, vma: VmAreaStruct, pte: Pte, write: boolean): number {
  core.stats.faults++;
  const page = core.memMap.allocPage();
  if (page === undefined) return -Errno.ENOMEM;
  core.machine.phys.write(page.pfn * PAGE_SIZE, pte.swap!);
  pte.page = page;
  pte.swap = undefined;
  pte.write = (vma.vmFlags & VM_WRITE) !== 0;
  pte.dirty = write;
  core.stats.swapIns++;
  return VM_FAULT_OK;
}

/** Copies a shared page for a write (kernel: `wp_page_copy`): notifier first, old frame put after. */
function wpPageCopy(core: MmCore, vpn: number, pte: Pte): number {
  const start = vpn * PAGE_SIZE;
  const old = pte.page!;
  const page = core.memMap.allocPage();
  if (page === undefined) return -Errno.ENOMEM;
  core.machine.phys.copy(page.pfn * PAGE_SIZE, old.pfn * PAGE_SIZE, PAGE_SIZE);
  const r = mmInvalidate(core, MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
    pte.page = page;
    pte.write = true;
    pte.dirty = true;
    drop.push(old);
  });
  core.stats.cowBreaks++;
  return r;
}

/**
 * Copies the entries `vpns` of `vma` from `src` to `dst` at fork (kernel: `copy_page_range` →
 * `copy_pte_range`): swap entries are duplicated, present frames gain a reference; in a private
 * VMA both sides lose write permission (copy-on-write), in a shared one the child keeps the
 * parent's permission.
 */
export function copyPageRange(dst: MmCore, src: MmCore, vma: VmAreaStruct, vpns: number[]): void {
  const shared = (vma.vmFlags & VM_SHARED) !== 0;
  for (const vpn of vpns) {
    const pte = src.ptes.get(vpn)!;
    if (pte.page === undefined) {
      dst.ptes.set(vpn, { page: undefined, write: false, dirty: false, swap: pte.swap!.slice() });
      continue;
    }
    src.memMap.getPage(pte.page);
    if (!shared) pte.write = false;
    dst.ptes.set(vpn, { page: pte.page, write: shared && pte.write, dirty: pte.dirty, swap: undefined });
  }
}
