/**
 * HMM address-space mirroring: `hmm_range_fault` fills a range's array of HMM pfn words from the
 * CPU page table, faulting pages in (read or write) where the caller asks, and gives up with
 * -EBUSY when the range's mmu interval notifier sequence changed — the caller then retries from
 * `mmu_interval_read_begin`. Kernel counterpart: mm/hmm.c (`hmm_range_fault`, `hmm_vma_walk_*`,
 * `hmm_pte_need_fault`, `hmm_vma_fault`) and include/linux/hmm.h, v6.16–v6.18.
 *
 * The pfn word is the kernel's 64-bit `unsigned long`, stored as two 32-bit halves (low, high) in a
 * `Uint32Array`, i.e. with the same little-endian byte layout and the same 8 bytes per entry as
 * the kernel array. Flags sit at the top (include/linux/hmm.h, v6.16+):
 *
 * | flag | bit | high-half mask |
 * |---|---|---|
 * | HMM_PFN_VALID | 63 | 0x80000000 |
 * | HMM_PFN_WRITE | 62 | 0x40000000 |
 * | HMM_PFN_ERROR | 61 | 0x20000000 |
 * | HMM_PFN_DMA_MAPPED | 60 | 0x10000000 |
 * | HMM_PFN_P2PDMA | 59 | 0x08000000 |
 * | HMM_PFN_P2PDMA_BUS | 58 | 0x04000000 |
 * | map order | 53..57 | 0x03e00000 |
 *
 * The exported `HMM_PFN_*` flag constants are those high-half masks (test them with `& … !== 0`).
 * (An early posting put DMA_MAPPED at bit 57, inside the order field; the merged layout is above.
 * Later series on the lists add a flag at bit 57 — `HMM_PFN_DEVICE_PRIVATE` / `HMM_PFN_MIGRATE` —
 * and move the order shift to 52; not modelled.)
 *
 * Deliberate differences: no device-private or P2P pages; 4 KiB mappings only, so the map order
 * is always 0; the mmap lock is not modelled (the model is single-threaded).
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { OdpError } from './errors.js';
import { Mm } from './mm.js';
import { VM_READ, VM_WRITE } from './mm-types.js';
import { type MmuIntervalNotifier, mmuIntervalCheckRetry } from './mmu-notifier.js';

/** Bit of the 64-bit word the high half starts at. */
export const HMM_PFN_HI_SHIFT = 32;
/** Entry is valid, at least readable; as input: fault it in (kernel: `HMM_PFN_VALID`, bit 63). */
export const HMM_PFN_VALID = 0x80000000;
/** Entry is writable; as input: fault it in for write (kernel: `HMM_PFN_WRITE`, bit 62). */
export const HMM_PFN_WRITE = 0x40000000;
/** Cannot be accessed: no VMA, no read permission, poison (kernel: `HMM_PFN_ERROR`, bit 61). */
export const HMM_PFN_ERROR = 0x20000000;
/** Sticky: DMA-mapped in its `hmm_dma_map` (kernel: `HMM_PFN_DMA_MAPPED`, bit 60, v6.16+). */
export const HMM_PFN_DMA_MAPPED = 0x10000000;
/** Sticky: P2P page mapped through the host bridge (kernel: `HMM_PFN_P2PDMA`, bit 59). */
export const HMM_PFN_P2PDMA = 0x08000000;
/** Sticky: P2P page mapped with a bus address (kernel: `HMM_PFN_P2PDMA_BUS`, bit 58). */
export const HMM_PFN_P2PDMA_BUS = 0x04000000;
/** Bit where the 5-bit CPU mapping order starts (kernel: `HMM_PFN_ORDER_SHIFT`, BITS_PER_LONG - 11). */
export const HMM_PFN_ORDER_SHIFT = 53;
/** Input: fault the page in (kernel: `HMM_PFN_REQ_FAULT` = `HMM_PFN_VALID`). */
export const HMM_PFN_REQ_FAULT = HMM_PFN_VALID;
/** Input: fault the page in writable (kernel: `HMM_PFN_REQ_WRITE` = `HMM_PFN_WRITE`). */
export const HMM_PFN_REQ_WRITE = HMM_PFN_WRITE;
/** Every flag and order bit, bits 53..63 (kernel: `HMM_PFN_FLAGS`). */
export const HMM_PFN_FLAGS = 0xffe00000;
/** Flags carried from input to output (kernel: `HMM_PFN_INOUT_FLAGS`, mm/hmm.c). */
export const HMM_PFN_INOUT_FLAGS = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS;

/** Bit numbers in the 64-bit word, for documentation and layout checks. */
export const HMM_PFN_BITS = {
  VALID: 63,
  WRITE: 62,
  ERROR: 61,
  DMA_MAPPED: 60,
  P2PDMA: 59,
  P2PDMA_BUS: 58,
  ORDER_SHIFT: 53,
} as const;

/** How long an ODP fault keeps retrying -EBUSY, in ms (kernel: `HMM_RANGE_DEFAULT_TIMEOUT`). */
export const HMM_RANGE_DEFAULT_TIMEOUT = 1000;

const HI_PFN_MASK = 0x001fffff;
const ORDER_HI_SHIFT = HMM_PFN_ORDER_SHIFT - HMM_PFN_HI_SHIFT;
/** Addresses per PMD: `hmm_vma_fault` faults up to the end of the current PMD (2 MiB). */
const PMD_SIZE = 0x200000;

/**
 * An array of HMM pfn words (kernel: `unsigned long *hmm_pfns`, e.g. `hmm_dma_map::pfn_list`),
 * 8 bytes per entry in the kernel's layout.
 */
export class HmmPfnList {
  /** Two 32-bit halves per entry: `[2i]` = bits 0..31, `[2i+1]` = bits 32..63. */
  readonly words: Uint32Array;
  readonly length: number;

  constructor(nrEntries: number) {
    this.length = nrEntries;
    this.words = new Uint32Array(2 * nrEntries);
  }

  /** Bytes the kernel array occupies (8 per entry). */
  get byteLength(): number {
    return this.length * 8;
  }

  /** The high half of entry `i` (flags, order and pfn bits 32..52). */
  hi(i: number): number {
    return this.words[2 * i + 1]!;
  }

  /** True when entry `i` has every bit of `flags` (high-half masks). */
  test(i: number, flags: number): boolean {
    return (this.words[2 * i + 1]! & flags) >>> 0 === flags >>> 0;
  }

  /** The flag and order bits of entry `i`, as a high-half mask. */
  flags(i: number): number {
    return (this.words[2 * i + 1]! & HMM_PFN_FLAGS) >>> 0;
  }

  /** The pfn of entry `i`, flags removed (kernel: `hmm_pfn & ~HMM_PFN_FLAGS`). */
  pfn(i: number): number {
    return this.words[2 * i]! + (this.words[2 * i + 1]! & HI_PFN_MASK) * 2 ** 32;
  }

  /** Sets entry `i` to `pfn` with `flags` (high-half mask). */
  set(i: number, pfn: number, flags: number): void {
    this.words[2 * i] = pfn % 2 ** 32;
    this.words[2 * i + 1] = (flags & HMM_PFN_FLAGS) | (Math.floor(pfn / 2 ** 32) & HI_PFN_MASK);
  }

  /** Sets `flags` in entry `i` (kernel: `pfns[i] |= flags`). */
  orFlags(i: number, flags: number): void {
    this.words[2 * i + 1] = this.words[2 * i + 1]! | (flags & HMM_PFN_FLAGS);
  }

  /** Clears `flags` in entry `i` (kernel: `pfns[i] &= ~flags`). */
  clearFlags(i: number, flags: number): void {
    this.words[2 * i + 1] = this.words[2 * i + 1]! & ~(flags & HMM_PFN_FLAGS);
  }
}

/** Physical address of entry `i` (kernel: `hmm_pfn_to_phys`). */
export function hmmPfnToPhys(list: HmmPfnList, i: number): number {
  return list.pfn(i) * PAGE_SIZE;
}

/** CPU mapping order of entry `i` (kernel: `hmm_pfn_to_map_order`); 0 for 4 KiB mappings. */
export function hmmPfnToMapOrder(list: HmmPfnList, i: number): number {
  return (list.hi(i) >>> ORDER_HI_SHIFT) & 0x1f;
}

/** One range to mirror (kernel: `struct hmm_range`). */
export interface HmmRange {
  /** The subscription whose sequence guards the walk. */
  notifier: MmuIntervalNotifier;
  /** Value from `mmuIntervalReadBegin` (kernel: `notifier_seq`). */
  notifierSeq: number;
  /** First address, page-aligned. */
  start: number;
  /** End address, exclusive, page-aligned. */
  end: number;
  /** Output array; entry `pfnOffset` describes `start` (kernel: `hmm_pfns` points into it). */
  hmmPfns: HmmPfnList;
  /** Index of `start` in `hmmPfns`. */
  pfnOffset: number;
  /** Request flags for every page: `HMM_PFN_REQ_FAULT`, `HMM_PFN_REQ_WRITE` (kernel: `default_flags`). */
  defaultFlags: number;
  /** Which per-entry input flags count (kernel: `pfn_flags_mask`); 0 = only `defaultFlags`. */
  pfnFlagsMask: number;
}

const HMM_NEED_FAULT = 1 << 0;
const HMM_NEED_WRITE_FAULT = 1 << 1;

/** What to fault for one entry (kernel: `hmm_pte_need_fault`). */
function hmmPteNeedFault(range: HmmRange, i: number, cpuFlags: number): number {
  const req = ((range.hmmPfns.hi(i) & range.pfnFlagsMask) | range.defaultFlags) >>> 0;
  if ((req & HMM_PFN_REQ_FAULT) === 0) return 0;
  if ((req & HMM_PFN_REQ_WRITE) !== 0 && (cpuFlags & HMM_PFN_WRITE) === 0)
    return HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT;
  if ((cpuFlags & HMM_PFN_VALID) === 0) return HMM_NEED_FAULT;
  return 0;
}

/** Walks `[from, range.end)`; returns 0, -EBUSY after faulting (restart at `walk.last`), or -errno. */
function hmmWalk(mm: Mm, range: HmmRange, walk: { last: number }): number {
  const list = range.hmmPfns;
  for (let addr = walk.last; addr < range.end; addr += PAGE_SIZE) {
    const i = range.pfnOffset + (addr - range.start) / PAGE_SIZE;
    const keep = list.hi(i) & HMM_PFN_INOUT_FLAGS;
    const vma = mm.findVma(addr);
    if (vma === undefined || (vma.vmFlags & VM_READ) === 0) {
      // hmm_vma_walk_hole / hmm_vma_walk_test: fault impossible
      if (hmmPteNeedFault(range, i, 0) !== 0) return -Errno.EFAULT;
      list.set(i, 0, keep | HMM_PFN_ERROR);
      continue;
    }
    const pte = mm.pteOf(addr);
    const present = pte?.page !== undefined;
    const cpuFlags = present ? HMM_PFN_VALID | (pte!.write ? HMM_PFN_WRITE : 0) : 0;
    const required = hmmPteNeedFault(range, i, cpuFlags);
    if (required !== 0) {
      // hmm_vma_fault: fault everything to the end of this PMD / VMA, then restart the walk
      const write = (required & HMM_NEED_WRITE_FAULT) !== 0;
      if (write && (vma.vmFlags & VM_WRITE) === 0) return -Errno.EPERM;
      const end = Math.min(range.end, vma.vmEnd, (Math.floor(addr / PMD_SIZE) + 1) * PMD_SIZE);
      for (let a = addr; a < end; a += PAGE_SIZE) {
        mm.stats.hmmPagesFaulted++;
        if (mm.handleMmFault(vma, a, write) !== 0) return -Errno.EFAULT;
      }
      walk.last = addr;
      return -Errno.EBUSY;
    }
    if (present) list.set(i, pte!.page!.pfn, (keep | cpuFlags) >>> 0);
    else list.set(i, 0, keep);
  }
  return 0;
}

/**
 * Mirrors `[range.start, range.end)` into `range.hmmPfns` (kernel: `hmm_range_fault`, mm/hmm.c):
 * each entry becomes `pfn | HMM_PFN_VALID [| HMM_PFN_WRITE]`, 0 (not present, not requested) or
 * `HMM_PFN_ERROR`, keeping its sticky DMA flags. Pages requested by `defaultFlags` (and per-entry
 * flags under `pfnFlagsMask`) are faulted in; a fault restarts the walk after checking the
 * notifier sequence. Returns 0, -EBUSY when the sequence changed (retry from
 * `mmuIntervalReadBegin`), -EFAULT (no VMA or no read permission where a fault was requested,
 * or the fault failed), -EPERM (write requested on a VMA without write permission).
 */
export function hmmRangeFault(range: HmmRange): number {
  const host = range.notifier.mm;
  if (!(host instanceof Mm)) {
    throw new OdpError('hmm_range_fault: the notifier is not inserted into an address space', {
      rule: 'hmm_range_fault: no mm',
    });
  }
  if (range.start % PAGE_SIZE !== 0 || range.end % PAGE_SIZE !== 0 || range.end < range.start) {
    throw new OdpError(
      `hmm_range_fault: range [0x${range.start.toString(16)}, 0x${range.end.toString(16)}) not page aligned`,
      {
        rule: 'hmm_range_fault: unaligned range',
      },
    );
  }
  if (range.pfnOffset + (range.end - range.start) / PAGE_SIZE > range.hmmPfns.length) {
    throw new OdpError('hmm_range_fault: range beyond the pfn array', {
      rule: 'hmm_range_fault: pfn array too small',
    });
  }
  host.stats.hmmCalls++;
  const walk = { last: range.start };
  let ret: number;
  do {
    if (mmuIntervalCheckRetry(range.notifier, range.notifierSeq)) {
      host.stats.hmmBusy++;
      return -Errno.EBUSY;
    }
    ret = hmmWalk(host, range, walk);
  } while (ret === -Errno.EBUSY);
  return ret;
}
