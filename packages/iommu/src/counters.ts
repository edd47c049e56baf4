/**
 * The machine's ledger: plain numeric counters that every layer reports into, cheap enough to
 * stay on in benchmarks, plus heap metadata accounted by kind in the bytes the kernel would
 * kmalloc. Kernel counterpart: none as one unit (the kernel's costs are spread over slab stats,
 * perf events and tracepoints); this is the model's measuring instrument.
 */

/** Heap metadata of one kind (e.g. `"scatterlist"`), in the bytes the kernel would allocate. */
export interface MetaStat {
  /** Number of allocations made. */
  allocs: number;
  /** Number of frees made. */
  frees: number;
  /** Bytes allocated in total. */
  bytes: number;
  /** Bytes currently live. */
  liveBytes: number;
  /** Highest `liveBytes` seen. */
  peakBytes: number;
}

/** Names of the numeric event counters. */
export const COUNTER_NAMES = [
  // physical memory
  'pagesAllocated',
  'pagesFreed',
  // io-pgtable
  'pteWrites',
  'pteClears',
  'pgtablePagesAllocated',
  'pgtablePagesFreed',
  // iommu core and IOTLB
  'iommuMapCalls',
  'iommuUnmapCalls',
  'iotlbInvRange',
  'iotlbInvAll',
  'iotlbSyncMap',
  // invalidation commands the driver issues (see IOTLB_COMMAND_COUNTERS)
  'iotlbInvPageCmds',
  'iotlbInvRangeCmds',
  'iotlbInvDomainCmds',
  'iotlbInvSyncs',
  'iotlbHits',
  'iotlbMisses',
  'iommuFaults',
  // flush queue
  'fqEnqueued',
  'fqFlushes',
  // IOVA allocator
  'iovaTreeAllocs',
  'iovaTreeWalkSteps',
  'iovaTreeFrees',
  'iovaAllocFailures',
  'iovaRcacheHits',
  'iovaRcacheMisses',
  'iovaRcacheFlushes',
  // DMA API
  'iovaAllocs',
  'iovaFrees',
  'dmaMapCalls',
  'dmaUnmapCalls',
  'dmaLinks',
  'dmaUnlinks',
  'cpuCacheSyncs',
  'bounceBytes',
  'bounceSlotsUsed',
  // device DMA
  'dmaReadBytes',
  'dmaWriteBytes',
] as const;

/** The counters of invalidation commands the driver issued, by kind (what the cost model charges). */
export const IOTLB_COMMAND_COUNTERS = [
  'iotlbInvPageCmds',
  'iotlbInvRangeCmds',
  'iotlbInvDomainCmds',
  'iotlbInvSyncs',
] as const;

/** One event counter name. */
export type CounterName = (typeof COUNTER_NAMES)[number];

/** A plain copy of every counter and metadata stat, for diffs and reports. */
export interface CounterSnapshot {
  events: Record<CounterName, number>;
  meta: Record<string, MetaStat>;
}

/** The machine's counters. Fields are public numbers: layers increment them directly. */
export class Counters {
  pagesAllocated = 0;
  pagesFreed = 0;
  pteWrites = 0;
  pteClears = 0;
  pgtablePagesAllocated = 0;
  pgtablePagesFreed = 0;
  iommuMapCalls = 0;
  iommuUnmapCalls = 0;
  /** IOTLB-model range drops (one per flush request that invalidated a range; not a command count). */
  iotlbInvRange = 0;
  /** IOTLB-model domain drops (flush-all, a domain-wide fallback, domain free; not a command count). */
  iotlbInvAll = 0;
  iotlbSyncMap = 0;
  /**
   * Invalidation commands for one translation-granule address: arm-smmu-v3 CMD_TLBI_NH_VA without
   * range invalidation, VT-d page-selective IOTLB descriptor with mask 0, AMD INVALIDATE_IOMMU_PAGES
   * without the S bit.
   */
  iotlbInvPageCmds = 0;
  /**
   * Invalidation commands covering several pages at once: arm-smmu-v3 range TLBI (RIL: TG, SCALE,
   * NUM), VT-d page-selective descriptor with an address mask > 0, AMD INVALIDATE_IOMMU_PAGES with
   * the S bit.
   */
  iotlbInvRangeCmds = 0;
  /**
   * Invalidation commands for a whole domain: arm-smmu-v3 CMD_TLBI_NH_ASID, VT-d domain-selective
   * IOTLB descriptor, AMD INVALIDATE_IOMMU_PAGES with the all-pages address.
   */
  iotlbInvDomainCmds = 0;
  /**
   * Waits for invalidation completion: arm-smmu-v3 CMD_SYNC, VT-d invalidation wait descriptor
   * (`qi_submit_sync`), AMD COMPLETION_WAIT. The CPU spins until the IOMMU has drained the queue.
   */
  iotlbInvSyncs = 0;
  iotlbHits = 0;
  iotlbMisses = 0;
  iommuFaults = 0;
  fqEnqueued = 0;
  fqFlushes = 0;
  iovaTreeAllocs = 0;
  /**
   * Tree nodes the top-down search visited in tree allocations (kernel:
   * `__alloc_and_insert_iova_range`'s `rb_prev` walk); grows with fragmentation below the limit.
   */
  iovaTreeWalkSteps = 0;
  iovaTreeFrees = 0;
  iovaAllocFailures = 0;
  iovaRcacheHits = 0;
  iovaRcacheMisses = 0;
  iovaRcacheFlushes = 0;
  iovaAllocs = 0;
  iovaFrees = 0;
  dmaMapCalls = 0;
  dmaUnmapCalls = 0;
  dmaLinks = 0;
  dmaUnlinks = 0;
  cpuCacheSyncs = 0;
  bounceBytes = 0;
  bounceSlotsUsed = 0;
  dmaReadBytes = 0;
  dmaWriteBytes = 0;

  /** Heap metadata by kind. */
  readonly meta = new Map<string, MetaStat>();

  /** Records a kmalloc of `bytes` of metadata of `kind` (kernel: slab allocation). */
  kmalloc(kind: string, bytes: number): void {
    let s = this.meta.get(kind);
    if (s === undefined) {
      s = { allocs: 0, frees: 0, bytes: 0, liveBytes: 0, peakBytes: 0 };
      this.meta.set(kind, s);
    }
    s.allocs++;
    s.bytes += bytes;
    s.liveBytes += bytes;
    if (s.liveBytes > s.peakBytes) s.peakBytes = s.liveBytes;
  }

  /** Records the kfree of `bytes` of metadata of `kind`. */
  kfree(kind: string, bytes: number): void {
    const s = this.meta.get(kind);
    if (s === undefined) return;
    s.frees++;
    s.liveBytes -= bytes;
  }

  /** Total metadata allocations and bytes over all kinds (optionally only `kinds`). */
  metaTotals(kinds?: readonly string[]): { allocs: number; bytes: number; liveBytes: number } {
    let allocs = 0;
    let bytes = 0;
    let liveBytes = 0;
    for (const [k, s] of this.meta) {
      if (kinds !== undefined && !kinds.includes(k)) continue;
      allocs += s.allocs;
      bytes += s.bytes;
      liveBytes += s.liveBytes;
    }
    return { allocs, bytes, liveBytes };
  }

  /** A plain copy of all counters. */
  snapshot(): CounterSnapshot {
    const events = {} as Record<CounterName, number>;
    for (const name of COUNTER_NAMES) events[name] = this[name];
    const meta: Record<string, MetaStat> = {};
    for (const [k, s] of this.meta) meta[k] = { ...s };
    return { events, meta };
  }

  /** Sets every counter back to zero (metadata live bytes included). */
  reset(): void {
    for (const name of COUNTER_NAMES) this[name] = 0;
    this.meta.clear();
  }
}

/** What happened between two snapshots: `after - before` for every counter and metadata stat. */
export function diffCounters(before: CounterSnapshot, after: CounterSnapshot): CounterSnapshot {
  const events = {} as Record<CounterName, number>;
  for (const name of COUNTER_NAMES) events[name] = after.events[name] - before.events[name];
  const meta: Record<string, MetaStat> = {};
  for (const [k, a] of Object.entries(after.meta)) {
    const b = before.meta[k] ?? { allocs: 0, frees: 0, bytes: 0, liveBytes: 0, peakBytes: 0 };
    meta[k] = {
      allocs: a.allocs - b.allocs,
      frees: a.frees - b.frees,
      bytes: a.bytes - b.bytes,
      liveBytes: a.liveBytes - b.liveBytes,
      peakBytes: a.peakBytes,
    };
  }
  return { events, meta };
}
