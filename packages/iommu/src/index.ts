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
export { Prng } from './prng.js';
