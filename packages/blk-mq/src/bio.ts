/**
 * Bios: the block layer's unit of I/O, as in Linux `block/bio.c`, `include/linux/bio.h` and
 * `include/linux/blk_types.h` (v6.17, with v6.19's per-bio gap bit). A bio holds an operation
 * and flags (`biOpf`), a table of multi-page bvecs and an iterator over it (`biIter`), a link to
 * the next bio of a request (`biNext`), and a completion callback. Splitting clones the bio
 * over the same bvec table with a shorter iterator and chains it to the original, whose
 * completion then waits for both (`__bi_remaining`).
 * Differs on purpose: no bio_set objects (a bio is counted as metadata kind `"bio"` when made
 * with `bioAlloc`, or taken back with `bioReuse` by an owner that keeps its put bios as a mempool
 * would), no reference counts (`bi_cnt`), no cgroup/crypto/integrity payloads, no
 * `bio_iov_iter_get_pages` (callers add physical pages themselves).
 */
import type { Machine } from '@iovalink/iommu';
import { BLK_STS_IOERR, BLK_STS_OK, type BlkStatus } from './blk-status.js';
import { BioVec, BvecIter, bvecIterAdvance, bvecPhys, mpBvecIterBvec } from './bvec.js';
import { BlkError } from './errors.js';

/** log2 of the sector size (kernel: `SECTOR_SHIFT`). */
export const SECTOR_SHIFT = 9;
/** The block layer's unit of addressing, 512 bytes (kernel: `SECTOR_SIZE`). */
export const SECTOR_SIZE = 512;
/** Most bvecs one bio holds (kernel: `BIO_MAX_VECS`, include/linux/bio.h). */
export const BIO_MAX_VECS = 256;
/** Largest C `unsigned int`, the limit of `bi_size` and `bv_len`. */
export const UINT_MAX = 0xffff_ffff;

/** Bits of `biOpf` that hold the operation (kernel: `REQ_OP_BITS`). */
export const REQ_OP_BITS = 8;
/** Mask of the operation in `biOpf` (kernel: `REQ_OP_MASK`). */
export const REQ_OP_MASK = (1 << REQ_OP_BITS) - 1;
/** Read sectors from the device (kernel: `REQ_OP_READ`). */
export const REQ_OP_READ = 0;
/** Write sectors to the device (kernel: `REQ_OP_WRITE`). */
export const REQ_OP_WRITE = 1;
/** Flush the volatile write cache (kernel: `REQ_OP_FLUSH`). */
export const REQ_OP_FLUSH = 2;
/** Discard sectors (kernel: `REQ_OP_DISCARD`). */
export const REQ_OP_DISCARD = 3;
/** Write zeroes to sectors (kernel: `REQ_OP_WRITE_ZEROES`). */
export const REQ_OP_WRITE_ZEROES = 9;

/** Synchronous request (kernel: `REQ_SYNC`, bit `__REQ_SYNC` = 11). */
export const REQ_SYNC = 1 << 11;
/** Never merge this request (kernel: `REQ_NOMERGE`, bit 14). */
export const REQ_NOMERGE = 1 << 14;
/** Forced unit access (kernel: `REQ_FUA`, bit 17). */
export const REQ_FUA = 1 << 17;
/** Flush the cache before this request (kernel: `REQ_PREFLUSH`, bit 18). */
export const REQ_PREFLUSH = 1 << 18;
/** Fail instead of blocking (kernel: `REQ_NOWAIT`, bit 21). */
export const REQ_NOWAIT = 1 << 21;
/** Atomic write: never split (kernel: `REQ_ATOMIC`, bit 27). */
export const REQ_ATOMIC = 1 << 27;
/** Flags that forbid merging (kernel: `REQ_NOMERGE_FLAGS`). */
export const REQ_NOMERGE_FLAGS = REQ_NOMERGE | REQ_PREFLUSH | REQ_FUA;

/** `bi_flags` bit: the bio shares another bio's bvec table (kernel: `BIO_CLONED`). */
export const BIO_CLONED = 1 << 1;
/** `bi_flags` bit: `remaining` is in effect (kernel: `BIO_CHAIN`). */
export const BIO_CHAIN = 1 << 3;

/** Approximate `sizeof(struct bio)` on x86-64 without cgroup/crypto/integrity, for the ledger. */
export const BIO_STRUCT_SIZE = 128;
/** Size of `struct bio_vec` (page pointer, len, offset). */
export const BIO_VEC_SIZE = 16;
/** Metadata kind under which bios are counted. */
export const BIO_META_KIND = 'bio';

/** Completion callback (kernel: `bio_end_io_t`). */
export type BioEndIo = (bio: Bio) => void;

/** One block I/O (kernel: `struct bio`). */
export class Bio {
  /** Next bio of the same request (kernel: `bi_next`). */
  biNext: Bio | null = null;
  /** Operation in the low 8 bits, REQ_* flags above (kernel: `bi_opf`). */
  biOpf: number;
  /** BIO_* flags (kernel: `bi_flags`). */
  biFlags = 0;
  /** Completion status (kernel: `bi_status`). */
  biStatus: BlkStatus = BLK_STS_OK;
  /** Position and bytes left (kernel: `bi_iter`). */
  readonly biIter = new BvecIter();
  /** The bvec table, shared with clones (kernel: `bi_io_vec`). */
  biIoVec: BioVec[];
  /** Vectors in use (kernel: `bi_vcnt`). */
  biVcnt = 0;
  /** Capacity of the table (kernel: `bi_max_vecs`). */
  biMaxVecs: number;
  /** Completion callback (kernel: `bi_end_io`). */
  biEndIo: BioEndIo | null = null;
  /** Owner's data; the parent for chained bios (kernel: `bi_private`). */
  biPrivate: unknown = null;
  /**
   * 1 + index of the lowest set bit of any address gap between this bio's bvecs, 0 for none
   * (kernel v6.19: `bi_bvec_gap_bit`, set by `bio_split_rw_at`).
   */
  biBvecGapBit = 0;
  /** Completions still outstanding when BIO_CHAIN is set (kernel: `__bi_remaining`). */
  remaining = 1;
  /** Bytes counted in the metadata ledger for this bio (0 when not made by `bioAlloc`). */
  metaBytes = 0;
  /** The machine whose ledger counts this bio (kernel: `bi_pool`, the bio_set it came from). */
  biPool: Machine | null = null;

  /** A bio with room for `maxVecs` bvecs (kernel: `bio_init`). */
  constructor(maxVecs = BIO_MAX_VECS, opf = REQ_OP_READ, table?: BioVec[]) {
    this.biMaxVecs = maxVecs;
    this.biOpf = opf;
    this.biIoVec = table ?? [];
  }
}

/** The operation of a bio (kernel: `bio_op`). */
export function bioOp(bio: Bio): number {
  return bio.biOpf & REQ_OP_MASK;
}

/** True for operations that move data to the device (kernel: `op_is_write`: the low bit). */
export function opIsWrite(op: number): boolean {
  return (op & 1) === 1;
}

/** Sectors left in the bio (kernel: `bio_sectors`). */
export function bioSectors(bio: Bio): number {
  return Math.floor(bio.biIter.biSize / SECTOR_SIZE);
}

/** The sector after the bio (kernel: `bio_end_sector`). */
export function bioEndSector(bio: Bio): number {
  return bio.biIter.biSector + bioSectors(bio);
}

/** True when the bio carries data (kernel: `bio_has_data`). */
export function bioHasData(bio: Bio | null): boolean {
  if (bio === null || bio.biIter.biSize === 0) return false;
  const op = bioOp(bio);
  return op !== REQ_OP_DISCARD && op !== REQ_OP_WRITE_ZEROES;
}

/**
 * Allocates a bio with `nrVecs` bvec slots (kernel: `bio_alloc_bioset` from `fs_bio_set`),
 * counted as metadata kind `"bio"`: `BIO_STRUCT_SIZE` plus 16 bytes a slot. Throws for more than
 * BIO_MAX_VECS slots (the kernel's bvec pools stop there).
 */
export function bioAlloc(machine: Machine, nrVecs: number, opf: number): Bio {
  checkNrVecs(nrVecs);
  return chargeBio(new Bio(nrVecs, opf), machine, nrVecs);
}

/** Throws unless `nrVecs` is a slot count `bio_alloc` takes (0..BIO_MAX_VECS). */
function checkNrVecs(nrVecs: number): void {
  if (!(Number.isInteger(nrVecs) && nrVecs >= 0 && nrVecs <= BIO_MAX_VECS)) {
    throw new BlkError(`bio_alloc: ${nrVecs} vecs is not in 0..${BIO_MAX_VECS}`, {
      rule: 'bio_alloc: nr_vecs',
    });
  }
}

/** Counts a bio of `nrVecs` slots handed out from `machine` as metadata kind `"bio"`. */
function chargeBio(bio: Bio, machine: Machine, nrVecs: number): Bio {
  bio.metaBytes = BIO_STRUCT_SIZE + nrVecs * BIO_VEC_SIZE;
  bio.biPool = machine;
  machine.counters.kmalloc(BIO_META_KIND, bio.metaBytes);
  return bio;
}

/**
 * Takes back a bio its owner keeps for reuse, as `bioAlloc` hands out a new one (kernel:
 * `bio_alloc_bioset` taking the bio from its bio_set's mempool, then `bio_init`): every field as a
 * fresh bio's, `nrVecs` slots, counted in the ledger exactly like `bioAlloc`. The bvec table keeps
 * its `BioVec` objects for `bioAddPage` to refill (the bvec memory a mempool hands out again).
 * Throws for a bio that was not put since its last use (the owner's pool would hand out a live
 * bio) or for more than BIO_MAX_VECS slots.
 */
export function bioReuse(bio: Bio, machine: Machine, nrVecs: number, opf: number): Bio {
  if (bio.metaBytes !== 0) {
    throw new BlkError('bio_alloc: the pooled bio is still in use (not put since its last allocation)', {
      rule: 'bio_alloc: pooled bio in use',
    });
  }
  checkNrVecs(nrVecs);
  bio.biNext = null;
  bio.biOpf = opf;
  bio.biFlags = 0;
  bio.biStatus = BLK_STS_OK;
  const it = bio.biIter;
  it.biSector = 0;
  it.biSize = 0;
  it.biIdx = 0;
  it.biBvecDone = 0;
  bio.biVcnt = 0;
  bio.biMaxVecs = nrVecs;
  bio.biEndIo = null;
  bio.biPrivate = null;
  bio.biBvecGapBit = 0;
  bio.remaining = 1;
  return chargeBio(bio, machine, nrVecs);
}

/** Releases a bio from `bioAlloc` or `bioSplit` (kernel: `bio_put` dropping the last reference). */
export function bioPut(bio: Bio): void {
  if (bio.metaBytes > 0 && bio.biPool !== null) {
    bio.biPool.counters.kfree(BIO_META_KIND, bio.metaBytes);
    bio.metaBytes = 0;
  }
}

/**
 * Tries to grow the last bvec by a physically contiguous range (kernel: `bvec_try_merge_page`,
 * block/bio.c): the range must start where the bvec ends. (The kernel also wants the pages to be
 * adjacent `struct page`s of one memory section, which holds for contiguous RAM here.)
 */
function bvecTryMergePage(bv: BioVec, page: number, len: number, off: number): boolean {
  if (bv.page + bv.offset + bv.len !== page + off) return false;
  bv.len += len;
  return true;
}

/**
 * Adds `len` bytes at `offset` from `page` to the bio (kernel: `bio_add_page`, block/bio.c):
 * merged into the last bvec when physically contiguous with it, else a new bvec. Returns `len`,
 * or 0 when the bio is full or would exceed UINT_MAX bytes. `page` must be page-aligned; `len`
 * may run past the page (a multi-page bvec, as with `bio_add_folio`). Throws on a cloned bio
 * (kernel: WARN_ON_ONCE) or a misaligned page.
 */
export function bioAddPage(bio: Bio, page: number, len: number, offset: number): number {
  if ((bio.biFlags & BIO_CLONED) !== 0) {
    throw new BlkError('bio_add_page: a cloned bio shares its bvec table and cannot grow', {
      rule: 'bio_add_page: cloned bio',
    });
  }
  if (!(Number.isSafeInteger(page) && page > 0 && page % 4096 === 0)) {
    throw new BlkError(`bio_add_page: page ${page} is not a page-aligned physical address`, {
      rule: 'bio_add_page: page',
    });
  }
  if (!(Number.isInteger(len) && len > 0 && Number.isInteger(offset) && offset >= 0)) {
    throw new BlkError(`bio_add_page: bad length ${len} or offset ${offset}`, {
      rule: 'bio_add_page: len/offset',
    });
  }
  if (bio.biIter.biSize > UINT_MAX - len) return 0;
  if (bio.biVcnt > 0 && bvecTryMergePage(bio.biIoVec[bio.biVcnt - 1]!, page, len, offset)) {
    bio.biIter.biSize += len;
    return len;
  }
  if (bio.biVcnt >= bio.biMaxVecs) return 0;
  // a reused bio (`bioReuse`) refills the slots it had; a new one grows its table
  const slot = bio.biIoVec[bio.biVcnt];
  if (slot === undefined) {
    bio.biIoVec[bio.biVcnt] = new BioVec(page, len, offset);
  } else {
    slot.page = page;
    slot.len = len;
    slot.offset = offset;
  }
  bio.biVcnt++;
  bio.biIter.biSize += len;
  return len;
}

/**
 * Adds `len` bytes at `off` from the start of a folio at physical `folio` (kernel:
 * `bio_add_folio`): one (multi-page) bvec, or a merge into the last. Returns true on success.
 */
export function bioAddFolio(bio: Bio, folio: number, len: number, off: number): boolean {
  if (len > UINT_MAX || off > UINT_MAX) return false;
  return bioAddPage(bio, folio, len, off) > 0;
}

/**
 * Advances the bio by `bytes`: sector and bvec position (kernel: `bio_advance`). Throws when
 * `bytes` exceeds what is left (kernel: WARN).
 */
export function bioAdvance(bio: Bio, bytes: number): void {
  if (bytes === 0) return;
  const op = bioOp(bio);
  if (op === REQ_OP_DISCARD || op === REQ_OP_WRITE_ZEROES) {
    // no data pages to walk (kernel: bio_no_advance_iter)
    if (bytes > bio.biIter.biSize) {
      throw new BlkError(`bio_advance: ${bytes} bytes past the end of a bio of ${bio.biIter.biSize}`, {
        rule: 'bio_advance: beyond end',
      });
    }
    bio.biIter.biSize -= bytes;
    bio.biIter.biSector += Math.floor(bytes / SECTOR_SIZE);
    return;
  }
  if (!bvecIterAdvance(bio.biIoVec, bio.biIter, bytes)) {
    throw new BlkError(`bio_advance: ${bytes} bytes past the end of a bio of ${bio.biIter.biSize}`, {
      rule: 'bio_advance: beyond end',
    });
  }
  bio.biIter.biSector += Math.floor(bytes / SECTOR_SIZE);
}

/** The first (multi-page) bvec of the bio (kernel: `bio_get_first_bvec`, block/blk-merge.c). */
export function bioGetFirstBvec(bio: Bio, out?: BioVec): BioVec {
  return mpBvecIterBvec(bio.biIoVec, bio.biIter, out);
}

/** The last (multi-page) bvec of the bio, trimmed to the iterator (kernel: `bio_get_last_bvec`). */
export function bioGetLastBvec(bio: Bio, out?: BioVec): BioVec {
  const first = bioGetFirstBvec(bio, out);
  if (first.len === bio.biIter.biSize) return first;
  const iter = bio.biIter.clone();
  bvecIterAdvance(bio.biIoVec, iter, iter.biSize);
  const idx = iter.biBvecDone === 0 ? iter.biIdx - 1 : iter.biIdx;
  const bv = bio.biIoVec[idx]!;
  const res = out ?? new BioVec(0, 0, 0);
  res.page = bv.page;
  res.offset = bv.offset;
  res.len = iter.biBvecDone === 0 ? bv.len : iter.biBvecDone;
  return res;
}

/** Calls `fn` for each multi-page bvec the bio's iterator covers (kernel: `bio_for_each_bvec`). */
export function bioForEachBvec(bio: Bio, fn: (bv: BioVec) => void): void {
  const iter = bio.biIter.clone();
  const bv = new BioVec(0, 0, 0);
  while (iter.biSize > 0) {
    mpBvecIterBvec(bio.biIoVec, iter, bv);
    fn(bv);
    bvecIterAdvance(bio.biIoVec, iter, bv.len);
  }
}

/** Physical ranges of a bio as [phys, len] pairs, one per bvec (no kernel counterpart: for tests and traces). */
export function bioPhysRanges(bio: Bio): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  bioForEachBvec(bio, (bv) => out.push([bvecPhys(bv), bv.len]));
  return out;
}

/** Marks one more completion to wait for (kernel: `bio_inc_remaining`). */
export function bioIncRemaining(bio: Bio): void {
  bio.biFlags |= BIO_CHAIN;
  bio.remaining++;
}

/** The end_io of a chained bio: passes its error up, puts it, completes the parent (kernel: `bio_chain_endio`). */
function bioChainEndio(bio: Bio): void {
  const parent = bio.biPrivate as Bio;
  if (bio.biStatus !== BLK_STS_OK && parent.biStatus === BLK_STS_OK) parent.biStatus = bio.biStatus;
  bioPut(bio);
  bioEndio(parent);
}

/**
 * Makes `parent` complete only after `bio` has (kernel: `bio_chain`, block/bio.c): `bio`'s
 * completion passes its error up and then completes the parent. Throws if `bio` already has a
 * completion callback (kernel: BUG_ON).
 */
export function bioChain(bio: Bio, parent: Bio): void {
  if (bio.biEndIo !== null || bio.biPrivate !== null) {
    throw new BlkError('bio_chain: the bio already has an end_io or private data', {
      rule: 'bio_chain: bi_private',
    });
  }
  bio.biPrivate = parent;
  bio.biEndIo = bioChainEndio;
  bioIncRemaining(parent);
}

/** True when the last outstanding completion of the bio has arrived (kernel: `bio_remaining_done`). */
function bioRemainingDone(bio: Bio): boolean {
  if ((bio.biFlags & BIO_CHAIN) === 0) return true;
  if (bio.remaining <= 0) {
    throw new BlkError('bio_endio: the bio was completed more often than it was chained', {
      rule: 'bio_endio: remaining underflow',
    });
  }
  if (--bio.remaining === 0) {
    bio.biFlags &= ~BIO_CHAIN;
    return true;
  }
  return false;
}

/** Completes a bio (kernel: `bio_endio`, block/bio.c): waits for chained children, then calls `biEndIo`. */
export function bioEndio(bio: Bio): void {
  if (!bioRemainingDone(bio)) return;
  bio.biEndIo?.(bio);
}

/** Completes a bio with BLK_STS_IOERR (kernel: `bio_io_error`). */
export function bioIoError(bio: Bio): void {
  bio.biStatus = BLK_STS_IOERR;
  bioEndio(bio);
}

/**
 * Splits the first `sectors` off `bio` (kernel: `bio_split`, block/bio.c): returns a clone that
 * shares the bvec table with an iterator covering those sectors, and advances `bio` past them.
 * The caller chains the two. `machine` counts the clone (kind `"bio"`, no bvecs). Throws for a
 * split at 0 or at/after the end (kernel: WARN, -EINVAL) or of an atomic write.
 */
export function bioSplit(machine: Machine | undefined, bio: Bio, sectors: number): Bio {
  if (!(Number.isInteger(sectors) && sectors > 0 && sectors < bioSectors(bio))) {
    throw new BlkError(`bio_split: ${sectors} sectors is not inside a bio of ${bioSectors(bio)}`, {
      rule: 'bio_split: sectors',
    });
  }
  if ((bio.biOpf & REQ_ATOMIC) !== 0) {
    throw new BlkError('bio_split: atomic writes are never split', { rule: 'bio_split: atomic' });
  }
  const split = new Bio(bio.biMaxVecs, bio.biOpf, bio.biIoVec);
  split.biFlags = BIO_CLONED;
  split.biVcnt = bio.biVcnt;
  split.biIter.copyFrom(bio.biIter);
  split.biIter.biSize = sectors * SECTOR_SIZE;
  if (machine !== undefined) {
    split.metaBytes = BIO_STRUCT_SIZE;
    split.biPool = machine;
    machine.counters.kmalloc(BIO_META_KIND, split.metaBytes);
  }
  bioAdvance(bio, split.biIter.biSize);
  return split;
}
