/**
 * Bio vectors and their iterator, as in Linux `include/linux/bvec.h` (v6.17): a `BioVec` names
 * `len` bytes at `offset` from a page, and since multi-page bvecs (v5.1) it may run on across
 * physically contiguous pages of one folio, so `offset` may exceed a page. A `BvecIter` walks a
 * bvec table by bytes (`biIdx` the current vector, `biBvecDone` the bytes of it already used).
 * Representation: `page` is the page's physical address (0 = no page, like NULL); no
 * `struct page` exists. Differs on purpose: the single-page helpers (`bvec_iter_bvec`) are not
 * modelled — every walker here uses the multi-page view, as blk-merge.c and blk-mq-dma.c do.
 */
import { BlkError } from './errors.js';

/** One vector of a bio (kernel: `struct bio_vec`). */
export class BioVec {
  /** Physical address of the (first) page (kernel: `bv_page`). */
  page: number;
  /** Bytes (kernel: `bv_len`). */
  len: number;
  /** Offset of the first byte from `page`; may exceed a page for multi-page bvecs (kernel: `bv_offset`). */
  offset: number;

  constructor(page: number, len: number, offset: number) {
    this.page = page;
    this.len = len;
    this.offset = offset;
  }
}

/** Physical address of a bvec's first byte (kernel: `bvec_phys`). */
export function bvecPhys(bv: BioVec): number {
  return bv.page + bv.offset;
}

/** A position in a bvec table (kernel: `struct bvec_iter`). */
export class BvecIter {
  /** Device address in 512-byte sectors (kernel: `bi_sector`). */
  biSector = 0;
  /** Bytes left to walk (kernel: `bi_size`). */
  biSize = 0;
  /** Current index into the table (kernel: `bi_idx`). */
  biIdx = 0;
  /** Bytes of the current vector already walked (kernel: `bi_bvec_done`). */
  biBvecDone = 0;

  /** Copies `other` into this iterator (kernel: struct assignment). */
  copyFrom(other: BvecIter): this {
    this.biSector = other.biSector;
    this.biSize = other.biSize;
    this.biIdx = other.biIdx;
    this.biBvecDone = other.biBvecDone;
    return this;
  }

  /** A copy of this iterator. */
  clone(): BvecIter {
    return new BvecIter().copyFrom(this);
  }
}

/**
 * Physical address of the iterator's current byte (kernel: `bvec_phys(&mp_bvec_iter_bvec(..))`,
 * include/linux/bvec.h). Allocation-free half of `mpBvecIterBvec`.
 */
export function mpBvecIterPhys(bvecs: readonly BioVec[], iter: BvecIter): number {
  const bv = bvecs[iter.biIdx]!;
  return bv.page + bv.offset + iter.biBvecDone;
}

/**
 * Bytes left in the current multi-page vector, capped by the iterator's size (kernel:
 * `mp_bvec_iter_len`, include/linux/bvec.h).
 */
export function mpBvecIterLen(bvecs: readonly BioVec[], iter: BvecIter): number {
  const rest = bvecs[iter.biIdx]!.len - iter.biBvecDone;
  return Math.min(rest, iter.biSize);
}

/** In-page-relative offset of the current byte (kernel: `mp_bvec_iter_offset`, include/linux/bvec.h). */
export function mpBvecIterOffset(bvecs: readonly BioVec[], iter: BvecIter): number {
  return bvecs[iter.biIdx]!.offset + iter.biBvecDone;
}

/**
 * The multi-page vector at the iterator: same page, offset advanced by the bytes done, length
 * capped by what is left (kernel: `mp_bvec_iter_bvec`, include/linux/bvec.h). Writes into `out`
 * when given (no allocation), else returns a new `BioVec`.
 */
export function mpBvecIterBvec(bvecs: readonly BioVec[], iter: BvecIter, out?: BioVec): BioVec {
  const bv = bvecs[iter.biIdx];
  if (bv === undefined) {
    throw new BlkError(`mp_bvec_iter_bvec: index ${iter.biIdx} is past the table of ${bvecs.length}`, {
      rule: 'bvec_iter: index past table',
    });
  }
  const off = bv.offset + iter.biBvecDone;
  const left = bv.len - iter.biBvecDone;
  const len = Math.min(left, iter.biSize);
  if (out === undefined) return new BioVec(bv.page, len, off);
  out.page = bv.page;
  out.offset = off;
  out.len = len;
  return out;
}

/**
 * Advances within the current vector by `bytes`, moving to the next vector when it is used up
 * (kernel: `bvec_iter_advance_single`, include/linux/bvec.h). `bytes` must not exceed the current
 * vector's remainder (the caller's duty, as in the kernel). Does not touch `biSector`.
 */
export function bvecIterAdvanceSingle(bvecs: readonly BioVec[], iter: BvecIter, bytes: number): void {
  const done = iter.biBvecDone + bytes;
  if (done === bvecs[iter.biIdx]!.len) {
    iter.biBvecDone = 0;
    iter.biIdx++;
  } else {
    iter.biBvecDone = done;
  }
  iter.biSize -= bytes;
}

/**
 * Advances by `bytes` across vectors (kernel: `bvec_iter_advance`, include/linux/bvec.h). Returns
 * false, changing nothing, when `bytes` exceeds what is left (the kernel WARNs and clamps; we
 * refuse). Does not touch `biSector`.
 */
export function bvecIterAdvance(bvecs: readonly BioVec[], iter: BvecIter, bytes: number): boolean {
  if (bytes > iter.biSize) return false;
  iter.biSize -= bytes;
  let done = bytes + iter.biBvecDone;
  let idx = iter.biIdx;
  while (done > 0) {
    const len = bvecs[idx]!.len;
    if (done < len) break;
    done -= len;
    idx++;
  }
  iter.biIdx = idx;
  iter.biBvecDone = done;
  return true;
}
