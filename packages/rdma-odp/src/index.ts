/**
 * @iovalink/rdma-odp — RDMA on-demand paging as a model: a process address space with mmu interval
 * notifiers, `hmm_range_fault`, the `hmm_dma_map` helpers, the ODP umem in its legacy (≤ v6.15,
 * per-page `dma_map_page` + dma_list) and hmm_dma_map (v6.16+, one IOVA range + pfn list) forms,
 * and an mlx5-style NIC with MTT translations, page-fault handling, prefetch and invalidation.
 */
export { isErr, OdpError } from './errors.js';
export { MmFile } from './filemap.js';
export {
  HMM_PFN_BITS,
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_FLAGS,
  HMM_PFN_HI_SHIFT,
  HMM_PFN_INOUT_FLAGS,
  HMM_PFN_ORDER_SHIFT,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_RANGE_DEFAULT_TIMEOUT,
  HmmPfnList,
  type HmmRange,
  hmmPfnToMapOrder,
  hmmPfnToPhys,
  hmmRangeFault,
} from './hmm.js';
export {
  HMM_DMA_DMA_LIST,
  HMM_DMA_PFN_LIST,
  HmmDmaMap,
  hmmDmaMapAlloc,
  hmmDmaMapFree,
  hmmDmaMapPfn,
  hmmDmaUnmapPfn,
  type PciP2pdmaMapState,
} from './hmm-dma.js';
export {
  IB_ACCESS_HUGETLB,
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_MW_BIND,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_ATOMIC,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  IB_ZERO_BASED,
  type IbDevice,
  type IbDeviceOps,
  type IbMr,
  IbPd,
  type IbSge,
  ibAdviseMr,
  ibAllocPd,
  ibCheckMrAccess,
  ibDeregMr,
  ibRegUserMr,
} from './ib-verbs.js';
export { Mlx5IbDev, type Mlx5IbDevOptions, Mlx5IbMr, type Mlx5OdpStats } from './mlx5-ib.js';
export { mlx5IbAdd } from './mlx5-main.js';
export { IMPLICIT_MR_LENGTH } from './mlx5-mr.js';
export { Mm } from './mm.js';
export {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MMAP_MIN_ADDR,
  type MmOptions,
  type MmStats,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  type PteInfo,
  TASK_SIZE,
  VmAreaStruct,
} from './mm-types.js';
export {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  type MmuNotifierEvent,
  type MmuNotifierRange,
  mmuIntervalCheckRetry,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierEventName,
  mmuNotifierRangeBlockable,
} from './mmu-notifier.js';
export {
  type IbWcStatus,
  Nic,
  type NicCompletion,
  NicMkey,
  type NicOptions,
  type NicPageFault,
  type NicPageFaultHandler,
  type NicStats,
} from './nic.js';
export {
  createOdpSystem,
  ODP_ACCESS_RO,
  ODP_ACCESS_RW,
  ODP_META_KINDS,
  type OdpSystem,
  type OdpSystemOptions,
  odpMetaLiveBytes,
} from './odp-system.js';
export {
  IbUmemOdp,
  ibUmemOdpGet,
  ibUmemOdpMapDmaAndLock,
  ibUmemOdpRelease,
  ibUmemOdpUnmapDmaPages,
  type OdpHooks,
  type OdpMode,
  type OdpRacePoint,
  type OdpUmemStats,
} from './umem-odp.js';
