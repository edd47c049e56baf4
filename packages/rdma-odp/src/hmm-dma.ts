/**
 * DMA mapping of an HMM pfn array: one IOVA range reserved up front for the whole array with
 * `dma_iova_try_alloc`, pages linked into it one by one as they are faulted (the DMA address of
 * entry `idx` is `state.addr + idx * dma_entry_size`, nothing stored), and unlinked one by one on
 * invalidation; where the IOVA path is unavailable (no IOMMU, identity domain, IOVA space
 * exhausted) each page is mapped with `dma_map_page` and its address kept in a `dma_list` — only if
 * `dma_need_unmap` says the address is needed to unmap. `HMM_PFN_DMA_MAPPED` in the pfn word
 * records what is mapped. Kernel counterpart: `hmm_dma_map_alloc`, `hmm_dma_map_free`,
 * `hmm_dma_map_pfn`, `hmm_dma_unmap_pfn` in mm/hmm.c and `struct hmm_dma_map` in
 * include/linux/hmm-dma.h (v6.16+).
 *
 * Metadata is counted with `machine.counters.kmalloc` under `hmm_dma_map.pfn_list` (8 bytes an
 * entry) and `hmm_dma_map.dma_list` (8 bytes an entry, fallback only).
 *
 * Deliberate differences: no P2P pages, so `p2pdmaState` is accepted and every page is
 * `PCI_P2PDMA_MAP_NONE`; the kvcalloc failure is a fault-injection point, `kvcalloc`.
 */
import {
  type Device,
  DMA_BIDIRECTIONAL,
  DMA_MAPPING_ERROR,
  DmaIovaState,
  dmaAddressingLimited,
  dmaIovaFree,
  dmaIovaLink,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaIovaUnlink,
  dmaMapPage,
  dmaMappingError,
  dmaNeedSync,
  dmaNeedUnmap,
  dmaUnmapPage,
  dmaUseIova,
} from '@iovalink/dma-api';
import { Errno, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { OdpError } from './errors.js';
import {
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_P2PDMA,
  HMM_PFN_P2PDMA_BUS,
  HMM_PFN_VALID,
  HmmPfnList,
  hmmPfnToPhys,
} from './hmm.js';

/** Metadata kind of the pfn list (8 bytes an entry). */
export const HMM_DMA_PFN_LIST = 'hmm_dma_map.pfn_list';
/** Metadata kind of the fallback dma_list (8 bytes an entry). */
export const HMM_DMA_DMA_LIST = 'hmm_dma_map.dma_list';

/** PCI P2P mapping state (kernel: `struct pci_p2pdma_map_state`); the model has no P2P pages. */
export interface PciP2pdmaMapState {
  /** Provider of the last page classified; unused. */
  readonly mem?: unknown;
}

/** A pfn array and its DMA mapping state (kernel: `struct hmm_dma_map`). */
export class HmmDmaMap {
  /** IOVA range of the whole array when the IOVA path is used (kernel: `state`). */
  readonly state = new DmaIovaState();
  /** HMM pfn words, one per PAGE_SIZE page (kernel: `pfn_list`). */
  pfnList: HmmPfnList | undefined;
  /** DMA address per entry, fallback path with `dma_need_unmap` only (kernel: `dma_list`). */
  dmaList: Float64Array | undefined;
  /** Bytes mapped per entry (kernel: `dma_entry_size`). */
  dmaEntrySize = 0;
}

/**
 * Accounts a `kvcalloc` of `n` 8-byte entries as `kind` (kernel: `kvcalloc`); false, with nothing
 * accounted, when the `kvcalloc` fault point fires.
 */
export function kvcallocAccounted(machine: Machine, kind: string, n: number): boolean {
  if (machine.faults.shouldFail('kvcalloc')) return false;
  machine.counters.kmalloc(kind, n * 8);
  return true;
}

/**
 * Sets up `map` for `nrEntries` pages of `dmaEntrySize` bytes (kernel: `hmm_dma_map_alloc`,
 * mm/hmm.c): -EINVAL when the entry size exceeds the array; -EOPNOTSUPP for devices that need
 * cache syncs or are addressing-limited (HMM cannot hand buffer ownership back and forth or
 * bounce); then the pfn list, one `dma_iova_try_alloc` of the whole range, and — only when that
 * fails and `dma_need_unmap` — a dma_list. Returns 0 or -errno (-ENOMEM); nothing is left
 * allocated on error.
 */
export function hmmDmaMapAlloc(dev: Device, map: HmmDmaMap, nrEntries: number, dmaEntrySize: number): number {
  if (map.pfnList !== undefined) {
    throw new OdpError('hmm_dma_map_alloc: map already allocated', {
      rule: 'hmm_dma_map_alloc: already allocated',
    });
  }
  if (!(nrEntries > 0) || Math.floor((nrEntries * PAGE_SIZE) / dmaEntrySize) === 0) return -Errno.EINVAL;
  if (dmaNeedSync(dev) || dmaAddressingLimited(dev)) return -Errno.EOPNOTSUPP;
  const counters = dev.machine.counters;
  if (!kvcallocAccounted(dev.machine, HMM_DMA_PFN_LIST, nrEntries)) return -Errno.ENOMEM;
  map.dmaEntrySize = dmaEntrySize;
  map.pfnList = new HmmPfnList(nrEntries);
  const useIova = dmaIovaTryAlloc(dev, map.state, 0, nrEntries * PAGE_SIZE);
  if (!useIova && dmaNeedUnmap(dev)) {
    if (!kvcallocAccounted(dev.machine, HMM_DMA_DMA_LIST, nrEntries)) {
      counters.kfree(HMM_DMA_PFN_LIST, nrEntries * 8);
      map.pfnList = undefined;
      return -Errno.ENOMEM;
    }
    map.dmaList = new Float64Array(nrEntries);
  }
  return 0;
}

/**
 * Releases `map` (kernel: `hmm_dma_map_free`): frees the IOVA range (every entry must already be
 * unmapped; dma-debug checks) and both lists.
 */
export function hmmDmaMapFree(dev: Device, map: HmmDmaMap): void {
  const list = map.pfnList;
  if (list === undefined) return;
  if (dmaUseIova(map.state)) dmaIovaFree(dev, map.state);
  const counters = dev.machine.counters;
  counters.kfree(HMM_DMA_PFN_LIST, list.length * 8);
  if (map.dmaList !== undefined) counters.kfree(HMM_DMA_DMA_LIST, map.dmaList.length * 8);
  map.pfnList = undefined;
  map.dmaList = undefined;
}

function checkIdx(map: HmmDmaMap, idx: number, what: string): HmmPfnList {
  const list = map.pfnList;
  if (list === undefined || !(Number.isInteger(idx) && idx >= 0 && idx < list.length)) {
    throw new OdpError(`${what}: index ${idx} outside the map (${list?.length ?? 0} entries)`, {
      rule: `${what}: index out of range`,
    });
  }
  return list;
}

/**
 * DMA-maps entry `idx` (kernel: `hmm_dma_map_pfn`): an entry already `HMM_PFN_DMA_MAPPED` returns
 * its address without new work (IOVA: `state.addr + idx * dma_entry_size`; fallback: its dma_list
 * slot; without a dma_list the stateless direct mapping is simply redone). Otherwise IOVA path:
 * `dma_iova_link` of the entry at its fixed offset plus one `dma_iova_sync` of it; fallback:
 * `dma_map_page`, address stored when unmap needs it. Sets `HMM_PFN_DMA_MAPPED` on success.
 * Returns the DMA address or DMA_MAPPING_ERROR.
 */
export function hmmDmaMapPfn(
  dev: Device,
  map: HmmDmaMap,
  idx: number,
  _p2pdmaState?: PciP2pdmaMapState,
): number {
  const list = checkIdx(map, idx, 'hmm_dma_map_pfn');
  const state = map.state;
  const offset = idx * map.dmaEntrySize;
  if (list.test(idx, HMM_PFN_DMA_MAPPED) && !list.test(idx, HMM_PFN_P2PDMA_BUS)) {
    // flags resync (e.g. read-only → writable): the page is already programmed
    if (dmaUseIova(state)) return state.addr + offset;
    if (dmaNeedUnmap(dev)) {
      if (map.dmaList === undefined) {
        throw new OdpError(
          `hmm_dma_map_pfn: ${dev.name}: mapped entry ${idx} but no dma_list to find it in`,
          {
            rule: 'hmm_dma_map_pfn: dma_need_unmap without dma_list',
          },
        );
      }
      return map.dmaList[idx]!;
    }
    // stateless direct mapping: map again
  }
  if (!list.test(idx, HMM_PFN_VALID)) {
    throw new OdpError(`hmm_dma_map_pfn: entry ${idx} is not HMM_PFN_VALID`, {
      rule: 'hmm_dma_map_pfn: invalid pfn',
    });
  }
  const paddr = hmmPfnToPhys(list, idx);
  let dmaAddr: number;
  if (dmaUseIova(state)) {
    if (dmaIovaLink(dev, state, paddr, offset, map.dmaEntrySize, DMA_BIDIRECTIONAL, 0) !== 0) {
      list.clearFlags(idx, HMM_PFN_P2PDMA);
      return DMA_MAPPING_ERROR;
    }
    if (dmaIovaSync(dev, state, offset, map.dmaEntrySize) !== 0) {
      dmaIovaUnlink(dev, state, offset, map.dmaEntrySize, DMA_BIDIRECTIONAL, 0);
      list.clearFlags(idx, HMM_PFN_P2PDMA);
      return DMA_MAPPING_ERROR;
    }
    dmaAddr = state.addr + offset;
  } else {
    const needUnmap = dmaNeedUnmap(dev);
    if (needUnmap && map.dmaList === undefined) {
      throw new OdpError(`hmm_dma_map_pfn: ${dev.name}: dma_need_unmap but the map has no dma_list`, {
        rule: 'hmm_dma_map_pfn: dma_need_unmap without dma_list',
      });
    }
    dmaAddr = dmaMapPage(dev, paddr, 0, map.dmaEntrySize, DMA_BIDIRECTIONAL);
    if (dmaMappingError(dev, dmaAddr)) {
      list.clearFlags(idx, HMM_PFN_P2PDMA);
      return DMA_MAPPING_ERROR;
    }
    if (needUnmap) map.dmaList![idx] = dmaAddr;
  }
  list.orFlags(idx, HMM_PFN_DMA_MAPPED);
  return dmaAddr;
}

/**
 * DMA-unmaps entry `idx` (kernel: `hmm_dma_unmap_pfn`): false unless it is both VALID and
 * DMA_MAPPED; IOVA path: `dma_iova_unlink` of the entry (which invalidates the IOTLB at once,
 * even on a flush-queue domain); fallback: `dma_unmap_page` when unmap is needed. Clears the DMA
 * flags and returns true.
 */
export function hmmDmaUnmapPfn(dev: Device, map: HmmDmaMap, idx: number): boolean {
  const list = checkIdx(map, idx, 'hmm_dma_unmap_pfn');
  if (!list.test(idx, HMM_PFN_VALID | HMM_PFN_DMA_MAPPED)) return false;
  const state = map.state;
  if (list.test(idx, HMM_PFN_P2PDMA_BUS)) {
    // bus-address P2P: nothing to undo
  } else if (dmaUseIova(state)) {
    dmaIovaUnlink(dev, state, idx * map.dmaEntrySize, map.dmaEntrySize, DMA_BIDIRECTIONAL, 0);
  } else if (dmaNeedUnmap(dev)) {
    dmaUnmapPage(dev, map.dmaList![idx]!, map.dmaEntrySize, DMA_BIDIRECTIONAL);
  }
  list.clearFlags(idx, HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS);
  return true;
}
