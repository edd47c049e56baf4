/**
 * The IOMMU page-table format: a 4-level radix tree of 512-entry tables whose 8-byte PTEs live in
 * page-table pages allocated from the machine's physical memory, so the hardware walker reads real
 * bytes and page-table memory is counted and can run out. Kernel counterparts:
 * `drivers/iommu/io-pgtable-arm.c` (`arm_lpae_map_pages`, `arm_lpae_unmap_pages`,
 * `arm_lpae_iova_to_phys`, `arm_lpae_read_and_clear_dirty`, `alloc_io_pgtable_ops`) and the generic
 * page-table code `drivers/iommu/generic_pt/iommu_pt.h` (`map_pages`, `unmap_pages`), behaviour as in
 * v6.17+.
 *
 * Geometry (48-bit IOVA, 4 KiB granule):
 *
 * | level | IOVA bits indexed | one entry maps | leaf allowed           |
 * |-------|-------------------|----------------|------------------------|
 * | 3     | 47..39 (root)     | 512 GiB        | no (table links only)  |
 * | 2     | 38..30            | 1 GiB          | 1 GiB block            |
 * | 1     | 29..21            | 2 MiB          | 2 MiB block            |
 * | 0     | 20..12            | 4 KiB          | 4 KiB page (always)    |
 *
 * PTE layout (64 bits, little-endian in the table page; word 0 = bits 0..31, word 1 = bits 32..63):
 *
 * | bits   | name   | meaning                                                                    |
 * |--------|--------|----------------------------------------------------------------------------|
 * | 0      | VALID  | entry present                                                              |
 * | 1      | LEAF   | 1 = leaf (block at levels 1–2); 0 = next-level table. Every valid entry at  |
 * |        |        | level 0 is a leaf; we set LEAF there too so a PTE decodes alike everywhere |
 * | 2      | READ   | device may read (IOMMU_READ)                                               |
 * | 3      | WRITE  | device may write (IOMMU_WRITE)                                             |
 * | 4      | DIRTY  | set by the hardware on a DMA write while dirty tracking is on              |
 * | 5      | CACHE  | coherent (IOMMU_CACHE)                                                     |
 * | 6      | PRIV   | privileged only (IOMMU_PRIV)                                               |
 * | 7      | MMIO   | device memory (IOMMU_MMIO)                                                 |
 * | 8..11  | —      | zero                                                                       |
 * | 12..51 | ADDR   | output address: next-table page, or leaf physical address (size-aligned)  |
 * | 52..63 | —      | zero                                                                       |
 *
 * Table links carry VALID and ADDR only; permissions live in leaves. The address is split with
 * arithmetic (no BigInt): word 0 = `addr % 2^32 + flags`, word 1 = `floor(addr / 2^32)`.
 *
 * Deliberate differences from the kernel:
 * - Mapping over an existing leaf, or over a table that still holds a leaf somewhere below it,
 *   returns -EEXIST as io-pgtable-arm does (generic_pt returns -EADDRINUSE). A block mapped where
 *   a table with no leaf below it sits frees that table first, as both kernels do.
 * - `mapPages` maps all `pgcount` leaves (crossing table boundaries) in one call; arm-lpae maps at
 *   most up to the end of one table per call and lets iommu_map loop. Bad size, alignment and range
 *   are checked up front for the whole run (-EINVAL/-ERANGE), where the kernel WARNs and checks only
 *   the start address.
 * - Unmap never splits a leaf: a request covering only the start of a larger leaf removes the whole
 *   leaf and counts its full size (generic_pt; AMD and VT-d too). A request starting inside a larger
 *   leaf, or at a hole, stops there. (io-pgtable-arm since v6.13, commit 33729a5fc0ca, instead WARNs
 *   "Unmap of a partial large IOPTE is not allowed" and returns 0.)
 * - A page-table page is unlinked on unmap, and handed to the caller on `gather.freelist`, only
 *   when it became empty and the unmap range covers its whole span (generic_pt; VT-d's
 *   `dma_pte_clear_level` likewise frees only tables wholly inside the range; io-pgtable-arm never
 *   frees on unmap). So small map/unmap cycles reuse their tables, as in the kernel. Tables left
 *   empty by a failed map are freed immediately: they never held a translation.
 * - A software walk cache (the last table used per leaf level) spares map/unmap the walk from the
 *   root; the hardware walk (`lookup`, `iovaToPhys`) always starts at the root and reads PTEs.
 *   Every walk reads each link PTE and takes the child from the table's `kids` (the kernel turns
 *   the PTE's address into a pointer with `__va`); a link whose PTE no longer holds that child's
 *   address throws.
 *
 * Size: about 900 lines in one file because it mirrors one kernel file, io-pgtable-arm.c (more than
 * 1,000 lines in v6.17, without its selftests, which have a file of their own): the format, its
 * walkers and its ops belong together. `IoPgtable` (about 620 lines) is `struct io_pgtable_ops`
 * with the functions behind it — map, unmap, iova_to_phys, read_and_clear_dirty, free — which share
 * the PTE encoding and the walk cache, so they stay one class as they are one ops table in the
 * kernel.
 */
import { INV_TWO32, isAlignedPow2, lo32, modPow2, TWO32 } from './bits.js';
import { Errno } from './errno.js';
import { hex, IommuError } from './errors.js';
import { type IommuIotlbGather, iommuIotlbGatherAddRange } from './iommu-gather.js';
import { IOMMU_CACHE, IOMMU_MMIO, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE } from './iommu-prot.js';
import type { Machine } from './machine.js';
import { PAGE_SIZE } from './phys-mem.js';

/** PTE bit 0: entry present. */
export const IOPTE_VALID = 1 << 0;
/** PTE bit 1: leaf (page or block); clear for a next-level table link. */
export const IOPTE_LEAF = 1 << 1;
/** PTE bit 2: device reads allowed. */
export const IOPTE_READ = 1 << 2;
/** PTE bit 3: device writes allowed. */
export const IOPTE_WRITE = 1 << 3;
/** PTE bit 4: written by a device since the bit was last cleared (hardware dirty tracking). */
export const IOPTE_DIRTY = 1 << 4;
/** PTE bit 5: coherent with CPU caches. */
export const IOPTE_CACHE = 1 << 5;
/** PTE bit 6: privileged accesses only. */
export const IOPTE_PRIV = 1 << 6;
/** PTE bit 7: device (MMIO) memory. */
export const IOPTE_MMIO = 1 << 7;
/** Levels in the tree (kernel: ARM_LPAE_MAX_LEVELS). */
export const IO_PGTABLE_LEVELS = 4;
/** Entries per table page (kernel: ARM_LPAE_PTES_PER_TABLE with a 4 KiB granule). */
export const IO_PGTABLE_PTES_PER_TABLE = 512;
/** Every leaf size the format supports: 4 KiB | 2 MiB | 1 GiB (kernel: arm_lpae_restrict_pgsizes). */
export const IO_PGTABLE_PGSIZE_BITMAP = (1 << 12) | (1 << 21) | (1 << 30);
/** Largest input address width (kernel: ARM_LPAE_MAX_ADDR_BITS for a 4 KiB granule). */
export const IO_PGTABLE_MAX_IAS = 48;
/** Largest output address width the PTE address field holds. */
export const IO_PGTABLE_MAX_OAS = 52;

const SZ_4K = 1 << 12;
const SZ_2M = 1 << 21;
const SZ_1G = 1 << 30;
/** Bytes mapped by one entry at each level, plus the whole-tree size at index 4. */
const LEVEL_SIZE: readonly number[] = [SZ_4K, SZ_2M, SZ_1G, 2 ** 39, 2 ** 48];
/** Exact reciprocals of LEVEL_SIZE (multiplying by them is exact and avoids division). */
const LEVEL_INV: readonly number[] = LEVEL_SIZE.map((x) => 1 / x);
const INV_2M = 1 / SZ_2M;
const INV_4K = 1 / SZ_4K;
const PTE_IDX_MASK = 511;
const TOP_LEVEL = IO_PGTABLE_LEVELS - 1;
/** The low PTE word's flag bits that `mapPages` may set from a prot. */
const PROT_BITS = IOPTE_READ | IOPTE_WRITE | IOPTE_CACHE | IOPTE_PRIV | IOPTE_MMIO;
/** A valid leaf at levels 1–2 has both bits. */
const LEAF_MASK = IOPTE_VALID | IOPTE_LEAF;

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  // The table views are Uint32Arrays over the frame bytes; the format is little-endian.
  throw new IommuError('io-pgtable: host is big-endian', { rule: 'io-pgtable: little-endian host' });
}

/** Page-table configuration (kernel: `struct io_pgtable_cfg`, the fields this format uses). */
export interface IoPgtableCfg {
  /** Leaf sizes allowed: a non-empty subset of 4 KiB | 2 MiB | 1 GiB. */
  pgsizeBitmap: number;
  /** Input (IOVA) address bits, ≤ 48. */
  ias: number;
  /** Output (physical) address bits, ≤ 52. */
  oas: number;
}

/**
 * The driver's TLB hooks the page table calls while unmapping (kernel: `struct iommu_flush_ops`,
 * only `tlb_add_page`). Differs: no `tlb_flush_walk`/`tlb_flush_all`; the walk cache is not modelled.
 */
export interface IoPgtableTlbOps {
  /**
   * One leaf of `size` bytes at `iova` was cleared (kernel: `io_pgtable_tlb_add_page`); a driver
   * typically calls `iommu_iotlb_gather_add_page`, which may sync (and empty) the gather first.
   */
  addPage(gather: IommuIotlbGather, iova: number, size: number): void;
  /**
   * Optional: `count` contiguous leaves of `size` bytes from `iova` were cleared, with the same
   * effect on the gather as `addPage` called for each in order. A driver provides it when it can
   * take the run at once (its per-leaf rule can only act on the first leaf of a contiguous run);
   * without it the table calls `addPage` per leaf.
   */
  addRun?(gather: IommuIotlbGather, iova: number, count: number, size: number): void;
}

/** What the hardware walk found for an IOVA (kernel: the leaf PTE a walk ends on, decoded). */
export interface PteLookup {
  /** IOVA of the first byte the leaf maps. */
  leafIova: number;
  /** Physical address the leaf maps `leafIova` to. */
  leafPhys: number;
  /** Leaf size in bytes (4 KiB, 2 MiB or 1 GiB). */
  leafSize: number;
  /** Permissions as `IOMMU_*` flags (READ, WRITE, CACHE, PRIV, MMIO). */
  prot: number;
  /** The leaf's DIRTY bit. */
  dirty: boolean;
}

/** One page-table page: its view, live-entry count and place in the tree (kernel: `struct ptdesc`). */
class PtTable {
  readonly phys: number;
  readonly pfn: number;
  readonly level: number;
  /** 1024 words: entry i is words[2i] (low) and words[2i + 1] (high). */
  readonly words: Uint32Array;
  /** Valid entries (leaves and table links). */
  live = 0;
  /** Parent table, undefined for the root and once unlinked. */
  parent: PtTable | undefined;
  /** Index of this table's link in the parent. */
  parentIdx = 0;
  /**
   * The tables linked from this one, by entry index (levels 1–3; empty at level 0): the software
   * side of each link PTE, so a walk follows a link without a lookup by address. A link is only
   * followed when its PTE still holds this child's address.
   */
  readonly kids: (PtTable | undefined)[];
  /**
   * Bounds on where valid entries can be: every valid entry's index lies in `[usedLo, usedHi)`
   * (empty when `usedLo >= usedHi`). Widened wherever an entry becomes valid (only this file
   * writes valid entries), never narrowed when entries are cleared, and started afresh by the next
   * write once `live` is 0, so a map into a range outside it knows every entry there is free
   * without reading them.
   */
  usedLo = IO_PGTABLE_PTES_PER_TABLE;
  usedHi = 0;

  constructor(phys: number, level: number, words: Uint32Array) {
    this.phys = phys;
    this.pfn = phys / PAGE_SIZE;
    this.level = level;
    this.words = words;
    this.kids = level === 0 ? [] : new Array<PtTable | undefined>(IO_PGTABLE_PTES_PER_TABLE).fill(undefined);
  }
}

/** Translates `IOMMU_*` prot flags to PTE permission bits. */
function protToPte(prot: number): number {
  let pte = 0;
  if (prot & IOMMU_READ) pte |= IOPTE_READ;
  if (prot & IOMMU_WRITE) pte |= IOPTE_WRITE;
  if (prot & IOMMU_CACHE) pte |= IOPTE_CACHE;
  if (prot & IOMMU_PRIV) pte |= IOPTE_PRIV;
  if (prot & IOMMU_MMIO) pte |= IOPTE_MMIO;
  return pte;
}

/**
 * `protToPte(prot) & PROT_BITS` for every `prot & 63` (all the `IOMMU_*` flags are below 64): one
 * load instead of five flag tests per map call.
 */
const PROT_TO_PTE = Uint8Array.from({ length: 64 }, (_, p) => protToPte(p) & PROT_BITS);

/** Translates PTE permission bits back to `IOMMU_*` prot flags. */
function pteToProt(lo: number): number {
  let prot = 0;
  if (lo & IOPTE_READ) prot |= IOMMU_READ;
  if (lo & IOPTE_WRITE) prot |= IOMMU_WRITE;
  if (lo & IOPTE_CACHE) prot |= IOMMU_CACHE;
  if (lo & IOPTE_PRIV) prot |= IOMMU_PRIV;
  if (lo & IOPTE_MMIO) prot |= IOMMU_MMIO;
  return prot;
}

/** `pteToProt(lo)` for every low byte of a PTE (the permission bits are bits 2–7): one load. */
const PTE_TO_PROT = Uint8Array.from({ length: 256 }, (_, lo) => pteToProt(lo));

/** Output address held by a PTE given its two words. */
function pteAddr(lo: number, hi: number): number {
  return (lo >>> 12) * PAGE_SIZE + hi * TWO32;
}

/** Allocates and zeroes one page-table page; 0 on failure (fault point `pgtable_page`, or no memory). */
function allocTablePage(machine: Machine): number {
  if (machine.faults.shouldFail('pgtable_page')) return 0;
  const phys = machine.pages.allocPages(0);
  if (phys === 0) return 0;
  machine.counters.pgtablePagesAllocated++;
  return phys;
}

/** A zeroed Uint32Array view of the table page at `phys`. */
function tableView(machine: Machine, phys: number): Uint32Array {
  const pfn = phys / PAGE_SIZE;
  let f = machine.phys.peekFrame(pfn);
  if (f === undefined) f = machine.phys.frame(pfn);
  else f.fill(0);
  return new Uint32Array(f.buffer, f.byteOffset, PAGE_SIZE / 4);
}

/**
 * Frees a page-table page taken from `gather.freelist` once the IOTLB has been synced: scrubs the
 * frame and returns it to the buddy allocator (kernel: `iommu_put_pages_list` on the gather's
 * freelist in `iommu_iotlb_sync`). Throws if `phys` is not an allocated single page.
 */
export function freeTablePage(machine: Machine, phys: number): void {
  if (machine.pages.orderOf(phys) !== 0) {
    throw new IommuError(`io-pgtable: freeing page-table page ${hex(phys)} that is not an allocated page`, {
      rule: 'io-pgtable: free of unallocated table page',
    });
  }
  machine.phys.discardFrame(phys / PAGE_SIZE);
  machine.pages.freePages(phys, 0);
  machine.counters.pgtablePagesFreed++;
}

/** True if `cfg` describes a table this format can build. */
function validCfg(cfg: IoPgtableCfg): boolean {
  const b = cfg.pgsizeBitmap;
  return (
    Number.isInteger(b) &&
    b > 0 &&
    (b & ~IO_PGTABLE_PGSIZE_BITMAP) === 0 &&
    Number.isInteger(cfg.ias) &&
    cfg.ias >= 12 &&
    cfg.ias <= IO_PGTABLE_MAX_IAS &&
    Number.isInteger(cfg.oas) &&
    cfg.oas >= 12 &&
    cfg.oas <= IO_PGTABLE_MAX_OAS
  );
}

/**
 * Widens a gather when no driver hook is installed, for a run of `len` bytes of `pgsize` leaves:
 * the range, plus the smallest leaf size seen (one call per run; per-leaf calls would be equal).
 */
function defaultAddRun(gather: IommuIotlbGather, iova: number, len: number, pgsize: number): void {
  iommuIotlbGatherAddRange(gather, iova, len);
  if (gather.pgsize === 0 || pgsize < gather.pgsize) gather.pgsize = pgsize;
}

/*
 * The free-entry invariant: an entry without IOPTE_VALID has BOTH words zero. Table pages start
 * zeroed (`tableView`), and every path that makes an entry invalid clears both words: the leaf
 * runs of `unmapPages` (`fill(0)` or the short loop over both words), `unmapOne4K`, and `#unlink`
 * (which the collapse in `unmapPages`, the table replacement in `#freeEmptySubtree`/`#freeSubtree`
 * and the failure pruning in `#pruneAfterFailure` all go through). Nothing writes a high word
 * without the low word's VALID bit (`setDirty` and `readAndClearDirty` touch valid low words only;
 * leaves are never split). So a leaf whose high word is 0 (output below 4 GiB) is written into a
 * free entry with one store, its low word; the high word already holds 0. A path that cleared
 * only the low word would leave a stale high word that a new leaf would then inherit: the
 * property test "free entries have both words zero" in io-pgtable.test.ts checks every entry
 * after random map/unmap sequences, and any new clearing path must keep the invariant.
 */

/**
 * Writes leaf PTEs into the free entries of `w` from word index `i2` (an even index, step 2) up
 * to `end` or the first valid entry, whichever comes first, and returns where it stopped. `lo` is
 * the first leaf's low word with its flags (an int32 bit pattern), `hi` the high word, `step` the
 * leaf size; the caller ends the run before the low word would wrap, so `hi` is constant. The
 * loop makes no calls: when the per-leaf loop in `mapPages` could call `#freeEmptySubtree`, V8
 * reloaded the view's map, length and data pointer and spilled the low word for every entry. Two
 * entries per pass share one set of the view's checks. For `hi === 0` use `fillFreeLo`.
 */
function fillFree(w: Uint32Array, i2: number, end: number, lo: number, hi: number, step: number): number {
  const step2 = step * 2;
  for (; i2 + 2 < end; i2 += 4) {
    if (((w[i2]! | w[i2 + 2]!) & 1) !== 0) break; // 1: IOPTE_VALID (a literal: no module-binding load per entry)
    w[i2] = lo;
    w[i2 + 1] = hi;
    w[i2 + 2] = (lo + step) | 0;
    w[i2 + 3] = hi;
    lo = (lo + step2) | 0;
  }
  for (; i2 < end; i2 += 2) {
    if ((w[i2]! & 1) !== 0) break; // 1: IOPTE_VALID (a literal: no module-binding load per entry)
    w[i2] = lo;
    w[i2 + 1] = hi;
    lo = (lo + step) | 0;
  }
  return i2;
}

/**
 * `fillFree` for leaves whose high word is 0: by the free-entry invariant above a free entry's
 * high word is already 0, so only the low words are stored (half the stores).
 */
function fillFreeLo(w: Uint32Array, i2: number, end: number, lo: number, step: number): number {
  const step2 = (step * 2) | 0;
  let lo1 = (lo + step) | 0;
  const last = (end - 2) | 0;
  for (; i2 < last; i2 = (i2 + 4) | 0) {
    if (((w[i2]! | w[(i2 + 2) | 0]!) & 1) !== 0) break; // 1: IOPTE_VALID
    w[i2] = lo;
    w[(i2 + 2) | 0] = lo1;
    lo = (lo + step2) | 0;
    lo1 = (lo1 + step2) | 0;
  }
  for (; i2 < end; i2 = (i2 + 2) | 0) {
    if ((w[i2]! & 1) !== 0) break; // 1: IOPTE_VALID
    w[i2] = lo;
    lo = (lo + step) | 0;
  }
  return i2;
}

/**
 * Writes leaf PTEs into word indexes `[i2, end)` of `w` (step 2), all known free, with the same
 * words as `fillFree` (low word from `lo` by `step`, constant high word `hi`): stores only.
 */
function fillKnownFree(w: Uint32Array, i2: number, end: number, lo: number, hi: number, step: number): void {
  const step2 = step * 2;
  for (; i2 + 2 < end; i2 += 4) {
    w[i2] = lo;
    w[i2 + 1] = hi;
    w[i2 + 2] = (lo + step) | 0;
    w[i2 + 3] = hi;
    lo = (lo + step2) | 0;
  }
  if (i2 < end) {
    w[i2] = lo;
    w[i2 + 1] = hi;
  }
}

/**
 * `fillKnownFree` for leaves whose high word is 0: low words only (the free-entry invariant above),
 * four entries a pass. Every index and value is an int32 expression (`| 0`) with its own running
 * value, so V8 emits no overflow checks or multiplies per store; what is left per store is the
 * bounds check and the store.
 */
function fillKnownFreeLo(w: Uint32Array, i2: number, end: number, lo: number, step: number): void {
  const step4 = (step * 4) | 0;
  let lo1 = (lo + step) | 0;
  let lo2 = (lo + step * 2) | 0;
  let lo3 = (lo + step * 3) | 0;
  const last = (end - 6) | 0;
  for (; i2 < last; i2 = (i2 + 8) | 0) {
    w[i2] = lo;
    w[(i2 + 2) | 0] = lo1;
    w[(i2 + 4) | 0] = lo2;
    w[(i2 + 6) | 0] = lo3;
    lo = (lo + step4) | 0;
    lo1 = (lo1 + step4) | 0;
    lo2 = (lo2 + step4) | 0;
    lo3 = (lo3 + step4) | 0;
  }
  for (; i2 < end; i2 = (i2 + 2) | 0) {
    w[i2] = lo;
    lo = (lo + step) | 0;
  }
}

/** Widens `t`'s bounds on valid entries to take in `[idx, idx + n)` (see `PtTable.usedLo`). */
function markUsed(t: PtTable, idx: number, n: number): void {
  if (idx < t.usedLo) t.usedLo = idx;
  if (idx + n > t.usedHi) t.usedHi = idx + n;
}

/**
 * One IOMMU page table (kernel: the `struct io_pgtable_ops` returned by `alloc_io_pgtable_ops`
 * for an ARM LPAE-like format, or a generic_pt domain's table). Not thread-aware: the model is
 * single-threaded.
 */
export class IoPgtable {
  /** Physical address of the root (level-3) table (kernel: TTBR / `pgd`). */
  readonly rootPhys: number;
  /** The configuration, frozen. */
  readonly cfg: IoPgtableCfg;
  readonly #machine: Machine;
  readonly #tlb: IoPgtableTlbOps | undefined;
  readonly #root: PtTable;
  /** Live tables by pfn (the table's physical address / 4 KiB, a small integer). */
  readonly #tables = new Map<number, PtTable>();
  readonly #iasLimit: number;
  readonly #oasLimit: number;
  #leaves = 0;
  #destroyed = false;
  /** Walk cache: per leaf level L, the table holding level-L entries for region `#cacheKey[L]`. */
  readonly #cacheKey: number[] = [-1, -1, -1];
  readonly #cacheTable: (PtTable | undefined)[] = [undefined, undefined, undefined];
  /** Error from the last failed `#leafTable`, and the deepest table that walk reached. */
  #err = 0;
  #failedAt: PtTable | undefined;
  /** Result of the last successful `#find`. */
  #fTable: PtTable | undefined;
  #fIdx = 0;
  #fLevel = 0;

  private constructor(
    machine: Machine,
    cfg: IoPgtableCfg,
    rootPhys: number,
    tlb: IoPgtableTlbOps | undefined,
  ) {
    this.#machine = machine;
    this.cfg = Object.freeze({ pgsizeBitmap: cfg.pgsizeBitmap, ias: cfg.ias, oas: cfg.oas });
    this.#tlb = tlb;
    this.rootPhys = rootPhys;
    this.#root = new PtTable(rootPhys, TOP_LEVEL, tableView(machine, rootPhys));
    this.#tables.set(this.#root.pfn, this.#root);
    this.#iasLimit = 2 ** cfg.ias;
    this.#oasLimit = 2 ** cfg.oas;
  }

  /**
   * Builds an empty table: allocates the root page (fault point `pgtable_page`). Returns
   * `undefined` if the configuration is not supported or the page cannot be allocated (kernel:
   * `alloc_io_pgtable_ops` returning NULL).
   */
  static create(machine: Machine, cfg: IoPgtableCfg, tlb?: IoPgtableTlbOps): IoPgtable | undefined {
    if (!validCfg(cfg)) return undefined;
    const root = allocTablePage(machine);
    if (root === 0) return undefined;
    return new IoPgtable(machine, cfg, root, tlb);
  }

  /** Live page-table pages including the root (pages unlinked onto a gather's freelist excluded). */
  get tablePages(): number {
    return this.#tables.size;
  }

  /** Number of valid leaf entries (generic_pt KUnit's "zero entries" check counts these). */
  get leafCount(): number {
    return this.#leaves;
  }

  /**
   * Maps one 4 KiB page (the commonest call by far: a single-page `dma_iova_link` or
   * `dma_map_page`); same rules and results as `mapPages(iova, paddr, SZ_4K, 1, prot, out)` with
   * the per-run bookkeeping left out. Returns 0 or -errno.
   */
  mapOne4K(iova: number, paddr: number, prot: number): number {
    if (this.#destroyed) this.#useAfterFree('map_pages');
    if (
      !(iova >= 0 && paddr >= 0 && isAlignedPow2(iova, SZ_4K) && isAlignedPow2(paddr, SZ_4K)) ||
      !Number.isSafeInteger(iova) ||
      !Number.isSafeInteger(paddr)
    ) {
      return -Errno.EINVAL;
    }
    if (iova + SZ_4K > this.#iasLimit || paddr + SZ_4K > this.#oasLimit) return -Errno.ERANGE;
    if ((prot & (IOMMU_READ | IOMMU_WRITE)) === 0) return -Errno.EINVAL;
    const t = this.#leafTable(iova, 0);
    if (t === undefined) {
      const err = this.#err;
      if (err === -Errno.ENOMEM) this.#pruneAfterFailure();
      return err;
    }
    const w = t.words;
    const i2 = (Math.floor(iova * LEVEL_INV[0]!) & PTE_IDX_MASK) << 1;
    if ((w[i2]! & IOPTE_VALID) !== 0) return -Errno.EEXIST;
    w[i2] = lo32(paddr) | 0 | IOPTE_VALID | IOPTE_LEAF | (protToPte(prot) & PROT_BITS);
    w[i2 + 1] = Math.floor(paddr * INV_TWO32);
    if (t.live === 0) {
      t.usedLo = i2 >> 1;
      t.usedHi = (i2 >> 1) + 1;
    } else {
      markUsed(t, i2 >> 1, 1);
    }
    t.live++;
    this.#leaves++;
    this.#machine.counters.pteWrites++;
    return 0;
  }

  /**
   * Maps `pgcount` leaves of `pgsize` bytes at `iova` → `paddr` (kernel: `ops->map_pages`,
   * `arm_lpae_map_pages`). Returns 0 or -errno and stores the bytes mapped in `out.mapped`, also on
   * error (the core unmaps them). -EINVAL: `pgsize` not in the bitmap, iova/paddr not aligned to it,
   * `pgcount` < 1, or `prot` has neither READ nor WRITE (v6.17 io-pgtable-arm and generic_pt; older
   * arm-lpae returned 0 and mapped nothing). -ERANGE: the run ends beyond 2^ias or its output beyond 2^oas.
   * -EEXIST: a leaf, or a table with a leaf somewhere below it, already sits where a leaf goes
   * (generic_pt: -EADDRINUSE); a table with no leaf below it is freed and replaced.
   * -ENOMEM: a page-table page could not be allocated.
   */
  mapPages(
    iova: number,
    paddr: number,
    pgsize: number,
    pgcount: number,
    prot: number,
    out: { mapped: number },
  ): number {
    out.mapped = 0;
    if (this.#destroyed) this.#useAfterFree('map_pages');
    let leafLevel: number;
    let inv: number;
    if (pgsize === SZ_4K) {
      leafLevel = 0;
      inv = 1 / SZ_4K;
    } else if (pgsize === SZ_2M) {
      leafLevel = 1;
      inv = INV_2M;
    } else if (pgsize === SZ_1G) {
      leafLevel = 2;
      inv = 1 / SZ_1G;
    } else {
      return -Errno.EINVAL;
    }
    if ((this.cfg.pgsizeBitmap & pgsize) === 0) return -Errno.EINVAL;
    if (!(Number.isSafeInteger(pgcount) && pgcount >= 1)) return -Errno.EINVAL;
    if (!(Number.isSafeInteger(iova) && iova >= 0)) return -Errno.EINVAL;
    if (!(Number.isSafeInteger(paddr) && paddr >= 0)) return -Errno.EINVAL;
    // The high word of the output address, and the low word as an int32 (bit pattern of the
    // unsigned word): it wraps to 0 exactly when the address crosses a 4 GiB boundary, since
    // pgsize divides 2^32. The high word is below 2^20 (oas ≤ 52), so `| 0` keeps it a small
    // integer rather than a double. Written out here rather than through `isAlignedPow2`/`lo32`:
    // V8 does not always inline those calls into this function.
    let hi = Math.floor(paddr * INV_TWO32);
    let lo = (paddr - hi * TWO32) | 0;
    hi |= 0;
    const mask = pgsize - 1;
    if (((iova - Math.floor(iova * INV_TWO32) * TWO32) & mask) !== 0 || (lo & mask) !== 0)
      return -Errno.EINVAL;
    const size = pgsize * pgcount;
    if (iova + size > this.#iasLimit || paddr + size > this.#oasLimit) return -Errno.ERANGE;
    const perm = PROT_TO_PTE[prot & 63]!;
    if ((perm & (IOPTE_READ | IOPTE_WRITE)) === 0) return -Errno.EINVAL;
    const flags = IOPTE_VALID | IOPTE_LEAF | perm;
    let pos = iova;
    let remaining = pgcount;
    let written = 0;
    let ret = 0;
    while (remaining > 0) {
      const t = this.#leafTable(pos, leafLevel);
      if (t === undefined) {
        ret = this.#err;
        break;
      }
      const w = t.words;
      const idx = Math.floor(pos * inv) & PTE_IDX_MASK;
      let n = IO_PGTABLE_PTES_PER_TABLE - idx;
      if (n > remaining) n = remaining;
      // Leaf by leaf: the entries before a collision are written, the rest are not. `fillFree`
      // writes the free run up to the next occupied entry (`fillKnownFree` the whole run, when it
      // lies outside the table's used range), stopping where the output address crosses 4 GiB and
      // the high word changes; an occupied entry is handled here.
      const first = idx << 1;
      const stop = first + (n << 1);
      let i2 = first;
      if (t.live === 0) {
        t.usedLo = IO_PGTABLE_PTES_PER_TABLE;
        t.usedHi = 0;
      }
      // A range outside the bounds on valid entries is all free: stores only, no reads.
      const knownFree = idx >= t.usedHi || idx + n <= t.usedLo;
      for (;;) {
        // Leaves left before the low word wraps (exact: pgsize divides 2^32 and lo is aligned).
        const untilWrap = (TWO32 - (lo >>> 0)) * inv;
        const segEnd = untilWrap < (stop - i2) >> 1 ? i2 + untilWrap * 2 : stop;
        let end: number;
        if (knownFree) {
          if (hi === 0) fillKnownFreeLo(w, i2, segEnd, lo | flags, pgsize);
          else fillKnownFree(w, i2, segEnd, lo | flags, hi, pgsize);
          end = segEnd;
        } else if (hi === 0) {
          end = fillFreeLo(w, i2, segEnd, lo | flags, pgsize);
        } else {
          end = fillFree(w, i2, segEnd, lo | flags, hi, pgsize);
        }
        const k = (end - i2) >> 1;
        lo = (lo + Math.imul(k, pgsize)) | 0;
        if (k === untilWrap) hi++;
        i2 = end;
        if (i2 === stop) break;
        if (i2 === segEnd) continue; // crossed 4 GiB: go on with the new high word
        // An occupied entry: only a table with no leaf below it may be replaced by a block.
        if (!(leafLevel > 0 && this.#freeEmptySubtree(t, i2 >> 1))) {
          ret = -Errno.EEXIST;
          break;
        }
        w[i2] = lo | flags;
        w[i2 + 1] = hi;
        i2 += 2;
        lo = (lo + pgsize) | 0;
        if (lo === 0) hi++;
      }
      const k = (i2 - first) >> 1;
      if (k > 0) markUsed(t, idx, k);
      t.live += k;
      written += k;
      pos += k * pgsize;
      remaining -= k;
      if (ret !== 0) break;
    }
    this.#leaves += written;
    this.#machine.counters.pteWrites += written;
    out.mapped = written * pgsize;
    if (ret === -Errno.ENOMEM) this.#pruneAfterFailure();
    return ret;
  }

  /**
   * Unmaps leaves from `iova` for `pgsize * pgcount` bytes (kernel: `ops->unmap_pages`). Returns
   * the bytes unmapped; `iova + result` is where unmapping stopped (a hole, or a leaf that starts
   * before the current position). Never splits a leaf: one that starts inside the range is removed
   * whole and its full size counted, so the result can exceed the request. Each cleared leaf is
   * reported to the driver's `addPage` hook unless `gather.queued`; a table that becomes empty
   * and whose whole span lies inside the requested range is unlinked and its physical address
   * pushed to `gather.freelist`, to be freed with `freeTablePage` after the IOTLB sync. (Differs
   * slightly from generic_pt, which frees only after a pass with no hole.) Returns 0 for a size not in the bitmap, an unaligned
   * iova, or a range beyond 2^ias (kernel: WARN and 0).
   */
  unmapPages(iova: number, pgsize: number, pgcount: number, gather: IommuIotlbGather): number {
    if (this.#destroyed) this.#useAfterFree('unmap_pages');
    if (!(pgsize === SZ_4K || pgsize === SZ_2M || pgsize === SZ_1G)) return 0;
    if ((this.cfg.pgsizeBitmap & pgsize) === 0) return 0;
    if (!(Number.isSafeInteger(pgcount) && pgcount >= 1)) return 0;
    if (!(Number.isSafeInteger(iova) && iova >= 0 && isAlignedPow2(iova, pgsize))) return 0;
    const end = iova + pgsize * pgcount;
    if (end > this.#iasLimit) return 0;

    const root = this.#root;
    const tlb = this.#tlb;
    const notify = !gather.queued;
    let pos = iova;
    let unmapped = 0;
    let cleared = 0;
    outer: while (pos < end) {
      let t: PtTable;
      let lvl: number;
      const key0 = Math.floor(pos * INV_2M);
      const cached = this.#cacheTable[0];
      if (cached !== undefined && this.#cacheKey[0] === key0) {
        t = cached;
        lvl = 0;
      } else {
        t = root;
        lvl = TOP_LEVEL;
        for (;;) {
          const idx = Math.floor(pos * LEVEL_INV[lvl]!) & PTE_IDX_MASK;
          const lo = t.words[idx << 1];
          if ((lo & IOPTE_VALID) === 0) break outer;
          if (lvl === 0 || (lo & IOPTE_LEAF) !== 0) break;
          t = this.#child(t, idx);
          lvl--;
        }
        if (lvl === 0) {
          this.#cacheKey[0] = key0;
          this.#cacheTable[0] = t;
        }
      }
      const size = LEVEL_SIZE[lvl];
      if (!isAlignedPow2(pos, size)) break; // starts inside a larger leaf: not ours to split
      const w = t.words;
      const idx = Math.floor(pos * LEVEL_INV[lvl]!) & PTE_IDX_MASK;
      let max = IO_PGTABLE_PTES_PER_TABLE - idx;
      const left = Math.ceil((end - pos) * LEVEL_INV[lvl]!); // exact: a power-of-two reciprocal
      if (left < max) max = left;
      // The run of leaves to clear in this table: up to a hole, a table link, or the range end.
      let n = 0;
      let i2 = idx << 1;
      if (lvl === 0) {
        while (n < max && (w[i2] & IOPTE_VALID) !== 0) {
          n++;
          i2 += 2;
        }
      } else {
        while (n < max && (w[i2] & LEAF_MASK) === LEAF_MASK) {
          n++;
          i2 += 2;
        }
      }
      if (n === 0) break; // a hole (only possible through the walk cache)
      if (n <= 8) {
        for (let k = idx << 1; k < i2; k++) w[k] = 0;
      } else {
        w.fill(0, idx << 1, i2);
      }
      if (notify) {
        if (tlb === undefined) {
          defaultAddRun(gather, pos, n * size, size);
        } else if (tlb.addRun !== undefined) {
          tlb.addRun(gather, pos, n, size);
        } else {
          for (let k = 0, a = pos; k < n; k++, a += size) tlb.addPage(gather, a, size);
        }
      }
      const runStart = pos;
      pos += n * size;
      t.live -= n;
      cleared += n;
      unmapped += n * size;
      // Collapse: unlink tables that became empty and lie wholly inside this unmap's range,
      // bottom-up, after their leaves were gathered.
      let c = t;
      while (c.live === 0 && c !== root) {
        const span = LEVEL_SIZE[c.level + 1]!;
        const base = Math.floor(runStart * LEVEL_INV[c.level + 1]!) * span;
        if (base < iova || base + span > end) break;
        const p = c.parent!;
        this.#unlink(c);
        gather.freelist.push(c.phys);
        c = p;
      }
    }
    this.#leaves -= cleared;
    this.#machine.counters.pteClears += cleared;
    return unmapped;
  }

  /**
   * Unmaps one 4 KiB leaf at `iova` (the commonest unmap: a single-page `dma_unmap_page` or
   * `dma_iova_unlink`): same rules and results as `unmapPages(iova, SZ_4K, 1, gather)`, which it
   * falls back to for bad arguments, a hole above level 0 or a larger leaf. A one-page range
   * never covers a table's span, so no table is freed here. Returns the bytes unmapped.
   */
  unmapOne4K(iova: number, gather: IommuIotlbGather): number {
    if (
      this.#destroyed ||
      (this.cfg.pgsizeBitmap & SZ_4K) === 0 ||
      !(Number.isSafeInteger(iova) && iova >= 0 && isAlignedPow2(iova, SZ_4K)) ||
      iova + SZ_4K > this.#iasLimit
    ) {
      return this.unmapPages(iova, SZ_4K, 1, gather);
    }
    const key0 = Math.floor(iova * INV_2M);
    let cached = this.#cacheTable[0];
    if (cached === undefined || this.#cacheKey[0] !== key0) {
      // walk from the root through table links only; a hole or a larger leaf is unmapPages' case
      let t = this.#root;
      for (let lvl = TOP_LEVEL; lvl > 0; lvl--) {
        const idx = Math.floor(iova * LEVEL_INV[lvl]!) & PTE_IDX_MASK;
        if ((t.words[idx << 1]! & LEAF_MASK) !== IOPTE_VALID) return this.unmapPages(iova, SZ_4K, 1, gather);
        t = this.#child(t, idx);
      }
      this.#cacheKey[0] = key0;
      this.#cacheTable[0] = t;
      cached = t;
    }
    const w = cached.words;
    const i2 = (Math.floor(iova * LEVEL_INV[0]!) & PTE_IDX_MASK) << 1;
    if ((w[i2]! & IOPTE_VALID) === 0) return 0;
    w[i2] = 0;
    w[i2 + 1] = 0;
    if (!gather.queued) {
      const tlb = this.#tlb;
      if (tlb === undefined) defaultAddRun(gather, iova, SZ_4K, SZ_4K);
      else if (tlb.addRun !== undefined) tlb.addRun(gather, iova, 1, SZ_4K);
      else tlb.addPage(gather, iova, SZ_4K);
    }
    cached.live--;
    this.#leaves--;
    this.#machine.counters.pteClears++;
    return SZ_4K;
  }

  /**
   * Physical address of the byte at `iova`, or 0 if no leaf maps it (kernel: `ops->iova_to_phys`,
   * `arm_lpae_iova_to_phys`). Walks from the root through the PTEs in memory.
   */
  iovaToPhys(iova: number): number {
    if (this.#destroyed) this.#useAfterFree('iova_to_phys');
    if (!this.#find(iova)) return 0;
    const w = this.#fTable!.words;
    const i2 = this.#fIdx << 1;
    return pteAddr(w[i2], w[i2 + 1]) + modPow2(iova, LEVEL_SIZE[this.#fLevel]!);
  }

  /**
   * The hardware walk a device access triggers: if a valid leaf maps `iova`, fills `out` and
   * returns true; false otherwise (kernel counterpart: the IOMMU's table walker; software's view of
   * it is `arm_lpae_pgtable_walk`). Reads the PTEs from the table pages, starting at the root.
   */
  lookup(iova: number, out: PteLookup): boolean {
    if (this.#destroyed) this.#useAfterFree('walk');
    let w: Uint32Array;
    let i2: number;
    let size: number;
    const cached = this.#cacheTable[0];
    if (cached !== undefined && this.#cacheKey[0] === Math.floor(iova * INV_2M)) {
      // `#find`'s walk-cache hit, inline, without recording where the walk ended.
      w = cached.words;
      i2 = (Math.floor(iova * INV_4K) & PTE_IDX_MASK) << 1;
      if ((w[i2]! & IOPTE_VALID) === 0) return false;
      size = SZ_4K;
    } else {
      if (!this.#find(iova)) return false;
      w = this.#fTable!.words;
      i2 = this.#fIdx << 1;
      size = LEVEL_SIZE[this.#fLevel]!;
    }
    const lo = w[i2]!;
    out.leafIova = iova - modPow2(iova, size);
    out.leafPhys = pteAddr(lo, w[i2 + 1]!);
    out.leafSize = size;
    out.prot = PTE_TO_PROT[lo & 0xff]!;
    out.dirty = (lo & IOPTE_DIRTY) !== 0;
    return true;
  }

  /**
   * Hardware dirty tracking: sets the DIRTY bit of the writable leaf mapping `iova`; no-op if none
   * (kernel counterpart: the IOMMU setting the dirty/DBM state on a DMA write; generic_pt's
   * `set_dirty` test hook). The walker calls it on DMA writes while dirty tracking is on.
   */
  setDirty(iova: number): void {
    if (this.#destroyed) this.#useAfterFree('set_dirty');
    if (!this.#find(iova)) return;
    const w = this.#fTable!.words;
    const i2 = this.#fIdx << 1;
    const lo = w[i2];
    if ((lo & IOPTE_WRITE) !== 0) w[i2] = lo | IOPTE_DIRTY;
  }

  /**
   * Calls `record(leafIova, leafSize)` for every dirty leaf intersecting `[iova, iova + size)` and
   * clears the DIRTY bits unless `noClear` (kernel: `ops->read_and_clear_dirty`,
   * `IOMMU_DIRTY_NO_CLEAR`). Differs: records whole leaves (the kernel records from the walk
   * position), and does not add the range to a gather: a caller whose IOTLB may cache dirty state
   * must invalidate the range after clearing. Throws for an empty range or one beyond 2^ias (kernel:
   * WARN, -EINVAL).
   */
  readAndClearDirty(
    iova: number,
    size: number,
    noClear: boolean,
    record: (iova: number, size: number) => void,
  ): void {
    if (this.#destroyed) this.#useAfterFree('read_and_clear_dirty');
    if (!(Number.isSafeInteger(iova) && Number.isSafeInteger(size) && iova >= 0 && size > 0)) {
      throw new IommuError(`read_and_clear_dirty: bad range ${hex(iova)} +${size}`, {
        rule: 'read_and_clear_dirty: empty range',
        errno: -Errno.EINVAL,
      });
    }
    if (iova + size > this.#iasLimit) {
      throw new IommuError(
        `read_and_clear_dirty: range ${hex(iova)} +${hex(size)} beyond 2^${this.cfg.ias}`,
        {
          rule: 'read_and_clear_dirty: beyond ias',
          errno: -Errno.EINVAL,
        },
      );
    }
    this.#dirtyWalk(this.#root, TOP_LEVEL, 0, iova, iova + size, noClear, record);
  }

  /**
   * Frees every page-table page, root included (kernel: `free_io_pgtable_ops` /
   * `__arm_lpae_free_pgtable`). The IOTLB must already be clean for this table. Afterwards every
   * method but the getters throws.
   */
  destroy(): void {
    if (this.#destroyed) this.#useAfterFree('free_io_pgtable_ops');
    this.#destroyed = true;
    for (const t of this.#tables.values()) {
      t.parent = undefined;
      freeTablePage(this.#machine, t.phys);
    }
    this.#tables.clear();
    this.#leaves = 0;
    for (let l = 0; l < 3; l++) {
      this.#cacheKey[l] = -1;
      this.#cacheTable[l] = undefined;
    }
  }

  /** The table holding level-`leafLevel` entries for `pos`, allocating tables on the way down. */
  #leafTable(pos: number, leafLevel: number): PtTable | undefined {
    const key = Math.floor(pos * LEVEL_INV[leafLevel + 1]!);
    const cached = this.#cacheTable[leafLevel];
    if (cached !== undefined && this.#cacheKey[leafLevel] === key) return cached;
    let t = this.#root;
    for (let lvl = TOP_LEVEL; lvl > leafLevel; lvl--) {
      const idx = Math.floor(pos * LEVEL_INV[lvl]!) & PTE_IDX_MASK;
      const lo = t.words[idx << 1];
      if ((lo & IOPTE_VALID) !== 0) {
        if ((lo & IOPTE_LEAF) !== 0) {
          this.#err = -Errno.EEXIST; // a larger leaf covers pos
          return undefined;
        }
        t = this.#child(t, idx);
      } else {
        const c = this.#newTable(t, idx);
        if (c === undefined) {
          this.#err = -Errno.ENOMEM;
          this.#failedAt = t;
          return undefined;
        }
        t = c;
      }
    }
    this.#cacheKey[leafLevel] = key;
    this.#cacheTable[leafLevel] = t;
    return t;
  }

  /** Allocates a zeroed table and links it at `parent[idx]` (kernel: `arm_lpae_install_table`). */
  #newTable(parent: PtTable, idx: number): PtTable | undefined {
    const m = this.#machine;
    const phys = allocTablePage(m);
    if (phys === 0) return undefined;
    const t = new PtTable(phys, parent.level - 1, tableView(m, phys));
    t.parent = parent;
    t.parentIdx = idx;
    this.#tables.set(t.pfn, t);
    parent.kids[idx] = t;
    const lo = lo32(phys);
    parent.words[idx << 1] = lo + IOPTE_VALID;
    parent.words[(idx << 1) + 1] = (phys - lo) / TWO32;
    if (parent.live === 0) {
      parent.usedLo = idx;
      parent.usedHi = idx + 1;
    } else {
      markUsed(parent, idx, 1);
    }
    parent.live++;
    m.counters.pteWrites++;
    return t;
  }

  /** Clears `t`'s link in its parent and forgets it; the page itself is not freed here. */
  #unlink(t: PtTable): void {
    const p = t.parent!;
    const i2 = t.parentIdx << 1;
    p.words[i2] = 0;
    p.words[i2 + 1] = 0;
    p.live--;
    p.kids[t.parentIdx] = undefined;
    this.#machine.counters.pteClears++;
    this.#tables.delete(t.pfn);
    t.parent = undefined;
    if (this.#cacheTable[t.level] === t) {
      this.#cacheTable[t.level] = undefined;
      this.#cacheKey[t.level] = -1;
    }
  }

  /**
   * If `t[idx]` links a table with no leaf anywhere below it, frees that subtree (unlinking it)
   * and returns true; returns false for a leaf or a subtree that still maps something. No leaf
   * below means no translation can come from it, and the model has no walk cache to flush, so it
   * is freed at once (the kernel flushes its walk caches before freeing a replaced table).
   */
  #freeEmptySubtree(t: PtTable, idx: number): boolean {
    const lo = t.words[idx << 1];
    if ((lo & IOPTE_LEAF) !== 0) return false;
    const c = this.#child(t, idx);
    if (!this.#subtreeEmpty(c)) return false;
    this.#freeSubtree(c);
    return true;
  }

  #subtreeEmpty(t: PtTable): boolean {
    if (t.live === 0) return true;
    if (t.level === 0) return false;
    const w = t.words;
    for (let i = 0; i < IO_PGTABLE_PTES_PER_TABLE; i++) {
      const lo = w[i << 1];
      if ((lo & IOPTE_VALID) === 0) continue;
      if ((lo & IOPTE_LEAF) !== 0 || !this.#subtreeEmpty(this.#child(t, i))) return false;
    }
    return true;
  }

  #freeSubtree(t: PtTable): void {
    if (t.level > 0 && t.live > 0) {
      for (let i = 0; i < IO_PGTABLE_PTES_PER_TABLE; i++) {
        if ((t.words[i << 1] & IOPTE_VALID) !== 0) this.#freeSubtree(this.#child(t, i));
      }
    }
    this.#unlink(t);
    freeTablePage(this.#machine, t.phys);
  }

  /** After -ENOMEM, frees the empty tables the failed walk left on its path (they never mapped anything). */
  #pruneAfterFailure(): void {
    let t = this.#failedAt;
    this.#failedAt = undefined;
    while (t !== undefined && t !== this.#root && t.live === 0) {
      const p = t.parent;
      this.#unlink(t);
      freeTablePage(this.#machine, t.phys);
      t = p;
    }
  }

  /**
   * The table a link PTE at `t[idx]` points to, taken from the parent's `kids` and checked against
   * the address in the PTE; throws when the PTE no longer holds that table's address.
   */
  #child(t: PtTable, idx: number): PtTable {
    const w = t.words;
    const lo = w[idx << 1];
    const hi = w[(idx << 1) + 1];
    const c = t.kids[idx];
    if (c === undefined || c.pfn !== (lo >>> 12) + hi * 1048576) {
      throw new IommuError(
        `io-pgtable: level-${t.level} entry ${idx} links to ${hex(pteAddr(lo, hi))}, not a page table`,
        { rule: 'io-pgtable: corrupt table link' },
      );
    }
    return c;
  }

  /**
   * Walks from the root to the leaf mapping `iova`; on success sets #fTable/#fIdx/#fLevel. When the
   * walk cache holds the level-0 table of `iova`'s 2 MiB region, the walk starts there: that
   * region is mapped through a table, so no larger leaf can cover `iova` and the entry there is
   * the answer (a device streaming through a buffer walks the same table page after page). A
   * level-0 table the walk reaches becomes the cached one; `#unlink` forgets it.
   */
  #find(iova: number): boolean {
    const key0 = Math.floor(iova * INV_2M);
    const cached = this.#cacheTable[0];
    if (cached !== undefined && this.#cacheKey[0] === key0) {
      const idx = Math.floor(iova * INV_4K) & PTE_IDX_MASK;
      if ((cached.words[idx << 1]! & IOPTE_VALID) === 0) return false;
      this.#fTable = cached;
      this.#fIdx = idx;
      this.#fLevel = 0;
      return true;
    }
    if (!(iova >= 0 && iova < this.#iasLimit)) return false;
    let t = this.#root;
    for (let lvl = TOP_LEVEL; ; lvl--) {
      const idx = Math.floor(iova * LEVEL_INV[lvl]!) & PTE_IDX_MASK;
      const lo = t.words[idx << 1];
      if ((lo & IOPTE_VALID) === 0) return false;
      if (lvl === 0 || (lo & IOPTE_LEAF) !== 0) {
        if (lvl === 0) {
          this.#cacheKey[0] = key0;
          this.#cacheTable[0] = t;
        }
        this.#fTable = t;
        this.#fIdx = idx;
        this.#fLevel = lvl;
        return true;
      }
      t = this.#child(t, idx);
    }
  }

  #dirtyWalk(
    t: PtTable,
    lvl: number,
    base: number,
    start: number,
    end: number,
    noClear: boolean,
    record: (iova: number, size: number) => void,
  ): void {
    const sz = LEVEL_SIZE[lvl];
    const w = t.words;
    let idx = start > base ? Math.floor((start - base) / sz) : 0;
    const last = Math.min(IO_PGTABLE_PTES_PER_TABLE - 1, Math.floor((end - 1 - base) / sz));
    for (; idx <= last; idx++) {
      const lo = w[idx << 1];
      if ((lo & IOPTE_VALID) === 0) continue;
      const entryBase = base + idx * sz;
      if (lvl === 0 || (lo & IOPTE_LEAF) !== 0) {
        if ((lo & IOPTE_DIRTY) !== 0) {
          if (!noClear) w[idx << 1] = lo & ~IOPTE_DIRTY;
          record(entryBase, sz);
        }
      } else {
        this.#dirtyWalk(this.#child(t, idx), lvl - 1, entryBase, start, end, noClear, record);
      }
    }
  }

  #useAfterFree(op: string): never {
    throw new IommuError(`${op}: page table used after free_io_pgtable_ops`, {
      rule: 'io-pgtable: use after free',
    });
  }
}
