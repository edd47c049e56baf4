/**
 * Chained scatterlist tables from mempools, as in Linux `lib/sg_pool.c` (v5.2+, with
 * `nents_first_chunk`): an optional caller-owned first chunk (a driver's inline per-request array,
 * SCSI/NVMe style) that costs no allocation, then chunks of at most `SG_CHUNK_SIZE` entries from
 * five mempools of 8, 16, 32, 64 and 128 entries. Each pool chunk is counted as metadata kind
 * `"sg_pool"` in the bytes of its pool's object (32 bytes an entry of the pool size, not of the
 * entries used).
 *
 * Differs on purpose: mempool reserves (`SG_MEMPOOL_SIZE` objects a pool) are not modelled; one
 * fault point, `sg_pool`, stands for a failed GFP_ATOMIC `mempool_alloc`; BUG_ONs throw `DmaError`.
 */
import type { Machine } from '@iovalink/iommu';
import { DmaError } from './errors.js';
import {
  __sgAllocTable,
  __sgFreeTable,
  type Scatterlist,
  SG_CHUNK_SIZE,
  SG_ENTRY_SIZE,
  type SgTable,
  sgArray,
  sgInitTable,
} from './scatterlist.js';

/** Entries per object of each sg mempool, smallest first (kernel: `sg_pools[]`, lib/sg_pool.c). */
export const SG_POOL_SIZES: readonly number[] = [8, 16, 32, 64, SG_CHUNK_SIZE];
/** Number of sg mempools (kernel: `SG_MEMPOOL_NR`, lib/sg_pool.c). */
export const SG_MEMPOOL_NR = SG_POOL_SIZES.length;
/** Objects each mempool keeps in reserve (kernel: `SG_MEMPOOL_SIZE`, lib/sg_pool.c; not modelled). */
export const SG_MEMPOOL_SIZE = 2;
/** Metadata kind under which pool chunks are counted (`machine.counters.meta`). */
export const SG_POOL_META_KIND = 'sg_pool';
/** Fault point consulted before each pool chunk allocation (`mempool_alloc` with GFP_ATOMIC). */
export const SG_POOL_FAULT = 'sg_pool';

/**
 * Index in `SG_POOL_SIZES` of the smallest pool whose objects hold `nents` entries (kernel:
 * `sg_pool_index`, lib/sg_pool.c): 0 up to 8 entries, else ceil(log2(nents)) - 3. Throws `DmaError` above
 * `SG_CHUNK_SIZE` (kernel: BUG_ON).
 */
export function sgPoolIndex(nents: number): number {
  if (!(Number.isInteger(nents) && nents >= 0 && nents <= SG_CHUNK_SIZE)) {
    throw new DmaError(`sg_pool_index: ${nents} entries is not in 0..${SG_CHUNK_SIZE}`, {
      rule: 'sg_pool_index: nents',
    });
  }
  if (nents <= 8) return 0;
  return Math.ceil(Math.log2(nents)) - 3;
}

/** One chunk of `nents` entries from the smallest pool that fits (kernel: `sg_pool_alloc`). */
function sgPoolAlloc(machine: Machine, nents: number): Scatterlist | null {
  const size = SG_POOL_SIZES[sgPoolIndex(nents)] as number;
  if (machine.faults.shouldFail(SG_POOL_FAULT)) return null;
  machine.counters.kmalloc(SG_POOL_META_KIND, size * SG_ENTRY_SIZE);
  return sgArray(nents)[0] as Scatterlist;
}

/** Returns a chunk of `nents` entries to its pool (kernel: `sg_pool_free`). */
function sgPoolFree(machine: Machine, nents: number): void {
  const size = SG_POOL_SIZES[sgPoolIndex(nents)] as number;
  machine.counters.kfree(SG_POOL_META_KIND, size * SG_ENTRY_SIZE);
}

/**
 * Frees a table from `sgAllocTableChained` (kernel: `sg_free_table_chained`, lib/sg_pool.c): nothing when the
 * table fits the inline first chunk (the table is left pointing at it, as in the kernel),
 * otherwise every pool chunk goes back to its pool and the table is emptied (the kernel clears
 * only `sgl`). `nentsFirstChunk` must be the value given to `sgAllocTableChained`.
 */
export function sgFreeTableChained(machine: Machine, table: SgTable, nentsFirstChunk: number): void {
  if (table.origNents <= nentsFirstChunk) return;
  if (nentsFirstChunk === 1) nentsFirstChunk = 0;
  __sgFreeTable(table, SG_CHUNK_SIZE, nentsFirstChunk, (_sgl, n) => sgPoolFree(machine, n), table.origNents);
  table.nents = 0;
  table.origNents = 0;
}

/**
 * Sets up a table of `nents` entries (kernel: `sg_alloc_table_chained`, lib/sg_pool.c). With a `firstChunk`
 * of `nentsFirstChunk` ≥ 1 entries and `nents` ≤ `nentsFirstChunk`, the table is that array and nothing is
 * allocated. Otherwise the first chunk (when `nentsFirstChunk` ≥ 2) holds `nentsFirstChunk - 1` entries and a
 * chain link, and the rest comes from the pools in chunks of at most `SG_CHUNK_SIZE`, each from the smallest
 * pool that fits. Returns 0 or -ENOMEM (fault point `sg_pool`) with every pool chunk freed and the table
 * empty.
 *
 * Differs: the kernel reads the inline array from `table->sgl` (set by the caller beforehand) on the
 * no-allocation path and from `first_chunk` otherwise; here it is always `firstChunk`, which becomes
 * `table.sgl`. `nents` 0 or a `firstChunk` shorter than `nentsFirstChunk` throws `DmaError` (kernel: BUG_ON,
 * or memory corruption).
 */
export function sgAllocTableChained(
  machine: Machine,
  table: SgTable,
  nents: number,
  firstChunk: Scatterlist[] | undefined,
  nentsFirstChunk: number,
): number {
  if (!(Number.isInteger(nents) && nents >= 1)) {
    throw new DmaError(`sg_alloc_table_chained: nents ${nents} must be a positive integer`, {
      rule: 'sg_alloc_table_chained: nents',
    });
  }
  if (!(Number.isInteger(nentsFirstChunk) && nentsFirstChunk >= 0)) {
    throw new DmaError(`sg_alloc_table_chained: nents_first_chunk ${nentsFirstChunk} is not a count`, {
      rule: 'sg_alloc_table_chained: nents_first_chunk',
    });
  }
  if (firstChunk === undefined && nentsFirstChunk > 1) {
    // the kernel would size the first pool chunk by nents_first_chunk and then never free it
    throw new DmaError(`sg_alloc_table_chained: nents_first_chunk ${nentsFirstChunk} without a first chunk`, {
      rule: 'sg_alloc_table_chained: no first chunk',
    });
  }
  if (firstChunk !== undefined && nentsFirstChunk > firstChunk.length) {
    throw new DmaError(
      `sg_alloc_table_chained: nents_first_chunk ${nentsFirstChunk} exceeds the first chunk's ${firstChunk.length} entries`,
      { rule: 'sg_alloc_table_chained: first chunk too small' },
    );
  }
  if (firstChunk !== undefined && nentsFirstChunk > 0 && nents <= nentsFirstChunk) {
    const sgl = firstChunk[0] as Scatterlist;
    sgInitTable(sgl, nents);
    table.sgl = sgl;
    table.nents = nents;
    table.origNents = nents;
    return 0;
  }
  // a one-entry first chunk cannot hold both an entry and a chain link: ignore it
  let first: Scatterlist | null = firstChunk === undefined ? null : (firstChunk[0] as Scatterlist);
  if (nentsFirstChunk <= 1) {
    first = null;
    nentsFirstChunk = 0;
  }
  const ret = __sgAllocTable(table, nents, SG_CHUNK_SIZE, first, nentsFirstChunk, (n) =>
    sgPoolAlloc(machine, n),
  );
  if (ret !== 0) {
    sgFreeTableChained(machine, table, nentsFirstChunk);
    table.sgl = null;
    table.nents = 0;
    table.origNents = 0;
  }
  return ret;
}
