/**
 * The buddy page allocator: free blocks of 2^order pages (orders 0..MAX_PAGE_ORDER), split on
 * allocation and coalesced with their buddy on free, as in Linux `mm/page_alloc.c`
 * (`__rmqueue_smallest`, `expand`, `__free_one_page`). An allocation of order N is a folio of 2^N
 * pages. Differs on purpose: no zones, migrate types, per-CPU page lists or watermarks; the low
 * 1 MiB is reserved so physical address 0 is never handed out (0 means "no page", like NULL).
 */
import type { Counters } from './counters.js';
import { hex, MachineError } from './errors.js';
import type { FaultInjector } from './fault-inject.js';
import { PAGE_SHIFT, PAGE_SIZE } from './phys-mem.js';

/** Largest buddy order (kernel: MAX_PAGE_ORDER = 10, i.e. 4 MiB blocks with 4 KiB pages). */
export const MAX_PAGE_ORDER = 10;
/** Pages kept out of the allocator at the bottom of RAM (1 MiB). */
export const RESERVED_LOW_PAGES = 256;

/** A physically contiguous allocation of 2^order pages (kernel: `struct folio`). */
export interface Folio {
  /** First page frame number. */
  readonly pfn: number;
  /** log2 of the number of pages. */
  readonly order: number;
  /** Physical address of the first byte. */
  readonly phys: number;
  /** Size in bytes. */
  readonly size: number;
}

/** Options of a `PageAllocator`. */
export interface PageAllocatorOptions {
  /**
   * First frame the allocator hands out (default `RESERVED_LOW_PAGES`). A caller managing its own
   * range of frames (e.g. a buffer pool carved out of RAM) sets it to the range's first frame.
   */
  firstPfn?: number;
}

/** The buddy allocator over a machine's RAM (or over frames `firstPfn..nrFrames` of it). */
export class PageAllocator {
  /** Free block start pfns per order (membership, for buddy lookups). */
  readonly #free: Set<number>[] = [];
  /**
   * Allocation order per free list: a stack (LIFO, like the head of the kernel's free lists) that
   * may hold stale pfns already taken by coalescing; they are skipped on pop. Taking "the first"
   * from a Set would walk every deleted slot in V8 (quadratic over a long run).
   */
  readonly #stack: number[][] = [];
  /** Allocated block start pfn → order, to check frees. */
  readonly #allocated = new Map<number, number>();
  readonly #counters: Counters;
  readonly #faults: FaultInjector;
  #freePages = 0;
  readonly totalPages: number;

  constructor(
    nrFrames: number,
    counters: Counters,
    faults: FaultInjector,
    options: PageAllocatorOptions = {},
  ) {
    this.#counters = counters;
    this.#faults = faults;
    for (let o = 0; o <= MAX_PAGE_ORDER; o++) {
      this.#free.push(new Set());
      this.#stack.push([]);
    }
    const first = options.firstPfn ?? RESERVED_LOW_PAGES;
    if (!(Number.isSafeInteger(first) && first >= 1)) {
      throw new MachineError(
        `page allocator: first frame ${first} must be a positive integer (frame 0 is never handed out)`,
        {
          rule: 'page allocator: first frame',
        },
      );
    }
    let pfn = Math.min(first, nrFrames);
    while (pfn < nrFrames) {
      let order = MAX_PAGE_ORDER;
      while (order > 0 && (pfn % (1 << order) !== 0 || pfn + (1 << order) > nrFrames)) order--;
      this.#push(order, pfn);
      this.#freePages += 1 << order;
      pfn += 1 << order;
    }
    for (const st of this.#stack) st.reverse(); // lowest addresses first, as the kernel hands them out at boot
    this.totalPages = this.#freePages;
  }

  /** Pages currently free (kernel: `nr_free_pages`). */
  get nrFreePages(): number {
    return this.#freePages;
  }

  /** Number of free blocks at each order (kernel: /proc/buddyinfo). */
  buddyinfo(): number[] {
    return this.#free.map((s) => s.size);
  }

  /**
   * Allocates 2^order contiguous pages (kernel: `alloc_pages`). Returns the physical address, or 0
   * when no block is free or the `page_alloc` fault point fires.
   */
  allocPages(order: number): number {
    if (!(Number.isInteger(order) && order >= 0 && order <= MAX_PAGE_ORDER)) {
      throw new MachineError(`alloc_pages: order ${order} outside 0..${MAX_PAGE_ORDER}`, {
        rule: 'alloc_pages: order',
      });
    }
    if (this.#faults.shouldFail('page_alloc')) return 0;
    let o = order;
    while (o <= MAX_PAGE_ORDER && this.#free[o]!.size === 0) o++;
    if (o > MAX_PAGE_ORDER) return 0;
    const pfn = this.#pop(o);
    // expand: give back the upper halves
    while (o > order) {
      o--;
      this.#push(o, pfn + (1 << o));
    }
    this.#allocated.set(pfn, order);
    this.#freePages -= 1 << order;
    this.#counters.pagesAllocated += 1 << order;
    return pfn * PAGE_SIZE;
  }

  /** Allocates a folio of 2^order pages, or `undefined` when memory is exhausted. */
  allocFolio(order: number): Folio | undefined {
    const phys = this.allocPages(order);
    if (phys === 0) return undefined;
    return { pfn: phys / PAGE_SIZE, order, phys, size: PAGE_SIZE << order };
  }

  /** Order of the allocated block starting at `phys`, or -1 if none starts there. */
  orderOf(phys: number): number {
    return this.#allocated.get(phys / PAGE_SIZE) ?? -1;
  }

  /**
   * Frees a block from `allocPages` (kernel: `__free_pages`), coalescing with free buddies.
   * Freeing a block that is not allocated, or with the wrong order, throws and changes nothing.
   */
  freePages(phys: number, order: number): void {
    const pfn = phys / PAGE_SIZE;
    const have = this.#allocated.get(pfn);
    if (have === undefined) {
      throw new MachineError(`free_pages: ${hex(phys)} is not an allocated block (double free?)`, {
        rule: 'free_pages: not allocated',
      });
    }
    if (have !== order) {
      throw new MachineError(
        `free_pages: ${hex(phys)} was allocated with order ${have}, freed with ${order}`,
        {
          rule: 'free_pages: order mismatch',
        },
      );
    }
    this.#allocated.delete(pfn);
    this.#freePages += 1 << order;
    this.#counters.pagesFreed += 1 << order;
    let p = pfn;
    let o = order;
    while (o < MAX_PAGE_ORDER) {
      const buddy = p ^ (1 << o);
      if (!this.#free[o]!.delete(buddy)) break;
      p = Math.min(p, buddy);
      o++;
    }
    this.#push(o, p);
  }

  #push(order: number, pfn: number): void {
    this.#free[order]!.add(pfn);
    const st = this.#stack[order]!;
    st.push(pfn);
    // drop stale entries once they outnumber the live ones
    if (st.length > 64 && st.length > 2 * this.#free[order]!.size) {
      const set = this.#free[order]!;
      const seen = new Set<number>();
      let w = 0;
      for (let r = 0; r < st.length; r++) {
        const x = st[r]!;
        if (set.has(x) && !seen.has(x)) {
          seen.add(x);
          st[w++] = x;
        }
      }
      st.length = w;
    }
  }

  /** Takes the most recently freed block of `order` (the set must be non-empty). */
  #pop(order: number): number {
    const set = this.#free[order]!;
    const st = this.#stack[order]!;
    for (;;) {
      const pfn = st.pop()!;
      if (set.delete(pfn)) return pfn;
    }
  }

  /** Frees a folio. */
  freeFolio(folio: Folio): void {
    this.freePages(folio.phys, folio.order);
  }
}

/**
 * Takes `n` single pages of which no two are physically adjacent, so nothing built over them can
 * merge: what a driver sees of a user buffer pinned from a fragmented allocator. Allocates 2n
 * order-0 pages, keeps every other one by address (any two kept pages are at least one page apart)
 * and gives the others back only once the choice is made, so the allocator ends with exactly the n
 * kept pages taken. Returns them in ascending address order, or null (nothing held) when memory
 * runs out. No kernel counterpart: it stands in for pages a user pinned.
 */
export function allocScatteredPageList(alloc: PageAllocator, n: number): number[] | null {
  const taken: number[] = [];
  for (let i = 0; i < 2 * n; i++) {
    const phys = alloc.allocPages(0);
    if (phys === 0) {
      for (const p of taken) alloc.freePages(p, 0);
      return null;
    }
    taken.push(phys);
  }
  taken.sort((a, b) => a - b);
  const kept: number[] = [];
  for (let i = 0; i < n; i++) {
    kept.push(taken[2 * i]!);
    alloc.freePages(taken[2 * i + 1]!, 0);
  }
  return kept;
}

/** Page frame number of a physical address. */
export function physToPfn(phys: number): number {
  return Math.floor(phys / PAGE_SIZE);
}

/** Physical address of a page frame number. */
export function pfnToPhys(pfn: number): number {
  return pfn * PAGE_SIZE;
}

export { PAGE_SHIFT, PAGE_SIZE };
