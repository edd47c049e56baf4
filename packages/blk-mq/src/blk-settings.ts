/**
 * Queue limits: what a driver tells the block layer about the sizes, segment counts and address
 * rules its hardware accepts, validated and defaulted as in Linux `block/blk-settings.c`
 * (`blk_validate_limits`, v6.17) with the constants of `include/linux/blkdev.h`.
 * Differs on purpose: only the limits that shape DMA and splitting are modelled (no zoned,
 * atomic-write or integrity limits); where the kernel WARNs and returns -EINVAL we throw a
 * `BlkError` carrying -EINVAL, and where it only returns -EINVAL we return it.
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { alignDown, isPowerOf2 } from '@iovalink/iommu/internal';
import { SECTOR_SIZE, UINT_MAX } from './bio.js';
import { BlkError } from './errors.js';

/** Default maximum segments a request may have (kernel: `BLK_MAX_SEGMENTS`). */
export const BLK_MAX_SEGMENTS = 128;
/** Default maximum segment size in bytes without a virt boundary (kernel: `BLK_MAX_SEGMENT_SIZE`). */
export const BLK_MAX_SEGMENT_SIZE = 65536;
/** Default segment boundary: segments may not cross a 4 GiB line (kernel: `BLK_SEG_BOUNDARY_MASK`). */
export const BLK_SEG_BOUNDARY_MASK = 0xffff_ffff;
/** Smallest segment size and boundary a driver may ask for (kernel: `BLK_MIN_SEGMENT_SIZE`). */
export const BLK_MIN_SEGMENT_SIZE = 4096;
/** `max_hw_sectors` when the driver sets none (kernel: `BLK_SAFE_MAX_SECTORS`). */
export const BLK_SAFE_MAX_SECTORS = 255;
/** Default cap of the soft `max_sectors` (kernel: `BLK_DEF_MAX_SECTORS_CAP`, 1280 KiB). */
export const BLK_DEF_MAX_SECTORS_CAP = 2560;
/** Largest logical block size (kernel: `BLK_MAX_BLOCK_SIZE`, 64 KiB with large folios). */
export const BLK_MAX_BLOCK_SIZE = 65536;
/** Sectors in a CPU page (kernel: `PAGE_SECTORS`). */
export const PAGE_SECTORS = PAGE_SIZE / SECTOR_SIZE;

/**
 * A queue's limits (kernel: `struct queue_limits`, include/linux/blkdev.h). Zero means "unset":
 * `blkValidateLimits` fills in the kernel's defaults.
 */
export class QueueLimits {
  /** Smallest addressable unit in bytes (kernel: `logical_block_size`). */
  logicalBlockSize = 0;
  /** Physical block size in bytes (kernel: `physical_block_size`). */
  physicalBlockSize = 0;
  /** Smallest preferred I/O in bytes (kernel: `io_min`). */
  ioMin = 0;
  /** Optimal I/O in bytes (kernel: `io_opt`). */
  ioOpt = 0;
  /** Largest request the hardware takes, in sectors (kernel: `max_hw_sectors`). */
  maxHwSectors = 0;
  /** User cap from sysfs `max_sectors_kb`, in sectors (kernel: `max_user_sectors`). */
  maxUserSectors = 0;
  /** Largest request the block layer builds, in sectors; derived (kernel: `max_sectors`). */
  maxSectors = 0;
  /** Most segments a request may have (kernel: `max_segments`). */
  maxSegments = 0;
  /** Largest segment in bytes (kernel: `max_segment_size`). */
  maxSegmentSize = 0;
  /** A segment may not cross a `(mask + 1)`-aligned line (kernel: `seg_boundary_mask`). */
  segBoundaryMask = 0;
  /**
   * Gaps between segments must be aligned to `mask + 1`: every segment but the first starts,
   * and every one but the last ends, on it (kernel: `virt_boundary_mask`; NVMe PRPs need 4 KiB).
   */
  virtBoundaryMask = 0;
  /** Buffer start alignment mask for direct I/O (kernel: `dma_alignment`). */
  dmaAlignment = 0;
  /** Fast-path single-segment size; derived (kernel: `min_segment_size`, v6.19 `max_fast_segment_size`). */
  minSegmentSize = 0;
  /** Largest discard the hardware takes, in sectors (kernel: `max_hw_discard_sectors`). */
  maxHwDiscardSectors = 0;
  /** Largest discard the block layer builds; derived (kernel: `max_discard_sectors`). */
  maxDiscardSectors = 0;
  /** Discard ranges per request (kernel: `max_discard_segments`). */
  maxDiscardSegments = 0;
  /** Discard granularity in bytes; derived (kernel: `discard_granularity`). */
  discardGranularity = 0;
  /** Largest write-zeroes in sectors (kernel: `max_write_zeroes_sectors`). */
  maxWriteZeroesSectors = 0;

  /** A limits object with `init` applied (fields not given stay unset). */
  static of(init: Partial<QueueLimits> = {}): QueueLimits {
    return Object.assign(new QueueLimits(), init);
  }
}

/** True for a valid logical block size (kernel: `blk_validate_block_size`). */
export function blkValidateBlockSize(bsize: number): boolean {
  return bsize >= SECTOR_SIZE && bsize <= BLK_MAX_BLOCK_SIZE && isPowerOf2(bsize);
}

function warn(what: string, rule: string): never {
  throw new BlkError(`blk_validate_limits: ${what}`, {
    rule: `blk_validate_limits: ${rule}`,
    errno: -Errno.EINVAL,
  });
}

/**
 * Checks limits and fills in defaults in place (kernel: `blk_validate_limits`,
 * block/blk-settings.c): 512-byte logical blocks, `max_hw_sectors` 255, `max_sectors` =
 * min(hw, user cap or 2560) rounded to the logical block, 128 segments, 64 KiB segments (or
 * UINT_MAX with a virt boundary), a 4 GiB segment boundary, `dma_alignment` 511, and the fast-path
 * `min_segment_size` = min(PAGE_SIZE, max segment size, boundary + 1). Returns 0 or -EINVAL; the
 * cases the kernel WARNs on (hardware sectors below a page, a boundary below 4 KiB, a segment size
 * below 4 KiB, an alignment above a page) throw `BlkError`.
 */
export function blkValidateLimits(lim: QueueLimits): number {
  if (lim.logicalBlockSize === 0) lim.logicalBlockSize = SECTOR_SIZE;
  else if (!blkValidateBlockSize(lim.logicalBlockSize)) return -Errno.EINVAL;
  if (lim.physicalBlockSize < lim.logicalBlockSize) lim.physicalBlockSize = lim.logicalBlockSize;
  else if (!isPowerOf2(lim.physicalBlockSize)) return -Errno.EINVAL;
  if (lim.ioMin < lim.physicalBlockSize) lim.ioMin = lim.physicalBlockSize;
  lim.ioOpt = alignDown(lim.ioOpt, lim.physicalBlockSize);

  if (lim.maxHwSectors === 0) lim.maxHwSectors = BLK_SAFE_MAX_SECTORS;
  if (lim.maxHwSectors < PAGE_SECTORS)
    warn(`max_hw_sectors ${lim.maxHwSectors} is below a page`, 'max_hw_sectors');
  const lbs = lim.logicalBlockSize / SECTOR_SIZE;
  if (lbs > lim.maxHwSectors)
    warn('logical block larger than max_hw_sectors', 'logical block > max_hw_sectors');
  lim.maxHwSectors = alignDown(lim.maxHwSectors, lbs);

  if (lim.maxUserSectors !== 0) {
    if (lim.maxUserSectors < BLK_MIN_SEGMENT_SIZE / SECTOR_SIZE) return -Errno.EINVAL;
    lim.maxSectors = Math.min(lim.maxHwSectors, lim.maxUserSectors);
  } else if (lim.ioOpt > BLK_DEF_MAX_SECTORS_CAP * SECTOR_SIZE) {
    lim.maxSectors = Math.min(lim.maxHwSectors, lim.ioOpt / SECTOR_SIZE);
  } else if (lim.ioMin > BLK_DEF_MAX_SECTORS_CAP * SECTOR_SIZE) {
    lim.maxSectors = Math.min(lim.maxHwSectors, lim.ioMin / SECTOR_SIZE);
  } else {
    lim.maxSectors = Math.min(lim.maxHwSectors, BLK_DEF_MAX_SECTORS_CAP);
  }
  lim.maxSectors = alignDown(lim.maxSectors, lbs);

  if (lim.maxSegments === 0) lim.maxSegments = BLK_MAX_SEGMENTS;
  lim.maxDiscardSectors = lim.maxHwDiscardSectors;
  lim.discardGranularity =
    lim.maxDiscardSectors !== 0 ? Math.max(lim.discardGranularity, lim.physicalBlockSize) : 0;
  if (lim.maxDiscardSegments === 0) lim.maxDiscardSegments = 1;

  if (lim.segBoundaryMask === 0) lim.segBoundaryMask = BLK_SEG_BOUNDARY_MASK;
  if (lim.segBoundaryMask < BLK_MIN_SEGMENT_SIZE - 1) {
    warn(
      `seg_boundary_mask ${lim.segBoundaryMask} is below ${BLK_MIN_SEGMENT_SIZE - 1}`,
      'seg_boundary_mask',
    );
  }
  if (!isLowMask(lim.segBoundaryMask))
    warn('seg_boundary_mask is not of the form 2^n - 1', 'seg_boundary_mask form');
  if (lim.virtBoundaryMask !== 0 && !isLowMask(lim.virtBoundaryMask)) {
    warn('virt_boundary_mask is not of the form 2^n - 1', 'virt_boundary_mask form');
  }
  if (lim.virtBoundaryMask !== 0) {
    if (lim.maxSegmentSize === 0) lim.maxSegmentSize = UINT_MAX;
  } else {
    if (lim.maxSegmentSize === 0) lim.maxSegmentSize = BLK_MAX_SEGMENT_SIZE;
    if (lim.maxSegmentSize < BLK_MIN_SEGMENT_SIZE) {
      warn(`max_segment_size ${lim.maxSegmentSize} is below ${BLK_MIN_SEGMENT_SIZE}`, 'max_segment_size');
    }
  }
  const segSize = lim.segBoundaryMask > lim.maxSegmentSize - 1 ? lim.maxSegmentSize : lim.segBoundaryMask + 1;
  lim.minSegmentSize = Math.min(segSize, PAGE_SIZE);

  if (lim.dmaAlignment === 0) lim.dmaAlignment = SECTOR_SIZE - 1;
  if (lim.dmaAlignment > PAGE_SIZE) warn(`dma_alignment ${lim.dmaAlignment} exceeds a page`, 'dma_alignment');
  return 0;
}

/** True for masks of the form 2^n - 1 (every limit mask here is one). */
function isLowMask(mask: number): boolean {
  return Number.isSafeInteger(mask) && mask > 0 && Number.isInteger(Math.log2(mask + 1));
}

/** Bytes from `paddr` to the next `(mask + 1)` line (kernel: `mask - (mask & paddr) + 1` in `get_max_segment_size`); masks are 2^n - 1, so `&` is a remainder. */
export function boundaryLeft(paddr: number, mask: number): number {
  return mask - (paddr % (mask + 1)) + 1;
}
