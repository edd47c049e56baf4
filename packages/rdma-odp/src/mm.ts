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
 * Kernel counterpart of this file: `struct mm_struct` (include/linux/mm_types.h) and the CPU side
 * of a user access (the arch fault handler calling `handle_mm_fault`, then the copy). Each event
 * lives beside its kernel file: `mmap.ts` (mm/mmap.c + mm/vma.c), `memory.ts` (mm/memory.c),
 * `madvise.ts`, `mprotect.ts`, `migrate.ts`, `vmscan.ts`, `oom-kill.ts` (mm/*.c), `fork.ts`
 * (kernel/fork.c), with `mmu-gather.ts` for the notifier bracket, `mem-map.ts` (struct page
 * refcounts), `filemap.ts` (the page cache) and `mm-types.ts` (VMAs, entries, flags). `Mm` is the
 * entry point that checks the address space is alive and calls them. Event types as in v6.x.
 *
 * Deliberate differences: 4 KiB pages only (no THP, no hugetlb); no shared zero page; no rmap
 * across processes, so migration and reclaim skip pages mapped by more than one process; swap
 * holds copies of the bytes; files exist only inside one fork family (`mm.createFile`).
 */
import { Errno, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { OdpError } from './errors.js';
import { MmFile } from './filemap.js';
import { dupMmap } from './fork.js';
import { madviseDontneed } from './madvise.js';
import { MemMap } from './mem-map.js';
import { handleMmFault } from './memory.js';
import { migratePages } from './migrate.js';
import {
  type MmCore,
  type MmOptions,
  type MmStats,
  type Pte,
  type PteInfo,
  VM_READ,
  VM_WRITE,
  type VmAreaStruct,
} from './mm-types.js';
import { doMmap, doMunmap, exitMmap, vmaLookup } from './mmap.js';
import { type MmNotifierHost, MmuNotifierSubscriptions, mmuNotifierRelease } from './mmu-notifier.js';
import { doMprotect } from './mprotect.js';
import { oomReapTaskMm } from './oom-kill.js';
import { reclaimRange } from './vmscan.js';

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
  /** What the per-unit functions work on (the page table included); never handed out. */
  readonly #core: MmCore;

  constructor(machine: Machine, options: MmOptions = {}, memMap?: MemMap) {
    this.machine = machine;
    this.name = options.name ?? 'mm';
    this.memMap = memMap ?? new MemMap(machine);
    this.memMap.liveMms++;
    this.#core = {
      mm: this,
      machine,
      memMap: this.memMap,
      vmas: this.vmas,
      ptes: this.#ptes,
      stats: this.stats,
    };
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
    return vmaLookup(this.#core, addr);
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

  /**
   * Maps `length` bytes (kernel: `mmap`/`do_mmap`, mm/mmap.c; see `doMmap`). `flags` takes
   * exactly one of MAP_PRIVATE or MAP_SHARED, plus MAP_ANONYMOUS (no `file`) and MAP_FIXED. A
   * shared anonymous mapping gets its own shmem-like file. Returns the address or
   * -EINVAL/-ENOMEM. Nothing is populated.
   */
  mmap(addr: number, length: number, prot: number, flags: number, file?: MmFile, pgoff = 0): number {
    this.#checkAlive('mmap');
    return doMmap(this.#core, (n, s) => this.createFile(n, s), addr, length, prot, flags, file, pgoff);
  }

  /**
   * Unmaps `[addr, addr + length)` (kernel: `munmap` → `do_vmi_munmap`, mm/vma.c): one
   * `MMU_NOTIFY_UNMAP` invalidation over the range, page-table entries cleared, VMAs split or
   * removed, frames freed after the notifiers ran. Returns 0 or -EINVAL.
   */
  munmap(addr: number, length: number): number {
    this.#checkAlive('munmap');
    return doMunmap(this.#core, addr, length);
  }

  /**
   * Discards the pages of `[addr, addr + length)` (kernel: `madvise(MADV_DONTNEED)`,
   * mm/madvise.c): one `MMU_NOTIFY_CLEAR` invalidation; private anonymous pages read back as
   * zeros, file pages are read again from the page cache. Returns 0 or -EINVAL.
   */
  madviseDontneed(addr: number, length: number): number {
    this.#checkAlive('madvise');
    return madviseDontneed(this.#core, addr, length);
  }

  /**
   * Changes the protection of `[addr, addr + length)` (kernel: `mprotect` → `change_protection`,
   * mm/mprotect.c): VMAs split as needed; populated pages are invalidated with
   * `MMU_NOTIFY_PROTECTION_VMA` and lose write permission when PROT_WRITE goes away. Returns 0,
   * -EINVAL, or -ENOMEM for a hole.
   */
  mprotect(addr: number, length: number, prot: number): number {
    this.#checkAlive('mprotect');
    return doMprotect(this.#core, addr, length, prot);
  }

  /**
   * Handles a fault at `addr` in `vma` (kernel: `handle_mm_fault`, mm/memory.c): populates a
   * missing page (zeroed anonymous page, page-cache page, or swap-in) and, for a write to a
   * read-only entry, reuses an exclusive anonymous page (no notifier, like `wp_page_reuse`) or
   * copies it (COW: an `MMU_NOTIFY_CLEAR` invalidation of the page before the entry is replaced).
   * The caller has checked the VMA's permissions. Returns 0, or -ENOMEM / -EFAULT (kernel:
   * `VM_FAULT_ERROR`).
   */
  handleMmFault(vma: VmAreaStruct, addr: number, write: boolean): number {
    this.#checkAlive('handle_mm_fault');
    return handleMmFault(this.#core, vma, addr, write);
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

  /**
   * Migrates the present pages of `[addr, addr + length)` to new frames (kernel: `migrate_pages`,
   * mm/migrate.c): per page an `MMU_NOTIFY_CLEAR` invalidation, copy, switch, old frame freed
   * after the notifiers ran; pages shared with another process are skipped. Returns the number of
   * pages migrated, or -EINVAL.
   */
  migratePages(addr: number, length: number): number {
    this.#checkAlive('migrate_pages');
    return migratePages(this.#core, addr, length);
  }

  /**
   * Reclaims the present pages of `[addr, addr + length)` (kernel: `shrink_folio_list` →
   * `try_to_unmap_one`, `pageout`, mm/vmscan.c): anonymous pages to swap, file pages written
   * back and dropped from the page cache; pages shared with another process are skipped. Returns
   * the number of pages reclaimed, or -EINVAL.
   */
  reclaim(addr: number, length: number): number {
    this.#checkAlive('reclaim');
    return reclaimRange(this.#core, addr, length);
  }

  /**
   * Reaps the memory of this (OOM-killed) process without sleeping (kernel: `__oom_reap_task_mm`,
   * mm/oom_kill.c): per private anonymous VMA, a non-blockable `MMU_NOTIFY_UNMAP` invalidation; a
   * VMA whose subscribers would have to sleep (-EAGAIN) is skipped and kept intact. Returns how
   * many VMAs were reaped and skipped.
   */
  oomReap(): { reaped: number; skipped: number } {
    this.#checkAlive('oom_reap');
    return oomReapTaskMm(this.#core);
  }

  /**
   * Forks the address space (kernel: `dup_mmap` → `copy_page_range`, kernel/fork.c): the child
   * gets the same VMAs; shared mappings share frames; private mappings share frames copy-on-write
   * — each private VMA of the parent is first invalidated with `MMU_NOTIFY_PROTECTION_PAGE` and
   * its entries made read-only in both. Returns the child.
   */
  fork(name = `${this.name}-child`): Mm {
    this.#checkAlive('fork');
    const child = new Mm(this.machine, { name }, this.memMap);
    dupMmap(child.#core, this.#core);
    return child;
  }

  /**
   * Tears the address space down (kernel: `exit_mmap`, mm/mmap.c): `mmu_notifier_release` first
   * (every subscription gets `MMU_NOTIFY_RELEASE` over the whole space), then all entries and VMAs
   * go and the frames are freed. When the last process of the fork family exits, the files' page
   * caches are written back and dropped.
   */
  exit(): void {
    if (this.#users <= 0) return;
    mmuNotifierRelease(this);
    this.#users = 0;
    exitMmap(this.#core);
  }
}
