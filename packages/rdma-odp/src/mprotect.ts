/**
 * Changing the protection of a range. Kernel counterpart: mm/mprotect.c (`do_mprotect_pkey` →
 * `mprotect_fixup` → `change_protection`), v6.x.
 *
 * Deliberate differences: only `PROT_READ` / `PROT_WRITE`; one `MMU_NOTIFY_PROTECTION_VMA`
 * invalidation over the whole range when any page is populated (the kernel does one per VMA).
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { ptesIn } from './memory.js';
import {
  type MmCore,
  PROT_READ,
  PROT_WRITE,
  pageAlignedEnd,
  VM_READ,
  VM_SHARED,
  VM_WRITE,
} from './mm-types.js';
import { splitVma, vmaLookup } from './mmap.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_PROTECTION_VMA } from './mmu-notifier.js';

/**
 * Changes the protection of `[addr, addr + length)` (kernel: `mprotect` → `change_protection`):
 * VMAs split as needed; populated pages are invalidated with `MMU_NOTIFY_PROTECTION_VMA` and lose
 * write permission when PROT_WRITE goes away. Returns 0, -EINVAL, or -ENOMEM for a hole.
 */
export function doMprotect(core: MmCore, addr: number, length: number, prot: number): number {
  if (addr % PAGE_SIZE !== 0 || !(length > 0) || (prot & ~(PROT_READ | PROT_WRITE)) !== 0)
    return -Errno.EINVAL;
  const end = pageAlignedEnd(addr, length);
  for (let a = addr; a < end; ) {
    const v = vmaLookup(core, a);
    if (v === undefined) return -Errno.ENOMEM;
    a = v.vmEnd;
  }
  splitVma(core, addr);
  splitVma(core, end);
  const newFlags = (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0);
  const apply = (): void => {
    for (const v of core.vmas) {
      if (v.vmStart >= addr && v.vmEnd <= end) v.vmFlags = (v.vmFlags & VM_SHARED) | newFlags;
    }
    if ((prot & PROT_WRITE) === 0) {
      for (const vpn of ptesIn(core, addr, end)) core.ptes.get(vpn)!.write = false;
    }
  };
  if (ptesIn(core, addr, end).length === 0) {
    apply();
    return 0;
  }
  return mmInvalidate(core, MMU_NOTIFY_PROTECTION_VMA, addr, end, true, apply);
}
