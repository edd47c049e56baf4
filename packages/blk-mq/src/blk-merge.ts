/**
 * Segment counting, bio splitting and bio merging under the queue limits, as in Linux
 * `block/blk-merge.c` and the inline helpers of `block/blk.h` (v6.17; the gap bit that decides
 * IOVA coalescing is v6.19's). A bio is cut where it would exceed `max_sectors`, `max_segments`,
 * or the segment size/boundary rules, or leave a gap against the virt boundary; the cut is
 * rounded down to the logical block size. Segment counts never merge across bvecs (physical
 * merging happens only when mapping), so `nr_phys_segments` is an upper bound. Bios merge into a
 * request back or front when the sectors are adjacent and the merged request keeps the limits.
 * Differs on purpose: no zoned, atomic-write, integrity or crypto rules; no elevator hash merging
 * (only the plug's last request, as `blk_attempt_plug_merge` does).
 */
import { Errno } from '@iovalink/iommu';
import {
  type Bio,
  bioGetFirstBvec,
  bioGetLastBvec,
  bioHasData,
  bioOp,
  bioSectors,
  REQ_ATOMIC,
  REQ_NOMERGE_FLAGS,
  REQ_NOWAIT,
  REQ_OP_DISCARD,
  REQ_OP_FLUSH,
  REQ_OP_MASK,
  REQ_OP_READ,
  REQ_OP_WRITE,
  REQ_OP_WRITE_ZEROES,
  SECTOR_SIZE,
  UINT_MAX,
} from './bio.js';
import { boundaryLeft, type QueueLimits } from './blk-settings.js';
import { blkRqPos, blkRqSectors, type Request, RQF_SPECIAL_PAYLOAD, reqOp } from './blkdev.js';
import { BioVec, bvecIterAdvance, bvecPhys, mpBvecIterBvec } from './bvec.js';

/** Anything with queue limits: a `RequestQueue`, or `{ limits }` in tests. */
export interface HasLimits {
  readonly limits: QueueLimits;
}

/**
 * Bytes of `[paddr, paddr + len)` that fit in one segment: capped by the bytes to the next
 * segment boundary and by the maximum segment size (kernel: `get_max_segment_size`,
 * block/blk-merge.c).
 */
export function getMaxSegmentSize(lim: QueueLimits, paddr: number, len: number): number {
  const toBoundary = boundaryLeft(paddr, lim.segBoundaryMask);
  const cap = Math.min(toBoundary, lim.maxSegmentSize);
  return Math.min(len, cap);
}

/**
 * True when two physical ranges can form one segment: the second starts where the first ends
 * and both lie in one segment-boundary window (kernel: `biovec_phys_mergeable`, block/blk.h, on
 * physical addresses). No Xen or P2P pagemap rules.
 */
export function physMergeable(
  lim: QueueLimits,
  addr1: number,
  len1: number,
  addr2: number,
  len2: number,
): boolean {
  if (addr1 + len1 !== addr2) return false;
  const win = lim.segBoundaryMask + 1;
  return Math.floor(addr1 / win) === Math.floor((addr2 + len2 - 1) / win);
}

/** `physMergeable` on two bvecs (kernel: `biovec_phys_mergeable`, block/blk.h). */
export function biovecPhysMergeable(q: HasLimits, vec1: BioVec, vec2: BioVec): boolean {
  return physMergeable(q.limits, bvecPhys(vec1), vec1.len, bvecPhys(vec2), vec2.len);
}

/**
 * True when a vector starting at `offset` after `bprv` leaves a gap the virt boundary forbids:
 * the previous one does not end, or this one does not start, on the boundary (kernel:
 * `__bvec_gap_to_prev`, block/blk.h).
 */
export function __bvecGapToPrev(lim: QueueLimits, bprv: BioVec, offset: number): boolean {
  const m = lim.virtBoundaryMask + 1;
  return offset % m !== 0 || (bprv.offset + bprv.len) % m !== 0;
}

/** `__bvecGapToPrev` when the queue has a virt boundary, else false (kernel: `bvec_gap_to_prev`). */
export function bvecGapToPrev(lim: QueueLimits, bprv: BioVec, offset: number): boolean {
  if (lim.virtBoundaryMask === 0) return false;
  return __bvecGapToPrev(lim, bprv, offset);
}

/** Running totals of a split walk (the kernel's `*nsegs` / `*bytes` in/out parameters). */
export interface SegCount {
  nsegs: number;
  bytes: number;
}

/**
 * Carves one bvec into segments of `getMaxSegmentSize` each while `maxSegs` and `maxBytes` allow,
 * stopping early after a piece whose end is off the virt boundary (kernel: `bvec_split_segs`,
 * block/blk-merge.c). Updates `acc`; returns true when the bvec did not fit whole.
 */
export function bvecSplitSegs(
  lim: QueueLimits,
  bv: BioVec,
  acc: SegCount,
  maxSegs: number,
  maxBytes: number,
): boolean {
  const maxLen = maxBytes - acc.bytes;
  let len = Math.min(bv.len, maxLen);
  let totalLen = 0;
  const phys = bvecPhys(bv);
  while (len > 0 && acc.nsegs < maxSegs) {
    const segSize = getMaxSegmentSize(lim, phys + totalLen, len);
    acc.nsegs++;
    totalLen += segSize;
    len -= segSize;
    if (lim.virtBoundaryMask !== 0 && (bv.offset + totalLen) % (lim.virtBoundaryMask + 1) !== 0) break;
  }
  acc.bytes += totalLen;
  return len > 0 || bv.len > maxLen;
}

/** Lowest set bit of `x` plus one, 0 for 0 (kernel: `ffs`). Works above 2^31. */
export function ffs(x: number): number {
  if (x === 0) return 0;
  let n = 1;
  let v = x;
  while (v % 2 === 0) {
    v /= 2;
    n++;
  }
  return n;
}

/** The smaller non-zero of two gap bits (kernel: `min_not_zero`). */
function minNotZero(a: number, b: number): number {
  if (a === 0) return b;
  if (b === 0) return a;
  return Math.min(a, b);
}

/** Address bits of the gap between `bvprv` and `bv`: end offset of one | start offset of the other (kernel v6.19: `bvec_seg_gap`). */
export function bvecSegGap(bvprv: BioVec, bv: BioVec): number {
  return orOffsets(bvprv.offset + bvprv.len, bv.offset);
}

/** `a | b` for non-negative safe integers, arithmetic above 2^31 (no kernel counterpart: C's `|` on u64). */
export function orOffsets(a: number, b: number): number {
  if (a < 0x8000_0000 && b < 0x8000_0000) return a | b;
  let out = 0;
  let bit = 1;
  let x = a;
  let y = b;
  while (x > 0 || y > 0) {
    if (x % 2 === 1 || y % 2 === 1) out += bit;
    x = Math.floor(x / 2);
    y = Math.floor(y / 2);
    bit *= 2;
  }
  return out;
}

/**
 * Finds whether and where a read/write bio must be split (kernel: `bio_split_rw_at`,
 * block/blk-merge.c, with v6.19's alignment check and gap bit). Walks the bio's multi-page bvecs:
 * a bvec whose start is not `dma_alignment`-aligned makes the bio invalid (-EINVAL); a gap
 * against the virt boundary, `max_segments`, or `maxBytes` ends the first part. Returns 0 when
 * the bio fits (and sets `segs.nsegs` and the bio's `biBvecGapBit`), a positive sector count to
 * split at (rounded down to the logical block), or -EINVAL (no valid split, or atomic) /
 * -EAGAIN (REQ_NOWAIT).
 */
export function bioSplitRwAt(bio: Bio, lim: QueueLimits, segs: SegCount, maxBytes: number): number {
  const acc: SegCount = { nsegs: 0, bytes: 0 };
  const iter = bio.biIter.clone();
  const bv = new BioVec(0, 0, 0);
  const bvprv = new BioVec(0, 0, 0);
  let havePrev = false;
  let gaps = 0;
  let split = false;
  while (iter.biSize > 0) {
    mpBvecIterBvec(bio.biIoVec, iter, bv);
    if (bv.offset % (lim.dmaAlignment + 1) !== 0) return -Errno.EINVAL;
    if (havePrev) {
      if (bvecGapToPrev(lim, bvprv, bv.offset)) {
        split = true;
        break;
      }
      gaps = orOffsets(gaps, bvecSegGap(bvprv, bv));
    }
    if (
      acc.nsegs < lim.maxSegments &&
      acc.bytes + bv.len <= maxBytes &&
      bv.offset + bv.len <= lim.minSegmentSize
    ) {
      acc.nsegs++;
      acc.bytes += bv.len;
    } else if (bvecSplitSegs(lim, bv, acc, lim.maxSegments, maxBytes)) {
      split = true;
      break;
    }
    bvprv.page = bv.page;
    bvprv.offset = bv.offset;
    bvprv.len = bv.len;
    havePrev = true;
    bvecIterAdvance(bio.biIoVec, iter, bv.len);
  }
  if (!split) {
    segs.nsegs = acc.nsegs;
    bio.biBvecGapBit = ffs(gaps);
    return 0;
  }
  if ((bio.biOpf & REQ_ATOMIC) !== 0) return -Errno.EINVAL;
  if ((bio.biOpf & REQ_NOWAIT) !== 0) return -Errno.EAGAIN;
  segs.nsegs = acc.nsegs;
  const bytes = acc.bytes - (acc.bytes % lim.logicalBlockSize);
  if (bytes === 0) return -Errno.EINVAL;
  return bytes / SECTOR_SIZE;
}

/**
 * Most sectors from the bio's start one request may take: `max_sectors` (or the discard /
 * write-zeroes limit), ending on a physical block when enough remain (kernel: `get_max_io_size`).
 */
export function getMaxIoSize(bio: Bio, lim: QueueLimits): number {
  const pbs = lim.physicalBlockSize / SECTOR_SIZE;
  const lbs = lim.logicalBlockSize / SECTOR_SIZE;
  const op = bioOp(bio);
  const maxSectors = op === REQ_OP_WRITE_ZEROES ? lim.maxWriteZeroesSectors : lim.maxSectors;
  const start = bio.biIter.biSector % pbs;
  const end = start + maxSectors - ((start + maxSectors) % pbs);
  if (end > start) return end - start;
  return maxSectors - (maxSectors % lbs);
}

/**
 * Quick test whether a read/write bio might need the full split walk (kernel:
 * `bio_may_need_split`, block/blk.h): more than one bvec, or one larger than the fast-path
 * segment size.
 */
export function bioMayNeedSplit(bio: Bio, lim: QueueLimits): boolean {
  const bv = bio.biIoVec[bio.biIter.biIdx];
  if (bv === undefined) return true;
  if (bio.biIter.biSize > bv.len - bio.biIter.biBvecDone) return true;
  return bv.len + bv.offset > lim.minSegmentSize || bv.offset % (lim.dmaAlignment + 1) !== 0;
}

/**
 * Where to split a bio for the queue limits (kernel: the decision half of `__bio_split_to_limits`,
 * block/blk.h): reads and writes by `bioSplitRwAt` with `getMaxIoSize`, discards by the discard
 * limits (one segment), flushes and other data-less operations never. Returns 0 (no split, with
 * `segs.nsegs` set), sectors to split at, or -errno.
 */
export function bioSplitToLimitsAt(bio: Bio, lim: QueueLimits, segs: SegCount): number {
  switch (bioOp(bio)) {
    case REQ_OP_READ:
    case REQ_OP_WRITE:
      if (!bioMayNeedSplit(bio, lim)) {
        segs.nsegs = 1;
        return 0;
      }
      return bioSplitRwAt(bio, lim, segs, getMaxIoSize(bio, lim) * SECTOR_SIZE);
    case REQ_OP_DISCARD:
      return bioSplitDiscardAt(bio, lim, segs);
    case REQ_OP_WRITE_ZEROES: {
      segs.nsegs = 0;
      const max = getMaxIoSize(bio, lim);
      return max === 0 || bioSectors(bio) <= max ? 0 : max;
    }
    default:
      segs.nsegs = 0;
      return 0;
  }
}

/**
 * Where to split a discard (kernel: `bio_split_discard`): at the discard limit, pulled back to a
 * granularity line. One segment. Returns 0 when it fits or discard is unsupported (the driver
 * then rejects it).
 */
export function bioSplitDiscardAt(bio: Bio, lim: QueueLimits, segs: SegCount): number {
  segs.nsegs = 1;
  const granularity = Math.max(Math.floor(lim.discardGranularity / SECTOR_SIZE), 1);
  const allowed = Math.floor((UINT_MAX - (UINT_MAX % lim.logicalBlockSize)) / SECTOR_SIZE);
  let max = Math.min(lim.maxDiscardSectors, allowed);
  max -= max % granularity;
  if (max === 0 || bioSectors(bio) <= max) return 0;
  let split = max;
  const tmp = (bio.biIter.biSector + split) % granularity;
  if (split > tmp) split -= tmp;
  return split;
}

/**
 * Recounts a request's physical segments with no limits (kernel: `blk_recalc_rq_segments`):
 * 1 for a discard, 0 for write-zeroes, else every bvec carved by `bvecSplitSegs`.
 */
export function blkRecalcRqSegments(rq: Request): number {
  if (rq.bio === null) return 0;
  const op = bioOp(rq.bio);
  if (op === REQ_OP_DISCARD) return 1;
  if (op === REQ_OP_WRITE_ZEROES) return 0;
  const acc: SegCount = { nsegs: 0, bytes: 0 };
  const bv = new BioVec(0, 0, 0);
  for (let b: Bio | null = rq.bio; b !== null; b = b.biNext) {
    const iter = b.biIter.clone();
    while (iter.biSize > 0) {
      mpBvecIterBvec(b.biIoVec, iter, bv);
      bvecSplitSegs(rq.q.limits, bv, acc, UINT_MAX, UINT_MAX);
      bvecIterAdvance(b.biIoVec, iter, bv.len);
    }
  }
  return acc.nsegs;
}

/**
 * True when appending `next` after `prev` would leave a gap the virt boundary forbids (kernel:
 * `bio_will_gap`): the request's first bvec must start on the boundary, and the seam must be
 * physically mergeable or aligned on both sides.
 */
export function bioWillGap(q: HasLimits, prevRq: Request | null, prev: Bio, next: Bio): boolean {
  const lim = q.limits;
  if (!bioHasData(prev) || lim.virtBoundaryMask === 0) return false;
  const first = bioGetFirstBvec(prevRq !== null && prevRq.bio !== null ? prevRq.bio : prev);
  if (first.offset % (lim.virtBoundaryMask + 1) !== 0) return true;
  const pb = bioGetLastBvec(prev);
  const nb = bioGetFirstBvec(next);
  if (biovecPhysMergeable(q, pb, nb)) return false;
  return __bvecGapToPrev(lim, pb, nb.offset);
}

/**
 * Most sectors a request may grow to (kernel: `blk_rq_get_max_sectors` → `blk_queue_get_max_sectors`,
 * no chunk boundaries): a discard's byte count must still fit the request's 32-bit `__data_len`.
 */
export function blkRqGetMaxSectors(rq: Request): number {
  const lim = rq.q.limits;
  const op = reqOp(rq);
  if (op === REQ_OP_DISCARD) return Math.min(lim.maxDiscardSectors, Math.floor(UINT_MAX / SECTOR_SIZE));
  if (op === REQ_OP_WRITE_ZEROES) return lim.maxWriteZeroesSectors;
  return lim.maxSectors;
}

/** Most segments a request may have (kernel: `blk_rq_get_max_segments`). */
export function blkRqGetMaxSegments(rq: Request): number {
  return reqOp(rq) === REQ_OP_DISCARD ? rq.q.limits.maxDiscardSegments : rq.q.limits.maxSegments;
}

/** Adds a bio's segments to a request if `max_segments` allows (kernel: `ll_new_hw_segment`). */
function llNewHwSegment(req: Request, nrPhysSegs: number): boolean {
  if (reqOp(req) === REQ_OP_DISCARD) return true;
  if (req.nrPhysSegments + nrPhysSegs > blkRqGetMaxSegments(req)) return false;
  req.nrPhysSegments += nrPhysSegs;
  return true;
}

/**
 * Checks (and on success accounts) a back merge of `bio` into `req` (kernel: `ll_back_merge_fn`):
 * no virt-boundary gap, sectors and segments within the limits. Returns true to merge.
 */
export function llBackMergeFn(req: Request, bio: Bio, nrSegs: number): boolean {
  if (req.biotail !== null && bioWillGap(req.q, req, req.biotail, bio)) return false;
  if (blkRqSectors(req) + bioSectors(bio) > blkRqGetMaxSectors(req)) return false;
  return llNewHwSegment(req, nrSegs);
}

/** Checks (and accounts) a front merge of `bio` before `req` (kernel: `ll_front_merge_fn`). */
export function llFrontMergeFn(req: Request, bio: Bio, nrSegs: number): boolean {
  if (req.bio !== null && bioWillGap(req.q, null, bio, req.bio)) return false;
  if (blkRqSectors(req) + bioSectors(bio) > blkRqGetMaxSectors(req)) return false;
  return llNewHwSegment(req, nrSegs);
}

/** True when the request may take more bios (kernel: `rq_mergeable`). */
export function rqMergeable(rq: Request): boolean {
  const op = reqOp(rq);
  if (rq.endIo !== null) return false;
  if (op === REQ_OP_FLUSH || op === REQ_OP_WRITE_ZEROES) return false;
  if ((rq.cmdFlags & REQ_NOMERGE_FLAGS) !== 0) return false;
  return (rq.rqFlags & RQF_SPECIAL_PAYLOAD) === 0;
}

/** True when a bio may be merged (kernel: `bio_mergeable`). */
export function bioMergeable(bio: Bio): boolean {
  return (bio.biOpf & REQ_NOMERGE_FLAGS) === 0;
}

/** True when `bio` is compatible with `rq` for merging at all (kernel: `blk_rq_merge_ok`). */
export function blkRqMergeOk(rq: Request, bio: Bio): boolean {
  if (!rqMergeable(rq) || !bioMergeable(bio)) return false;
  return reqOp(rq) === (bio.biOpf & REQ_OP_MASK);
}

/** No merge (kernel: `ELEVATOR_NO_MERGE`). */
export const ELEVATOR_NO_MERGE = 0;
/** `bio` goes before the request (kernel: `ELEVATOR_FRONT_MERGE`). */
export const ELEVATOR_FRONT_MERGE = 1;
/** `bio` goes after the request (kernel: `ELEVATOR_BACK_MERGE`). */
export const ELEVATOR_BACK_MERGE = 2;

/** Which side `bio` adjoins (kernel: `blk_try_merge`; discard multi-range merging not modelled). */
export function blkTryMerge(rq: Request, bio: Bio): number {
  if (blkRqPos(rq) + blkRqSectors(rq) === bio.biIter.biSector) return ELEVATOR_BACK_MERGE;
  if (blkRqPos(rq) - bioSectors(bio) === bio.biIter.biSector) return ELEVATOR_FRONT_MERGE;
  return ELEVATOR_NO_MERGE;
}

/**
 * The gap bit of a request after joining `prev` and `next` (kernel v6.19: `bio_seg_gap`):
 * the smallest non-zero gap bit of both bios and, unless the seam is physically mergeable, of
 * the seam itself.
 */
export function bioSegGap(q: HasLimits, prev: Bio, next: Bio, gapBit: number): number {
  let g = minNotZero(gapBit, prev.biBvecGapBit);
  g = minNotZero(g, next.biBvecGapBit);
  if (!bioHasData(prev) || !bioHasData(next)) return g;
  const pb = bioGetLastBvec(prev);
  const nb = bioGetFirstBvec(next);
  if (!biovecPhysMergeable(q, pb, nb)) g = minNotZero(g, ffs(bvecSegGap(pb, nb)));
  return g;
}

/**
 * The request's gap mask: every bit from its lowest gap bit up, 0 when it has no gap (kernel
 * v6.19: `req_phys_gap_mask`). A mask that shares no bit with the DMA merge boundary means every
 * interior gap is granule-aligned.
 */
export function reqPhysGapMask(rq: Request): number {
  if (rq.physGapBit === 0) return 0;
  return 2 ** 52 - 2 ** (rq.physGapBit - 1);
}

/** Outcome of a merge attempt (kernel: `enum bio_merge_status`). */
export const BIO_MERGE_OK = 0;
/** Not mergeable here. */
export const BIO_MERGE_NONE = 1;
/** Adjacent but the limits refused. */
export const BIO_MERGE_FAILED = 2;

/** Appends `bio` to `req` (kernel: `bio_attempt_back_merge`). */
export function bioAttemptBackMerge(req: Request, bio: Bio, nrSegs: number): number {
  if (!llBackMergeFn(req, bio, nrSegs)) return BIO_MERGE_FAILED;
  req.physGapBit = bioSegGap(req.q, req.biotail!, bio, req.physGapBit);
  req.biotail!.biNext = bio;
  req.biotail = bio;
  req.dataLen += bio.biIter.biSize;
  return BIO_MERGE_OK;
}

/** Prepends `bio` to `req` (kernel: `bio_attempt_front_merge`). */
export function bioAttemptFrontMerge(req: Request, bio: Bio, nrSegs: number): number {
  if (!llFrontMergeFn(req, bio, nrSegs)) return BIO_MERGE_FAILED;
  req.physGapBit = bioSegGap(req.q, bio, req.bio!, req.physGapBit);
  bio.biNext = req.bio;
  req.bio = bio;
  req.sector = bio.biIter.biSector;
  req.dataLen += bio.biIter.biSize;
  return BIO_MERGE_OK;
}

/** Tries to merge `bio` into `rq` (kernel: `blk_attempt_bio_merge`). */
export function blkAttemptBioMerge(rq: Request, bio: Bio, nrSegs: number): number {
  if (!blkRqMergeOk(rq, bio)) return BIO_MERGE_NONE;
  switch (blkTryMerge(rq, bio)) {
    case ELEVATOR_BACK_MERGE:
      return bioAttemptBackMerge(rq, bio, nrSegs);
    case ELEVATOR_FRONT_MERGE:
      return bioAttemptFrontMerge(rq, bio, nrSegs);
    default:
      return BIO_MERGE_NONE;
  }
}
