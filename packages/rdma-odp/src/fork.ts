/**
 * Copying an address space at fork. Kernel counterpart: kernel/fork.c (`dup_mmap`), which calls
 * `copy_page_range` (mm/memory.c) for each VMA, v6.x.
 *
 * Deliberate differences: the child shares the parent's `MemMap` (one fork family); no VMA
 * flags such as `VM_DONTCOPY` / `VM_WIPEONFORK`.
 */
import { copyPageRange, ptesIn } from './memory.js';
import { type MmCore, VM_SHARED, VmAreaStruct } from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_PROTECTION_PAGE } from './mmu-notifier.js';

/**
 * Copies `parent`'s VMAs and entries into the empty `child` (kernel: `dup_mmap` →
 * `copy_page_range`): shared mappings share frames; private mappings share frames copy-on-write —
 * each private VMA of the parent is first invalidated with `MMU_NOTIFY_PROTECTION_PAGE` and its
 * entries made read-only in both.
 */
export function dupMmap(child: MmCore, parent: MmCore): void {
  for (const v of parent.vmas) {
    child.vmas.push(new VmAreaStruct(v.vmStart, v.vmEnd, v.vmFlags, v.vmFile, v.vmPgoff));
    const vpns = ptesIn(parent, v.vmStart, v.vmEnd);
    if (vpns.length === 0) continue;
    const copy = (): void => copyPageRange(child, parent, v, vpns);
    if ((v.vmFlags & VM_SHARED) !== 0) copy();
    else mmInvalidate(parent, MMU_NOTIFY_PROTECTION_PAGE, v.vmStart, v.vmEnd, true, copy);
  }
}
