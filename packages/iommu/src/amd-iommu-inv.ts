/**
 * The INVALIDATE_IOMMU_PAGES commands amd-iommu issues, counted by kind and applied to the IOTLB
 * model. Kernel counterpart: drivers/iommu/amd/iommu.c (v6.17): `amd_iommu_iotlb_sync` /
 * `amd_iommu_flush_iotlb_all` / `amd_iommu_iotlb_sync_map` → `amd_iommu_domain_flush_pages` →
 * `__domain_flush_pages` → `build_inv_iommu_pages` / `build_inv_address` (one command; with more
 * than one page the S bit set and the address's low bits filled so the command covers the
 * naturally aligned block holding the range; bit 51 differing → all pages), then
 * `domain_flush_complete` (COMPLETION_WAIT). With NpCache (a virtualised IOMMU) the range is
 * split into naturally aligned pieces, one command each, before the single wait.
 * Differs on purpose: one IOMMU per domain, no device-TLB (ATS) commands, no PASID (GN) commands.
 */
import { alignDown } from './bits.js';
import type { Counters } from './counters.js';
import type { Iotlb } from './iotlb.js';

const PAGE_SIZE = 4096;
/** Highest address bit the S-bit encoding can carry (kernel: bits 63:52 are sign extension). */
const MSB_MAX = 51;

/** What one INVALIDATE_IOMMU_PAGES covers (kernel: `build_inv_address`). */
export interface AmdInvCoverage {
  /** True for the all-pages address (msb_diff > 51). */
  all: boolean;
  /** True when the S bit is set (more than one page). */
  sBit: boolean;
  /** First byte invalidated. */
  start: number;
  /** Bytes invalidated (a power of two ≥ 4 KiB). */
  size: number;
}

/** Index of the highest bit where `a` and `b` differ (kernel: `fls64(a ^ b) - 1`), -1 if equal. */
function msbDiff(a: number, b: number): number {
  for (let i = 63; i >= 0; i--) {
    if (Math.floor(a / 2 ** i) % 2 !== Math.floor(b / 2 ** i) % 2) return i;
  }
  return -1;
}

/** The block one command covers for `[address, address + size)`. */
export function amdBuildInvAddress(address: number, size: number): AmdInvCoverage {
  const first = Math.floor(address / PAGE_SIZE);
  const last = Math.floor((address + size - 1) / PAGE_SIZE);
  if (first === last) return { all: false, sBit: false, start: first * PAGE_SIZE, size: PAGE_SIZE };
  const d = msbDiff(address, address + size - 1);
  if (d > MSB_MAX) return { all: true, sBit: true, start: 0, size: 2 ** 52 };
  const block = 2 ** (d + 1);
  return { all: false, sBit: true, start: alignDown(address, block), size: block };
}

/**
 * `build_inv_address` for a piece of 2^align bytes aligned to its size (what the NpCache split
 * produces): computed from the exponent, exact where `address + size - 1` would round.
 */
function alignedCoverage(address: number, align: number): AmdInvCoverage {
  if (align <= 12) return { all: false, sBit: false, start: address, size: PAGE_SIZE };
  if (align - 1 > MSB_MAX) return { all: true, sBit: true, start: 0, size: 2 ** 52 };
  return { all: false, sBit: true, start: address, size: 2 ** align };
}

/** Counts one command and drops what it covers. */
function flushPages(
  counters: Counters,
  iotlb: Iotlb,
  domainId: number,
  cov: AmdInvCoverage,
  np: boolean,
): void {
  if (cov.all) counters.iotlbInvDomainCmds++;
  else if (cov.sBit) counters.iotlbInvRangeCmds++;
  else counters.iotlbInvPageCmds++;
  if (np) iotlb.invalidateNonPresent(domainId, cov.start, cov.size);
  else if (cov.all) iotlb.invalidateAll(domainId);
  else iotlb.invalidateRange(domainId, cov.start, cov.size);
}

/**
 * Invalidates `[address, address + size)` and waits (kernel: `amd_iommu_domain_flush_pages`).
 * `npCache` splits the range into naturally aligned pieces; `onlyNonPresent` (iotlb_sync_map)
 * makes the model drop only cached non-present entries.
 */
export function amdIommuDomainFlushPages(
  counters: Counters,
  iotlb: Iotlb,
  npCache: boolean,
  domainId: number,
  address: number,
  size: number,
  onlyNonPresent = false,
): void {
  if (!npCache) {
    flushPages(counters, iotlb, domainId, amdBuildInvAddress(address, size), onlyNonPresent);
  } else {
    while (size > 0) {
      let sizeAlign = 0;
      while (2 ** (sizeAlign + 1) <= size) sizeAlign++; // __fls(size)
      let align = sizeAlign;
      if (address !== 0) {
        let addrAlign = 0;
        while (Math.floor(address / 2 ** addrAlign) % 2 === 0) addrAlign++; // __ffs(address)
        if (addrAlign < align) align = addrAlign;
      }
      const piece = 2 ** align;
      flushPages(counters, iotlb, domainId, alignedCoverage(address, align), onlyNonPresent);
      address += piece;
      size -= piece;
    }
  }
  counters.iotlbInvSyncs++; // domain_flush_complete: COMPLETION_WAIT
}

/** CMD_INV_IOMMU_ALL_PAGES_ADDRESS, the size `amd_iommu_domain_flush_all` passes (2^63 - 4 KiB). */
const ALL_PAGES_SIZE = 2 ** 63 - PAGE_SIZE;

/**
 * All pages of the domain + wait (kernel: `amd_iommu_domain_flush_all` →
 * `amd_iommu_domain_flush_pages(domain, 0, CMD_INV_IOMMU_ALL_PAGES_ADDRESS)`): one all-pages
 * command; with NpCache the split loop cuts 2^63 - 4 KiB into 51 aligned pieces (2^62 … 2^12),
 * of which those of 2^53 and more are all-pages commands and the rest S-bit commands.
 */
export function amdIommuDomainFlushAll(
  counters: Counters,
  iotlb: Iotlb,
  npCache: boolean,
  domainId: number,
): void {
  if (npCache) {
    amdIommuDomainFlushPages(counters, iotlb, true, domainId, 0, ALL_PAGES_SIZE);
    iotlb.invalidateAll(domainId);
    return;
  }
  flushPages(counters, iotlb, domainId, { all: true, sBit: true, start: 0, size: 2 ** 52 }, false);
  counters.iotlbInvSyncs++;
}
