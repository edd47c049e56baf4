/**
 * The IOTLB invalidation descriptors intel-iommu queues for a second-stage DMA domain, counted by
 * kind and applied to the IOTLB model. Kernel counterpart: drivers/iommu/intel/cache.c (v6.17):
 * `cache_tag_flush_range` (iotlb_sync) / `cache_tag_flush_all` (flush_iotlb_all) /
 * `cache_tag_flush_range_np` (iotlb_sync_map in caching mode) → `calculate_psi_aligned_address` →
 * `cache_tag_flush_iotlb`: one page-selective (PSI) descriptor whose address mask covers the range
 * as a naturally aligned power of two, or a domain-selective (DSI) one when PSI is unsupported or
 * the mask exceeds CAP.MAMV; `qi_batch_flush_descs` submits the batch with one wait descriptor.
 * Differs on purpose: one IOMMU and one cache tag per domain (so one descriptor + one wait), no
 * device-TLB (ATS) descriptors, no first-stage (PASID-based) invalidation.
 */
import { alignDown } from './bits.js';
import type { Counters } from './counters.js';
import { MAX_AGAW_PFN_WIDTH, type VtdInvalidation } from './iommu-hw.js';
import type { Iotlb } from './iotlb.js';

const VTD_PAGE_SIZE = 4096;

/** Address, page count and mask of one PSI descriptor (kernel: `calculate_psi_aligned_address`). */
export interface PsiAligned {
  /** Start of the invalidated block (aligned to `VTD_PAGE_SIZE << mask`). */
  addr: number;
  /** 2^mask pages. */
  pages: number;
  /** Address mask: the descriptor covers 2^mask pages from `addr`. */
  mask: number;
}

/** Bit `b` of a non-negative safe integer. */
function bit(x: number, b: number): number {
  return Math.floor(x / 2 ** b) % 2;
}

/**
 * The smallest naturally aligned block of 2^mask pages holding `[start, end]` (end inclusive),
 * computed as the kernel does: round the page count up to a power of two; if the start pfn is not
 * aligned to it, raise the mask to the lowest bit above it where start and end pfn agree.
 */
export function calculatePsiAlignedAddress(start: number, end: number): PsiAligned {
  const pfn = Math.floor(start / VTD_PAGE_SIZE);
  const endPfn = Math.floor(end / VTD_PAGE_SIZE);
  const pages = endPfn - pfn + 1; // aligned_nrpages
  let mask = 0;
  while (2 ** mask < pages) mask++;
  if (pfn % 2 ** mask !== 0) {
    let b = mask;
    while (b < MAX_AGAW_PFN_WIDTH && bit(pfn, b) !== bit(endPfn, b)) b++;
    mask = b;
  }
  const block = VTD_PAGE_SIZE * 2 ** mask;
  return { addr: alignDown(start, block), pages: 2 ** mask, mask };
}

/** Queues one IOTLB descriptor for `psi` (or DSI when it cannot be page-selective); returns the kind. */
function flushIotlb(counters: Counters, caps: VtdInvalidation, psi: PsiAligned | undefined): 'psi' | 'dsi' {
  if (psi === undefined || !caps.pageSelective || psi.mask > caps.maxAddressMask) {
    counters.iotlbInvDomainCmds++;
    return 'dsi';
  }
  if (psi.mask === 0) counters.iotlbInvPageCmds++;
  else counters.iotlbInvRangeCmds++;
  return 'psi';
}

/** Invalidates `[start, end]` (end inclusive) after an unmap (kernel: `cache_tag_flush_range`). */
export function cacheTagFlushRange(
  counters: Counters,
  iotlb: Iotlb,
  caps: VtdInvalidation,
  domainId: number,
  start: number,
  end: number,
): void {
  const psi = calculatePsiAlignedAddress(start, end);
  if (flushIotlb(counters, caps, psi) === 'dsi') iotlb.invalidateAll(domainId);
  else iotlb.invalidateRange(domainId, psi.addr, VTD_PAGE_SIZE * psi.pages);
  counters.iotlbInvSyncs++; // qi_batch_flush_descs: the wait descriptor
}

/** Domain-selective invalidation + wait (kernel: `cache_tag_flush_all`). */
export function cacheTagFlushAll(
  counters: Counters,
  iotlb: Iotlb,
  caps: VtdInvalidation,
  domainId: number,
): void {
  flushIotlb(counters, caps, undefined);
  iotlb.invalidateAll(domainId);
  counters.iotlbInvSyncs++;
}

/**
 * After new mappings in caching mode (kernel: `cache_tag_flush_range_np`): the same descriptor as
 * an unmap would get, plus the wait; the model drops only the cached non-present entries there.
 */
export function cacheTagFlushRangeNp(
  counters: Counters,
  iotlb: Iotlb,
  caps: VtdInvalidation,
  domainId: number,
  start: number,
  end: number,
): void {
  const psi = calculatePsiAlignedAddress(start, end);
  if (flushIotlb(counters, caps, psi) === 'dsi') iotlb.invalidateNonPresent(domainId, 0, 2 ** 48);
  else iotlb.invalidateNonPresent(domainId, psi.addr, VTD_PAGE_SIZE * psi.pages);
  counters.iotlbInvSyncs++;
}
