/**
 * Mapping a request for DMA, two ways, as in Linux `block/blk-mq-dma.c` and
 * `include/linux/blk-mq-dma.h` (v6.17, with v6.19's per-request gap test and the Dec 2025 fix
 * of the link error path):
 * - legacy: `blkRqMapSg` walks the request's physical segments into a scatterlist the driver
 *   allocated, which the driver then maps with `dmaMapSgtable`;
 * - two-step: `blkRqDmaMapIterStart`/`Next` map without any scatterlist. When every interior gap
 *   of the request is aligned to the device's DMA merge boundary and `dmaIovaTryAlloc` gets IOVA
 *   space for the whole payload, every segment is linked into that one range and synced once, and
 *   the iterator yields a single DMA segment for the whole request; otherwise each segment is
 *   mapped on its own with `dmaMapPhys` and yielded in turn. `blkRqDmaUnmap` undoes the IOVA mode
 *   in one call and tells the driver when it must unmap direct segments itself.
 * Both walks share `blkMapIterNext`: a segment is a (multi-page) bvec clamped by the segment
 * size/boundary rules, extended by following bvecs (also across bios) while they are physically
 * contiguous and the result stays within the clamp.
 * Differs on purpose: no P2P DMA (no bus-address mode, no REQ_P2PDMA), no integrity iterators.
 * A link error destroys what was linked and fails the request, as the fixed kernel does (v6.17
 * to v6.19 lost the error in the following sync).
 */
import {
  type Device,
  type DmaIovaState,
  dmaGetMergeBoundary,
  dmaIovaDestroy,
  dmaIovaLink,
  dmaIovaSize,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaMapPhys,
  dmaMappingError,
  dmaNeedUnmap,
  dmaUseIova,
  type Scatterlist,
  sgMarkEnd,
  sgNext,
  sgSetPage,
  sgUnmarkEnd,
} from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import { type Bio, UINT_MAX } from './bio.js';
import { getMaxSegmentSize, physMergeable } from './blk-merge.js';
import { BLK_STS_OK, BLK_STS_RESOURCE, type BlkStatus, errnoToBlkStatus } from './blk-status.js';
import {
  blkRqNrPhysSegments,
  blkRqPayloadBytes,
  type Request,
  RQF_SPECIAL_PAYLOAD,
  rqDmaDir,
} from './blkdev.js';
import { type BioVec, BvecIter, bvecIterAdvanceSingle } from './bvec.js';
import { BlkError } from './errors.js';

/** One physical segment (kernel: `struct phys_vec`, block/blk-mq-dma.c). */
export class PhysVec {
  /** Physical address (kernel: `paddr`). */
  paddr = 0;
  /** Bytes (kernel: `len`). */
  len = 0;
}

/** Walk state over a request's data (kernel: `struct blk_map_iter`, include/linux/blk-mq-dma.h). */
export class BlkMapIter {
  /** Position in the current bvec table (kernel: `iter`). */
  readonly iter = new BvecIter();
  /** Current bio, null for a special payload or no data (kernel: `bio`). */
  bio: Bio | null = null;
  /** The bvec table being walked (kernel: `bvecs`). */
  bvecs: readonly BioVec[] = [];
}

/** The DMA iterator a driver keeps while mapping (kernel: `struct blk_dma_iter`, include/linux/blk-mq-dma.h). */
export class BlkDmaIter {
  /** Bus address of the current DMA segment (kernel: `addr`). */
  addr = 0;
  /** Bytes of the current DMA segment (kernel: `len`). */
  len = 0;
  /** Status, meaningful only after a call returned false (kernel: `status`). */
  status: BlkStatus = BLK_STS_OK;
  /** Internal walk state (kernel: `iter`). */
  readonly iter = new BlkMapIter();
  /** Scratch segment (the kernel's on-stack `struct phys_vec`). */
  readonly vec = new PhysVec();
}

/** Points a walk at a request's data (kernel: `blk_rq_map_iter_init`): special payload, bios, or nothing. */
export function blkRqMapIterInit(rq: Request, iter: BlkMapIter): void {
  const it = iter.iter;
  it.biIdx = 0;
  it.biBvecDone = 0;
  if ((rq.rqFlags & RQF_SPECIAL_PAYLOAD) !== 0 && rq.specialVec !== null) {
    iter.bio = null;
    iter.bvecs = [rq.specialVec];
    it.biSector = 0;
    it.biSize = rq.specialVec.len;
  } else if (rq.bio !== null) {
    iter.bio = rq.bio;
    iter.bvecs = rq.bio.biIoVec;
    it.copyFrom(rq.bio.biIter);
  } else {
    iter.bio = null;
    iter.bvecs = [];
    it.biSector = 0;
    it.biSize = 0;
  }
}

/** Moves to the next bio when the current one is used up (kernel: `__blk_map_iter_next`). */
function nextBio(iter: BlkMapIter): boolean {
  if (iter.iter.biSize > 0) return true;
  const bio = iter.bio;
  if (bio === null || bio.biNext === null) return false;
  iter.bio = bio.biNext;
  iter.bvecs = iter.bio.biIoVec;
  iter.iter.copyFrom(iter.bio.biIter);
  return true;
}

/**
 * The next physical segment of the request into `vec` (kernel: `blk_map_iter_next`,
 * block/blk-mq-dma.c): the current bvec clamped by `get_max_segment_size`, then — once a bvec is
 * used up — following bvecs absorbed while they fit within the clamp and are physically
 * mergeable. Returns false when the data is exhausted.
 */
export function blkMapIterNext(rq: Request, iter: BlkMapIter, vec: PhysVec): boolean {
  const it = iter.iter;
  if (it.biSize === 0) return false;
  const lim = rq.q.limits;
  const bvecs = iter.bvecs;
  let bv = bvecs[it.biIdx]!;
  const paddr = bv.page + bv.offset + it.biBvecDone;
  const maxSize = getMaxSegmentSize(lim, paddr, UINT_MAX);
  let len = bv.len - it.biBvecDone;
  if (len > it.biSize) len = it.biSize;
  if (len > maxSize) len = maxSize;
  bvecIterAdvanceSingle(bvecs, it, len);
  while (it.biSize === 0 || it.biBvecDone === 0) {
    if (!nextBio(iter)) break;
    bv = iter.bvecs[it.biIdx]!;
    const nextPhys = bv.page + bv.offset + it.biBvecDone;
    let nextLen = bv.len - it.biBvecDone;
    if (nextLen > it.biSize) nextLen = it.biSize;
    if (len + nextLen > maxSize || !physMergeable(lim, paddr, len, nextPhys, nextLen)) break;
    len += nextLen;
    bvecIterAdvanceSingle(iter.bvecs, it, nextLen);
  }
  vec.paddr = paddr;
  vec.len = len;
  return true;
}

/**
 * Walks a request into a scatterlist the caller prepared (kernel: `__blk_rq_map_sg`,
 * block/blk-mq-dma.c): one entry per physical segment, the last marked as the end. Returns the
 * number of entries, never more than `nr_phys_segments` (a `BlkError` if it were, the kernel's
 * WARN). `sglist` must hold that many entries (the driver sized it).
 */
export function blkRqMapSg(rq: Request, sglist: Scatterlist): number {
  const iter = new BlkMapIter();
  const vec = new PhysVec();
  blkRqMapIterInit(rq, iter);
  let sg: Scatterlist | null = null;
  let nsegs = 0;
  while (blkMapIterNext(rq, iter, vec)) {
    if (sg === null) sg = sglist;
    else {
      // the table may come from an earlier, shorter mapping: clear a stale end mark (kernel: blk_next_sg)
      sgUnmarkEnd(sg);
      const next: Scatterlist | null = sgNext(sg);
      if (next === null) {
        throw new BlkError(`blk_rq_map_sg: the scatterlist ended after ${nsegs} entries`, {
          rule: 'blk_rq_map_sg: scatterlist too short',
        });
      }
      sg = next;
    }
    const off = vec.paddr % PAGE_SIZE;
    sgSetPage(sg, vec.paddr - off, vec.len, off);
    nsegs++;
  }
  if (sg !== null) sgMarkEnd(sg);
  if (nsegs > blkRqNrPhysSegments(rq)) {
    throw new BlkError(
      `blk_rq_map_sg: ${nsegs} segments exceed nr_phys_segments ${blkRqNrPhysSegments(rq)}`,
      {
        rule: 'blk_rq_map_sg: nsegs > nr_phys_segments',
      },
    );
  }
  return nsegs;
}

/**
 * True when the request may be mapped as one IOVA range: no interior gap has a bit inside the
 * device's DMA merge boundary (kernel v6.19: `blk_can_dma_map_iova`, on `req_phys_gap_mask`).
 * A device without a merge boundary (dma-direct) always passes; `dmaIovaTryAlloc` then refuses.
 */
export function blkCanDmaMapIova(rq: Request, dmaDev: Device): boolean {
  if (rq.physGapBit === 0) return true;
  const granule = dmaGetMergeBoundary(dmaDev) + 1;
  return 2 ** (rq.physGapBit - 1) % granule === 0;
}

/** Maps one segment with the streaming API (kernel: `blk_dma_map_direct`). */
function blkDmaMapDirect(rq: Request, dmaDev: Device, iter: BlkDmaIter, vec: PhysVec): boolean {
  const addr = dmaMapPhys(dmaDev, vec.paddr, vec.len, rqDmaDir(rq), 0);
  if (dmaMappingError(dmaDev, addr)) {
    iter.status = BLK_STS_RESOURCE;
    return false;
  }
  iter.addr = addr;
  iter.len = vec.len;
  return true;
}

/**
 * Links every segment into the state's IOVA range and syncs once (kernel: `blk_rq_dma_map_iova`,
 * with the Dec 2025 fix): on a link or sync error, destroys what was linked and fails with the
 * errno's block status.
 */
function blkRqDmaMapIova(
  rq: Request,
  dmaDev: Device,
  state: DmaIovaState,
  iter: BlkDmaIter,
  vec: PhysVec,
): boolean {
  const dir = rqDmaDir(rq);
  let mapped = 0;
  let error = 0;
  iter.addr = state.addr;
  iter.len = dmaIovaSize(state);
  do {
    error = dmaIovaLink(dmaDev, state, vec.paddr, mapped, vec.len, dir, 0);
    if (error !== 0) break;
    mapped += vec.len;
  } while (blkMapIterNext(rq, iter.iter, vec));
  if (error === 0) error = dmaIovaSync(dmaDev, state, 0, mapped);
  if (error === 0) return true;
  dmaIovaDestroy(dmaDev, state, mapped, dir, 0);
  iter.status = errnoToBlkStatus(error);
  return false;
}

/**
 * Maps the first DMA segment of a request (kernel: `blk_rq_dma_map_iter_start`,
 * block/blk-mq-dma.c). `state` and `iter` need no setup; keep `state` until unmap. Returns true
 * with the segment in `iter.addr`/`iter.len`, or false with `iter.status` (BLK_STS_OK when the
 * request has no data). In IOVA mode (`blkRqDmaMapCoalesce(state)`) that segment is the whole
 * request; otherwise call `blkRqDmaMapIterNext` for the rest. Failures: BLK_STS_RESOURCE when a
 * direct mapping fails, the errno's status (BLK_STS_RESOURCE for -ENOMEM, BLK_STS_IOERR for
 * -EIO, …) when linking or syncing fails — with nothing left mapped by this call.
 */
export function blkRqDmaMapIterStart(
  rq: Request,
  dmaDev: Device,
  state: DmaIovaState,
  iter: BlkDmaIter,
): boolean {
  const vec = iter.vec;
  blkRqMapIterInit(rq, iter.iter);
  iter.status = BLK_STS_OK;
  if (!blkMapIterNext(rq, iter.iter, vec)) return false;
  if (blkCanDmaMapIova(rq, dmaDev) && dmaIovaTryAlloc(dmaDev, state, vec.paddr, blkRqPayloadBytes(rq))) {
    return blkRqDmaMapIova(rq, dmaDev, state, iter, vec);
  }
  state.addr = 0;
  state.size = 0;
  state.usedSwiotlb = false;
  return blkDmaMapDirect(rq, dmaDev, iter, vec);
}

/**
 * Maps the next DMA segment (kernel: `blk_rq_dma_map_iter_next`): false when there is none (always
 * in IOVA mode, where start consumed everything) or when mapping failed (`iter.status`).
 */
export function blkRqDmaMapIterNext(
  rq: Request,
  dmaDev: Device,
  _state: DmaIovaState,
  iter: BlkDmaIter,
): boolean {
  const vec = iter.vec;
  if (!blkMapIterNext(rq, iter.iter, vec)) return false;
  return blkDmaMapDirect(rq, dmaDev, iter, vec);
}

/** True when the first DMA segment was the whole request (kernel: `blk_rq_dma_map_coalesce`). */
export function blkRqDmaMapCoalesce(state: DmaIovaState): boolean {
  return dmaUseIova(state);
}

/**
 * Undoes a two-step mapping (kernel: `blk_rq_dma_unmap`, include/linux/blk-mq-dma.h): in IOVA
 * mode destroys `[0, mappedLen)` and the range, returning true. Otherwise returns
 * `!dmaNeedUnmap(dev)`: false means the driver must unmap each direct segment itself.
 */
export function blkRqDmaUnmap(rq: Request, dmaDev: Device, state: DmaIovaState, mappedLen: number): boolean {
  if (dmaUseIova(state)) {
    dmaIovaDestroy(dmaDev, state, mappedLen, rqDmaDir(rq), 0);
    return true;
  }
  return !dmaNeedUnmap(dmaDev);
}
