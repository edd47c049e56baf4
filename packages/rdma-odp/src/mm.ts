/**
 * A process address space: VMAs with permissions (anonymous private, anonymous shared, file
 * backed), a page table mapping virtual pages to frames of the machine's page allocator, demand
 * paging (a CPU touch or an HMM fault populates a page), copy-on-write after fork and for private
 * file pages, and the events that remove or move pages — munmap, mprotect, page migration,
 * reclaim to swap (and write-back of dirty file pages), the OOM reaper, fork, exit. Every event
 * that changes or frees a page first runs the mmu interval notifiers covering it, and frees the old
 * frame only after `invalidate_range_end`: a subscriber (an ODP NIC) has stopped using a frame
 * before it can be reused.
 *
 * Kernel counterparts: `struct mm_struct`/`struct vm_area_struct` (include/linux/mm_types.h),
 * mm/mmap.c + mm/vma.c (mmap, munmap, VMA split), mm/memory.c (`handle_mm_fault`,
 * `do_anonymous_page`, `do_wp_page`, `do_swap_page`, `zap_page_range`, `copy_page_range`),
 * mm/mprotect.c, mm/migrate.c (`migrate_pages` → `try_to_migrate`), mm/vmscan.c
 * (`shrink_folio_list` → `try_to_unmap`, `pageout`), mm/oom_kill.c (`__oom_reap_task_mm`),
 * kernel/fork.c (`dup_mmap`), `struct page` refcounts (mem_map). Event types as in v6.x.
 *
 * Deliberate differences: 4 KiB pages only (no THP, no hugetlb); no shared zero page — a read
 * fault on anonymous memory allocates a zeroed private page (as when `mm_forbids_zeropage()`);
 * no rmap across processes, so migration and reclaim skip pages mapped by more than one process
 * (the kernel migrates those too, through rmap); one invalidation per page for migration and
 * reclaim (the kernel does one per folio, which for 4 KiB folios is the same); swap holds copies
 * of the bytes; files exist only inside one fork family (`mm.createFile`).
 */
import { Errno, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { OdpError } from './errors.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_UNMAP,
  type MmNotifierHost,
  type MmuNotifierEvent,
  MmuNotifierSubscriptions,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierRangeInit,
  mmuNotifierRelease,
} from './mmu-notifier.js';

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

/** Metadata of one frame (kernel: `struct page` / `struct folio`: refcount, mapping, index, dirty). */
export class StructPage {
  readonly pfn: number;
  /** References: page-table entries plus the page cache's own (kernel: `_refcount`). */
  refcount = 1;
  /** The file whose page cache holds the page (kernel: `folio->mapping`). */
  mapping: MmFile | undefined;
  /** Page offset in that file (kernel: `folio->index`). */
  index = 0;
  /** Modified since last written back (kernel: `PG_dirty`). */
  dirty = false;

  constructor(pfn: number) {
    this.pfn = pfn;
  }
}

/**
 * The frames one fork family uses, with their refcounts (kernel: `mem_map`, the `struct page`
 * array). Shared by a parent and its forked children, so a copy-on-write frame is freed when its
 * last user drops it.
 */
export class MemMap {
  readonly machine: Machine;
  readonly #pages = new Map<number, StructPage>();
  /** Address spaces of the family still alive; files are dropped when the last one exits. */
  liveMms = 0;
  /** Files created in this family. */
  readonly files = new Set<MmFile>();

  constructor(machine: Machine) {
    this.machine = machine;
  }

  /** Allocates a zeroed frame with refcount 1 (kernel: `alloc_page` + `clear_page`); undefined when out of memory. */
  allocPage(): StructPage | undefined {
    const phys = this.machine.pages.allocPages(0);
    if (phys === 0) return undefined;
    this.machine.phys.fill(phys, PAGE_SIZE, 0);
    const page = new StructPage(phys / PAGE_SIZE);
    this.#pages.set(page.pfn, page);
    return page;
  }

  /** The metadata of a frame this family owns. */
  page(pfn: number): StructPage | undefined {
    return this.#pages.get(pfn);
  }

  /** Takes a reference (kernel: `get_page`). */
  getPage(page: StructPage): void {
    page.refcount++;
  }

  /** Drops a reference; the last one frees the frame (kernel: `put_page`). */
  putPage(page: StructPage): void {
    if (page.refcount <= 0) {
      throw new OdpError(`put_page: pfn 0x${page.pfn.toString(16)} has no references left`, {
        rule: 'put_page: refcount underflow',
      });
    }
    page.refcount--;
    if (page.refcount === 0) {
      this.#pages.delete(page.pfn);
      this.machine.pages.freePages(page.pfn * PAGE_SIZE, 0);
    }
  }

  /** Marks a page dirty (kernel: `set_page_dirty`). */
  setPageDirty(pfn: number): void {
    const p = this.#pages.get(pfn);
    if (p !== undefined) p.dirty = true;
  }

  /** Frames currently owned. */
  get nrPages(): number {
    return this.#pages.size;
  }
}

/**
 * A file (or shmem object) with a page cache: bytes live in `backing` (the "disk"), pages being
 * used sit in the cache. Kernel counterpart: `struct address_space` of an inode, reduced to
 * read-in, write-back and eviction. Created with `mm.createFile`.
 */
export class MmFile {
  readonly name: string;
  readonly memMap: MemMap;
  /** Size in bytes. */
  size: number;
  /** Page offset → frame in the page cache (kernel: `i_pages`). */
  readonly cache = new Map<number, StructPage>();
  /** Page offset → contents on "disk". */
  readonly backing = new Map<number, Uint8Array>();
  /** Pages written back so far. */
  writebacks = 0;

  constructor(memMap: MemMap, name: string, size: number) {
    this.memMap = memMap;
    this.name = name;
    this.size = size;
  }

  /** Reads bytes of the file as stored on "disk" (cache not consulted). */
  readBacking(pgoff: number): Uint8Array {
    return this.backing.get(pgoff) ?? new Uint8Array(PAGE_SIZE);
  }

  /**
   * The cached page at `pgoff`, reading it in when absent (kernel: `filemap_fault` →
   * `filemap_read_folio`). The cache holds one reference. Undefined when out of memory.
   */
  getCachePage(pgoff: number): StructPage | undefined {
    let page = this.cache.get(pgoff);
    if (page !== undefined) return page;
    page = this.memMap.allocPage();
    if (page === undefined) return undefined;
    const data = this.backing.get(pgoff);
    if (data !== undefined) this.memMap.machine.phys.write(page.pfn * PAGE_SIZE, data);
    page.mapping = this;
    page.index = pgoff;
    this.cache.set(pgoff, page);
    return page;
  }

  /** Writes a dirty cached page back to "disk" (kernel: `pageout` → `writepage`). */
  writeback(page: StructPage): void {
    if (!page.dirty) return;
    this.backing.set(page.index, this.memMap.machine.phys.read(page.pfn * PAGE_SIZE, PAGE_SIZE));
    page.dirty = false;
    this.writebacks++;
  }

  /** Writes back and drops every cached page that no mapping uses (kernel: `invalidate_mapping_pages`). */
  evictUnmapped(): number {
    let n = 0;
    for (const [pgoff, page] of [...this.cache]) {
      if (page.refcount !== 1) continue;
      this.writeback(page);
      this.cache.delete(pgoff);
      this.memMap.putPage(page);
      n++;
    }
    return n;
  }
}

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

const VM_FAULT_OK = 0;

/**
 * A process address space (kernel: `struct mm_struct`). CPU accesses go through `read`/`write`,
 * which fault pages in on demand; HMM walks it with `findVma`/`pteOf`/`handleMmFault`.
 */
export class Mm implements MmNotifierHost {
  readonly machine: Machine;
  readonly name: string;
  readonly memMap: MemMap;
  readonly notifierSubscriptions = new MmuNotifierSubscriptions();
  /** VMAs sorted by start (kernel: the maple tree). */
  readonly vmas: VmAreaStruct[] = [];
  /** Virtual page number → entry (kernel: the page tables). */
  readonly #ptes = new Map<number, Pte>();
  #users = 1;
  readonly stats: MmStats = {
    faults: 0,
    cowBreaks: 0,
    migrations: 0,
    swapOuts: 0,
    swapIns: 0,
    invalidations: 0,
    hmmCalls: 0,
    hmmPagesFaulted: 0,
    hmmBusy: 0,
  };

  constructor(machine: Machine, options: MmOptions = {}, memMap?: MemMap) {
    this.machine = machine;
    this.name = options.name ?? 'mm';
    this.memMap = memMap ?? new MemMap(machine);
    this.memMap.liveMms++;
  }

  /** Users of the address space; 0 after `exit` (kernel: `mm_users`). */
  get mmUsers(): number {
    return this.#users;
  }

  /** Number of page-table entries (present or swapped). */
  get nrPtes(): number {
    return this.#ptes.size;
  }

  /** Creates a file in this fork family (kernel: `open` of a tmpfs file, `ftruncate`). */
  createFile(name: string, size: number): MmFile {
    const f = new MmFile(this.memMap, name, size);
    this.memMap.files.add(f);
    return f;
  }

  /** The VMA containing `addr` (kernel: `vma_lookup`). */
  findVma(addr: number): VmAreaStruct | undefined {
    for (const v of this.vmas) {
      if (addr < v.vmStart) return undefined;
      if (addr < v.vmEnd) return v;
    }
    return undefined;
  }

  /** The entry mapping the page of `addr`, if any. */
  pteOf(addr: number): Pte | undefined {
    return this.#ptes.get(Math.floor(addr / PAGE_SIZE));
  }

  /** Where `addr` is mapped now, or undefined (kernel: `follow_pte`). */
  followPte(addr: number): PteInfo | undefined {
    const pte = this.pteOf(addr);
    if (pte?.page === undefined) return undefined;
    return { pfn: pte.page.pfn, phys: pte.page.pfn * PAGE_SIZE + (addr % PAGE_SIZE), write: pte.write };
  }

  #checkAlive(what: string): void {
    if (this.#users <= 0) {
      throw new OdpError(`${what}: ${this.name} has exited`, { rule: `${what}: mm exited` });
    }
  }

  // ---- mapping ---------------------------------------------------------------------------

  /** A free, page-aligned gap of `len` bytes at or after `hint` (kernel: `get_unmapped_area`); 0 if none. */
  #unmappedArea(hint: number, len: number): number {
    let addr = Math.max(hint, MMAP_MIN_ADDR);
    for (const v of this.vmas) {
      if (v.vmEnd <= addr) continue;
      if (addr + len <= v.vmStart) break;
      addr = v.vmEnd;
    }
    return addr + len <= TASK_SIZE ? addr : 0;
  }

  #insertVma(v: VmAreaStruct): void {
    let i = 0;
    while (i < this.vmas.length && this.vmas[i]!.vmStart < v.vmStart) i++;
    this.vmas.splice(i, 0, v);
  }

  /**
   * Maps `length` bytes (kernel: `mmap`/`do_mmap`). `flags` takes exactly one of MAP_PRIVATE or
   * MAP_SHARED, plus MAP_ANONYMOUS (no `file`) and MAP_FIXED. A shared anonymous mapping gets its
   * own shmem-like file. Returns the address or -EINVAL/-ENOMEM. Nothing is populated.
   */
  mmap(addr: number, length: number, prot: number, flags: number, file?: MmFile, pgoff = 0): number {
    this.#checkAlive('mmap');
    const shared = (flags & MAP_SHARED) !== 0;
    const priv = (flags & MAP_PRIVATE) !== 0;
    const anon = (flags & MAP_ANONYMOUS) !== 0;
    if (shared === priv || !(length > 0) || (prot & ~(PROT_READ | PROT_WRITE)) !== 0) return -Errno.EINVAL;
    if (anon !== (file === undefined)) return -Errno.EINVAL;
    if (addr % PAGE_SIZE !== 0 || !Number.isSafeInteger(addr + length)) return -Errno.EINVAL;
    const len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    let start: number;
    if ((flags & MAP_FIXED) !== 0) {
      if (addr < PAGE_SIZE || addr + len > TASK_SIZE) return -Errno.EINVAL;
      const r = this.munmap(addr, len);
      if (r !== 0) return r;
      start = addr;
    } else {
      start = this.#unmappedArea(addr, len);
      if (start === 0) return -Errno.ENOMEM;
    }
    let f = file;
    if (shared && f === undefined) f = this.createFile(`shmem@${start.toString(16)}`, len);
    let vmFlags = 0;
    if (prot & PROT_READ) vmFlags |= VM_READ;
    if (prot & PROT_WRITE) vmFlags |= VM_WRITE;
    if (shared) vmFlags |= VM_SHARED;
    this.#insertVma(new VmAreaStruct(start, start + len, vmFlags, f, f === undefined ? 0 : pgoff));
    return start;
  }

  /** Splits the VMA containing `addr` so that a VMA starts at `addr` (kernel: `split_vma`). */
  #splitAt(addr: number): void {
    const v = this.findVma(addr);
    if (v === undefined || v.vmStart === addr) return;
    const tail = new VmAreaStruct(
      addr,
      v.vmEnd,
      v.vmFlags,
      v.vmFile,
      v.vmFile === undefined ? 0 : v.pgoffOf(addr),
    );
    v.vmEnd = addr;
    this.#insertVma(tail);
  }

  /**
   * Runs the notifiers for `[start, end)`, lets `change` update the page table, ends the
   * invalidation, then drops the frames `change` collected — so no subscriber can still use a
   * frame when it is freed or reused. Returns 0 or -EAGAIN (non-blockable, nothing changed).
   */
  #invalidate(
    event: MmuNotifierEvent,
    start: number,
    end: number,
    blockable: boolean,
    change: (drop: StructPage[]) => void,
  ): number {
    const range = mmuNotifierRangeInit(event, blockable ? MMU_NOTIFIER_RANGE_BLOCKABLE : 0, this, start, end);
    const r = mmuNotifierInvalidateRangeStart(range);
    if (r !== 0) return r;
    this.stats.invalidations++;
    const drop: StructPage[] = [];
    try {
      change(drop);
    } finally {
      mmuNotifierInvalidateRangeEnd(range);
    }
    for (const p of drop) this.memMap.putPage(p);
    return 0;
  }

  /** Virtual page numbers with an entry in `[start, end)`, ascending. */
  #ptesIn(start: number, end: number): number[] {
    const first = Math.floor(start / PAGE_SIZE);
    const last = Math.ceil(end / PAGE_SIZE);
    const out: number[] = [];
    if (last - first <= this.#ptes.size) {
      for (let vpn = first; vpn < last; vpn++) if (this.#ptes.has(vpn)) out.push(vpn);
    } else {
      for (const vpn of this.#ptes.keys()) if (vpn >= first && vpn < last) out.push(vpn);
      out.sort((a, b) => a - b);
    }
    return out;
  }

  /** Removes the entries of `[start, end)`, collecting their frames (kernel: `zap_pte_range`). */
  #zap(start: number, end: number, drop: StructPage[]): void {
    for (const vpn of this.#ptesIn(start, end)) {
      const pte = this.#ptes.get(vpn)!;
      if (pte.page !== undefined) {
        if (pte.dirty) pte.page.dirty = true;
        drop.push(pte.page);
      }
      this.#ptes.delete(vpn);
    }
  }

  /**
   * Unmaps `[addr, addr + length)` (kernel: `munmap` → `do_vmi_munmap`): one `MMU_NOTIFY_UNMAP`
   * invalidation over the range, page-table entries cleared, VMAs split or removed, frames freed
   * after the notifiers ran. Returns 0 or -EINVAL.
   */
  munmap(addr: number, length: number): number {
    this.#checkAlive('munmap');
    if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    if (!this.vmas.some((v) => v.vmStart < end && v.vmEnd > addr)) return 0;
    this.#splitAt(addr);
    this.#splitAt(end);
    return this.#invalidate(MMU_NOTIFY_UNMAP, addr, end, true, (drop) => {
      this.#zap(addr, end, drop);
      for (let i = this.vmas.length - 1; i >= 0; i--) {
        const v = this.vmas[i]!;
        if (v.vmStart >= addr && v.vmEnd <= end) this.vmas.splice(i, 1);
      }
    });
  }

  /**
   * Discards the pages of `[addr, addr + length)` (kernel: `madvise(MADV_DONTNEED)`): one
   * `MMU_NOTIFY_CLEAR` invalidation; private anonymous pages read back as zeros, file pages are
   * read again from the page cache. Returns 0 or -EINVAL.
   */
  madviseDontneed(addr: number, length: number): number {
    this.#checkAlive('madvise');
    if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    if (this.#ptesIn(addr, end).length === 0) return 0;
    return this.#invalidate(MMU_NOTIFY_CLEAR, addr, end, true, (drop) => this.#zap(addr, end, drop));
  }

  /**
   * Changes the protection of `[addr, addr + length)` (kernel: `mprotect` → `change_protection`):
   * VMAs split as needed; populated pages are invalidated with `MMU_NOTIFY_PROTECTION_VMA` and lose
   * write permission when PROT_WRITE goes away. Returns 0, -EINVAL, or -ENOMEM for a hole.
   */
  mprotect(addr: number, length: number, prot: number): number {
    this.#checkAlive('mprotect');
    if (addr % PAGE_SIZE !== 0 || !(length > 0) || (prot & ~(PROT_READ | PROT_WRITE)) !== 0)
      return -Errno.EINVAL;
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    for (let a = addr; a < end; ) {
      const v = this.findVma(a);
      if (v === undefined) return -Errno.ENOMEM;
      a = v.vmEnd;
    }
    this.#splitAt(addr);
    this.#splitAt(end);
    const newFlags = (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0);
    const apply = (): void => {
      for (const v of this.vmas) {
        if (v.vmStart >= addr && v.vmEnd <= end) v.vmFlags = (v.vmFlags & VM_SHARED) | newFlags;
      }
      if ((prot & PROT_WRITE) === 0) {
        for (const vpn of this.#ptesIn(addr, end)) this.#ptes.get(vpn)!.write = false;
      }
    };
    if (this.#ptesIn(addr, end).length === 0) {
      apply();
      return 0;
    }
    return this.#invalidate(MMU_NOTIFY_PROTECTION_VMA, addr, end, true, apply);
  }

  // ---- faults ----------------------------------------------------------------------------

  /**
   * Handles a fault at `addr` in `vma` (kernel: `handle_mm_fault`): populates a missing page
   * (zeroed anonymous page, page-cache page, or swap-in) and, for a write to a read-only entry,
   * reuses an exclusive anonymous page (no notifier, like `wp_page_reuse`) or copies it (COW: an
   * `MMU_NOTIFY_CLEAR` invalidation of the page before the entry is replaced). The caller has
   * checked the VMA's permissions. Returns 0, or -ENOMEM / -EFAULT (kernel: `VM_FAULT_ERROR`).
   */
  handleMmFault(vma: VmAreaStruct, addr: number, write: boolean): number {
    this.#checkAlive('handle_mm_fault');
    if (addr < vma.vmStart || addr >= vma.vmEnd) return -Errno.EFAULT;
    if (write && (vma.vmFlags & VM_WRITE) === 0) return -Errno.EFAULT;
    const vpn = Math.floor(addr / PAGE_SIZE);
    const pte = this.#ptes.get(vpn);
    const canWrite = (vma.vmFlags & VM_WRITE) !== 0;
    if (pte === undefined) {
      this.stats.faults++;
      if (vma.vmFile === undefined) {
        const page = this.memMap.allocPage();
        if (page === undefined) return -Errno.ENOMEM;
        this.#ptes.set(vpn, { page, write: canWrite, dirty: write, swap: undefined });
        return VM_FAULT_OK;
      }
      const cache = vma.vmFile.getCachePage(vma.pgoffOf(addr));
      if (cache === undefined) return -Errno.ENOMEM;
      if ((vma.vmFlags & VM_SHARED) !== 0) {
        this.memMap.getPage(cache);
        this.#ptes.set(vpn, { page: cache, write: canWrite, dirty: write, swap: undefined });
        if (write) cache.dirty = true;
        return VM_FAULT_OK;
      }
      if (!write) {
        // private file page: map the page-cache copy read-only, copy on the first write
        this.memMap.getPage(cache);
        this.#ptes.set(vpn, { page: cache, write: false, dirty: false, swap: undefined });
        return VM_FAULT_OK;
      }
      const page = this.memMap.allocPage();
      if (page === undefined) return -Errno.ENOMEM;
      this.machine.phys.copy(page.pfn * PAGE_SIZE, cache.pfn * PAGE_SIZE, PAGE_SIZE);
      this.#ptes.set(vpn, { page, write: true, dirty: true, swap: undefined });
      return VM_FAULT_OK;
    }
    if (pte.page === undefined) {
      // swap entry
      this.stats.faults++;
      const page = this.memMap.allocPage();
      if (page === undefined) return -Errno.ENOMEM;
      this.machine.phys.write(page.pfn * PAGE_SIZE, pte.swap!);
      pte.page = page;
      pte.swap = undefined;
      pte.write = canWrite;
      pte.dirty = write;
      this.stats.swapIns++;
      return VM_FAULT_OK;
    }
    if (!write || pte.write) {
      if (write) pte.dirty = true;
      return VM_FAULT_OK;
    }
    this.stats.faults++;
    const old = pte.page;
    if ((vma.vmFlags & VM_SHARED) !== 0 || (old.mapping === undefined && old.refcount === 1)) {
      // wp_page_reuse: exclusive (or shared-mapping) page becomes writable, no notifier
      pte.write = true;
      pte.dirty = true;
      return VM_FAULT_OK;
    }
    return this.#cowBreak(vpn, pte);
  }

  /** Copies a shared page for a write (kernel: `wp_page_copy`): notifier first, old frame put after. */
  #cowBreak(vpn: number, pte: Pte): number {
    const start = vpn * PAGE_SIZE;
    const old = pte.page!;
    const page = this.memMap.allocPage();
    if (page === undefined) return -Errno.ENOMEM;
    this.machine.phys.copy(page.pfn * PAGE_SIZE, old.pfn * PAGE_SIZE, PAGE_SIZE);
    const r = this.#invalidate(MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
      pte.page = page;
      pte.write = true;
      pte.dirty = true;
      drop.push(old);
    });
    this.stats.cowBreaks++;
    return r;
  }

  /** Faults the page of `addr` in for a CPU access; throws SIGSEGV/SIGBUS as an OdpError. */
  #cpuPage(addr: number, write: boolean): Pte {
    const vma = this.findVma(addr);
    const need = write ? VM_WRITE : VM_READ;
    if (vma === undefined || (vma.vmFlags & need) === 0) {
      throw new OdpError(
        `${this.name}: ${write ? 'write' : 'read'} at 0x${addr.toString(16)}: ${vma === undefined ? 'no mapping' : 'permission denied'} (SIGSEGV)`,
        { rule: 'cpu access: SIGSEGV', errno: -Errno.EFAULT },
      );
    }
    let pte = this.pteOf(addr);
    if (pte?.page === undefined || (write && !pte.write)) {
      const r = this.handleMmFault(vma, addr, write);
      if (r !== 0) {
        throw new OdpError(`${this.name}: fault at 0x${addr.toString(16)} failed with ${r} (SIGBUS)`, {
          rule: 'cpu access: SIGBUS',
          errno: r,
        });
      }
      pte = this.pteOf(addr)!;
    }
    return pte;
  }

  /** A CPU load of `len` bytes at `addr`, faulting pages in as needed. Throws on SIGSEGV. */
  read(addr: number, len: number): Uint8Array {
    this.#checkAlive('read');
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const a = addr + done;
      const n = Math.min(PAGE_SIZE - (a % PAGE_SIZE), len - done);
      const pte = this.#cpuPage(a, false);
      this.machine.phys.readInto(pte.page!.pfn * PAGE_SIZE + (a % PAGE_SIZE), out.subarray(done, done + n));
      done += n;
    }
    return out;
  }

  /** A CPU store of `data` at `addr`, faulting pages in (and breaking COW) as needed. Throws on SIGSEGV. */
  write(addr: number, data: Uint8Array): void {
    this.#checkAlive('write');
    let done = 0;
    while (done < data.length) {
      const a = addr + done;
      const n = Math.min(PAGE_SIZE - (a % PAGE_SIZE), data.length - done);
      const pte = this.#cpuPage(a, true);
      this.machine.phys.write(pte.page!.pfn * PAGE_SIZE + (a % PAGE_SIZE), data.subarray(done, done + n));
      pte.dirty = true;
      pte.page!.dirty = true;
      done += n;
    }
  }

  // ---- events that move or drop pages ----------------------------------------------------

  /** True when the frame of `pte` is used by this process only (no rmap across processes here). */
  #exclusive(pte: Pte): boolean {
    const p = pte.page;
    if (p === undefined) return false;
    return p.mapping === undefined ? p.refcount === 1 : p.refcount === 2;
  }

  /**
   * Migrates the present pages of `[addr, addr + length)` to new frames (kernel: `migrate_pages`
   * → `try_to_migrate_one` + `migrate_folio`): per page, an `MMU_NOTIFY_CLEAR` invalidation,
   * then the contents are copied to a new frame, the entry (and the page cache) switched to it,
   * and the old frame freed after the notifiers ran. Pages shared with another process are skipped.
   * Returns the number of pages migrated, or -EINVAL.
   */
  migratePages(addr: number, length: number): number {
    this.#checkAlive('migrate_pages');
    if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    let moved = 0;
    for (const vpn of this.#ptesIn(addr, end)) {
      const pte = this.#ptes.get(vpn)!;
      if (!this.#exclusive(pte)) continue;
      const old = pte.page!;
      const page = this.memMap.allocPage();
      if (page === undefined) break;
      const start = vpn * PAGE_SIZE;
      const r = this.#invalidate(MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
        this.machine.phys.copy(page.pfn * PAGE_SIZE, old.pfn * PAGE_SIZE, PAGE_SIZE);
        page.dirty = old.dirty || pte.dirty;
        if (old.mapping !== undefined) {
          page.mapping = old.mapping;
          page.index = old.index;
          old.mapping.cache.set(old.index, page);
          this.memMap.getPage(page); // the cache's reference
          drop.push(old); // the cache's reference to the old frame
        }
        pte.page = page;
        drop.push(old);
      });
      if (r !== 0) {
        this.memMap.putPage(page);
        continue;
      }
      this.stats.migrations++;
      moved++;
    }
    return moved;
  }

  /**
   * Reclaims the present pages of `[addr, addr + length)` (kernel: `shrink_folio_list` →
   * `try_to_unmap_one`, `pageout`): per page, an `MMU_NOTIFY_CLEAR` invalidation; anonymous pages
   * go to swap (their bytes kept in the entry), file pages are written back if dirty and dropped
   * from the page cache when no mapping uses them. Pages shared with another process are skipped.
   * Returns the number of pages reclaimed, or -EINVAL.
   */
  reclaim(addr: number, length: number): number {
    this.#checkAlive('reclaim');
    if (addr % PAGE_SIZE !== 0 || !(length > 0)) return -Errno.EINVAL;
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    let n = 0;
    for (const vpn of this.#ptesIn(addr, end)) {
      const pte = this.#ptes.get(vpn)!;
      if (!this.#exclusive(pte)) continue;
      const old = pte.page!;
      const start = vpn * PAGE_SIZE;
      const r = this.#invalidate(MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE, true, (drop) => {
        if (pte.dirty) old.dirty = true;
        if (old.mapping === undefined) {
          pte.swap = this.machine.phys.read(old.pfn * PAGE_SIZE, PAGE_SIZE);
          pte.page = undefined;
          pte.write = false;
          this.stats.swapOuts++;
        } else {
          this.#ptes.delete(vpn);
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

  /**
   * Reaps the memory of this (OOM-killed) process without sleeping (kernel: `__oom_reap_task_mm`):
   * per private anonymous VMA, a non-blockable `MMU_NOTIFY_UNMAP` invalidation; a VMA whose
   * subscribers would have to sleep (-EAGAIN) is skipped and kept intact. Returns how many VMAs
   * were reaped and skipped.
   */
  oomReap(): { reaped: number; skipped: number } {
    this.#checkAlive('oom_reap');
    let reaped = 0;
    let skipped = 0;
    for (const v of [...this.vmas]) {
      if (v.vmFile !== undefined) continue;
      const r = this.#invalidate(MMU_NOTIFY_UNMAP, v.vmStart, v.vmEnd, false, (drop) =>
        this.#zap(v.vmStart, v.vmEnd, drop),
      );
      if (r === 0) reaped++;
      else skipped++;
    }
    return { reaped, skipped };
  }

  /**
   * Forks the address space (kernel: `dup_mmap` → `copy_page_range`): the child gets the same VMAs;
   * shared mappings share frames; private mappings share frames copy-on-write — each private VMA
   * of the parent is first invalidated with `MMU_NOTIFY_PROTECTION_PAGE` and its entries made
   * read-only in both. Returns the child.
   */
  fork(name = `${this.name}-child`): Mm {
    this.#checkAlive('fork');
    const child = new Mm(this.machine, { name }, this.memMap);
    for (const v of this.vmas) {
      child.vmas.push(new VmAreaStruct(v.vmStart, v.vmEnd, v.vmFlags, v.vmFile, v.vmPgoff));
      const vpns = this.#ptesIn(v.vmStart, v.vmEnd);
      if (vpns.length === 0) continue;
      const copy = (): void => {
        for (const vpn of vpns) {
          const pte = this.#ptes.get(vpn)!;
          if (pte.page === undefined) {
            child.#ptes.set(vpn, { page: undefined, write: false, dirty: false, swap: pte.swap!.slice() });
            continue;
          }
          this.memMap.getPage(pte.page);
          const shared = (v.vmFlags & VM_SHARED) !== 0;
          if (!shared) pte.write = false;
          child.#ptes.set(vpn, {
            page: pte.page,
            write: shared && pte.write,
            dirty: pte.dirty,
            swap: undefined,
          });
        }
      };
      if ((v.vmFlags & VM_SHARED) !== 0) copy();
      else this.#invalidate(MMU_NOTIFY_PROTECTION_PAGE, v.vmStart, v.vmEnd, true, copy);
    }
    return child;
  }

  /**
   * Tears the address space down (kernel: `exit_mmap`): `mmu_notifier_release` first (every
   * subscription gets `MMU_NOTIFY_RELEASE` over the whole space), then all entries and VMAs go and
   * the frames are freed. When the last process of the fork family exits, the files' page caches
   * are written back and dropped.
   */
  exit(): void {
    if (this.#users <= 0) return;
    mmuNotifierRelease(this);
    this.#users = 0;
    const drop: StructPage[] = [];
    this.#zap(0, TASK_SIZE, drop);
    this.vmas.length = 0;
    for (const p of drop) this.memMap.putPage(p);
    this.memMap.liveMms--;
    if (this.memMap.liveMms === 0) {
      for (const f of this.memMap.files) f.evictUnmapped();
    }
  }
}
