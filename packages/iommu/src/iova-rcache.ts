/**
 * The IOVA range caches: per-CPU "magazines" of recently freed small ranges, one size class per
 * power-of-two order, with a global depot of full magazines that a delayed work trims back to the
 * tree. Models the rcache part of Linux `drivers/iommu/iova.c` (v6.17): `struct iova_magazine`,
 * `struct iova_cpu_rcache`, `struct iova_rcache`, `iova_domain_init_rcaches`,
 * `__iova_rcache_insert`, `__iova_rcache_get`, `iova_depot_work_func`, `free_cpu_cached_iovas`,
 * `free_global_cached_iovas`, `free_iova_rcaches`, `iova_rcache_range`. The tree allocator and
 * `alloc_iova_fast` / `free_iova_fast`, which consult these caches, are in `iova.ts`.
 *
 * Deliberate differences from the kernel:
 * - Magazines hold the tree's range objects rather than bare pfns, which saves the tree lookup
 *   when a magazine is emptied back into the tree; a magazine still counts as the kernel's
 *   1024-byte object. The caller marks a range cached or live (the state flag is the tree's).
 * - No locks (one thread); "per-CPU" means indexed by `machine.currentCpu`. The depot-trimming
 *   delayed work is a timer on the machine's virtual clock.
 * - Allocating the caches at construction cannot fail (the kernel's GFP_KERNEL allocation can);
 *   only the GFP_ATOMIC magazine allocation on insert consults the `iova_magazine` fault point.
 */

import type { Timer } from './clock.js';
import { hex } from './errors.js';
import type { Machine } from './machine.js';

/**
 * Pfns one magazine holds: 127, so that the kernel struct (a size word plus 127 pfns) is exactly
 * 1024 bytes. Kernel: `IOVA_MAG_SIZE`, drivers/iommu/iova.c.
 */
export const IOVA_MAG_SIZE = 127;

/**
 * Number of rcache size classes: orders 0..5, so the largest cached range is 32 granules.
 * Kernel: `IOVA_RANGE_CACHE_MAX_SIZE` (log of max cached range size + 1), drivers/iommu/iova.c.
 */
export const IOVA_RANGE_CACHE_MAX_SIZE = 6;

/**
 * Delay between depot-trimming steps, in milliseconds. Kernel: `IOVA_DEPOT_DELAY`
 * (`msecs_to_jiffies(100)`), drivers/iommu/iova.c.
 */
export const IOVA_DEPOT_DELAY_MS = 100;

/** Largest size (in granules) `allocIovaFast` rounds up and the rcache holds: 32. */
export const IOVA_RCACHE_MAX_PAGES = 2 ** (IOVA_RANGE_CACHE_MAX_SIZE - 1);

/** CPU page size the rcache range is expressed in (kernel: `PAGE_SIZE` on x86-64/arm64 4K). */
const PAGE_SIZE = 4096;
/** Bytes of one `struct iova_magazine`. */
const IOVA_MAGAZINE_SIZE = 1024;
const NS_PER_MS = 1_000_000;

/**
 * The fill of one size class of the rcache, as `IovaDomain.rcacheState()` reports it: the
 * kernel's `struct iova_rcache` / `struct iova_cpu_rcache` reduced to counts (model-only).
 */
export interface IovaRcacheInfo {
  /** Size class: ranges of `2^order` granules. */
  order: number;
  /** Full magazines in the depot. */
  depotSize: number;
  /** Per CPU: pfns in the loaded and the previous magazine. */
  cpus: Array<{ loaded: number; prev: number }>;
}

/** What a magazine holds: a range of the tree (the tree's node object). */
export interface CachedRange {
  readonly pfnLo: number;
  readonly pfnHi: number;
}

/** Kernel: `struct iova_magazine`. Holds ranges (see the header) in a fixed array. */
class IovaMagazine<N extends CachedRange> {
  size = 0;
  readonly nodes: Array<N | null> = new Array<N | null>(IOVA_MAG_SIZE).fill(null);
  /** Link in the depot list (the kernel unions it with `size`). */
  next: IovaMagazine<N> | null = null;
}

/** Kernel: `struct iova_cpu_rcache`. */
class IovaCpuRcache<N extends CachedRange> {
  loaded: IovaMagazine<N>;
  prev: IovaMagazine<N>;
  constructor(loaded: IovaMagazine<N>, prev: IovaMagazine<N>) {
    this.loaded = loaded;
    this.prev = prev;
  }
}

/** Kernel: `struct iova_rcache` (one per size order). */
class IovaRcache<N extends CachedRange> {
  depotSize = 0;
  depot: IovaMagazine<N> | null = null;
  /** The pending depot-trimming timer (kernel: the delayed work), or null. */
  timer: Timer | null = null;
  /** The work function, bound once. */
  work: () => void = () => {};
}

/**
 * Every size class of one IOVA domain's caches: the kernel's `iovad->rcaches` array with its
 * per-CPU parts, and the functions of drivers/iommu/iova.c that work on them. `freeRange` gives
 * a range back to the tree (kernel: `remove_iova` + `free_iova_mem` under the tree lock).
 */
export class IovaRcaches<N extends CachedRange> {
  readonly #machine: Machine;
  readonly #ncpus: number;
  readonly #freeRange: (node: N) => void;
  /** One per order (kernel: `iovad->rcaches`). */
  readonly #rcaches: IovaRcache<N>[] = [];
  /** Flat per-order, per-CPU caches: index `order * cpus + cpu`. */
  readonly #cpuRcaches: IovaCpuRcache<N>[] = [];
  /** Magazines currently allocated (for `check`). */
  #magazines = 0;
  #dead = false;

  /** Kernel: `iova_domain_init_rcaches` (drivers/iommu/iova.c); cannot fail here. */
  constructor(machine: Machine, freeRange: (node: N) => void) {
    this.#machine = machine;
    this.#ncpus = machine.cpus;
    this.#freeRange = freeRange;
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      const rcache = new IovaRcache<N>();
      rcache.work = () => this.#depotWork(rcache);
      this.#rcaches.push(rcache);
      for (let cpu = 0; cpu < this.#ncpus; cpu++) {
        this.#cpuRcaches.push(new IovaCpuRcache(this.#newMagazine(), this.#newMagazine()));
      }
    }
  }

  /** Magazines allocated (each accounted as 1024 bytes of `iova_magazine`). Model-only. */
  get magazineCount(): number {
    return this.#magazines;
  }

  /**
   * The most recently cached range of `order` that fits below `limitExcl` (exclusive) on the
   * current CPU, taken out of its magazine, or null. Kernel: `__iova_rcache_get` +
   * `iova_magazine_pop` (drivers/iommu/iova.c): loaded magazine, then prev, then a full one from
   * the depot.
   */
  get(order: number, size: number, limitExcl: number): N | null {
    const cr = this.#cpuRcaches[order * this.#ncpus + this.#machine.currentCpu] as IovaCpuRcache<N>;
    let mag = cr.loaded;
    if (mag.size === 0) {
      const prev = cr.prev;
      if (prev.size !== 0) {
        cr.loaded = prev;
        cr.prev = mag;
        mag = prev;
      } else {
        const rcache = this.#rcaches[order] as IovaRcache<N>;
        const full = rcache.depot;
        if (full === null) return null;
        rcache.depot = full.next;
        full.next = null;
        rcache.depotSize--;
        this.#freeMagazine(mag);
        cr.loaded = full;
        mag = full;
      }
    }
    // take the last range that fits under the limit; only a magazine with none at all misses
    const highest = limitExcl - size;
    const nodes = mag.nodes;
    let i = mag.size - 1;
    let node = nodes[i] as N;
    while (node.pfnLo > highest) {
      if (i === 0) return null;
      node = nodes[--i] as N;
    }
    const last = --mag.size;
    nodes[i] = nodes[last] as N;
    nodes[last] = null;
    return node;
  }

  /**
   * Files `node` in the current CPU's magazine of `order`. False when a new magazine was needed
   * and none could be had (fault point `iova_magazine`). Kernel: `__iova_rcache_insert`
   * (drivers/iommu/iova.c): a full loaded and prev push the loaded one to the depot and arm the
   * depot work.
   */
  insert(order: number, node: N): boolean {
    const cr = this.#cpuRcaches[order * this.#ncpus + this.#machine.currentCpu] as IovaCpuRcache<N>;
    let mag = cr.loaded;
    if (mag.size === IOVA_MAG_SIZE) {
      const prev = cr.prev;
      if (prev.size !== IOVA_MAG_SIZE) {
        cr.loaded = prev;
        cr.prev = mag;
        mag = prev;
      } else {
        // kernel: iova_magazine_alloc(GFP_ATOMIC)
        if (this.#machine.faults.shouldFail('iova_magazine')) return false;
        const fresh = this.#newMagazine();
        const rcache = this.#rcaches[order] as IovaRcache<N>;
        mag.next = rcache.depot;
        rcache.depot = mag;
        rcache.depotSize++;
        if (rcache.timer === null) {
          rcache.timer = this.#machine.clock.setTimer(IOVA_DEPOT_DELAY_MS * NS_PER_MS, rcache.work);
        }
        cr.loaded = fresh;
        mag = fresh;
      }
    }
    mag.nodes[mag.size++] = node;
    return true;
  }

  /**
   * Returns every range cached by `cpu` (loaded and previous magazines, all orders) to the tree.
   * Kernel: `free_cpu_cached_iovas` (drivers/iommu/iova.c); `cpu` is checked by the caller.
   */
  freeCpuCachedIovas(cpu: number): void {
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      const cr = this.#cpuRcaches[order * this.#ncpus + cpu] as IovaCpuRcache<N>;
      this.#magazineFreePfns(cr.loaded);
      this.#magazineFreePfns(cr.prev);
    }
  }

  /** Every depot's magazines back to the tree. Kernel: `free_global_cached_iovas`. */
  freeGlobalCachedIovas(): void {
    for (const rcache of this.#rcaches) {
      while (rcache.depot !== null) {
        const mag = rcache.depot;
        rcache.depot = mag.next;
        mag.next = null;
        rcache.depotSize--;
        this.#magazineFreePfns(mag);
        this.#freeMagazine(mag);
      }
    }
  }

  /**
   * Cancels the depot work and frees every magazine without freeing the ranges it holds (the
   * caller frees the whole tree). Kernel: `free_iova_rcaches` (drivers/iommu/iova.c).
   */
  freeIovaRcaches(): void {
    for (const rcache of this.#rcaches) {
      if (rcache.timer !== null) {
        this.#machine.clock.cancel(rcache.timer);
        rcache.timer = null;
      }
      while (rcache.depot !== null) {
        const mag = rcache.depot;
        rcache.depot = mag.next;
        mag.next = null;
        this.#freeMagazine(mag);
      }
      rcache.depotSize = 0;
    }
    for (const cr of this.#cpuRcaches) {
      this.#freeMagazine(cr.loaded);
      this.#freeMagazine(cr.prev);
    }
    this.#cpuRcaches.length = 0;
    this.#dead = true;
  }

  /** The fill of every size class: depot size and per-CPU magazine fill. Model-only. */
  state(): IovaRcacheInfo[] {
    const out: IovaRcacheInfo[] = [];
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      const cpus: Array<{ loaded: number; prev: number }> = [];
      for (let cpu = 0; cpu < this.#ncpus; cpu++) {
        const cr = this.#cpuRcaches[order * this.#ncpus + cpu] as IovaCpuRcache<N>;
        cpus.push({ loaded: cr.loaded.size, prev: cr.prev.size });
      }
      out.push({ order, depotSize: (this.#rcaches[order] as IovaRcache<N>).depotSize, cpus });
    }
    return out;
  }

  /**
   * Checks the caches' invariants and returns how many ranges they hold: every slot a range
   * (`cachedInTree` says whether the tree holds it as cached; its message, if any, is the
   * problem), no range twice, each in its size class, full depot magazines, the depot counts and
   * the magazine count. Calls `fail` with the first violation. Model-only, for `IovaDomain.check`.
   */
  check(fail: (what: string) => never, cachedInTree: (node: N) => string | undefined): number {
    let inMagazines = 0;
    let magazines = 0;
    const seen = new Set<N>();
    const visit = (mag: IovaMagazine<N>, order: number): void => {
      magazines++;
      if (mag.size < 0 || mag.size > IOVA_MAG_SIZE) fail(`magazine size ${mag.size}`);
      for (let i = 0; i < mag.size; i++) {
        const n = mag.nodes[i];
        if (n === null || n === undefined) fail(`magazine slot ${i} holds no cached range`);
        const node = n as N;
        const problem = cachedInTree(node);
        if (problem !== undefined) fail(problem);
        if (seen.has(node)) fail(`range at ${hex(node.pfnLo)} cached twice`);
        seen.add(node);
        if (node.pfnHi - node.pfnLo + 1 !== 2 ** order)
          fail(`range at ${hex(node.pfnLo)} in the wrong size class`);
        inMagazines++;
      }
    };
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      const rcache = this.#rcaches[order] as IovaRcache<N>;
      let depot = 0;
      for (let m = rcache.depot; m !== null; m = m.next) {
        if (m.size !== IOVA_MAG_SIZE) fail(`depot magazine of order ${order} is not full`);
        visit(m, order);
        depot++;
      }
      if (depot !== rcache.depotSize)
        fail(`depot of order ${order} holds ${depot}, depot_size says ${rcache.depotSize}`);
      for (let cpu = 0; cpu < this.#ncpus; cpu++) {
        const cr = this.#cpuRcaches[order * this.#ncpus + cpu] as IovaCpuRcache<N>;
        visit(cr.loaded, order);
        visit(cr.prev, order);
      }
    }
    if (magazines !== this.#magazines) fail(`${magazines} magazines reachable, ${this.#magazines} allocated`);
    return inMagazines;
  }

  /**
   * The delayed depot work (kernel: `iova_depot_work_func`): while the depot holds more
   * magazines than there are CPUs, return one magazine's ranges to the tree and come back in
   * `IOVA_DEPOT_DELAY_MS`.
   */
  #depotWork(rcache: IovaRcache<N>): void {
    rcache.timer = null;
    if (this.#dead || rcache.depotSize <= this.#ncpus) return;
    const mag = rcache.depot as IovaMagazine<N>;
    rcache.depot = mag.next;
    mag.next = null;
    rcache.depotSize--;
    this.#magazineFreePfns(mag);
    this.#freeMagazine(mag);
    rcache.timer = this.#machine.clock.setTimer(IOVA_DEPOT_DELAY_MS * NS_PER_MS, rcache.work);
  }

  /** Returns a magazine's ranges to the tree and empties it (kernel: `iova_magazine_free_pfns`). */
  #magazineFreePfns(mag: IovaMagazine<N>): void {
    const nodes = mag.nodes;
    for (let i = 0; i < mag.size; i++) {
      this.#freeRange(nodes[i] as N);
      nodes[i] = null;
    }
    mag.size = 0;
  }

  /** Kernel: `iova_magazine_alloc` (the fault point is consulted by the caller). */
  #newMagazine(): IovaMagazine<N> {
    this.#magazines++;
    this.#machine.counters.kmalloc('iova_magazine', IOVA_MAGAZINE_SIZE);
    return new IovaMagazine<N>();
  }

  /** Kernel: `iova_magazine_free` (does not free the ranges it holds). */
  #freeMagazine(mag: IovaMagazine<N>): void {
    mag.nodes.fill(null);
    mag.size = 0;
    this.#magazines--;
    this.#machine.counters.kfree('iova_magazine', IOVA_MAGAZINE_SIZE);
  }
}

/**
 * Largest size in bytes the rcaches serve: `PAGE_SIZE << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`,
 * 128 KiB. Kernel: `iova_rcache_range` (drivers/iommu/iova.c); dma-iommu uses it for its
 * optimal mapping size.
 */
export function iovaRcacheRange(): number {
  return PAGE_SIZE * 2 ** (IOVA_RANGE_CACHE_MAX_SIZE - 1);
}
