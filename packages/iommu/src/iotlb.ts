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
 */

import type { Counters } from './counters.js';
import { hex, IommuError } from './errors.js';
import type { Machine } from './machine.js';

/** Key stride of one domain: 2^36 pages of 4 KiB cover the 48-bit IOVA space. */
const DOMAIN_STRIDE = 2 ** 36;
/** Domain ids must stay below this so keys remain safe integers. */
export const IOTLB_MAX_DOMAIN_ID = 2 ** 16 - 1;
const SZ_4K = 4096;
const PAGES_2M = 512;
const PAGES_1G = 262144;

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
  /** Key → entry; Map order is LRU order (first = least recently used). */
  readonly #map = new Map<number, IotlbEntry>();
  readonly #counters: Counters;

  /** An empty IOTLB of `entries` slots. */
  constructor(machine: Machine, entries: number) {
    if (!(Number.isInteger(entries) && entries >= 1)) {
      throw new IommuError(`iotlb: capacity must be a positive integer, got ${entries}`, {
        rule: 'iotlb: capacity',
      });
    }
    this.capacity = entries;
    this.#counters = machine.counters;
  }

  /** Entries currently cached. */
  get size(): number {
    return this.#map.size;
  }

  /**
   * The cached entry translating `iova` in domain `domainId`, or undefined. Counts `iotlbHits` or
   * `iotlbMisses`; a hit becomes the most recently used entry. Non-present entries are returned too.
   */
  lookup(domainId: number, iova: number): IotlbEntry | undefined {
    const base = domainKeyBase(domainId);
    const page = Math.floor(iova / SZ_4K);
    let e = this.#probe(base + page, iova);
    if (e === undefined) {
      const p2m = page - (page % PAGES_2M);
      if (p2m !== page) e = this.#probe(base + p2m, iova);
      if (e === undefined) {
        const p1g = page - (page % PAGES_1G);
        if (p1g !== p2m) e = this.#probe(base + p1g, iova);
      }
    }
    if (e === undefined) this.#counters.iotlbMisses++;
    else this.#counters.iotlbHits++;
    return e;
  }

  /**
   * Caches a copy of `entry` for domain `domainId`, replacing an entry for the same leaf start and
   * evicting the least recently used entry when full.
   */
  insert(domainId: number, entry: IotlbEntry): void {
    const base = domainKeyBase(domainId);
    const size = entry.leafSize;
    if (!(size === SZ_4K || size === SZ_4K * PAGES_2M || size === SZ_4K * PAGES_1G)) {
      throw new IommuError(`iotlb: leaf size ${hex(size)} is not 4 KiB, 2 MiB or 1 GiB`, {
        rule: 'iotlb: leaf size',
      });
    }
    if (!(Number.isSafeInteger(entry.leafIova) && entry.leafIova >= 0 && entry.leafIova % size === 0)) {
      throw new IommuError(`iotlb: leaf IOVA ${hex(entry.leafIova)} not aligned to its size ${hex(size)}`, {
        rule: 'iotlb: leaf alignment',
      });
    }
    const key = base + entry.leafIova / SZ_4K;
    const map = this.#map;
    if (map.has(key)) map.delete(key);
    else if (map.size >= this.capacity) map.delete(map.keys().next().value as number);
    map.set(key, {
      leafIova: entry.leafIova,
      leafPhys: entry.leafPhys,
      leafSize: size,
      prot: entry.prot,
      present: entry.present,
    });
  }

  /**
   * Drops every entry of `domainId` whose leaf intersects `[iova, iova + size)` (kernel
   * counterpart: a range/page-selective invalidation, e.g. arm-smmu-v3 CMD_TLBI_NH_VA, VT-d PSI).
   * Counts `iotlbInvRange` once per call.
   */
  invalidateRange(domainId: number, iova: number, size: number): void {
    this.#counters.iotlbInvRange++;
    this.#drop(domainKeyBase(domainId), iova, size, false);
  }

  /**
   * Drops every entry of `domainId`, or of all domains when omitted (kernel counterpart:
   * `flush_iotlb_all`, CMD_TLBI_NH_ASID / domain-selective invalidation). Counts `iotlbInvAll`.
   */
  invalidateAll(domainId?: number): void {
    this.#counters.iotlbInvAll++;
    if (domainId === undefined) {
      this.#map.clear();
      return;
    }
    const base = domainKeyBase(domainId);
    for (const key of this.#map.keys()) {
      if (key >= base && key < base + DOMAIN_STRIDE) this.#map.delete(key);
    }
  }

  /**
   * Drops only the non-present entries of `domainId` intersecting `[iova, iova + size)` (kernel
   * counterpart: the invalidation `iotlb_sync_map` issues on IOMMUs that cache non-present
   * entries, e.g. VT-d in caching mode). Counts nothing: the core counts `iotlbSyncMap`.
   */
  invalidateNonPresent(domainId: number, iova: number, size: number): void {
    this.#drop(domainKeyBase(domainId), iova, size, true);
  }

  /** The entry at `key` if it covers `iova`, made most recently used. */
  #probe(key: number, iova: number): IotlbEntry | undefined {
    const map = this.#map;
    const e = map.get(key);
    if (e === undefined || iova < e.leafIova || iova >= e.leafIova + e.leafSize) return undefined;
    map.delete(key);
    map.set(key, e);
    return e;
  }

  #drop(base: number, iova: number, size: number, onlyNonPresent: boolean): void {
    if (!(size > 0)) return;
    const map = this.#map;
    if (map.size === 0) return;
    const end = iova + size;
    const first = Math.floor(iova / SZ_4K);
    const last = Math.ceil(end / SZ_4K) - 1;
    if (last - first + 1 <= map.size) {
      for (let p = first; p <= last; p++) this.#dropKey(base + p, iova, end, onlyNonPresent);
      const p2m = first - (first % PAGES_2M);
      if (p2m !== first) this.#dropKey(base + p2m, iova, end, onlyNonPresent);
      const p1g = first - (first % PAGES_1G);
      if (p1g !== p2m && p1g !== first) this.#dropKey(base + p1g, iova, end, onlyNonPresent);
      return;
    }
    for (const [key, e] of map) {
      if (key < base || key >= base + DOMAIN_STRIDE) continue;
      if (onlyNonPresent && e.present) continue;
      if (e.leafIova < end && e.leafIova + e.leafSize > iova) map.delete(key);
    }
  }

  #dropKey(key: number, iova: number, end: number, onlyNonPresent: boolean): void {
    const e = this.#map.get(key);
    if (e === undefined || (onlyNonPresent && e.present)) return;
    if (e.leafIova < end && e.leafIova + e.leafSize > iova) this.#map.delete(key);
  }
}

/** First key of a domain; throws for an id outside 0..IOTLB_MAX_DOMAIN_ID. */
function domainKeyBase(domainId: number): number {
  if (!(Number.isInteger(domainId) && domainId >= 0 && domainId <= IOTLB_MAX_DOMAIN_ID)) {
    throw new IommuError(`iotlb: domain id ${domainId} outside 0..${IOTLB_MAX_DOMAIN_ID}`, {
      rule: 'iotlb: domain id',
    });
  }
  return domainId * DOMAIN_STRIDE;
}
