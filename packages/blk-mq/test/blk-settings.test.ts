import { describe, expect, it } from 'vitest';
import { blkValidateLimits, QueueLimits } from '../src/blk-settings.js';
import { BlkError } from '../src/errors.js';

describe('blk_validate_limits', () => {
  it('fills in the kernel defaults (§5.1)', () => {
    const lim = new QueueLimits();
    expect(blkValidateLimits(lim)).toBe(0);
    expect(lim).toMatchObject({
      logicalBlockSize: 512,
      physicalBlockSize: 512,
      maxHwSectors: 255,
      maxSectors: 255,
      maxSegments: 128,
      maxSegmentSize: 65536,
      segBoundaryMask: 0xffffffff,
      virtBoundaryMask: 0,
      dmaAlignment: 511,
      minSegmentSize: 4096,
    });
  });

  it('gives UINT_MAX segments with a virt boundary and caps max_sectors at 2560', () => {
    const lim = QueueLimits.of({ virtBoundaryMask: 4095, maxHwSectors: 16384 });
    expect(blkValidateLimits(lim)).toBe(0);
    expect(lim.maxSegmentSize).toBe(0xffffffff);
    expect(lim.maxSectors).toBe(2560);
    const user = QueueLimits.of({ maxHwSectors: 16384, maxUserSectors: 8192 });
    blkValidateLimits(user);
    expect(user.maxSectors).toBe(8192);
  });

  it('rounds the sector limits down to the logical block and derives the fast-path segment size', () => {
    const lim = QueueLimits.of({
      logicalBlockSize: 4096,
      maxHwSectors: 1001,
      maxSegmentSize: 8192,
      segBoundaryMask: 4095,
    });
    expect(blkValidateLimits(lim)).toBe(0);
    expect(lim.maxHwSectors).toBe(1000);
    expect(lim.minSegmentSize).toBe(4096);
  });

  it('returns -EINVAL for a bad block size and throws where the kernel WARNs', () => {
    expect(blkValidateLimits(QueueLimits.of({ logicalBlockSize: 1000 }))).toBe(-22);
    expect(() => blkValidateLimits(QueueLimits.of({ maxHwSectors: 4 }))).toThrow(BlkError);
    expect(() => blkValidateLimits(QueueLimits.of({ segBoundaryMask: 1023 }))).toThrow(/seg_boundary_mask/);
    expect(() => blkValidateLimits(QueueLimits.of({ maxSegmentSize: 2048 }))).toThrow(/max_segment_size/);
  });
});
