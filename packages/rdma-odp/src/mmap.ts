/**
 * Creating, splitting and removing VMAs, and tearing the whole address space down. Kernel
 * counterparts: mm/mmap.c (`do_mmap`, `get_unmapped_area`, `exit_mmap`) and mm/vma.c
 * (`split_vma`, `do_vmi_munmap`), v6.x.
 *
 * Deliberate differences: VMAs are a sorted array (the kernel uses a maple tree); no VMA merging;
 * a shared anonymous mapping gets its own shmem-like file.
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { alignUp } from '@iovalink/iommu/internal';
import type { MmFile } from './filemap.js';
import type { StructPage } from './mem-map.js';
import { zapPteRange } from './memory.js';
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MMAP_MIN_ADDR,
  type MmCore,
  PROT_READ,
  PROT_WRITE,
  pageAlignedEnd,
  TASK_SIZE,
  VM_READ,
  VM_SHARED,
  VM_WRITE,
  VmAreaStruct,
} from './mm-types.js';
import { mmInvalidate } from './mmu-gather.js';
import { MMU_NOTIFY_UNMAP } from './mmu-notifier.js';

/** The VMA containing `addr` (kernel: `vma_lookup`). */
export function vmaLookup(core: MmCore, addr: number): VmAreaStruct | undefined {
  for (const v of core.vmas) {
    if (addr < v.vmStart) return undefined;
    if (addr < v.vmEnd) return v;
  }
  return undefined;
}

/** A free, page-aligned gap of `len` bytes at or after `hint` (kernel: `get_unmapped_area`); 0 if none. */
function getUnmappedArea(core: MmCore, hint: number, len: number): number {
  let addr = Math.max(hint, MMAP_MIN_ADDR);
  for (const v of core.vmas) {
    if (v.vmEnd <= addr) continue;
    if (addr + len <= v.vmStart) break;
    addr = v.vmEnd;
  }
  return addr + len <= TASK_SIZE ? addr : 0;
}

/** Inserts a VMA in address order (kernel: `vma_link`). */
function vmaLink(core: MmCore, v: VmAreaStruct): void {
  const vmas = core.vmas;
  let i = 0;
  while (i < vmas.length && vmas[i]!.vmStart < v.vmStart) i++;
  vmas.splice(i, 0, v);
}

/** Splits the VMA containing `addr` so that a VMA starts at `addr` (kernel: `split_vma`). */
export function splitVma(core: MmCore, addr: number): void {
  const v = vmaLookup(core, addr);
  if (v === undefined || v.vmStart === addr) return;
  const tail = new VmAreaStruct(
    addr,
    v.vmEnd,
    v.vmFlags,
    v.vmFile,
    v.vmFile === undefined ? 0 : v.pgoffOf(addr),
  );
  v.vmEnd = addr;
  vmaLink(core, tail);
}

/**
 * Maps `length` bytes (kernel: `do_mmap`). `flags` takes exactly one of MAP_PRIVATE or
 * MAP_SHARED, plus MAP_ANONYMOUS (no `file`) and MAP_FIXED. A shared anonymous mapping gets its
 * own file from `createFile`. Returns the address or -EINVAL/-ENOMEM. Nothing is populated.
 */
export function doMmap(
  core: MmCore,
  createFile: (name: string, size: number) => MmFile,
  addr: number,
  length: number,
  prot: number,
  flags: number,
  file: MmFile | undefined,
  pgoff: number,
): number {
  const shared = (flags & MAP_SHARED) !== 0;
  const priv = (flags & MAP_PRIVATE) !== 0;
  const anon = (flags & MAP_ANONYMOUS) !== 0;
  if (shared === priv || !(length > 0) || (prot & ~(PROT_READ | PROT_WRITE)) !== 0) return -Errno.EINVAL;
  if (anon !== (file === undefined)) return -Errno.EINVAL;
  if (addr % PAGE_SIZE !== 0 || !Number.isSafeInteger(addr + length)) return -Errno.EINVAL;
  const len = alignUp(length, PAGE_SIZE);
  let start: number;
  if ((flags & MAP_FIXED) !== 0) {
    if (addr < PAGE_SIZE || addr + len > TASK_SIZE) return -Errno.EINVAL;
    const r = doMunmap(core, addr, len);
    if (r !== 0) return r;
    start = addr;
  } else {
    start = getUnmappedArea(core, addr, len);
    if (start === 0) return -Errno.ENOMEM;
  }
  let f = file;
  if (shared && f === undefined) f = createFile(`shmem@${start.toString(16)}`, len);
  let vmFlags = 0;
  if (prot & PROT_READ) vmFlags |= VM_READ;
  if (prot & PROT_WRITE) vmFlags |= VM_WRITE;
  if (shared) vmFlags |= VM_SHARED;
  vmaLink(core, new VmAreaStruct(start, start + len, vmFlags, f, f === undefined ? 0 : pgoff));
  return start;
}

/**
 * Unmaps `[addr, addr + length)` (kernel: `do_vmi_munmap`): one `MMU_NOTIFY_UNMAP` invalidation
 * over the range, page-table entries cleared, VMAs split or removed, frames freed after the
 * notifiers ran. Returns 0 or -EINVAL.
 */
export function doMunmap(core: MmCore, addr: number, length: number): number {
  if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
  const end = pageAlignedEnd(addr, length);
  const vmas = core.vmas;
  if (!vmas.some((v) => v.vmStart < end && v.vmEnd > addr)) return 0;
  splitVma(core, addr);
  splitVma(core, end);
  return mmInvalidate(core, MMU_NOTIFY_UNMAP, addr, end, true, (drop) => {
    zapPteRange(core, addr, end, drop);
    for (let i = vmas.length - 1; i >= 0; i--) {
      const v = vmas[i]!;
      if (v.vmStart >= addr && v.vmEnd <= end) vmas.splice(i, 1);
    }
  });
}

/**
 * Removes every entry and VMA and frees the frames (kernel: `exit_mmap`, after the caller's
 * `mmu_notifier_release`). When the last address space of the fork family goes, the files' page
 * caches are written back and dropped.
 */
export function exitMmap(core: MmCore): void {
  const drop: StructPage[] = [];
  zapPteRange(core, 0, TASK_SIZE, drop);
  core.vmas.length = 0;
  const memMap = core.memMap;
  for (const p of drop) memMap.putPage(p);
  memMap.liveMms--;
  if (memMap.liveMms === 0) {
    for (const f of memMap.files) f.evictUnmapped();
  }
}
