import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { REQ_OP_DISCARD, REQ_OP_READ, REQ_OP_WRITE } from '../src/bio.js';
import {
  BIO_MERGE_OK,
  bioAttemptBackMerge,
  bioSplitRwAt,
  blkRecalcRqSegments,
  blkRqGetMaxSectors,
  bvecGapToPrev,
  getMaxSegmentSize,
  reqPhysGapMask,
  type SegCount,
} from '../src/blk-merge.js';
import { blkMqAllocRequest } from '../src/blk-mq.js';
import { blkValidateLimits, QueueLimits } from '../src/blk-settings.js';
import { BioVec } from '../src/bvec.js';
import { makeBio, makeRequest } from '../src/testing/index.js';
import { makeQueue } from './helpers.js';

function lim(init: Partial<QueueLimits> = {}): QueueLimits {
  const l = QueueLimits.of(init);
  blkValidateLimits(l);
  return l;
}

describe('get_max_segment_size', () => {
  it('is the smaller of the bytes left, the bytes to the next boundary, and the max segment size', () => {
    const l = lim({ segBoundaryMask: 0xffff, maxSegmentSize: 32768 });
    expect(getMaxSegmentSize(l, 0x10000, 0xffffffff)).toBe(32768);
    expect(getMaxSegmentSize(l, 0x1f000, 0xffffffff)).toBe(4096);
    expect(getMaxSegmentSize(l, 0x1f000, 1000)).toBe(1000);
    // above 4 GiB the boundary arithmetic still holds
    expect(getMaxSegmentSize(lim(), 2 ** 33 - 4096, 0xffffffff)).toBe(4096);
  });
});

describe('bvec_gap_to_prev', () => {
  it('flags a gap only against a virt boundary', () => {
    const nvme = lim({ virtBoundaryMask: 4095 });
    expect(bvecGapToPrev(nvme, new BioVec(0x1000, 4096, 0), 0)).toBe(false);
    expect(bvecGapToPrev(nvme, new BioVec(0x1000, 2048, 0), 0)).toBe(true);
    expect(bvecGapToPrev(nvme, new BioVec(0x1000, 4096, 0), 512)).toBe(true);
    expect(bvecGapToPrev(lim(), new BioVec(0x1000, 2048, 0), 512)).toBe(false);
  });
});

describe('bio_split_rw_at', () => {
  const segs = (): SegCount => ({ nsegs: 0, bytes: 0 });

  it('counts one segment per bvec (no cross-bvec merging) and fits', () => {
    const bio = makeBio(REQ_OP_READ, 0, [
      [0x100000, 4096, 0],
      [0x101000, 4096, 0],
    ]);
    const s = segs();
    expect(bioSplitRwAt(bio, lim(), s, 1 << 20)).toBe(0);
    expect(s.nsegs).toBe(2);
  });

  it('splits at max_segments', () => {
    const bvecs: Array<[number, number, number]> = [];
    for (let i = 0; i < 6; i++) bvecs.push([0x100000 + i * 0x2000, 4096, 0]);
    const s = segs();
    expect(bioSplitRwAt(makeBio(REQ_OP_READ, 0, bvecs), lim({ maxSegments: 4 }), s, 1 << 20)).toBe(32);
    expect(s.nsegs).toBe(4);
  });

  it('splits at the byte limit, rounded down to the logical block', () => {
    const bio = makeBio(REQ_OP_READ, 0, [[0x100000, 65536, 0]]);
    const s = segs();
    expect(bioSplitRwAt(bio, lim({ logicalBlockSize: 4096 }), s, 10000)).toBe(16);
  });

  it('carves a large bvec by the segment size and the boundary', () => {
    const s = segs();
    const bio = makeBio(REQ_OP_READ, 0, [[0x10000, 3 * 65536, 0]]);
    expect(bioSplitRwAt(bio, lim({ segBoundaryMask: 0xffff }), s, 1 << 22)).toBe(0);
    expect(s.nsegs).toBe(3);
  });

  it('splits before a bvec that leaves a virt-boundary gap', () => {
    const bio = makeBio(REQ_OP_READ, 0, [
      [0x100000, 4096, 0],
      [0x200000, 2048, 0],
      [0x300000, 4096, 0],
    ]);
    const s = segs();
    expect(bioSplitRwAt(bio, lim({ virtBoundaryMask: 4095 }), s, 1 << 20)).toBe(12);
    expect(s.nsegs).toBe(2);
  });

  it('rejects a bvec that breaks dma_alignment and records the gap bit', () => {
    const s = segs();
    expect(bioSplitRwAt(makeBio(REQ_OP_READ, 0, [[0x100000, 512, 3]]), lim(), s, 1 << 20)).toBe(-22);
    const bio = makeBio(REQ_OP_READ, 0, [
      [0x100000, 2048, 0],
      [0x200000, 4096, 0],
    ]);
    expect(bioSplitRwAt(bio, lim(), s, 1 << 20)).toBe(0);
    expect(bio.biBvecGapBit).toBe(12);
  });
});

describe('ll_back_merge_fn', () => {
  it('merges adjacent bios while the limits allow and refuses a virt-boundary gap', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m, { virtBoundaryMask: 4095, maxSegments: 3 });
    const rq = makeRequest(q, REQ_OP_WRITE, [makeBio(REQ_OP_WRITE, 0, [[0x100000, 4096, 0]])]);
    expect(bioAttemptBackMerge(rq, makeBio(REQ_OP_WRITE, 8, [[0x300000, 4096, 0]]), 1)).toBe(BIO_MERGE_OK);
    expect([rq.nrPhysSegments, rq.dataLen]).toEqual([2, 8192]);
    // a bio starting off the boundary would leave a gap
    expect(bioAttemptBackMerge(rq, makeBio(REQ_OP_WRITE, 16, [[0x500000, 512, 512]]), 1)).not.toBe(
      BIO_MERGE_OK,
    );
    expect(bioAttemptBackMerge(rq, makeBio(REQ_OP_WRITE, 16, [[0x500000, 4096, 0]]), 1)).toBe(BIO_MERGE_OK);
    // max_segments reached
    expect(bioAttemptBackMerge(rq, makeBio(REQ_OP_WRITE, 24, [[0x700000, 4096, 0]]), 1)).not.toBe(
      BIO_MERGE_OK,
    );
    expect(blkRecalcRqSegments(rq)).toBe(3);
    expect(reqPhysGapMask(rq) % 4096).toBe(0);
  });
});

describe('blk_rq_append_bio', () => {
  it('folds the seam between appended bios into the request gap bit, as a merge does', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m);
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [[0x100000, 2048, 0]]),
      makeBio(REQ_OP_WRITE, 4, [[0x300000, 4096, 0]]),
    ]);
    expect(rq.physGapBit).toBe(12);
    expect(reqPhysGapMask(rq) % 4096).not.toBe(0);
  });
});

describe('blk_rq_get_max_sectors', () => {
  it('caps a discard so its byte count fits 32 bits, whatever max_discard_sectors says', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m, { maxHwDiscardSectors: 0xffffffff });
    const rq = blkMqAllocRequest(q, REQ_OP_DISCARD)!;
    expect(blkRqGetMaxSectors(rq)).toBe(Math.floor(0xffffffff / 512));
  });
});
