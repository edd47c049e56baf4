/**
 * @iovalink/iommu — the simulated machine and the IOMMU layer: physical memory and its buddy
 * allocator, the IOMMU page-table format and IOTLB, the iommu core, and the IOVA allocator.
 */
export { VirtualClock, type Timer } from './clock.js';
export { COUNTER_NAMES, Counters, diffCounters, type CounterName, type CounterSnapshot, type MetaStat } from './counters.js';
export { Errno, errnoName, type ErrnoName, type ErrnoValue } from './errno.js';
export {
  IommuError,
  IovalinkError,
  MachineError,
  hex,
  isIovalinkError,
  type IovalinkErrorOptions,
} from './errors.js';
export { FaultInjector, type FaultPoint } from './fault-inject.js';
export {
  iommuIotlbGatherAddRange,
  iommuIotlbGatherInit,
  iommuIotlbGatherIsDisjoint,
  iommuIotlbGatherIsEmpty,
  iommuIotlbGatherReset,
  type IommuIotlbGather,
} from './iommu-gather.js';
export { IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE } from './iommu-prot.js';
export { DEFAULT_MEM_SIZE, Machine, type MachineOptions } from './machine.js';
export {
  MAX_PAGE_ORDER,
  PageAllocator,
  RESERVED_LOW_PAGES,
  pfnToPhys,
  physToPfn,
  type Folio,
} from './page-alloc.js';
export { PAGE_SHIFT, PAGE_SIZE, PhysMem } from './phys-mem.js';
export { DmaEngine } from './dma-engine.js';
export {
  IO_PGTABLE_LEVELS,
  IO_PGTABLE_PTES_PER_TABLE,
  IOPTE_CACHE,
  IOPTE_DIRTY,
  IOPTE_LEAF,
  IOPTE_MMIO,
  IOPTE_PRIV,
  IOPTE_READ,
  IOPTE_VALID,
  IOPTE_WRITE,
  IoPgtable,
  freeTablePage,
  type IoPgtableCfg,
  type IoPgtableTlbOps,
  type PteLookup,
} from './io-pgtable.js';
export {
  DEFAULT_PGSIZE_BITMAP,
  IommuDevice,
  SZ_1G,
  SZ_2M,
  SZ_4K,
  type IommuDeviceOptions,
} from './iommu-device.js';
export {
  IOMMU_DOMAIN_BLOCKED,
  IOMMU_DOMAIN_DMA,
  IOMMU_DOMAIN_DMA_FQ,
  IOMMU_DOMAIN_IDENTITY,
  IOMMU_DOMAIN_UNMANAGED,
  IOMMU_FAULT_READ,
  IOMMU_FAULT_WRITE,
  IommuDomain,
  __IOMMU_DOMAIN_DMA_API,
  __IOMMU_DOMAIN_DMA_FQ,
  __IOMMU_DOMAIN_PAGING,
  __IOMMU_DOMAIN_PT,
  iommuDomainTypeName,
  type IommuDomainGeometry,
  type IommuDomainType,
  type IommuFault,
  type IommuFaultHandler,
} from './iommu-domain.js';
export {
  SG_DMA_BUS_ADDRESS,
  iommuDomainAlloc,
  iommuDomainFree,
  iommuFlushIotlbAll,
  iommuIotlbSync,
  iommuIovaToPhys,
  iommuMap,
  iommuMapNosync,
  iommuMapSg,
  iommuMinPgsize,
  iommuPgsize,
  iommuReadAndClearDirty,
  iommuSetDirtyTracking,
  iommuSetFaultHandler,
  iommuSyncMap,
  iommuUnmap,
  iommuUnmapFast,
  type IommuSgEntry,
  type PgsizeCount,
} from './iommu.js';
export { Iotlb, type IotlbEntry } from './iotlb.js';
export {
  IOVA_DEPOT_DELAY_MS,
  IOVA_MAG_SIZE,
  IOVA_RANGE_CACHE_MAX_SIZE,
  IovaDomain,
  iovaAlign,
  iovaMask,
  iovaOffset,
  iovaPfn,
  iovaRcacheRange,
  iovaShift,
  type Iova,
} from './iova.js';
export { Prng } from './prng.js';
