/**
 * The IOVA allocator: hands out ranges of I/O virtual page frames for DMA mappings. Models Linux
 * `drivers/iommu/iova.c` and `include/linux/iova.h` (v6.17): an rbtree of allocated ranges under
 * an anchor node, top-down first-fit search starting from cached nodes, the 32-bit fast-fail hint
 * `max32_alloc_size`, and the fast path `alloc_iova_fast` / `free_iova_fast` in front of the
 * per-CPU range caches (the rcaches, magazines and depot: `iova-rcache.ts`).
 *
 * Size: about 700 lines, the tree half of `iova.c` (one kernel file of roughly a thousand lines) plus
 * the `iova.h` helpers; its rcache half is `iova-rcache.ts`. `IovaDomain` is long because it is
 * `struct iova_domain` with the tree functions the kernel declares in `iova.h`, and the model-only
 * `check()`/`ranges()` inspection beside them.
 *
 * Deliberate differences from the kernel:
 * - Misuse the kernel ignores or WARNs about throws `IommuError` and changes nothing: freeing a
 *   pfn that is not allocated (the kernel silently returns), freeing a reserved range, a
 *   `freeIovaFast` whose pfn is not the start of a live range or whose size does not match the
 *   range (the kernel would cache it and later hand out overlapping ranges), reserving over a
 *   live or cached allocation (the kernel stretches that allocation), nonsensical sizes or pfns.
 * - Reserved ranges are flagged, never handed out and never freed by `freeIova`; overlapping
 *   reservations merge into one node (the kernel may leave several adjacent nodes).
 * - The rcaches hold the tree nodes rather than bare pfns (see `iova-rcache.ts`).
 * - Validating a free needs the node; a 64-slot table of recently allocated nodes spares most
 *   frees the tree descent (model-only: the kernel does not validate, so it has no lookup).
 * - No locks (one thread). CPU hot-unplug is the explicit `freeCpuCachedIovas(cpu)`.
 * - The IOVA space is 52 bits of bytes (pfns are safe integers); limits above it are clamped.
 */
import { alignDown, isPowerOf2, modPow2, roundupPowOfTwo } from './bits.js';
import type { Counters } from './counters.js';
import { hex, IommuError } from './errors.js';
import type { FaultInjector } from './fault-inject.js';
import { IOVA_MAG_SIZE, IOVA_RCACHE_MAX_PAGES, type IovaRcacheInfo, IovaRcaches } from './iova-rcache.js';
import type { Machine } from './machine.js';
import { RbNode, RbRoot, rbNext, rbPrev } from './rbtree.js';

/** Largest granule (kernel: `PAGE_SIZE` on x86-64/arm64 4K; `init_iova_domain` BUGs above it). */
const PAGE_SIZE = 4096;
/** Bytes of IOVA space the model supports: 2^52 (pfns and addresses stay safe integers). */
const IOVA_SPACE_SIZE = 2 ** 52;
/** Pfn of the anchor node, above every usable pfn (kernel: `IOVA_ANCHOR`, `~0UL`). */
const IOVA_ANCHOR = Number.MAX_SAFE_INTEGER;
/** Bytes of one `struct iova` (rb_node 24 + pfn_hi + pfn_lo). */
const IOVA_STRUCT_SIZE = 40;
/** Slots of the recently-allocated hint table that spares most frees their tree lookup. */
const RECENT_SLOTS = 64;

// Node states.
const IOVA_LIVE = 0;
const IOVA_RESERVED = 1;
const IOVA_CACHED = 2;
const IOVA_ANCHOR_NODE = 3;
const IOVA_FREED = 4;

/**
 * An allocated (or reserved) IOVA range, in granule-sized page frames, both ends inclusive.
 * Kernel counterpart: `struct iova` (include/linux/iova.h); read-only here (the tree owns it).
 */
export interface Iova {
  /** First pfn of the range. */
  readonly pfnLo: number;
  /** Last pfn of the range (inclusive). */
  readonly pfnHi: number;
}

/** One tree range as `IovaDomain.ranges()` reports it. Model-only inspection, no kernel counterpart. */
export interface IovaRangeInfo {
  pfnLo: number;
  pfnHi: number;
  /** `allocated`: handed out; `reserved`: by `reserveIova`; `cached`: freed into an rcache. */
  state: 'allocated' | 'reserved' | 'cached';
}

/** A tree node: `struct iova`, with the model's state flag. */
class IovaNode extends RbNode {
  /** One of the `IOVA_*` node states above. */
  state: number;
  constructor(pfnLo: number, pfnHi: number, state: number) {
    super(pfnLo, pfnHi);
    this.state = state;
  }
}

/**
 * An IOVA domain: the address space one IOMMU domain hands out for DMA. Kernel counterpart:
 * `struct iova_domain` with `init_iova_domain` + `iova_domain_init_rcaches` as the constructor
 * (drivers/iommu/iova.c). Differences: see the file header.
 */
export class IovaDomain {
  /** Allocation unit in bytes (a power of two, at most 4096). Kernel: `iovad->granule`. */
  readonly granule: number;
  /** log2(granule). Kernel: `iova_shift()`. */
  readonly shift: number;
  /** Lowest pfn ever handed out. Kernel: `iovad->start_pfn`. */
  readonly startPfn: number;
  /** First pfn at or above 4 GiB (`4 GiB >> shift`). Kernel: `iovad->dma_32bit_pfn`. */
  readonly dma32BitPfn: number;
  /** Highest pfn of the modeled 2^52-byte IOVA space; larger limits are clamped to it. */
  readonly maxPfn: number;

  readonly #counters: Counters;
  readonly #faults: FaultInjector;
  readonly #ncpus: number;
  readonly #tree = new RbRoot<IovaNode>();
  readonly #anchor: IovaNode;
  #cachedNode: IovaNode;
  #cached32Node: IovaNode;
  #max32AllocSize: number;
  /** The per-CPU range caches and their depots (kernel: `iovad->rcaches`). */
  readonly #rcaches: IovaRcaches<IovaNode>;
  /**
   * Recently allocated nodes, indexed by `pfnLo % RECENT_SLOTS`: a model-only hint that lets the
   * free paths validate their pfn without a tree descent when it was handed out recently. A
   * hint counts only if it is still live and starts at the pfn (node states make stale hints
   * harmless); the kernel has no such table because it does not validate `free_iova_fast` at all.
   */
  readonly #recent: Array<IovaNode | null> = new Array<IovaNode | null>(RECENT_SLOTS).fill(null);
  #dead = false;

  /**
   * Kernel: `init_iova_domain(iovad, granule, start_pfn)` followed by
   * `iova_domain_init_rcaches(iovad)` (drivers/iommu/iova.c). The kernel BUGs on a bad granule;
   * here that throws `IommuError` (rule `init_iova_domain: granule`).
   */
  constructor(machine: Machine, granule: number, startPfn: number) {
    if (!(isPowerOf2(granule) && granule <= PAGE_SIZE)) {
      throw new IommuError(`init_iova_domain: granule ${granule} is not a power of two <= ${PAGE_SIZE}`, {
        rule: 'init_iova_domain: granule',
      });
    }
    const shift = 31 - Math.clz32(granule);
    const maxPfn = IOVA_SPACE_SIZE / granule - 1;
    if (!(Number.isInteger(startPfn) && startPfn >= 0 && startPfn <= maxPfn)) {
      throw new IommuError(`init_iova_domain: start_pfn ${startPfn} outside 0..${hex(maxPfn)}`, {
        rule: 'init_iova_domain: start_pfn',
      });
    }
    this.#counters = machine.counters;
    this.#faults = machine.faults;
    this.#ncpus = machine.cpus;
    this.granule = granule;
    this.shift = shift;
    this.startPfn = startPfn;
    this.maxPfn = maxPfn;
    this.dma32BitPfn = 2 ** (32 - shift);
    this.#max32AllocSize = this.dma32BitPfn;
    this.#anchor = new IovaNode(IOVA_ANCHOR, IOVA_ANCHOR, IOVA_ANCHOR_NODE);
    this.#tree.insert(this.#anchor);
    this.#cachedNode = this.#anchor;
    this.#cached32Node = this.#anchor;
    this.#rcaches = new IovaRcaches<IovaNode>(machine, (node) => this.#freeNode(node));
  }

  /**
   * Size (in granules) of the smallest 32-bit allocation known to fail; requests at least this
   * big with a limit at or below 4 GiB fail at once. `dma32BitPfn` means "none recorded".
   * Kernel: `iovad->max32_alloc_size`.
   */
  get max32AllocSize(): number {
    return this.#max32AllocSize;
  }

  /** Where searches with a limit above 4 GiB start. Kernel: `iovad->cached_node`. */
  get cachedNode(): Iova {
    return this.#cachedNode;
  }

  /** Where searches with a limit at or below 4 GiB start. Kernel: `iovad->cached32_node`. */
  get cached32Node(): Iova {
    return this.#cached32Node;
  }

  /** The anchor node above all usable space. Kernel: `iovad->anchor`. */
  get anchor(): Iova {
    return this.#anchor;
  }

  /** Number of ranges in the tree (allocated, reserved and rcache-held), anchor excluded. Model-only. */
  get nodeCount(): number {
    return this.#tree.size - 1;
  }

  // ---------------------------------------------------------------------------------------------
  // The rbtree allocator

  /**
   * Allocates `size` granules at or below `limitPfn` (inclusive), as high as possible (top-down
   * first fit from the cached node), aligned to `roundup_pow_of_two(size)` when `sizeAligned`.
   * Returns the range, or undefined when no space is left (or the `iova_alloc` fault point fires;
   * nothing changes then). Kernel: `alloc_iova` (drivers/iommu/iova.c). Differs: throws
   * `IommuError` for a size that is not a positive integer or a negative limit; clamps the limit
   * to `maxPfn`.
   */
  allocIova(size: number, limitPfn: number, sizeAligned: boolean): Iova | undefined {
    this.#checkAlive('alloc_iova');
    this.#checkSize('alloc_iova', size);
    const limit = this.#clampLimit('alloc_iova', limitPfn);
    const node = this.#allocIova(size, limit, sizeAligned);
    if (node === null) {
      this.#counters.iovaAllocFailures++;
      return undefined;
    }
    return node;
  }

  /**
   * Frees the allocated range containing `pfn`. Kernel: `free_iova` (drivers/iommu/iova.c).
   * Differs: a pfn in no allocated range (never allocated, already freed, sitting in an rcache,
   * or reserved) throws `IommuError` (rule `free_iova: not allocated`) and changes nothing, where
   * the kernel silently returns (or frees the reservation).
   */
  freeIova(pfn: number): void {
    this.#checkAlive('free_iova');
    const node = Number.isFinite(pfn) ? this.#liveNodeAt(pfn) : null;
    if (node === null || node.state !== IOVA_LIVE) {
      throw new IommuError(`free_iova: pfn ${hex(pfn)} is not in an allocated range${stateNote(node)}`, {
        rule: 'free_iova: not allocated',
      });
    }
    this.#freeNode(node);
  }

  /**
   * The range (allocated, reserved, or held by an rcache) containing `pfn`, or undefined.
   * Kernel: `find_iova` (drivers/iommu/iova.c). The anchor is never returned.
   */
  findIova(pfn: number): Iova | undefined {
    this.#checkAlive('find_iova');
    if (!Number.isFinite(pfn)) return undefined;
    const node = this.#tree.findContaining(pfn);
    if (node === null || node.state === IOVA_ANCHOR_NODE) return undefined;
    return node;
  }

  /**
   * Marks `[pfnLo, pfnHi]` as never to be allocated (e.g. MSI windows, PCI host bridge
   * windows). Overlapping reservations merge into one range, which is returned; undefined when
   * the node allocation fails (fault point `iova_alloc`). Kernel: `reserve_iova`
   * (drivers/iommu/iova.c). Differs: overlapping a live or rcache-held allocation throws
   * `IommuError` (rule `reserve_iova: overlaps allocation`) where the kernel stretches that
   * allocation over the reservation; inverted or out-of-space pfns throw (rule
   * `reserve_iova: bad range`) where the kernel WARNs and returns NULL.
   */
  reserveIova(pfnLo: number, pfnHi: number): Iova | undefined {
    this.#checkAlive('reserve_iova');
    if (
      !(
        Number.isInteger(pfnLo) &&
        Number.isInteger(pfnHi) &&
        pfnLo >= 0 &&
        pfnLo <= pfnHi &&
        pfnHi <= this.maxPfn
      )
    ) {
      throw new IommuError(`reserve_iova: bad range [${hex(pfnLo)}, ${hex(pfnHi)}]`, {
        rule: 'reserve_iova: bad range',
      });
    }
    // collect every node overlapping [pfnLo, pfnHi]; all of them must be reservations
    const overlapping: IovaNode[] = [];
    for (
      let n = this.#tree.firstEndingAtOrAbove(pfnLo);
      n !== null && n.pfnLo <= pfnHi;
      n = rbNext(n) as IovaNode
    ) {
      if (n.state !== IOVA_RESERVED) {
        throw new IommuError(
          `reserve_iova: [${hex(pfnLo)}, ${hex(pfnHi)}] overlaps allocated range [${hex(n.pfnLo)}, ${hex(n.pfnHi)}]`,
          { rule: 'reserve_iova: overlaps allocation' },
        );
      }
      overlapping.push(n);
    }
    const first = overlapping[0];
    if (first === undefined) {
      if (this.#faults.shouldFail('iova_alloc')) return undefined;
      const node = new IovaNode(pfnLo, pfnHi, IOVA_RESERVED);
      this.#tree.insert(node);
      this.#counters.kmalloc('iova', IOVA_STRUCT_SIZE);
      return node;
    }
    // widen the lowest overlapping reservation over the others; keys stay ordered because
    // nothing else lies inside [min lo, max hi]
    const last = overlapping[overlapping.length - 1] as IovaNode;
    const hi = Math.max(pfnHi, last.pfnHi);
    for (let i = 1; i < overlapping.length; i++) {
      const n = overlapping[i] as IovaNode;
      this.#removeNode(n);
      this.#counters.kfree('iova', IOVA_STRUCT_SIZE);
    }
    if (pfnLo < first.pfnLo) first.pfnLo = pfnLo;
    first.pfnHi = hi;
    return first;
  }

  // ---------------------------------------------------------------------------------------------
  // The fast path with per-CPU rcaches

  /**
   * Allocates `size` granules at or below `limitPfn` and returns the start pfn, or 0 on failure.
   * Sizes below 32 are rounded up to a power of two; sizes up to 32 are served from the current
   * CPU's rcache first (the most recently freed range under the limit), then from the tree with
   * `sizeAligned`; if that fails and `flushRcache` is set, every CPU's and the depot's cached
   * ranges go back to the tree and the tree is tried once more. Kernel: `alloc_iova_fast`
   * (drivers/iommu/iova.c, v6.17: the rounding moved here from dma-iommu). Counters: a hit or a
   * miss for each cacheable request, `iovaAllocFailures` for a 0 result.
   */
  allocIovaFast(size: number, limitPfn: number, flushRcache: boolean): number {
    if (this.#dead) this.#checkAlive('alloc_iova_fast');
    if (!(Number.isInteger(size) && size >= 1 && size <= IOVA_RCACHE_MAX_PAGES)) {
      this.#checkSize('alloc_iova_fast', size);
    } else {
      const order = 32 - Math.clz32(size - 1);
      size = 1 << order;
      if (!(Number.isInteger(limitPfn) && limitPfn >= 0 && limitPfn <= this.maxPfn)) {
        limitPfn = this.#clampLimit('alloc_iova_fast', limitPfn);
      }
      const pfn = this.#rcacheGet(order, size, limitPfn + 1);
      if (pfn !== 0) {
        this.#counters.iovaRcacheHits++;
        return pfn;
      }
      this.#counters.iovaRcacheMisses++;
    }
    const limit = this.#clampLimit('alloc_iova_fast', limitPfn);
    let node = this.#allocIova(size, limit, true);
    if (node === null && flushRcache) {
      this.#flushAll();
      node = this.#allocIova(size, limit, true);
    }
    if (node === null) {
      this.#counters.iovaAllocFailures++;
      return 0;
    }
    return node.pfnLo;
  }

  /**
   * Frees the range starting at `pfn` that was allocated with `size` granules (the size as
   * passed to `allocIovaFast`, unrounded): into the current CPU's rcache of order
   * `order_base_2(size)` when that is below `IOVA_RANGE_CACHE_MAX_SIZE`, else (or when no
   * magazine can be had) back to the tree. Kernel: `free_iova_fast` (drivers/iommu/iova.c).
   * Differs: checks that `pfn` starts a live range and that the (rounded) size is not larger
   * than it, throwing `IommuError` (rules `free_iova_fast: not allocated`, `free_iova_fast: size`)
   * otherwise; the kernel trusts the caller and would hand the bad range out again later. A
   * smaller size is accepted and misfiled into the smaller bucket, as in the kernel.
   */
  freeIovaFast(pfn: number, size: number): void {
    if (this.#dead) this.#checkAlive('free_iova_fast');
    const node = this.#liveNodeAt(pfn);
    if (node === null || node.pfnLo !== pfn || node.state !== IOVA_LIVE) {
      throw new IommuError(
        `free_iova_fast: pfn ${hex(pfn)} does not start an allocated range${stateNote(node)}`,
        {
          rule: 'free_iova_fast: not allocated',
        },
      );
    }
    const nodeSize = node.pfnHi - pfn + 1;
    // A smaller size than allocated is what dma_iova_destroy does with a short mapped_len: the
    // kernel files the whole range under the smaller size's bucket (a misfiling, not an overlap),
    // and so do we. A larger one would hand out memory beyond the range later: refused.
    if (Number.isInteger(size) && size >= 1 && size <= IOVA_RCACHE_MAX_PAGES) {
      const order = 32 - Math.clz32(size - 1);
      if (1 << order <= nodeSize) {
        if (this.#rcaches.insert(order, node)) {
          node.state = IOVA_CACHED;
          return;
        }
        this.#freeNode(node);
        return;
      }
    } else if (Number.isInteger(size) && size >= 1 && size <= nodeSize) {
      this.#freeNode(node);
      return;
    }
    throw new IommuError(
      `free_iova_fast: size ${size} does not match the range at ${hex(pfn)} (${nodeSize} granules)`,
      {
        rule: 'free_iova_fast: size',
      },
    );
  }

  /**
   * Returns every range cached by `cpu` (its loaded and previous magazines, all orders) to the
   * tree. Kernel: `free_cpu_cached_iovas` (drivers/iommu/iova.c), run on CPU hot-unplug.
   */
  freeCpuCachedIovas(cpu: number): void {
    this.#checkAlive('free_cpu_cached_iovas');
    if (!(Number.isInteger(cpu) && cpu >= 0 && cpu < this.#ncpus)) {
      throw new IommuError(`free_cpu_cached_iovas: cpu ${cpu} outside 0..${this.#ncpus - 1}`, {
        rule: 'free_cpu_cached_iovas: cpu',
      });
    }
    this.#rcaches.freeCpuCachedIovas(cpu);
  }

  /**
   * Returns every cached range (all CPUs, all depots) to the tree and counts one
   * `iovaRcacheFlushes`. Kernel counterpart: the flush loop in `alloc_iova_fast`
   * (`free_cpu_cached_iovas` for each CPU, then `free_global_cached_iovas`); not a kernel export.
   */
  flushRcaches(): void {
    this.#checkAlive('flush_rcaches');
    this.#flushAll();
  }

  /**
   * Destroys the domain: cancels the depot timers, frees every magazine and every range
   * (reservations included). Any later call throws `IommuError` (rule `put_iova_domain: use
   * after put`). Kernel: `put_iova_domain` (drivers/iommu/iova.c). Tree frees at teardown are
   * not counted in `iovaTreeFrees` (the kernel does not free them one by one either).
   */
  putIovaDomain(): void {
    this.#checkAlive('put_iova_domain');
    this.#rcaches.freeIovaRcaches();
    for (let n = this.#tree.first(); n !== null; n = rbNext(n) as IovaNode | null) {
      if (n.state !== IOVA_ANCHOR_NODE) {
        n.state = IOVA_FREED;
        this.#counters.kfree('iova', IOVA_STRUCT_SIZE);
      }
    }
    this.#tree.clear();
    this.#tree.insert(this.#anchor);
    this.#cachedNode = this.#anchor;
    this.#cached32Node = this.#anchor;
    this.#dead = true;
  }

  // ---------------------------------------------------------------------------------------------
  // Inspection (tests, reports)

  /** Every range in address order, anchor excluded. O(n). Model-only inspection. */
  ranges(): IovaRangeInfo[] {
    const out: IovaRangeInfo[] = [];
    for (let n = this.#tree.first(); n !== null; n = rbNext(n) as IovaNode | null) {
      if (n.state === IOVA_ANCHOR_NODE) continue;
      const state = n.state === IOVA_LIVE ? 'allocated' : n.state === IOVA_RESERVED ? 'reserved' : 'cached';
      out.push({ pfnLo: n.pfnLo, pfnHi: n.pfnHi, state });
    }
    return out;
  }

  /** The fill of every rcache size class: depot size and per-CPU magazine fill. Model-only. */
  rcacheState(): IovaRcacheInfo[] {
    return this.#dead ? [] : this.#rcaches.state();
  }

  /** Number of ranges currently held by rcaches (all CPUs and depots). Model-only. */
  get cachedCount(): number {
    let total = 0;
    for (const info of this.rcacheState()) {
      total += info.depotSize * IOVA_MAG_SIZE;
      for (const c of info.cpus) total += c.loaded + c.prev;
    }
    return total;
  }

  /** Number of magazines allocated (each accounted as 1024 bytes of `iova_magazine`). Model-only. */
  get magazineCount(): number {
    return this.#rcaches.magazineCount;
  }

  /**
   * Verifies the domain's invariants and throws `IommuError` (rule `iova: inconsistent`) naming
   * the first violation: rbtree shape, the anchor last, cached nodes in the tree, every cached
   * range in exactly one magazine, full depot magazines, the magazine count. For tests; O(n).
   * Model-only (the kernel has no such self-check).
   */
  check(): void {
    const fail = (what: string): never => {
      throw new IommuError(`iova: inconsistent: ${what}`, { rule: 'iova: inconsistent' });
    };
    try {
      this.#tree.check();
    } catch (e) {
      fail((e as Error).message);
    }
    if (this.#tree.last() !== this.#anchor) fail('anchor is not the last node');
    for (const [name, n] of [
      ['cached_node', this.#cachedNode],
      ['cached32_node', this.#cached32Node],
    ] as const) {
      if (n.state === IOVA_FREED || this.#tree.findContaining(n.pfnLo) !== n)
        fail(`${name} is not in the tree`);
    }
    if (this.#dead) return;
    let cachedInTree = 0;
    for (let n = this.#tree.first(); n !== null; n = rbNext(n) as IovaNode | null) {
      if (n.state === IOVA_CACHED) cachedInTree++;
      else if (n.state === IOVA_FREED) fail(`freed node at ${hex(n.pfnLo)} still in the tree`);
    }
    const inMagazines = this.#rcaches.check(fail, (node) => {
      if (node.state !== IOVA_CACHED) return `range at ${hex(node.pfnLo)} in a magazine is not cached`;
      if (this.#tree.findContaining(node.pfnLo) !== node)
        return `cached range at ${hex(node.pfnLo)} not in the tree`;
      return undefined;
    });
    if (inMagazines !== cachedInTree)
      fail(`${cachedInTree} cached ranges in the tree, ${inMagazines} in magazines`);
  }

  // ---------------------------------------------------------------------------------------------
  // Internals

  /**
   * The node a free of `pfn` refers to: the recent-allocation hint when it is live and starts at
   * `pfn`, else the tree node containing `pfn` (callers check the state; a NaN `pfn` must be
   * excluded by the caller, as every comparison with it is false).
   */
  #liveNodeAt(pfn: number): IovaNode | null {
    const hint = this.#recent[pfn % RECENT_SLOTS];
    if (hint !== undefined && hint !== null && hint.pfnLo === pfn && hint.state === IOVA_LIVE) return hint;
    return this.#tree.findContaining(pfn);
  }

  /** `alloc_iova` without argument checks or failure counting; `limit` is inclusive. */
  #allocIova(size: number, limit: number, sizeAligned: boolean): IovaNode | null {
    // kernel: alloc_iova_mem (GFP_ATOMIC) may fail before the search
    if (this.#faults.shouldFail('iova_alloc')) return null;
    const node = this.#allocAndInsertRange(size, limit + 1, sizeAligned);
    if (node !== null) {
      this.#counters.iovaTreeAllocs++;
      this.#counters.kmalloc('iova', IOVA_STRUCT_SIZE);
    }
    return node;
  }

  /**
   * The top-down search (kernel: `__alloc_and_insert_iova_range`); `limitExcl` is exclusive.
   * Walks backwards from the cached node of the limit's class, lowering `high` to each node's
   * start and trying the aligned candidate just below it, until the candidate clears the node
   * below or drops under the floor. On failure from a cached start, retries once over the space
   * above the cached node, starting from the limit itself. A final failure records
   * `max32_alloc_size` (for any limit, as the kernel does).
   */
  #allocAndInsertRange(size: number, limitExcl: number, sizeAligned: boolean): IovaNode | null {
    const align = sizeAligned ? roundupPowOfTwo(size) : 1;
    if (limitExcl <= this.dma32BitPfn && size >= this.#max32AllocSize) return null;
    let curr: IovaNode | null = limitExcl <= this.dma32BitPfn ? this.#cached32Node : this.#cachedNode;
    const retryPfn = curr.pfnHi;
    let high = limitExcl;
    let low = this.startPfn;
    let retried = false;
    let above: IovaNode;
    let candidate: number;
    for (;;) {
      do {
        if (curr.pfnLo < high) high = curr.pfnLo;
        candidate = alignDown(high - size, align);
        above = curr;
        curr = rbPrev(curr) as IovaNode | null;
        this.#counters.iovaTreeWalkSteps++;
      } while (curr !== null && candidate <= curr.pfnHi && candidate >= low);
      if (high >= size && candidate >= low) break;
      if (!retried && low === this.startPfn && retryPfn < limitExcl) {
        retried = true;
        high = limitExcl;
        low = retryPfn + 1;
        curr = this.#findLimit(limitExcl);
        continue;
      }
      this.#max32AllocSize = size;
      return null;
    }
    const node = new IovaNode(candidate, candidate + size - 1, IOVA_LIVE);
    this.#tree.insertBefore(node, above);
    this.#recent[candidate % RECENT_SLOTS] = node;
    // kernel: __cached_rbnode_insert_update
    if (node.pfnHi < this.dma32BitPfn) this.#cached32Node = node;
    else this.#cachedNode = node;
    return node;
  }

  /**
   * Where a retry starts: the anchor for limits above 4 GiB, else the lowest node reaching the
   * limit. Kernel: `iova_find_limit` (same result, written as a lower-bound search).
   */
  #findLimit(limitExcl: number): IovaNode {
    if (limitExcl > this.dma32BitPfn) return this.#anchor;
    return this.#tree.firstEndingAtOrAbove(limitExcl) as IovaNode;
  }

  /** Unlinks a node, keeping the cached nodes valid. Kernel: `remove_iova`. */
  #removeNode(node: IovaNode): void {
    // kernel: __cached_rbnode_delete_update
    const c32 = this.#cached32Node;
    if (node === c32 || (node.pfnHi < this.dma32BitPfn && node.pfnLo >= c32.pfnLo)) {
      this.#cached32Node = rbNext(node) as IovaNode;
    }
    if (node.pfnLo < this.dma32BitPfn) this.#max32AllocSize = this.dma32BitPfn;
    if (node.pfnLo >= this.#cachedNode.pfnLo) this.#cachedNode = rbNext(node) as IovaNode;
    this.#tree.erase(node);
    node.state = IOVA_FREED;
  }

  /** Removes and frees an allocated or cached range (kernel: `remove_iova` + `free_iova_mem`). */
  #freeNode(node: IovaNode): void {
    this.#removeNode(node);
    this.#counters.iovaTreeFrees++;
    this.#counters.kfree('iova', IOVA_STRUCT_SIZE);
  }

  /**
   * The rcache hit for `alloc_iova_fast` (kernel: `iova_rcache_get`): the range marked live and
   * remembered as recently allocated, its pfn returned; 0 on a miss.
   */
  #rcacheGet(order: number, size: number, limitExcl: number): number {
    const node = this.#rcaches.get(order, size, limitExcl);
    if (node === null) return 0;
    node.state = IOVA_LIVE;
    const pfn = node.pfnLo;
    this.#recent[pfn % RECENT_SLOTS] = node;
    return pfn;
  }

  /** Every CPU's caches, then every depot, back to the tree (the `alloc_iova_fast` flush). */
  #flushAll(): void {
    this.#counters.iovaRcacheFlushes++;
    for (let cpu = 0; cpu < this.#ncpus; cpu++) this.freeCpuCachedIovas(cpu);
    this.#rcaches.freeGlobalCachedIovas();
  }

  #checkAlive(fn: string): void {
    if (this.#dead) {
      throw new IommuError(`${fn}: IOVA domain used after put_iova_domain`, {
        rule: 'put_iova_domain: use after put',
      });
    }
  }

  #checkSize(fn: string, size: number): void {
    if (!(Number.isInteger(size) && size >= 1 && size <= this.maxPfn + 1)) {
      throw new IommuError(`${fn}: size ${size} is not a positive number of granules`, {
        rule: `${fn}: size`,
      });
    }
  }

  /** Validates an inclusive limit pfn and clamps it to `maxPfn`. */
  #clampLimit(fn: string, limitPfn: number): number {
    if (!(Number.isInteger(limitPfn) || limitPfn === Number.POSITIVE_INFINITY) || limitPfn < 0) {
      throw new IommuError(`${fn}: limit_pfn ${limitPfn} is not a pfn`, { rule: `${fn}: limit_pfn` });
    }
    return Math.min(limitPfn, this.maxPfn);
  }
}

/** Explains why a found node is not freeable, for error messages. */
function stateNote(node: IovaNode | null): string {
  if (node === null) return '';
  switch (node.state) {
    case IOVA_RESERVED:
      return ` (it lies in reserved range [${hex(node.pfnLo)}, ${hex(node.pfnHi)}])`;
    case IOVA_CACHED:
      return ' (the range is already free, held by an rcache: double free?)';
    case IOVA_ANCHOR_NODE:
      return ' (it is the anchor)';
    default:
      return ` (the range starts at ${hex(node.pfnLo)})`;
  }
}

/** log2 of the domain's granule. Kernel: `iova_shift` (include/linux/iova.h). */
export function iovaShift(iovad: IovaDomain): number {
  return iovad.shift;
}

/** `granule - 1`, the offset bits within a granule. Kernel: `iova_mask` (include/linux/iova.h). */
export function iovaMask(iovad: IovaDomain): number {
  return iovad.granule - 1;
}

/**
 * Offset of `addr` (a non-negative safe integer) within its granule. Kernel: `iova_offset`
 * (include/linux/iova.h). A mask, not `%` (which is a slow fmod on addresses above 2^31): the
 * DMA paths call it on every map and unmap.
 */
export function iovaOffset(iovad: IovaDomain, addr: number): number {
  return modPow2(addr, iovad.granule);
}

/** `size` rounded up to a whole number of granules. Kernel: `iova_align` (include/linux/iova.h). */
export function iovaAlign(iovad: IovaDomain, size: number): number {
  const r = modPow2(size, iovad.granule);
  return r === 0 ? size : size + iovad.granule - r;
}

/** The pfn of bus address `addr`. Kernel: `iova_pfn` (include/linux/iova.h). */
export function iovaPfn(iovad: IovaDomain, addr: number): number {
  return Math.floor(addr / iovad.granule);
}

/** Bus address of the start of `iova`. Kernel: `iova_dma_addr` (include/linux/iova.h). */
export function iovaDmaAddr(iovad: IovaDomain, iova: Iova): number {
  return iova.pfnLo * iovad.granule;
}

/** Number of granules in `iova`. Kernel: `iova_size` (include/linux/iova.h). */
export function iovaSize(iova: Iova): number {
  return iova.pfnHi - iova.pfnLo + 1;
}
