/**
 * The IOTLB: the IOMMU's bounded cache of translations, tagged by domain (ASID/DID), consulted by
 * the walker before it reads the page table. It is what makes invalidation matter: after an unmap
 * without invalidation the device can still use the stale translation. Kernel counterpart: none in
 * software; it models the translation caches that arm-smmu-v3 (`arm_smmu_tlb_inv_range_domain`,
 * CMD_TLBI_*) and intel-iommu (`cache_tag_flush_range`, IOTLB/PSI invalidation, caching mode) keep
 * coherent.
 *
 * Model: `entries` slots, LRU replacement. One entry per cached leaf, keyed by
 * `domainId * 2^36 + floor(leafIova / 4 KiB)`, i.e. by the first 4 KiB page of the leaf (not by the
 * page accessed): a 2 MiB or 1 GiB leaf takes one slot, as in a TLB with per-size entries. A lookup
 * therefore probes the accessed page, then its 2 MiB- and 1 GiB-aligned pages. Leaves are naturally
 * aligned (4 KiB, 2 MiB or 1 GiB), so a range invalidation finds every intersecting entry by probing
 * each page in the range plus those two aligned pages before it, or by scanning all entries when the
 * range has more pages than the cache has entries. Entries with `present = false` model IOMMUs that
 * cache non-present translations (VT-d caching mode), which `iotlb_sync_map` must drop.
 * Differs on purpose: no walk (paging-structure) cache, no set associativity.
 *
 * Storage allocates nothing after construction: each slot's fields live in parallel typed arrays.
 * A key finds its slot through a power-of-two table of bucket heads, each bucket a chain of slots
 * linked by `#chain`. The slots in use form a circular doubly linked list in `#prev`/`#next`
 * around a sentinel (index `capacity`): the sentinel's next is the least recently used slot, its
 * prev the most recently used. Free slots form a stack linked through `#next`. A slot index is
 * valid until the next insert or invalidation; the object API (`lookup`, `insert`) copies.
 * `Iotlb` is about 300 lines because it is one hardware cache (as rp2040js keeps one peripheral in
 * one class): its slot storage, LRU and bucket chains, and the lookup, insert and invalidation
 * forms that share them.
 */

import { modPow2 } from './bits.js';
import type { Counters } from './counters.js';
import { hex, IommuError } from './errors.js';
import type { PteLookup } from './io-pgtable.js';
import type { Machine } from './machine.js';

/** Key stride of one domain: 2^36 pages of 4 KiB cover the 48-bit IOVA space. */
const DOMAIN_STRIDE = 2 ** 36;
/** Domain ids must stay below this so keys remain safe integers. */
export const IOTLB_MAX_DOMAIN_ID = 2 ** 16 - 1;
const SZ_4K = 4096;
const PAGES_2M = 512;
const PAGES_1G = 262144;
const TWO_32 = 2 ** 32;
const INV_4K = 1 / SZ_4K;
const INV_TWO_32 = 1 / TWO_32;
const HASH_HI = 0x85ebca6b;
const HASH_MUL = 0x9e3779b1;

/**
 * The hardware walk's IOTLB steps (`IommuDevice.translate`), internal to this package (not exported
 * from its entry points). `walkLookup` is `lookupSlot`. `walkFill` is `insertLeaf(domainId, …,
 * true)` for `leaf`, a leaf the walk just read from the page table after `walkLookup` of the same
 * domain missed: it skips the argument checks (the domain id passed `walkLookup`'s; a page-table
 * leaf is 4 KiB, 2 MiB or 1 GiB and aligned to its size). Both take the leaf by reference and the
 * domain by id so that no double is boxed to cross the call.
 */
export let walkLookup: (tlb: Iotlb, domainId: number, iova: number) => number;
export let walkFill: (tlb: Iotlb, domainId: number, leaf: PteLookup) => number;

/** One cached translation (kernel counterpart: an IOTLB entry in hardware). */
export interface IotlbEntry {
  /** IOVA of the first byte of the leaf. */
  leafIova: number;
  /** Physical address of the leaf. */
  leafPhys: number;
  /** Leaf size: 4 KiB, 2 MiB or 1 GiB. */
  leafSize: number;
  /** Permissions as `IOMMU_*` flags. */
  prot: number;
  /** False for a cached "not present" result (VT-d caching mode). */
  present: boolean;
}

/** The hardware IOTLB model, shared by the domains of one IOMMU. */
export class Iotlb {
  /** Number of entries the IOTLB holds. */
  readonly capacity: number;
  readonly #counters: Counters;
  // Per-slot fields.
  readonly #key: Float64Array;
  readonly #iova: Float64Array;
  readonly #phys: Float64Array;
  readonly #leafSize: Int32Array;
  readonly #prot: Int32Array;
  readonly #present: Uint8Array;
  /** Next slot in the same hash bucket, or -1. */
  readonly #chain: Int32Array;
  /** Bucket of each slot's key (saves rehashing it when the slot is removed). */
  readonly #bucketOf: Int32Array;
  /** Bucket heads (slot or -1); length a power of two, at least twice the capacity. */
  readonly #buckets: Int32Array;
  /** 32 - log2(bucket count): the hash keeps the top bits of a 32-bit product. */
  readonly #shift: number;
  /** LRU list links; index `capacity` is the sentinel. `#next` also links the free stack. */
  readonly #prev: Int32Array;
  readonly #next: Int32Array;
  #free = 0;
  #size = 0;
  /**
   * Cached entries whose leaf is larger than 4 KiB. While it is 0 a lookup or an invalidation
   * probes only the 4 KiB keys: a 2 MiB or 1 GiB key can hold nothing.
   */
  #large = 0;
  /**
   * The key of the last `walkLookup` miss on its own page, and its bucket, or -1: that key is not
   * cached until something inserts (every insert resets it), so `walkFill` of that key skips the
   * bucket search. Removals keep it true.
   */
  #missKey = -1;
  #missBucket = 0;

  /** An empty IOTLB of `entries` slots. */
  constructor(machine: Machine, entries: number) {
    if (!(Number.isInteger(entries) && entries >= 1)) {
      throw new IommuError(`iotlb: capacity must be a positive integer, got ${entries}`, {
        rule: 'iotlb: capacity',
      });
    }
    this.capacity = entries;
    this.#counters = machine.counters;
    this.#key = new Float64Array(entries);
    this.#iova = new Float64Array(entries);
    this.#phys = new Float64Array(entries);
    this.#leafSize = new Int32Array(entries);
    this.#prot = new Int32Array(entries);
    this.#present = new Uint8Array(entries);
    this.#chain = new Int32Array(entries);
    this.#bucketOf = new Int32Array(entries);
    let bits = 1;
    while (2 ** bits < 2 * entries) bits++;
    this.#buckets = new Int32Array(2 ** bits);
    this.#shift = 32 - bits;
    this.#prev = new Int32Array(entries + 1);
    this.#next = new Int32Array(entries + 1);
    this.#reset();
  }

  /** Entries currently cached. */
  get size(): number {
    return this.#size;
  }

  /**
   * The cached entry translating `iova` in domain `domainId`, or undefined (kernel counterpart:
   * the IOTLB lookup the hardware does before a walk). A copy of `lookupSlot`'s result.
   */
  lookup(domainId: number, iova: number): IotlbEntry | undefined {
    const s = this.lookupSlot(domainId, iova);
    if (s < 0) return undefined;
    return {
      leafIova: this.#iova[s]!,
      leafPhys: this.#phys[s]!,
      leafSize: this.#leafSize[s]!,
      prot: this.#prot[s]!,
      present: this.#present[s] === 1,
    };
  }

  /**
   * The slot caching the translation of `iova` in domain `domainId`, or -1, without allocating
   * (kernel counterpart: the hardware IOTLB lookup). Counts `iotlbHits` or `iotlbMisses`; a hit
   * becomes the most recently used entry. Non-present entries are returned too.
   */
  lookupSlot(domainId: number, iova: number): number {
    return this.#walkLookup(domainId, iova);
  }

  /** Physical address of `iova` through the leaf cached in `slot` (the hardware's output address). */
  slotPhys(slot: number, iova: number): number {
    return this.#phys[slot]! + (iova - this.#iova[slot]!);
  }

  /** `IOMMU_*` permissions of the leaf cached in `slot` (the entry's R/W bits in hardware). */
  slotProt(slot: number): number {
    return this.#prot[slot]!;
  }

  /** False when `slot` caches a "not present" result (VT-d caching mode). */
  slotPresent(slot: number): boolean {
    return this.#present[slot] === 1;
  }

  /**
   * Caches a copy of `entry` for domain `domainId` (kernel counterpart: the hardware filling an
   * IOTLB entry after a walk). See `insertLeaf`.
   */
  insert(domainId: number, entry: IotlbEntry): void {
    this.insertLeaf(domainId, entry.leafIova, entry.leafPhys, entry.leafSize, entry.prot, entry.present);
  }

  /**
   * Caches one leaf for domain `domainId` and returns its slot (kernel counterpart: the hardware
   * filling an IOTLB entry after a walk). Replaces an entry for the same leaf start; when full,
   * evicts the least recently used entry. The new entry is the most recently used.
   */
  insertLeaf(
    domainId: number,
    leafIova: number,
    leafPhys: number,
    leafSize: number,
    prot: number,
    present: boolean,
  ): number {
    const base = domainKeyBase(domainId);
    if (!(leafSize === SZ_4K || leafSize === SZ_4K * PAGES_2M || leafSize === SZ_4K * PAGES_1G)) {
      throw new IommuError(`iotlb: leaf size ${hex(leafSize)} is not 4 KiB, 2 MiB or 1 GiB`, {
        rule: 'iotlb: leaf size',
      });
    }
    if (
      !(
        Number.isSafeInteger(leafIova) &&
        leafIova >= 0 &&
        ((leafIova - Math.floor(leafIova * INV_TWO_32) * TWO_32) & (leafSize - 1)) === 0
      )
    ) {
      throw new IommuError(`iotlb: leaf IOVA ${hex(leafIova)} not aligned to its size ${hex(leafSize)}`, {
        rule: 'iotlb: leaf alignment',
      });
    }
    this.#missKey = -1;
    const key = base + leafIova * INV_4K;
    return this.#fill(key, hashKey(key, this.#shift), leafIova, leafPhys, leafSize, prot, present);
  }

  /**
   * `lookupSlot`. A miss remembers the probed 4 KiB key and its bucket for `walkFill`. Takes the
   * domain by id, not by its first key: that key is at least 2^36, and a double passed across a
   * call is boxed.
   */
  #walkLookup(domainId: number, iova: number): number {
    const base = domainKeyBase(domainId);
    const page = Math.floor(iova * INV_4K);
    const key = base + page;
    const b = hashKey(key, this.#shift);
    const keys = this.#key;
    const chain = this.#chain;
    let s = this.#buckets[b]!;
    while (s >= 0 && keys[s] !== key) s = chain[s]!;
    // A leaf keyed at `page` starts there, so it covers `iova`: no size check needed.
    if (s < 0 && this.#large > 0) {
      const p2m = page - modPow2(page, PAGES_2M);
      if (p2m !== page) s = this.#covering(base + p2m, iova);
      if (s < 0) {
        const p1g = page - modPow2(page, PAGES_1G);
        if (p1g !== p2m) s = this.#covering(base + p1g, iova);
      }
    }
    if (s < 0) {
      this.#missKey = key;
      this.#missBucket = b;
      this.#counters.iotlbMisses++;
      return -1;
    }
    this.#counters.iotlbHits++;
    this.#unlinkLru(s);
    this.#linkMru(s);
    return s;
  }

  /**
   * `insertLeaf(domain, leafIova, leafPhys, leafSize, prot, true)` for a leaf the hardware walk
   * just read from the page table (a valid size, aligned): skips the argument checks, and the
   * bucket search when the leaf's key is the one `walkLookup` just missed.
   */
  #walkFill(domainId: number, leaf: PteLookup): number {
    const leafIova = leaf.leafIova;
    const key = domainId * DOMAIN_STRIDE + leafIova * INV_4K;
    if (key === this.#missKey) {
      this.#missKey = -1;
      return this.#fillNew(key, this.#missBucket, leafIova, leaf.leafPhys, leaf.leafSize, leaf.prot, true);
    }
    this.#missKey = -1;
    return this.#fill(
      key,
      hashKey(key, this.#shift),
      leafIova,
      leaf.leafPhys,
      leaf.leafSize,
      leaf.prot,
      true,
    );
  }

  /** Caches a leaf at `key` (in bucket `b`), replacing the entry already there. */
  #fill(
    key: number,
    b: number,
    leafIova: number,
    leafPhys: number,
    leafSize: number,
    prot: number,
    present: boolean,
  ): number {
    const keys = this.#key;
    const chain = this.#chain;
    let s = this.#buckets[b]!;
    while (s >= 0 && keys[s] !== key) s = chain[s]!;
    if (s < 0) return this.#fillNew(key, b, leafIova, leafPhys, leafSize, prot, present);
    this.#unlinkLru(s);
    this.#set(s, leafIova, leafPhys, leafSize, prot, present);
    return s;
  }

  /** Caches a leaf at `key` (in bucket `b`), which holds no entry: takes a free slot or the LRU one. */
  #fillNew(
    key: number,
    b: number,
    leafIova: number,
    leafPhys: number,
    leafSize: number,
    prot: number,
    present: boolean,
  ): number {
    const cap = this.capacity;
    const next = this.#next;
    if (this.#size >= cap) this.#remove(next[cap]!);
    const s = this.#free;
    this.#free = next[s]!;
    this.#size++;
    this.#key[s] = key;
    this.#bucketOf[s] = b;
    const buckets = this.#buckets;
    this.#chain[s] = buckets[b]!;
    buckets[b] = s;
    // As `#set`, for a slot whose stale size must not count.
    this.#iova[s] = leafIova;
    this.#phys[s] = leafPhys;
    if (leafSize !== SZ_4K) this.#large++;
    this.#leafSize[s] = leafSize;
    this.#prot[s] = prot;
    this.#present[s] = present ? 1 : 0;
    this.#linkMru(s);
    return s;
  }

  /** Stores the leaf fields of slot `s` and makes it the most recently used entry. */
  #set(
    s: number,
    leafIova: number,
    leafPhys: number,
    leafSize: number,
    prot: number,
    present: boolean,
  ): void {
    this.#iova[s] = leafIova;
    this.#phys[s] = leafPhys;
    const sizes = this.#leafSize;
    if (sizes[s] !== SZ_4K) this.#large--;
    if (leafSize !== SZ_4K) this.#large++;
    sizes[s] = leafSize;
    this.#prot[s] = prot;
    this.#present[s] = present ? 1 : 0;
    this.#linkMru(s);
  }

  static {
    walkLookup = (t, domainId, iova) => t.#walkLookup(domainId, iova);
    walkFill = (t, domainId, leaf) => t.#walkFill(domainId, leaf);
  }

  /**
   * Drops every entry of `domainId` whose leaf intersects `[iova, iova + size)` (kernel
   * counterpart: a range/page-selective invalidation, e.g. arm-smmu-v3 CMD_TLBI_NH_VA, VT-d PSI).
   * Counts `iotlbInvRange` once per call.
   */
  invalidateRange(domainId: number, iova: number, size: number): void {
    this.#counters.iotlbInvRange++;
    this.#drop(domainId, iova, size, false);
  }

  /**
   * Drops every entry of `domainId`, or of all domains when omitted (kernel counterpart:
   * `flush_iotlb_all`, CMD_TLBI_NH_ASID / domain-selective invalidation). Counts `iotlbInvAll`.
   */
  invalidateAll(domainId?: number): void {
    this.#counters.iotlbInvAll++;
    if (domainId === undefined) {
      if (this.#size > 0) this.#reset();
      return;
    }
    const base = domainKeyBase(domainId);
    const next = this.#next;
    for (let s = next[this.capacity]!; s !== this.capacity; ) {
      const n = next[s]!;
      const key = this.#key[s]!;
      if (key >= base && key < base + DOMAIN_STRIDE) this.#remove(s);
      s = n;
    }
  }

  /**
   * Drops only the non-present entries of `domainId` intersecting `[iova, iova + size)` (kernel
   * counterpart: the invalidation `iotlb_sync_map` issues on IOMMUs that cache non-present
   * entries, e.g. VT-d in caching mode). Counts nothing: the core counts `iotlbSyncMap`.
   */
  invalidateNonPresent(domainId: number, iova: number, size: number): void {
    this.#drop(domainId, iova, size, true);
  }

  /** Empties the cache: no buckets, no LRU entries, every slot on the free stack. */
  #reset(): void {
    const cap = this.capacity;
    this.#buckets.fill(-1);
    const next = this.#next;
    for (let s = 0; s < cap; s++) next[s] = s + 1;
    next[cap - 1] = -1;
    next[cap] = cap;
    this.#prev[cap] = cap;
    this.#free = 0;
    this.#size = 0;
    this.#large = 0;
  }

  /** The slot holding `key`, or -1. */
  #find(key: number): number {
    const keys = this.#key;
    const chain = this.#chain;
    let s = this.#buckets[hashKey(key, this.#shift)]!;
    while (s >= 0 && keys[s] !== key) s = chain[s]!;
    return s;
  }

  /** The slot at `key` if its leaf covers `iova`, else -1. */
  #covering(key: number, iova: number): number {
    const s = this.#find(key);
    if (s < 0) return -1;
    const leafIova = this.#iova[s]!;
    return iova >= leafIova && iova < leafIova + this.#leafSize[s]! ? s : -1;
  }

  #linkMru(s: number): void {
    const prev = this.#prev;
    const sentinel = this.capacity;
    const mru = prev[sentinel]!;
    prev[s] = mru;
    this.#next[s] = sentinel;
    this.#next[mru] = s;
    prev[sentinel] = s;
  }

  #unlinkLru(s: number): void {
    const p = this.#prev[s]!;
    const n = this.#next[s]!;
    this.#next[p] = n;
    this.#prev[n] = p;
  }

  /** Takes slot `s` out of its bucket and the LRU list and pushes it on the free stack. */
  #remove(s: number): void {
    const b = this.#bucketOf[s]!;
    const chain = this.#chain;
    let at = this.#buckets[b]!;
    if (at === s) {
      this.#buckets[b] = chain[s]!;
    } else {
      while (chain[at] !== s) at = chain[at]!;
      chain[at] = chain[s]!;
    }
    this.#unlinkLru(s);
    if (this.#leafSize[s] !== SZ_4K) this.#large--;
    this.#next[s] = this.#free;
    this.#free = s;
    this.#size--;
  }

  /**
   * Drops the entries of `domainId` (non-present ones only, with `onlyNonPresent`) whose leaf meets
   * `[iova, iova + size)`. Takes the domain by id: its first key, above 2^32, would be boxed.
   */
  #drop(domainId: number, iova: number, size: number, onlyNonPresent: boolean): void {
    const base = domainKeyBase(domainId);
    if (!(size > 0) || this.#size === 0) return;
    const end = iova + size;
    const first = Math.floor(iova * INV_4K);
    const pages = Math.ceil(end * INV_4K) - first;
    if (pages <= this.#size) {
      // Probe the pages' keys in order, hashing incrementally: `hashKey` of consecutive keys.
      const keys = this.#key;
      const chain = this.#chain;
      const buckets = this.#buckets;
      const shift = this.#shift;
      let key = base + first;
      let hi = Math.floor(key * INV_TWO_32);
      let lo = (key - hi * TWO_32) | 0;
      let hx = Math.imul(hi, HASH_HI);
      const iovas = this.#iova;
      const sizes = this.#leafSize;
      const present = this.#present;
      const limit = base + DOMAIN_STRIDE;
      for (let n = pages; n > 0; n--) {
        const b = Math.imul(lo ^ hx, HASH_MUL) >>> shift;
        let s = buckets[b]!;
        while (s >= 0 && keys[s] !== key) s = chain[s]!;
        // `#dropSlot` and `#remove`, inline: the slot's key and bucket are known.
        if (s >= 0 && key >= base && key < limit && !(onlyNonPresent && present[s] === 1)) {
          const leafIova = iovas[s]!;
          const size = sizes[s]!;
          if (leafIova < end && leafIova + size > iova) {
            let at = buckets[b]!;
            if (at === s) {
              buckets[b] = chain[s]!;
            } else {
              while (chain[at] !== s) at = chain[at]!;
              chain[at] = chain[s]!;
            }
            this.#unlinkLru(s);
            if (size !== SZ_4K) this.#large--;
            this.#next[s] = this.#free;
            this.#free = s;
            this.#size--;
          }
        }
        key++;
        lo = (lo + 1) | 0;
        if (lo === 0) {
          hi++;
          hx = Math.imul(hi, HASH_HI);
        }
      }
      if (this.#large === 0) return;
      const p2m = first - modPow2(first, PAGES_2M);
      if (p2m !== first) this.#dropKey(base, p2m, iova, end, onlyNonPresent);
      const p1g = first - modPow2(first, PAGES_1G);
      if (p1g !== p2m && p1g !== first) this.#dropKey(base, p1g, iova, end, onlyNonPresent);
      return;
    }
    const next = this.#next;
    for (let s = next[this.capacity]!; s !== this.capacity; ) {
      const n = next[s]!;
      this.#dropSlot(s, base, iova, end, onlyNonPresent);
      s = n;
    }
  }

  #dropKey(base: number, page: number, iova: number, end: number, onlyNonPresent: boolean): void {
    const s = this.#find(base + page);
    if (s >= 0) this.#dropSlot(s, base, iova, end, onlyNonPresent);
  }

  /** Removes slot `s` if it belongs to the domain at `base` and its leaf meets `[iova, end)`. */
  #dropSlot(s: number, base: number, iova: number, end: number, onlyNonPresent: boolean): void {
    const key = this.#key[s]!;
    if (key < base || key >= base + DOMAIN_STRIDE) return;
    if (onlyNonPresent && this.#present[s] === 1) return;
    const leafIova = this.#iova[s]!;
    if (leafIova < end && leafIova + this.#leafSize[s]! > iova) this.#remove(s);
  }
}

/** Bucket of `key` (a safe integer): both 32-bit halves mixed by multiplication, top bits kept. */
function hashKey(key: number, shift: number): number {
  const hi = Math.floor(key / TWO_32);
  const lo = key - hi * TWO_32;
  return Math.imul(lo ^ Math.imul(hi, HASH_HI), HASH_MUL) >>> shift;
}

/** First key of a domain; throws for an id outside 0..IOTLB_MAX_DOMAIN_ID. */
function domainKeyBase(domainId: number): number {
  if (!(Number.isInteger(domainId) && domainId >= 0 && domainId <= IOTLB_MAX_DOMAIN_ID))
    badDomainId(domainId);
  // small enough for V8 to inline: the key (above 2^32) is not boxed to be returned
  return domainId * DOMAIN_STRIDE;
}

function badDomainId(domainId: number): never {
  throw new IommuError(`iotlb: domain id ${domainId} outside 0..${IOTLB_MAX_DOMAIN_ID}`, {
    rule: 'iotlb: domain id',
  });
}
