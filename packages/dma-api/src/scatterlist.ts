/**
 * Scatterlists and sg_tables, as in Linux `lib/scatterlist.c` and `include/linux/scatterlist.h`
 * (v6.12–v6.18): 32-byte entries on a 64-bit kernel with CONFIG_NEED_SG_DMA_LENGTH and
 * CONFIG_NEED_SG_DMA_FLAGS, allocated in chunks of at most `SG_MAX_SINGLE_ALLOC` entries whose last
 * slot becomes a chain entry when the list needs more, `sg_alloc_table`, and
 * `sg_alloc_append_table_from_pages` (merging physically contiguous pages).
 *
 * Representation. A `struct page *` is its page-aligned physical address (0 = no page). A chunk is
 * a JS array of entries; every entry knows its array (`chunk`) and its place in it (`index`), which
 * is what pointer arithmetic gives the kernel (`sg + 1`, `&sgl[n]`). The kernel's `page_link`
 * (page pointer, or chain pointer, plus the SG_CHAIN/SG_END low bits) is split into `page`,
 * `chainPtr` and `linkFlags`. JS memory is not the point: every chunk is counted in the machine's
 * metadata ledger in the bytes the kernel allocates (32 per entry), under kind `"scatterlist"`.
 *
 * Differs on purpose: full 128-entry chunks (the kernel's `__get_free_page`) are counted as
 * 4096 bytes of `"scatterlist"` metadata rather than taken from the buddy allocator; slab size
 * rounding (kmalloc-96, kmalloc-192, …) is not modelled; free functions reset the whole table (the
 * kernel clears only `sgl`); misuse the kernel would crash on (NULL dereference, BUG_ON) throws
 * `DmaError` with the state unchanged.
 *
 * Size: about 1,020 lines in one file because it mirrors one kernel file, lib/scatterlist.c (about
 * 1,400 lines in v6.x: `extract_kvec_to_sg` reaches line 1,260), with the inline helpers of
 * include/linux/scatterlist.h that its functions use; the iov_iter extraction and the sg_miter
 * page iterator are not modelled.
 */
import { Errno, type Machine, PAGE_SIZE, SG_DMA_BUS_ADDRESS } from '@iovalink/iommu';
import { DmaError } from './errors.js';

/**
 * Size of `struct scatterlist` on 64-bit with DMA length and flags (page_link, offset, length, dma_address,
 * dma_length, dma_flags).
 */
export const SG_ENTRY_SIZE = 32;
/**
 * Entries in one page-sized chunk; longer lists are chained (kernel: `SG_MAX_SINGLE_ALLOC`,
 * include/linux/scatterlist.h).
 */
export const SG_MAX_SINGLE_ALLOC = PAGE_SIZE / SG_ENTRY_SIZE;
/** Largest chunk the sg mempools hand out (kernel: `SG_CHUNK_SIZE`, include/linux/scatterlist.h). */
export const SG_CHUNK_SIZE = 128;
/**
 * Segment limit block and SCSI advertise on archs with sg chaining (kernel: `SG_MAX_SEGMENTS`,
 * include/linux/scatterlist.h).
 */
export const SG_MAX_SEGMENTS = 2048;
/** Size of `struct sg_table` (sgl pointer + nents + orig_nents). */
export const SG_TABLE_SIZE = 16;
/** Size of `struct sg_append_table` (sg_table + prv pointer + total_nents + padding). */
export const SG_APPEND_TABLE_SIZE = 32;

/**
 * `page_link` bit: this entry is a link to the next chunk, not data (kernel: `SG_CHAIN`,
 * include/linux/scatterlist.h).
 */
export const SG_CHAIN = 0x01;
/** `page_link` bit: this entry is the last of the list (kernel: `SG_END`, include/linux/scatterlist.h). */
export const SG_END = 0x02;

/** `dma_flags` bit: a P2P bus address, not IOMMU-mapped (kernel: `SG_DMA_BUS_ADDRESS`); defined once in @iovalink/iommu. */
export { SG_DMA_BUS_ADDRESS };
/**
 * `dma_flags` bit: the list was mapped through swiotlb, some entries may be bounced (kernel:
 * `SG_DMA_SWIOTLB`, scatterlist.h).
 */
export const SG_DMA_SWIOTLB = 1 << 1;

/** Metadata kind under which scatterlist chunks are counted (`machine.counters.meta`). */
export const SG_META_KIND = 'scatterlist';
/** Fault point consulted before each chunk allocation (`sg_kmalloc`). */
export const SG_ALLOC_FAULT = 'sg_alloc';

/** Largest value of a C `unsigned int` (lengths, offsets, max_segment). */
const UINT_MAX = 0xffff_ffff;

/**
 * One scatterlist entry (kernel: `struct scatterlist`, include/linux/scatterlist.h). Differs: the
 * `page_link` word is three fields (`page`, `chainPtr`, `linkFlags`), and the entry carries its
 * `chunk` and `index` in place of C pointer arithmetic.
 */
export class Scatterlist {
  /** Physical address of the page (kernel: the page pointer in `page_link`); 0 = none. */
  page = 0;
  /** Offset of the data from `page` (may exceed a page for multi-page entries). */
  offset = 0;
  /** Length of the data in bytes. */
  length = 0;
  /** Bus address after a DMA mapping (kernel: `dma_address`, read with `sgDmaAddress`). */
  dmaAddress = 0;
  /** Length of the DMA segment (kernel: `dma_length`, read with `sgDmaLen`). */
  dmaLength = 0;
  /** `SG_DMA_BUS_ADDRESS` / `SG_DMA_SWIOTLB` (kernel: `dma_flags`). */
  dmaFlags = 0;
  /** `SG_CHAIN` / `SG_END` (kernel: the low bits of `page_link`). */
  linkFlags = 0;
  /** For a chain entry: the first entry of the next chunk (kernel: the pointer in `page_link`). */
  chainPtr: Scatterlist | null = null;
  /** The array (chunk) this entry lives in. */
  readonly chunk: readonly Scatterlist[];
  /** This entry's index in `chunk`. */
  readonly index: number;

  /** A lone entry (its own one-entry array), or entry `index` of `chunk` (use `sgArray`). */
  constructor(chunk?: readonly Scatterlist[], index = 0) {
    this.chunk = chunk ?? [this];
    this.index = chunk === undefined ? 0 : index;
  }
}

/**
 * An array of `nents` blank entries, like a C declaration `struct scatterlist sg[nents]` (on the
 * stack, or inline in a driver's per-request data). Not counted: nothing is allocated. Call
 * `sgInitTable` on it before use, as the kernel does.
 */
export function sgArray(nents: number): Scatterlist[] {
  checkUint('sgArray', 'nents', nents);
  const chunk: Scatterlist[] = new Array(nents);
  for (let i = 0; i < nents; i++) chunk[i] = new Scatterlist(chunk, i);
  return chunk;
}

/**
 * A scatterlist table (kernel: `struct sg_table`, include/linux/scatterlist.h). `nents` is the number of DMA
 * segments after mapping (equal to `origNents` before), `origNents` the number of CPU entries.
 */
export class SgTable {
  /** First entry (kernel: `sgl`); null when nothing is allocated. */
  sgl: Scatterlist | null = null;
  /** Mapped DMA segments (kernel: `nents`). */
  nents = 0;
  /** Entries in the list (kernel: `orig_nents`). */
  origNents = 0;
}

/**
 * A table that grows by appending pages (kernel: `struct sg_append_table`, include/linux/scatterlist.h):
 * `prv` is the last populated entry, `totalNents` every allocated slot including chain slots and unused tail
 * slots.
 */
export class SgAppendTable {
  /** The table itself (kernel: `sgt`). */
  readonly sgt = new SgTable();
  /** Last populated entry (kernel: `prv`). */
  prv: Scatterlist | null = null;
  /** Entries allocated over all chunks, chain slots counted once (kernel: `total_nents`). */
  totalNents = 0;
}

/**
 * Allocator of one chunk of `nents` entries; returns its first entry, or null (kernel: `sg_alloc_fn`,
 * include/linux/scatterlist.h).
 */
export type SgAllocFn = (nents: number) => Scatterlist | null;
/**
 * Frees one chunk of `nents` entries starting at `sgl` (kernel: `sg_free_fn`, include/linux/scatterlist.h).
 */
export type SgFreeFn = (sgl: Scatterlist, nents: number) => void;

// ---------------------------------------------------------------------------------------------
// Entry accessors (include/linux/scatterlist.h)
// ---------------------------------------------------------------------------------------------

/** True if `sg` is a chain entry (kernel: `sg_is_chain`, include/linux/scatterlist.h). */
export function sgIsChain(sg: Scatterlist): boolean {
  return (sg.linkFlags & SG_CHAIN) !== 0;
}

/** True if `sg` is the last entry of its list (kernel: `sg_is_last`, include/linux/scatterlist.h). */
export function sgIsLast(sg: Scatterlist): boolean {
  return (sg.linkFlags & SG_END) !== 0;
}

/**
 * The chunk a chain entry points to (kernel: `sg_chain_ptr`, include/linux/scatterlist.h); null for a
 * non-chain entry.
 */
export function sgChainPtr(sg: Scatterlist): Scatterlist | null {
  return sgIsChain(sg) ? sg.chainPtr : null;
}

/**
 * Points `sg` at `len` bytes at `offset` from `page` (kernel: `sg_set_page`, include/linux/scatterlist.h),
 * keeping the chain/end bits. Throws `DmaError` if `page` is not page-aligned (kernel: BUG_ON on the low bits
 * of the page pointer) or `sg` is a chain entry (kernel: BUG_ON with CONFIG_DEBUG_SG).
 */
export function sgSetPage(sg: Scatterlist, page: number, len: number, offset: number): void {
  if (!(Number.isSafeInteger(page) && page >= 0 && page % PAGE_SIZE === 0)) {
    throw new DmaError(`sg_set_page: page ${page} is not a page-aligned physical address`, {
      rule: 'sg_set_page: page alignment',
    });
  }
  checkUint('sg_set_page', 'len', len);
  checkUint('sg_set_page', 'offset', offset);
  if (sgIsChain(sg)) {
    throw new DmaError('sg_set_page: entry is a chain link, not a data entry', {
      rule: 'sg_set_page: chain entry',
    });
  }
  sg.page = page;
  sg.offset = offset;
  sg.length = len;
}

/**
 * Points `sg` at `buflen` bytes at physical address `buf` (kernel: `sg_set_buf`,
 * include/linux/scatterlist.h). Differs: takes a physical address where the kernel takes a kernel virtual
 * address.
 */
export function sgSetBuf(sg: Scatterlist, buf: number, buflen: number): void {
  checkUint('sg_set_buf', 'buf', buf, Number.MAX_SAFE_INTEGER);
  const off = buf % PAGE_SIZE;
  sgSetPage(sg, buf - off, buflen, off);
}

/**
 * The page of a data entry (kernel: `sg_page`, include/linux/scatterlist.h); throws `DmaError` on a chain
 * entry (kernel: BUG_ON with CONFIG_DEBUG_SG).
 */
export function sgPage(sg: Scatterlist): number {
  if (sgIsChain(sg)) {
    throw new DmaError('sg_page: entry is a chain link, not a data entry', { rule: 'sg_page: chain entry' });
  }
  return sg.page;
}

/** Physical address of the entry's data, page + offset (kernel: `sg_phys`, include/linux/scatterlist.h). */
export function sgPhys(sg: Scatterlist): number {
  return sgPage(sg) + sg.offset;
}

/** Bus address of a mapped entry (kernel: `sg_dma_address`, include/linux/scatterlist.h). */
export function sgDmaAddress(sg: Scatterlist): number {
  return sg.dmaAddress;
}

/**
 * Length of a mapped DMA segment (kernel: `sg_dma_len`, include/linux/scatterlist.h,
 * CONFIG_NEED_SG_DMA_LENGTH).
 */
export function sgDmaLen(sg: Scatterlist): number {
  return sg.dmaLength;
}

/**
 * True if the entry holds a P2P bus address (kernel: `sg_dma_is_bus_address`, include/linux/scatterlist.h).
 */
export function sgDmaIsBusAddress(sg: Scatterlist): boolean {
  return (sg.dmaFlags & SG_DMA_BUS_ADDRESS) !== 0;
}

/**
 * Marks the entry's DMA address as a P2P bus address (kernel: `sg_dma_mark_bus_address`,
 * include/linux/scatterlist.h).
 */
export function sgDmaMarkBusAddress(sg: Scatterlist): void {
  sg.dmaFlags |= SG_DMA_BUS_ADDRESS;
}

/** Clears the bus-address mark (kernel: `sg_dma_unmark_bus_address`, include/linux/scatterlist.h). */
export function sgDmaUnmarkBusAddress(sg: Scatterlist): void {
  sg.dmaFlags &= ~SG_DMA_BUS_ADDRESS;
}

/** True if the list was mapped through swiotlb (kernel: `sg_dma_is_swiotlb`, include/linux/scatterlist.h). */
export function sgDmaIsSwiotlb(sg: Scatterlist): boolean {
  return (sg.dmaFlags & SG_DMA_SWIOTLB) !== 0;
}

/** Marks the list as mapped through swiotlb (kernel: `sg_dma_mark_swiotlb`, include/linux/scatterlist.h). */
export function sgDmaMarkSwiotlb(sg: Scatterlist): void {
  sg.dmaFlags |= SG_DMA_SWIOTLB;
}

/**
 * Marks `sg` as the end of the list, clearing a chain bit (kernel: `sg_mark_end`,
 * include/linux/scatterlist.h).
 */
export function sgMarkEnd(sg: Scatterlist): void {
  sg.linkFlags = (sg.linkFlags | SG_END) & ~SG_CHAIN;
  sg.chainPtr = null;
}

/** Removes the end mark from `sg` (kernel: `sg_unmark_end`, include/linux/scatterlist.h). */
export function sgUnmarkEnd(sg: Scatterlist): void {
  sg.linkFlags &= ~SG_END;
}

/**
 * Marks entry `nents - 1` of the array starting at `sgl` as the end (kernel: `sg_init_marker`,
 * include/linux/scatterlist.h).
 */
export function sgInitMarker(sgl: Scatterlist, nents: number): void {
  sgMarkEnd(entryAt(sgl, nents - 1, 'sg_init_marker'));
}

/**
 * Makes entry `prvNents - 1` of the array at `prv` a chain link to `sgl` (kernel: `sg_chain`
 * and `__sg_chain`, include/linux/scatterlist.h: offset and length cleared, SG_CHAIN set, SG_END cleared).
 */
export function sgChain(prv: Scatterlist, prvNents: number, sgl: Scatterlist): void {
  chainEntry(entryAt(prv, prvNents - 1, 'sg_chain'), sgl);
}

// ---------------------------------------------------------------------------------------------
// Walking (lib/scatterlist.c, for_each_sg macros)
// ---------------------------------------------------------------------------------------------

/**
 * The entry after `sg`, following a chain link; null after the last entry (kernel: `sg_next`,
 * lib/scatterlist.c). Throws `DmaError` when the array ends with no end mark (the kernel would read past it).
 */
export function sgNext(sg: Scatterlist): Scatterlist | null {
  if (sgIsLast(sg)) return null;
  const next = sg.chunk[sg.index + 1];
  if (next === undefined) {
    throw new DmaError('sg_next: walked past the end of a scatterlist array that has no end mark', {
      rule: 'sg_next: no end mark',
    });
  }
  if (sgIsChain(next)) return next.chainPtr;
  return next;
}

/** Number of entries up to the end mark, following chains (kernel: `sg_nents`, lib/scatterlist.c). */
export function sgNents(sg: Scatterlist | null): number {
  let nents = 0;
  for (let s = sg; s !== null; s = sgNext(s)) nents++;
  return nents;
}

/**
 * Number of entries needed to cover `len` bytes (kernel: `sg_nents_for_len`, lib/scatterlist.c): 0 for `len`
 * 0, -EINVAL if the whole list is shorter.
 */
export function sgNentsForLen(sg: Scatterlist | null, len: number): number {
  if (len === 0) return 0;
  let nents = 0;
  let total = 0;
  for (let s = sg; s !== null; s = sgNext(s)) {
    nents++;
    total += s.length;
    if (total >= len) return nents;
  }
  return -Errno.EINVAL;
}

/**
 * The `nents`-th entry from `sgl`, which must carry the end mark (kernel: `sg_last`, lib/scatterlist.c; a
 * BUG_ON there and a `DmaError` here when it does not).
 */
export function sgLast(sgl: Scatterlist, nents: number): Scatterlist {
  let ret: Scatterlist | null = null;
  for (const s of sgIter(sgl, nents)) ret = s;
  if (ret === null || !sgIsLast(ret)) {
    throw new DmaError(`sg_last: entry ${nents} of the list is not marked as the end`, {
      rule: 'sg_last: not last',
    });
  }
  return ret;
}

/**
 * Yields `nents` entries from `sgl`, following chains, for `for…of` (kernel: `for_each_sg`,
 * include/linux/scatterlist.h). The
 * next entry is looked up only when asked for, so entries may be changed inside the loop. Throws
 * `DmaError` if the list ends before `nents` entries (the kernel would dereference NULL).
 */
export function* sgIter(sgl: Scatterlist | null, nents: number): Generator<Scatterlist, void, undefined> {
  let s = sgl;
  for (let i = 0; i < nents; i++) {
    if (i > 0) s = sgNext(s as Scatterlist);
    if (s === null) {
      throw new DmaError(`for_each_sg: the list ends after ${i} of ${nents} entries`, {
        rule: 'for_each_sg: list shorter than nents',
      });
    }
    yield s;
  }
}

/**
 * Calls `fn(sg, i)` for `nents` entries from `sgl`, following chains (kernel: `for_each_sg`, scatterlist.h).
 */
export function forEachSg(
  sgl: Scatterlist | null,
  nents: number,
  fn: (sg: Scatterlist, i: number) => void,
): void {
  let i = 0;
  for (const s of sgIter(sgl, nents)) fn(s, i++);
}

/**
 * Calls `fn` for each CPU entry of a table, `origNents` of them (kernel: `for_each_sgtable_sg`,
 * include/linux/scatterlist.h).
 */
export function forEachSgtableSg(sgt: SgTable, fn: (sg: Scatterlist, i: number) => void): void {
  forEachSg(sgt.sgl, sgt.origNents, fn);
}

/**
 * Calls `fn` for each mapped DMA segment of a table, `nents` of them (kernel:
 * `for_each_sgtable_dma_sg`); read each segment with `sgDmaAddress(sg)` and `sgDmaLen(sg)`.
 */
export function forEachSgtableDmaSg(sgt: SgTable, fn: (sg: Scatterlist, i: number) => void): void {
  forEachSg(sgt.sgl, sgt.nents, fn);
}

// ---------------------------------------------------------------------------------------------
// Initialisation (lib/scatterlist.c)
// ---------------------------------------------------------------------------------------------

/**
 * Clears `nents` entries of the array at `sgl` and marks the last as the end (kernel:
 * `sg_init_table`). Throws `DmaError` if the array is shorter than `nents`.
 */
export function sgInitTable(sgl: Scatterlist, nents: number): void {
  checkUint('sg_init_table', 'nents', nents);
  if (nents === 0 || sgl.index + nents > sgl.chunk.length) {
    throw new DmaError(
      `sg_init_table: ${nents} entries from index ${sgl.index} do not fit an array of ${sgl.chunk.length}`,
      { rule: 'sg_init_table: out of bounds' },
    );
  }
  for (let i = 0; i < nents; i++) clearEntry(sgl.chunk[sgl.index + i] as Scatterlist);
  sgInitMarker(sgl, nents);
}

/**
 * Makes `sg` a one-entry list of `buflen` bytes at physical address `buf` (kernel: `sg_init_one`,
 * lib/scatterlist.c). Differs: `buf` is physical, not a kernel virtual address.
 */
export function sgInitOne(sg: Scatterlist, buf: number, buflen: number): void {
  sgInitTable(sg, 1);
  sgSetBuf(sg, buf, buflen);
}

// ---------------------------------------------------------------------------------------------
// Table allocation (lib/scatterlist.c)
// ---------------------------------------------------------------------------------------------

/** One chunk from the heap (kernel: `sg_kmalloc`; `__get_free_page` for a full chunk). */
function sgKmalloc(machine: Machine, nents: number): Scatterlist | null {
  if (machine.faults.shouldFail(SG_ALLOC_FAULT)) return null;
  machine.counters.kmalloc(SG_META_KIND, nents * SG_ENTRY_SIZE);
  return sgArray(nents)[0] as Scatterlist;
}

/** Frees one chunk (kernel: `sg_kfree`, lib/scatterlist.c). */
function sgKfree(machine: Machine, _sgl: Scatterlist, nents: number): void {
  machine.counters.kfree(SG_META_KIND, nents * SG_ENTRY_SIZE);
}

/**
 * Frees a table's chunks (kernel: `__sg_free_table`, lib/scatterlist.c): walks `numEnts` entries
 * with the kernel's rule (a chunk of more than `maxEnts` is `maxEnts` entries whose last is the
 * chain link), skips the first chunk when `nentsFirstChunk` is non-zero (a caller-owned inline
 * chunk of that size), calls `freeFn` on the others and clears `table.sgl`. Differs: checks the
 * walk against the chunks actually allocated first, and throws `DmaError` (freeing nothing) when
 * they disagree, where the kernel would free the wrong sizes or leak.
 */
export function __sgFreeTable(
  table: SgTable,
  maxEnts: number,
  nentsFirstChunk: number,
  freeFn: SgFreeFn,
  numEnts: number,
): void {
  if (table.sgl === null) return;
  const toFree: Array<[Scatterlist, number]> = [];
  let sgl: Scatterlist | null = table.sgl;
  let left = numEnts;
  let currMaxEnts = nentsFirstChunk || maxEnts;
  let first = true;
  while (left > 0) {
    if (sgl === null) throw freeMismatch(numEnts, 'the chain ends early');
    let allocSize = left;
    let sgSize: number;
    let next: Scatterlist | null = null;
    if (allocSize > currMaxEnts) {
      const link = entryAt(sgl, currMaxEnts - 1, '__sg_free_table');
      if (!sgIsChain(link))
        throw freeMismatch(numEnts, `entry ${currMaxEnts - 1} of a chunk is not a chain link`);
      next = link.chainPtr;
      allocSize = currMaxEnts;
      sgSize = allocSize - 1;
    } else {
      sgSize = allocSize;
    }
    const inline = first && nentsFirstChunk !== 0;
    if (!inline) {
      if (sgl.index !== 0 || sgl.chunk.length !== allocSize) {
        throw freeMismatch(numEnts, `a chunk of ${sgl.chunk.length} entries would be freed as ${allocSize}`);
      }
      toFree.push([sgl, allocSize]);
    }
    left -= sgSize;
    sgl = next;
    currMaxEnts = maxEnts;
    first = false;
  }
  for (const [chunk, n] of toFree) freeFn(chunk, n);
  table.sgl = null;
}

/**
 * Frees a table from `sgAllocTable` or `sgAllocTableFromPages` (kernel: `sg_free_table`, lib/scatterlist.c):
 * every chunk is kfree'd. Freeing a table with no chunks does nothing. Differs: also zeroes `nents` and
 * `origNents` (the kernel clears only `sgl`).
 */
export function sgFreeTable(machine: Machine, table: SgTable): void {
  __sgFreeTable(table, SG_MAX_SINGLE_ALLOC, 0, (sgl, n) => sgKfree(machine, sgl, n), table.origNents);
  table.nents = 0;
  table.origNents = 0;
}

/**
 * Frees a table built by `sgAllocAppendTableFromPages` (kernel: `sg_free_append_table`, lib/scatterlist.c):
 * walks `totalNents` slots. Differs: also resets `prv`, `totalNents` and the counts.
 */
export function sgFreeAppendTable(machine: Machine, table: SgAppendTable): void {
  __sgFreeTable(table.sgt, SG_MAX_SINGLE_ALLOC, 0, (sgl, n) => sgKfree(machine, sgl, n), table.totalNents);
  table.sgt.nents = 0;
  table.sgt.origNents = 0;
  table.prv = null;
  table.totalNents = 0;
}

/**
 * Builds a table of `nents` entries from chunks of at most `maxEnts` (kernel: `__sg_alloc_table`,
 * lib/scatterlist.c). The first chunk is `firstChunk` when given (a caller-owned array of
 * `nentsFirstChunk` entries), else from `allocFn`; every chunk but the last gives its last slot to
 * the chain link. Returns 0, -EINVAL for `nents` 0, or -ENOMEM when `allocFn` fails; on failure the
 * chunks allocated so far stay in the table (with `origNents` counting the unused link slot, as
 * in the kernel) for the caller to free with `__sgFreeTable`.
 */
export function __sgAllocTable(
  table: SgTable,
  nents: number,
  maxEnts: number,
  firstChunk: Scatterlist | null,
  nentsFirstChunk: number,
  allocFn: SgAllocFn,
): number {
  checkUint('__sg_alloc_table', 'nents', nents);
  if (!(Number.isInteger(maxEnts) && maxEnts >= 2)) {
    throw new DmaError(`__sg_alloc_table: max_ents ${maxEnts} must be at least 2`, {
      rule: '__sg_alloc_table: max_ents',
    });
  }
  table.sgl = null;
  table.nents = 0;
  table.origNents = 0;
  if (nents === 0) return -Errno.EINVAL;

  let left = nents;
  let prv: Scatterlist | null = null;
  let first = firstChunk;
  let currMaxEnts = nentsFirstChunk || maxEnts;
  let prvMaxEnts = 0;
  do {
    let allocSize = left;
    let sgSize: number;
    if (allocSize > currMaxEnts) {
      allocSize = currMaxEnts;
      sgSize = allocSize - 1;
    } else {
      sgSize = allocSize;
    }
    left -= sgSize;

    let sg: Scatterlist | null;
    if (first !== null) {
      sg = first;
      first = null;
    } else {
      sg = allocFn(allocSize);
    }
    if (sg === null) {
      // the previous chunk's link slot was never used: count it so the free walk sizes match
      if (prv !== null) table.nents = ++table.origNents;
      return -Errno.ENOMEM;
    }
    sgInitTable(sg, allocSize);
    table.origNents += sgSize;
    table.nents = table.origNents;
    if (prv !== null) sgChain(prv, prvMaxEnts, sg);
    else table.sgl = sg;
    if (left === 0) sgMarkEnd(entryAt(sg, sgSize - 1, '__sg_alloc_table'));
    prv = sg;
    prvMaxEnts = currMaxEnts;
    currMaxEnts = maxEnts;
  } while (left > 0);
  return 0;
}

/**
 * Allocates a table of `nents` entries (kernel: `sg_alloc_table`, lib/scatterlist.c): chunks of at most
 * `SG_MAX_SINGLE_ALLOC` (128) entries, each but the last holding 127 entries and a chain link, one
 * counted kmalloc of 32 bytes an entry per chunk. The `sg_alloc` fault point is consulted before
 * each chunk. Returns 0, -EINVAL for `nents` 0, or -ENOMEM with everything freed and the table
 * empty. Differs: on failure the kernel leaves `nents`/`origNents` stale beside a NULL `sgl`.
 */
export function sgAllocTable(machine: Machine, table: SgTable, nents: number): number {
  const ret = __sgAllocTable(table, nents, SG_MAX_SINGLE_ALLOC, null, 0, (n) => sgKmalloc(machine, n));
  if (ret !== 0) sgFreeTable(machine, table);
  return ret;
}

/**
 * Next slot to fill while appending (kernel: `get_next_sg`, lib/scatterlist.c): the entry after `cur` unless
 * that is the end-marked last slot of its chunk and more than one entry is still needed, in which case a new
 * chunk of min(needed, 128) entries is allocated and chained there (or becomes the table's first chunk when
 * `cur` is null). Returns null when the allocation fails.
 */
function getNextSg(
  machine: Machine,
  table: SgAppendTable,
  cur: Scatterlist | null,
  neededSges: number,
  undo: AppendUndo,
): Scatterlist | null {
  let nextSg: Scatterlist | null = null;
  if (cur !== null) {
    nextSg = sgNext(cur);
    if (nextSg === null) {
      throw new DmaError(
        'sg_alloc_append_table_from_pages: appending after the list was ended (left_pages was 0)',
        {
          rule: 'sg_alloc_append_table_from_pages: table ended',
        },
      );
    }
    if (!sgIsLast(nextSg) || neededSges === 1) return nextSg;
    if (nextSg.chunk.length !== SG_MAX_SINGLE_ALLOC) {
      throw new DmaError(
        `sg_alloc_append_table_from_pages: a chunk of ${nextSg.chunk.length} entries would need chaining; ` +
          'left_pages of an earlier call was too small and the kernel would free this table wrongly',
        { rule: 'sg_alloc_append_table_from_pages: left_pages understated' },
      );
    }
  }
  const allocSize = Math.min(neededSges, SG_MAX_SINGLE_ALLOC);
  const newSg = sgKmalloc(machine, allocSize);
  if (newSg === null) return null;
  sgInitTable(newSg, allocSize);
  undo.chunks.push(newSg);
  if (nextSg !== null) {
    table.totalNents += allocSize - 1;
    undo.links.push(nextSg);
    chainEntry(nextSg, newSg);
  } else {
    table.sgt.sgl = newSg;
    table.totalNents = allocSize;
  }
  return newSg;
}

/** What one append call changed, to put the table back as it was when the call fails. */
interface AppendUndo {
  /** Chunks allocated by this call (their first entries). */
  chunks: Scatterlist[];
  /** Former end-marked last slots turned into chain links by this call. */
  links: Scatterlist[];
  /** Pre-existing slots this call filled. */
  filled: Scatterlist[];
  /** The table's last entry before the call, and its length then. */
  prv: Scatterlist | null;
  prvLen: number;
  /** The table's first chunk and `total_nents` before the call. */
  sgl: Scatterlist | null;
  totalNents: number;
}

/**
 * Appends `nPages` pages to a table (kernel: `sg_alloc_append_table_from_pages`,
 * lib/scatterlist.c). `pages` are page-aligned physical addresses; the data is `size` bytes from
 * `offset` in the first page. Runs of physically contiguous pages become one entry of at most
 * `maxSegment` bytes (aligned down to a page, as the kernel does); when the table already has
 * entries (`sgtAppend.prv`), pages contiguous with the last entry first extend it (offset must
 * then be 0). New slots are allocated as needed, sized by the entries still to come including
 * `leftPages` pages the caller will append later; with `leftPages` 0 the last entry is marked as
 * the end. Returns 0, -EINVAL when `maxSegment` is below a page or `offset` is non-zero on an
 * append, or -ENOMEM (fault point `sg_alloc`). As in the kernel, a page merged into the previous
 * last entry always adds a whole page, whatever `size` says.
 *
 * Differs: on -ENOMEM the table is put back exactly as it was before the call (the kernel keeps
 * the chunks it chained and restores only the last entry's length, leaving them to
 * `sg_free_append_table`). Throws `DmaError`, changing nothing, for arguments the kernel would
 * misuse silently: `size`/`offset` not within the pages, a non-aligned page, an append after the
 * list was ended, or a `leftPages` so small that a short chunk would have to be chained.
 */
export function sgAllocAppendTableFromPages(
  machine: Machine,
  sgtAppend: SgAppendTable,
  pages: readonly number[],
  nPages: number,
  offset: number,
  size: number,
  maxSegment: number,
  leftPages: number,
): number {
  checkPagesArgs('sg_alloc_append_table_from_pages', pages, nPages, offset, size);
  checkUint('sg_alloc_append_table_from_pages', 'max_segment', maxSegment);
  checkUint('sg_alloc_append_table_from_pages', 'left_pages', leftPages);

  maxSegment -= maxSegment % PAGE_SIZE;
  if (maxSegment < PAGE_SIZE) return -Errno.EINVAL;

  const prv = sgtAppend.prv;
  const undo: AppendUndo = {
    chunks: [],
    links: [],
    filled: [],
    prv,
    prvLen: prv === null ? 0 : prv.length,
    sgl: sgtAppend.sgt.sgl,
    totalNents: sgtAppend.totalNents,
  };
  let merged = 0;
  if (prv !== null) {
    if (offset !== 0) return -Errno.EINVAL;
    merged = sgAppendExtendPrv(prv, pages, nPages, maxSegment);
  }
  let last = prv;
  if (merged < nPages) {
    last = sgAppendRuns(machine, sgtAppend, pages, merged, nPages, offset, size, maxSegment, leftPages, undo);
    if (last === null) return -Errno.ENOMEM;
  }
  if (leftPages === 0 && last !== null) sgMarkEnd(last);
  return 0;
}

/**
 * The first step of `sg_alloc_append_table_from_pages` on a table that has entries: the pages that
 * continue the last entry physically extend it, a whole page each, while it stays within
 * `maxSegment`. Returns how many pages it took.
 */
function sgAppendExtendPrv(
  prv: Scatterlist,
  pages: readonly number[],
  nPages: number,
  maxSegment: number,
): number {
  const nextPfn = Math.floor((prv.page + prv.offset + prv.length) / PAGE_SIZE);
  let p = 0;
  while (p < nPages && pfnOf(pages[p] as number) === nextPfn + p) {
    if (prv.length + PAGE_SIZE > maxSegment) break;
    prv.length += PAGE_SIZE;
    p++;
  }
  return p;
}

/**
 * End (exclusive, at most `end`) of the run of pages starting at `first` that one entry takes: the
 * pages stay physically contiguous and the run stays below `maxSegment` bytes (the kernel's two
 * loops over `seg_len`, counting and then filling, share this rule).
 */
function sgAppendRunEnd(pages: readonly number[], first: number, end: number, maxSegment: number): number {
  let segLen = 0;
  let j = first + 1;
  for (; j < end; j++) {
    segLen += PAGE_SIZE;
    if (segLen >= maxSegment || !pagesAreMergeable(pages[j] as number, pages[j - 1] as number)) break;
  }
  return j;
}

/**
 * The rest of `sg_alloc_append_table_from_pages`: counts the entries `pages[first..end)` need, then fills one
 * entry a run, allocating and chaining slots as needed (`get_next_sg`, sized by the entries still
 * to come plus `leftPages`). Returns the last entry filled, or null on -ENOMEM with the table put
 * back as it was (a throw puts it back too).
 */
function sgAppendRuns(
  machine: Machine,
  sgtAppend: SgAppendTable,
  pages: readonly number[],
  first: number,
  end: number,
  offset: number,
  size: number,
  maxSegment: number,
  leftPages: number,
  undo: AppendUndo,
): Scatterlist | null {
  let chunks = 0;
  for (let c = first; c < end; c = sgAppendRunEnd(pages, c, end, maxSegment)) chunks++;
  let s = undo.prv;
  let curPage = first;
  let remaining = size;
  let off = offset;
  try {
    for (let i = 0; i < chunks; i++) {
      const j = sgAppendRunEnd(pages, curPage, end, maxSegment);
      const wasAllocated = undo.chunks.length;
      const next = getNextSg(machine, sgtAppend, s, chunks - i + leftPages, undo);
      if (next === null) {
        rollbackAppend(machine, sgtAppend, undo);
        return null;
      }
      if (undo.chunks.length === wasAllocated) undo.filled.push(next);
      s = next;
      const chunkSize = (j - curPage) * PAGE_SIZE - off;
      sgSetPage(s, pages[curPage] as number, Math.min(remaining, chunkSize), off);
      // like the kernel's unsigned subtraction, but never below zero
      remaining = Math.max(remaining - chunkSize, 0);
      off = 0;
      curPage = j;
    }
  } catch (e) {
    rollbackAppend(machine, sgtAppend, undo);
    throw e;
  }
  sgtAppend.sgt.nents += chunks;
  sgtAppend.sgt.origNents = sgtAppend.sgt.nents;
  sgtAppend.prv = s;
  return s;
}

/** Puts an append table back as it was before a failed call. */
function rollbackAppend(machine: Machine, table: SgAppendTable, undo: AppendUndo): void {
  for (const sg of undo.filled) {
    sg.page = 0;
    sg.offset = 0;
    sg.length = 0;
  }
  for (const link of undo.links) {
    clearEntry(link);
    sgMarkEnd(link);
  }
  for (const chunk of undo.chunks) sgKfree(machine, chunk, chunk.chunk.length);
  table.sgt.sgl = undo.sgl;
  table.totalNents = undo.totalNents;
  if (undo.prv !== null) undo.prv.length = undo.prvLen;
}

/**
 * Builds a table from pages, merging contiguous runs into entries of at most `maxSegment` bytes
 * (kernel: `sg_alloc_table_from_pages_segment`, lib/scatterlist.c). Returns 0 or -errno; on failure `sgt` is
 * untouched and nothing stays allocated. Free with `sgFreeTable`.
 */
export function sgAllocTableFromPagesSegment(
  machine: Machine,
  sgt: SgTable,
  pages: readonly number[],
  nPages: number,
  offset: number,
  size: number,
  maxSegment: number,
): number {
  const append = new SgAppendTable();
  const err = sgAllocAppendTableFromPages(machine, append, pages, nPages, offset, size, maxSegment, 0);
  if (err !== 0) {
    sgFreeAppendTable(machine, append);
    return err;
  }
  if (append.totalNents !== append.sgt.origNents) {
    throw new DmaError('sg_alloc_table_from_pages_segment: total_nents differs from orig_nents', {
      rule: 'sg_alloc_table_from_pages_segment: total_nents',
    });
  }
  sgt.sgl = append.sgt.sgl;
  sgt.nents = append.sgt.nents;
  sgt.origNents = append.sgt.origNents;
  return 0;
}

/**
 * Builds a table from pages with no segment limit but the 32-bit length (kernel:
 * `sg_alloc_table_from_pages`, max_segment UINT_MAX).
 */
export function sgAllocTableFromPages(
  machine: Machine,
  sgt: SgTable,
  pages: readonly number[],
  nPages: number,
  offset: number,
  size: number,
): number {
  return sgAllocTableFromPagesSegment(machine, sgt, pages, nPages, offset, size, UINT_MAX);
}

// ---------------------------------------------------------------------------------------------
// Copying data (lib/scatterlist.c, sg_copy_buffer)
// ---------------------------------------------------------------------------------------------

/**
 * Copies `buf` into the memory the first `nents` entries describe, in order, up to the shorter of
 * the two (kernel: `sg_copy_from_buffer`, lib/scatterlist.c). Returns the bytes copied. Differs: no kmap; the
 * machine's physical memory is written directly.
 */
export function sgCopyFromBuffer(machine: Machine, sgl: Scatterlist, nents: number, buf: Uint8Array): number {
  return sgCopyBuffer(machine, sgl, nents, buf, false);
}

/**
 * Copies the memory the first `nents` entries describe into `buf`, up to the shorter of the two
 * (kernel: `sg_copy_to_buffer`, lib/scatterlist.c). Returns the bytes copied.
 */
export function sgCopyToBuffer(machine: Machine, sgl: Scatterlist, nents: number, buf: Uint8Array): number {
  return sgCopyBuffer(machine, sgl, nents, buf, true);
}

/**
 * Copies between `buf` and the memory of the first `nents` entries, entry by entry, up to the
 * shorter of the two (kernel: `sg_copy_buffer` with no skip; its sg_miter walk is the entry loop).
 */
function sgCopyBuffer(
  machine: Machine,
  sgl: Scatterlist,
  nents: number,
  buf: Uint8Array,
  toBuffer: boolean,
): number {
  let done = 0;
  for (const s of sgIter(sgl, nents)) {
    if (done >= buf.length) break;
    const len = Math.min(s.length, buf.length - done);
    const part = buf.subarray(done, done + len);
    if (toBuffer) machine.phys.readInto(sgPhys(s), part);
    else machine.phys.write(sgPhys(s), part);
    done += len;
  }
  return done;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** Entry `i` of the array that holds `sgl`, counted from `sgl` (C: `&sgl[i]`). */
function entryAt(sgl: Scatterlist, i: number, fn: string): Scatterlist {
  const e = Number.isInteger(i) && i >= 0 ? sgl.chunk[sgl.index + i] : undefined;
  if (e === undefined) {
    throw new DmaError(
      `${fn}: entry ${i} from index ${sgl.index} is outside an array of ${sgl.chunk.length}`,
      {
        rule: `${fn}: out of bounds`,
      },
    );
  }
  return e;
}

/** Turns `chainSg` into a link to `sgl` (kernel: `__sg_chain`). */
function chainEntry(chainSg: Scatterlist, sgl: Scatterlist): void {
  chainSg.page = 0;
  chainSg.offset = 0;
  chainSg.length = 0;
  chainSg.chainPtr = sgl;
  chainSg.linkFlags = (chainSg.linkFlags | SG_CHAIN) & ~SG_END;
}

/** Zeroes an entry (the kernel's memset in `sg_init_table`). */
function clearEntry(sg: Scatterlist): void {
  sg.page = 0;
  sg.offset = 0;
  sg.length = 0;
  sg.dmaAddress = 0;
  sg.dmaLength = 0;
  sg.dmaFlags = 0;
  sg.linkFlags = 0;
  sg.chainPtr = null;
}

/** Page frame number of a page-aligned physical address. */
function pfnOf(page: number): number {
  return page / PAGE_SIZE;
}

/**
 * True if page `a` directly follows page `b` in physical memory (kernel: `pages_are_mergeable`,
 * lib/scatterlist.c).
 */
function pagesAreMergeable(a: number, b: number): boolean {
  return pfnOf(a) === pfnOf(b) + 1;
}

function checkUint(fn: string, name: string, value: number, max = UINT_MAX): void {
  if (!(Number.isInteger(value) && value >= 0 && value <= max)) {
    throw new DmaError(`${fn}: ${name} ${value} is not an integer in 0..${max}`, { rule: `${fn}: ${name}` });
  }
}

/** Checks the page array and the byte range the kernel callers promise (offset/size within the pages). */
function checkPagesArgs(
  fn: string,
  pages: readonly number[],
  nPages: number,
  offset: number,
  size: number,
): void {
  if (!(Number.isInteger(nPages) && nPages >= 1 && nPages <= pages.length)) {
    throw new DmaError(`${fn}: n_pages ${nPages} is not in 1..${pages.length}`, { rule: `${fn}: n_pages` });
  }
  for (let i = 0; i < nPages; i++) {
    const pg = pages[i] as number;
    if (!(Number.isSafeInteger(pg) && pg > 0 && pg % PAGE_SIZE === 0)) {
      throw new DmaError(`${fn}: pages[${i}] = ${pg} is not a page-aligned physical address`, {
        rule: `${fn}: page alignment`,
      });
    }
  }
  if (!(Number.isInteger(offset) && offset >= 0 && offset < PAGE_SIZE)) {
    throw new DmaError(`${fn}: offset ${offset} is not within the first page`, { rule: `${fn}: offset` });
  }
  const end = offset + size;
  if (!(Number.isInteger(size) && size > 0 && end <= nPages * PAGE_SIZE && end > (nPages - 1) * PAGE_SIZE)) {
    throw new DmaError(`${fn}: offset ${offset} + size ${size} does not end in the last of ${nPages} pages`, {
      rule: `${fn}: size`,
    });
  }
}

function freeMismatch(numEnts: number, what: string): DmaError {
  return new DmaError(`__sg_free_table: ${numEnts} entries do not describe the allocated chunks: ${what}`, {
    rule: '__sg_free_table: entry count mismatch',
  });
}
