/**
 * @iovalink/iommu — the simulated machine and the IOMMU layer: physical memory and its buddy
 * allocator, the IOMMU page-table format and IOTLB, the iommu core, and the IOVA allocator.
 *
 * The public surface is what a consumer of this layer needs; helpers shared with the sibling
 * `@iovalink/*` layers live in `@iovalink/iommu/internal` (no compatibility promise), test
 * fixtures in `@iovalink/iommu/testing`. `api/index.api.md` lists the surface.
 */
export { type Timer, VirtualClock } from './clock.js';
export {
  COUNTER_NAMES,
  type CounterName,
  type CounterSnapshot,
  Counters,
  diffCounters,
  IOTLB_COMMAND_COUNTERS,
  type MetaStat,
} from './counters.js';
export { DmaEngine } from './dma-engine.js';
export { Errno, type ErrnoName, type ErrnoValue, errnoName } from './errno.js';
export {
  IommuError,
  IovalinkError,
  type IovalinkErrorOptions,
  isIovalinkError,
  MachineError,
} from './errors.js';
export { FaultInjector, type FaultPoint } from './fault-inject.js';
export { IoPgtable, type IoPgtableCfg, type IoPgtableTlbOps, type PteLookup } from './io-pgtable.js';
export {
  type IommuSgEntry,
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
  type PgsizeCount,
  SG_DMA_BUS_ADDRESS,
} from './iommu.js';
export {
  DEFAULT_PGSIZE_BITMAP,
  IommuDevice,
  type IommuDeviceOptions,
  SZ_1G,
  SZ_2M,
  SZ_4K,
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
  type IommuDomainGeometry,
  type IommuDomainType,
  type IommuFault,
  type IommuFaultHandler,
  iommuDomainTypeName,
} from './iommu-domain.js';
export {
  type IommuIotlbGather,
  iommuIotlbGatherAddRange,
  iommuIotlbGatherInit,
} from './iommu-gather.js';
export {
  type AmdViInvalidation,
  DEFAULT_IOMMU_HW,
  IOMMU_HW_PRESET_NAMES,
  IOMMU_HW_PRESETS,
  type IommuHw,
  type IommuHwPreset,
  type IommuInvalidation,
  iommuHwPreset,
  type SmmuV3Invalidation,
  type VtdInvalidation,
  validateIommuHw,
} from './iommu-hw.js';
export { IOMMU_CACHE, IOMMU_MMIO, IOMMU_NOEXEC, IOMMU_PRIV, IOMMU_READ, IOMMU_WRITE } from './iommu-prot.js';
export { Iotlb, type IotlbEntry } from './iotlb.js';
export { type Iova, IovaDomain, iovaAlign, iovaMask, iovaOffset, iovaPfn, iovaShift } from './iova.js';
export { DEFAULT_MEM_SIZE, Machine, type MachineOptions } from './machine.js';
export {
  type Folio,
  MAX_PAGE_ORDER,
  PageAllocator,
  type PageAllocatorOptions,
  pfnToPhys,
  physToPfn,
} from './page-alloc.js';
export { fragmentMemory } from './page-fragment.js';
export { PAGE_SHIFT, PAGE_SIZE, PhysMem } from './phys-mem.js';
export { Prng } from './prng.js';
export type { TraceArgs, Tracer } from './tracer.js';
