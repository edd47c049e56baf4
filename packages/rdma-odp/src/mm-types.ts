/**
 * The types an address space is made of: protection and mapping flags, the VMA, the page-table
 * entry, and the state the per-unit files (mmap, memory, mprotect, migrate, vmscan, oom_kill,
 * fork) work on. Kernel counterparts: `struct vm_area_struct` (include/linux/mm_types.h), the
 * `VM_*` flags (include/linux/mm.h), `PROT_*` / `MAP_*` (include/uapi/asm-generic/mman*.h),
 * `TASK_SIZE` (arch/x86/include/asm/page_64_types.h), v6.x.
 *
 * Deliberate differences: a page-table entry is a small record in a map keyed by virtual page
 * number (no page-table pages, no THP); a swap entry carries the page's bytes itself.
 */
import { type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { alignUp } from '@iovalink/iommu/internal';
import type { MmFile } from './filemap.js';
import type { MemMap, StructPage } from './mem-map.js';
import type { MmNotifierHost } from './mmu-notifier.js';

/** Pages may be read (kernel: `PROT_READ`). */
export const PROT_READ = 0x1;
/** Pages may be written (kernel: `PROT_WRITE`). */
export const PROT_WRITE = 0x2;
/** Pages may not be accessed (kernel: `PROT_NONE`). */
export const PROT_NONE = 0x0;

/** Share changes with other mappings of the object (kernel: `MAP_SHARED`). */
export const MAP_SHARED = 0x01;
/** Changes are private, copy-on-write (kernel: `MAP_PRIVATE`). */
export const MAP_PRIVATE = 0x02;
/** Place the mapping exactly at `addr`, replacing what is there (kernel: `MAP_FIXED`). */
export const MAP_FIXED = 0x10;
/** Not backed by a file (kernel: `MAP_ANONYMOUS`). */
export const MAP_ANONYMOUS = 0x20;

/** VMA may be read (kernel: `VM_READ`). */
export const VM_READ = 0x1;
/** VMA may be written (kernel: `VM_WRITE`). */
export const VM_WRITE = 0x2;
/** VMA maps shared pages (kernel: `VM_SHARED`). */
export const VM_SHARED = 0x8;

/** Top of the user address space, x86-64 4-level paging (kernel: `TASK_SIZE`, 2^47). */
export const TASK_SIZE = 2 ** 47;
/** Where `mmap` without a hint starts looking (model choice). */
export const MMAP_MIN_ADDR = 0x10000000;

/** A virtual memory area (kernel: `struct vm_area_struct`). */
export class VmAreaStruct {
  vmStart: number;
  vmEnd: number;
  /** `VM_READ | VM_WRITE | VM_SHARED`. */
  vmFlags: number;
  /** Backing file, or undefined for private anonymous memory. */
  vmFile: MmFile | undefined;
  /** File page offset of `vmStart`. */
  vmPgoff: number;

  constructor(start: number, end: number, flags: number, file: MmFile | undefined, pgoff: number) {
    this.vmStart = start;
    this.vmEnd = end;
    this.vmFlags = flags;
    this.vmFile = file;
    this.vmPgoff = pgoff;
  }

  /** File page offset of the page holding `addr`. */
  pgoffOf(addr: number): number {
    return this.vmPgoff + Math.floor((addr - this.vmStart) / PAGE_SIZE);
  }
}

/** A page-table entry: a present frame, or a swap entry holding the page's bytes. */
export interface Pte {
  /** The mapped frame, undefined for a swap entry. */
  page: StructPage | undefined;
  /** Writable (kernel: `pte_write`); false for copy-on-write and after mprotect/fork. */
  write: boolean;
  /** Written through this entry (kernel: `pte_dirty`). */
  dirty: boolean;
  /** Swapped-out bytes (kernel: a swap entry). */
  swap: Uint8Array | undefined;
}

/** A resolved mapping, for checkers and tests. */
export interface PteInfo {
  phys: number;
  pfn: number;
  write: boolean;
}

/** Counts of what the address space did. */
export interface MmStats {
  /** Demand faults handled (kernel: `pgfault`). */
  faults: number;
  /** Copy-on-write copies (kernel: part of `pgfault`, `wp_page_copy`). */
  cowBreaks: number;
  /** Pages migrated (kernel: `pgmigrate_success`). */
  migrations: number;
  /** Pages swapped out (kernel: `pswpout`). */
  swapOuts: number;
  /** Pages swapped in (kernel: `pswpin`). */
  swapIns: number;
  /** Invalidation events started (one per `invalidate_range_start`). */
  invalidations: number;
  /** `hmm_range_fault` calls on this address space. */
  hmmCalls: number;
  /** Pages `hmm_range_fault` handed to `handle_mm_fault`. */
  hmmPagesFaulted: number;
  /** `hmm_range_fault` returns of -EBUSY (the notifier sequence changed). */
  hmmBusy: number;
}

/** Options of a new address space. */
export interface MmOptions {
  /** Name for messages (default `"mm"`). */
  name?: string;
}

/**
 * What the per-unit functions work on: the parts of one `Mm` (kernel: the fields of
 * `struct mm_struct` those functions reach). `Mm` hands its private page table to them through
 * this record only; it is not part of the package's public API.
 */
export interface MmCore {
  /** The address space itself, as the notifiers see it. */
  readonly mm: MmNotifierHost;
  readonly machine: Machine;
  readonly memMap: MemMap;
  /** VMAs sorted by start (kernel: the maple tree). */
  readonly vmas: VmAreaStruct[];
  /** Virtual page number → entry (kernel: the page tables). */
  readonly ptes: Map<number, Pte>;
  readonly stats: MmStats;
}

/** End of `[addr, addr + length)` rounded up to whole pages (kernel: `PAGE_ALIGN(start + len)`). */
export function pageAlignedEnd(addr: number, length: number): number {
  return addr + alignUp(length, PAGE_SIZE);
}

/**
 * True when the frame of `pte` is used by this process only: one reference for an anonymous page,
 * two (this entry and the page cache) for a file page. Kernel counterpart: the mapcount checks of
 * `folio_mapcount` / `PageAnonExclusive` (include/linux/mm.h); here without rmap across processes.
 */
export function pteExclusive(pte: Pte): boolean {
  const p = pte.page;
  if (p === undefined) return false;
  return p.mapping === undefined ? p.refcount === 1 : p.refcount === 2;
}
