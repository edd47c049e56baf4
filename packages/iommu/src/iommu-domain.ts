/**
 * IOMMU domains: a translation context devices attach to. Kernel counterpart: `struct
 * iommu_domain` and the domain type bits of `include/linux/iommu.h`. A paging domain owns an
 * `IoPgtable`; IDENTITY translates 1:1, BLOCKED translates nothing.
 */
import type { IoPgtable } from './io-pgtable.js';
import type { IommuDevice } from './iommu-device.js';

/** The domain has a page table (kernel: `__IOMMU_DOMAIN_PAGING`). */
export const __IOMMU_DOMAIN_PAGING = 1 << 0;
/** The domain is managed by the DMA API (kernel: `__IOMMU_DOMAIN_DMA_API`). */
export const __IOMMU_DOMAIN_DMA_API = 1 << 1;
/** Passthrough: bus address = physical address (kernel: `__IOMMU_DOMAIN_PT`). */
export const __IOMMU_DOMAIN_PT = 1 << 2;
/** The DMA API uses a flush queue: lazy invalidation (kernel: `__IOMMU_DOMAIN_DMA_FQ`). */
export const __IOMMU_DOMAIN_DMA_FQ = 1 << 3;

/** All DMA blocked (kernel: `IOMMU_DOMAIN_BLOCKED`). */
export const IOMMU_DOMAIN_BLOCKED = 0;
/** 1:1 passthrough (kernel: `IOMMU_DOMAIN_IDENTITY`). */
export const IOMMU_DOMAIN_IDENTITY = __IOMMU_DOMAIN_PT;
/** Caller-managed paging domain, e.g. VFIO (kernel: `IOMMU_DOMAIN_UNMANAGED`). */
export const IOMMU_DOMAIN_UNMANAGED = __IOMMU_DOMAIN_PAGING;
/** DMA-API domain with strict invalidation (kernel: `IOMMU_DOMAIN_DMA`). */
export const IOMMU_DOMAIN_DMA = __IOMMU_DOMAIN_PAGING | __IOMMU_DOMAIN_DMA_API;
/** DMA-API domain with a flush queue: lazy invalidation (kernel: `IOMMU_DOMAIN_DMA_FQ`). */
export const IOMMU_DOMAIN_DMA_FQ = __IOMMU_DOMAIN_PAGING | __IOMMU_DOMAIN_DMA_API | __IOMMU_DOMAIN_DMA_FQ;

/** One of the five domain types. */
export type IommuDomainType =
  | typeof IOMMU_DOMAIN_BLOCKED
  | typeof IOMMU_DOMAIN_IDENTITY
  | typeof IOMMU_DOMAIN_UNMANAGED
  | typeof IOMMU_DOMAIN_DMA
  | typeof IOMMU_DOMAIN_DMA_FQ;

/** Name of a domain type, as sysfs prints it. */
export function iommuDomainTypeName(type: number): string {
  switch (type) {
    case IOMMU_DOMAIN_BLOCKED:
      return 'blocked';
    case IOMMU_DOMAIN_IDENTITY:
      return 'identity';
    case IOMMU_DOMAIN_UNMANAGED:
      return 'unmanaged';
    case IOMMU_DOMAIN_DMA:
      return 'DMA';
    case IOMMU_DOMAIN_DMA_FQ:
      return 'DMA-FQ';
    default:
      return `type ${type}`;
  }
}

/** Fault flag: the faulting access was a read (kernel: `IOMMU_FAULT_READ`). */
export const IOMMU_FAULT_READ = 0;
/** Fault flag: the faulting access was a write (kernel: `IOMMU_FAULT_WRITE`). */
export const IOMMU_FAULT_WRITE = 1;

/** One recorded IOMMU fault. */
export interface IommuFault {
  /** Domain id. */
  domainId: number;
  /** Faulting bus address. */
  iova: number;
  /** `IOMMU_FAULT_READ` or `IOMMU_FAULT_WRITE`. */
  flags: number;
  /** Why: not present, stale non-present cache entry, or a missing permission. */
  reason: 'not-present' | 'permission' | 'blocked';
  /** Virtual time of the fault. */
  timeNs: number;
  /** Requester that faulted (the DMA engine's name). */
  requester: string;
}

/**
 * A fault handler (kernel: `iommu_fault_handler_t`): returns 0 if it handled the fault, else an
 * error, as `report_iommu_fault` expects.
 */
export type IommuFaultHandler = (domain: IommuDomain, fault: IommuFault) => number;

/** Aperture of a domain (kernel: `struct iommu_domain_geometry`). */
export interface IommuDomainGeometry {
  apertureStart: number;
  apertureEnd: number;
  forceAperture: boolean;
}

/** A translation context (kernel: `struct iommu_domain`). */
export class IommuDomain {
  /** Type bits; the DMA → DMA_FQ switch changes it at run time as sysfs can. */
  type: IommuDomainType;
  readonly id: number;
  readonly iommu: IommuDevice;
  /** The page table, for paging domains. */
  readonly pgtbl: IoPgtable | undefined;
  /** Supported page sizes (bit n set = 2^n bytes). */
  readonly pgsizeBitmap: number;
  readonly geometry: IommuDomainGeometry;
  /** Fault handler installed by the domain's owner (kernel: `iommu_set_fault_handler`). */
  faultHandler: IommuFaultHandler | undefined;
  /** Faults seen on this domain, oldest first (bounded to the last 1024). */
  readonly faults: IommuFault[] = [];
  /** Hardware dirty tracking enabled (kernel: `dirty_ops->set_dirty_tracking`). */
  dirtyTracking = false;
  /** Owner's private data, e.g. the DMA API's IOVA cookie (kernel: `domain->iova_cookie`). */
  iovaCookie: unknown;

  constructor(iommu: IommuDevice, id: number, type: IommuDomainType, pgtbl: IoPgtable | undefined) {
    this.iommu = iommu;
    this.id = id;
    this.type = type;
    this.pgtbl = pgtbl;
    this.pgsizeBitmap = pgtbl?.cfg.pgsizeBitmap ?? iommu.pgsizeBitmap;
    const top = 2 ** iommu.ias - 1;
    this.geometry = { apertureStart: 0, apertureEnd: top, forceAperture: true };
  }

  /** True for domains with a page table (kernel: `type & __IOMMU_DOMAIN_PAGING`). */
  get isPaging(): boolean {
    return (this.type & __IOMMU_DOMAIN_PAGING) !== 0;
  }

  /** True for DMA-API domains, strict or lazy (kernel: `type & __IOMMU_DOMAIN_DMA_API`). */
  get isDmaApi(): boolean {
    return (this.type & __IOMMU_DOMAIN_DMA_API) !== 0;
  }

  /** True for flush-queue (lazy) domains (kernel: `type & __IOMMU_DOMAIN_DMA_FQ`). */
  get isFq(): boolean {
    return (this.type & __IOMMU_DOMAIN_DMA_FQ) !== 0;
  }
}
