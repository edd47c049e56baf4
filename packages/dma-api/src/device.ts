/**
 * A device as the DMA layer sees it: DMA masks, `dma_parms`, coherence, whether it is untrusted
 * (external-facing), the IOMMU domain it is attached to (or none: dma-direct), its swiotlb pool,
 * its DMA engine and its dma-debug tracker. Kernel counterpart: the DMA fields of `struct device`
 * (include/linux/device.h), `include/linux/dma-mapping.h` mask helpers, and the attach step of
 * `iommu_setup_dma_ops` (drivers/iommu/dma-iommu.c) that decides `dev->dma_iommu`.
 */
import {
  DmaEngine,
  Errno,
  IOMMU_DOMAIN_BLOCKED,
  IOMMU_DOMAIN_DMA,
  IOMMU_DOMAIN_DMA_FQ,
  IOMMU_DOMAIN_IDENTITY,
  type IommuDevice,
  type IommuDomain,
  type IommuFault,
  iommuMinPgsize,
  type Machine,
} from '@iovalink/iommu';
import { hex, iovaRcacheRange } from '@iovalink/iommu/internal';
import { DmaDebug } from './dma-debug.js';
import { iommuDmaInitDomain } from './dma-iommu.js';
import { DmaError } from './errors.js';
import type { IoTlbMem } from './swiotlb.js';

/** Default maximum DMA segment size when a device sets none (kernel: 64 KiB). */
export const DMA_DEFAULT_MAX_SEGMENT_SIZE = 0x10000;
/** Default segment boundary mask when a device sets none (kernel: ULONG_MAX; here 2^52 - 1). */
export const DMA_DEFAULT_SEG_BOUNDARY = 2 ** 52 - 1;

/** A mask of `n` low bits (kernel: `DMA_BIT_MASK(n)`), n ≤ 64; masks above 52 bits read as 2^52 - 1. */
export function dmaBitMask(n: number): number {
  if (n >= 52) return 2 ** 52 - 1;
  return 2 ** n - 1;
}

/** DMA segment limits (kernel: `struct device_dma_parameters`). */
export interface DmaParms {
  /** Largest DMA segment the device accepts, in bytes. */
  maxSegmentSize: number;
  /** A DMA segment must not cross a `(mask + 1)`-aligned boundary. */
  segmentBoundaryMask: number;
  /** Low address bits a bounce buffer must preserve (kernel: `min_align_mask`). */
  minAlignMask: number;
}

/** How a device reaches memory. */
export type DeviceTranslation = 'strict' | 'lazy' | 'identity' | 'blocked' | 'none';

/** Options for `createDevice`. */
export interface DeviceOptions {
  /** Name used in messages, traces and faults. */
  name?: string;
  /** The IOMMU the device sits behind; omit for a device with no IOMMU (dma-direct). */
  iommu?: IommuDevice;
  /**
   * Default domain behind the IOMMU: 'strict' (DMA), 'lazy' (DMA_FQ, falls back to strict when
   * the IOMMU lacks deferred flush or the device is untrusted), 'identity' or 'blocked'.
   * Default 'strict'. Ignored without an IOMMU.
   */
  translation?: Exclude<DeviceTranslation, 'none'>;
  /** DMA mask in bits (default 64). */
  dmaBits?: number;
  /** Coherent DMA mask in bits (default = dmaBits). */
  coherentDmaBits?: number;
  /** Cache-coherent device (default true). Non-coherent devices get CPU cache maintenance. */
  coherent?: boolean;
  /** External-facing device: always strict, partial granules bounced through swiotlb. */
  untrusted?: boolean;
  /** PCI device: 32-bit IOVA first (`pci_32bit_workaround`), PCI dma_parms defaults. Default true. */
  pci?: boolean;
  /** Segment limits; PCI defaults are 64 KiB / 0xFFFFFFFF. */
  dmaParms?: Partial<DmaParms>;
  /** swiotlb pool for bouncing; without one, a bounce that is needed fails like an exhausted pool. */
  swiotlb?: IoTlbMem;
  /** Track mappings with dma-debug (default true). */
  debug?: boolean;
}

/** A DMA-capable device (kernel: `struct device`, DMA fields). */
export class Device {
  readonly machine: Machine;
  readonly name: string;
  dmaMask: number;
  coherentDmaMask: number;
  readonly dmaParms: DmaParms;
  readonly coherent: boolean;
  readonly untrusted: boolean;
  readonly isPci: boolean;
  /** Try 32-bit IOVAs first; cleared for good after the first failure (kernel: same field). */
  pci32bitWorkaround: boolean;
  readonly iommu: IommuDevice | undefined;
  /** The default domain the device is attached to. */
  readonly domain: IommuDomain | undefined;
  /** True when the DMA API goes through iommu-dma (kernel: `dev->dma_iommu`). */
  readonly dmaIommu: boolean;
  readonly swiotlb: IoTlbMem | undefined;
  /** The device's bus master. */
  readonly engine: DmaEngine;
  /** dma-debug tracker, when enabled. */
  readonly debug: DmaDebug | undefined;
  /** Set once a mapping bounced through swiotlb (kernel: `dev->dma_skip_sync` cleared). */
  usedSwiotlb = false;
  /** Faults reported for this device. */
  readonly faults: IommuFault[] = [];
  /** Optional device fault callback (kernel: driver's iommu fault handler). */
  onFault: ((fault: IommuFault) => void) | undefined;

  constructor(machine: Machine, options: DeviceOptions = {}) {
    this.machine = machine;
    this.name = options.name ?? 'dev0';
    const bits = options.dmaBits ?? 64;
    if (!(Number.isInteger(bits) && bits >= 12 && bits <= 64)) {
      throw new DmaError(`${this.name}: dmaBits ${bits} outside 12..64`, { rule: 'dma_set_mask: bits' });
    }
    this.dmaMask = dmaBitMask(bits);
    this.coherentDmaMask = dmaBitMask(options.coherentDmaBits ?? bits);
    const pci = options.pci ?? true;
    this.isPci = pci;
    this.pci32bitWorkaround = pci;
    this.dmaParms = {
      maxSegmentSize: options.dmaParms?.maxSegmentSize ?? DMA_DEFAULT_MAX_SEGMENT_SIZE,
      segmentBoundaryMask:
        options.dmaParms?.segmentBoundaryMask ?? (pci ? 0xffffffff : DMA_DEFAULT_SEG_BOUNDARY),
      minAlignMask: options.dmaParms?.minAlignMask ?? 0,
    };
    this.coherent = options.coherent ?? true;
    this.untrusted = options.untrusted ?? false;
    this.swiotlb = options.swiotlb;
    this.iommu = options.iommu;
    this.engine = new DmaEngine(machine, this.name);
    this.debug = (options.debug ?? true) ? new DmaDebug(this) : undefined;
    let domain: IommuDomain | undefined;
    let dmaIommu = false;
    if (this.iommu !== undefined) {
      const want = options.translation ?? 'strict';
      let type =
        want === 'identity'
          ? IOMMU_DOMAIN_IDENTITY
          : want === 'blocked'
            ? IOMMU_DOMAIN_BLOCKED
            : want === 'lazy' && this.iommu.deferredFlush && !this.untrusted
              ? IOMMU_DOMAIN_DMA_FQ
              : IOMMU_DOMAIN_DMA;
      // untrusted devices may not bypass translation (kernel: iommu_get_def_domain_type)
      if (this.untrusted && type === IOMMU_DOMAIN_IDENTITY) type = IOMMU_DOMAIN_DMA;
      domain = this.iommu.domainAlloc(type);
      if (domain === undefined) {
        throw new DmaError(
          `${this.name}: could not allocate the default IOMMU domain (out of page-table pages)`,
          {
            rule: 'iommu_setup_default_domain: alloc',
          },
        );
      }
      domain.faultHandler = (_d, fault) => {
        this.faults.push(fault);
        this.onFault?.(fault);
        return 0;
      };
      if (domain.isDmaApi) {
        iommuDmaInitDomain(this, domain);
        dmaIommu = true;
      }
      this.engine.domain = domain;
    }
    this.domain = domain;
    this.dmaIommu = dmaIommu;
  }

  /** How this device reaches memory. */
  get translation(): DeviceTranslation {
    const d = this.domain;
    if (d === undefined) return 'none';
    if (d.type === IOMMU_DOMAIN_IDENTITY) return 'identity';
    if (d.type === IOMMU_DOMAIN_BLOCKED) return 'blocked';
    return d.isFq ? 'lazy' : 'strict';
  }

  /** Describes the device for error messages. */
  toString(): string {
    return `${this.name} (${this.translation}${this.untrusted ? ', untrusted' : ''}, mask ${hex(this.dmaMask)})`;
  }
}

/** Creates a device, attaching it to a new default domain when it sits behind an IOMMU. */
export function createDevice(machine: Machine, options: DeviceOptions = {}): Device {
  return new Device(machine, options);
}

/** True when the device's DMA goes through iommu-dma (kernel: `use_dma_iommu`). */
export function useDmaIommu(dev: Device): boolean {
  return dev.dmaIommu;
}

/** Sets the streaming DMA mask (kernel: `dma_set_mask`). Returns 0 or -EIO for masks below 12 bits. */
export function dmaSetMask(dev: Device, mask: number): number {
  if (mask < 0xfff) return -Errno.EIO;
  dev.dmaMask = mask;
  return 0;
}

/** Sets both masks (kernel: `dma_set_mask_and_coherent`). */
export function dmaSetMaskAndCoherent(dev: Device, mask: number): number {
  const r = dmaSetMask(dev, mask);
  if (r === 0) dev.coherentDmaMask = mask;
  return r;
}

/** The streaming DMA mask (kernel: `dma_get_mask`). */
export function dmaGetMask(dev: Device): number {
  return dev.dmaMask;
}

/** Largest DMA segment (kernel: `dma_get_max_seg_size`). */
export function dmaGetMaxSegSize(dev: Device): number {
  return dev.dmaParms.maxSegmentSize;
}

/** Sets the largest DMA segment (kernel: `dma_set_max_seg_size`). */
export function dmaSetMaxSegSize(dev: Device, size: number): void {
  dev.dmaParms.maxSegmentSize = size;
}

/** Segment boundary mask (kernel: `dma_get_seg_boundary`). */
export function dmaGetSegBoundary(dev: Device): number {
  return dev.dmaParms.segmentBoundaryMask;
}

/** Sets the segment boundary mask (kernel: `dma_set_seg_boundary`). */
export function dmaSetSegBoundary(dev: Device, mask: number): void {
  dev.dmaParms.segmentBoundaryMask = mask;
}

/**
 * The DMA merge boundary (kernel: `dma_get_merge_boundary`, kernel/dma/mapping.c): the IOVA
 * granule minus one under iommu-dma; 0 ("cannot merge") for dma-direct.
 */
export function dmaGetMergeBoundary(dev: Device): number {
  if (!dev.dmaIommu || dev.domain === undefined) return 0;
  return iommuMinPgsize(dev.domain) - 1;
}

/** True when the device is coherent, so no CPU cache maintenance is needed (kernel: `dev_is_dma_coherent`). */
export function devIsDmaCoherent(dev: Device): boolean {
  return dev.coherent;
}

/**
 * Whether DMA addresses must be kept for unmap (kernel: `dma_need_unmap`): true behind an IOMMU
 * (not identity), when the device is non-coherent or has used swiotlb, or when dma-debug is on.
 */
export function dmaNeedUnmap(dev: Device): boolean {
  if (dev.debug !== undefined) return true;
  if (dev.dmaIommu) return true;
  return !dev.coherent || dev.usedSwiotlb || dev.untrusted;
}

/**
 * Preferred largest mapping (kernel: `dma_opt_mapping_size`): under iommu-dma the IOVA rcache
 * range, 128 KiB (larger allocations miss the per-CPU caches); unlimited otherwise.
 */
export function dmaOptMappingSize(dev: Device): number {
  return dev.dmaIommu ? iovaRcacheRange() : Number.MAX_SAFE_INTEGER;
}

/**
 * True when the device needs CPU cache maintenance around DMA (kernel: `dma_need_sync`,
 * kernel/dma/mapping.c, i.e. `!dev->dma_skip_sync`): non-coherent, or it has bounced through
 * swiotlb. Differs: per device, not per address.
 */
export function dmaNeedSync(dev: Device): boolean {
  return !dev.coherent || dev.usedSwiotlb;
}

/**
 * True when the device cannot reach all of RAM and would bounce (kernel: `dma_addressing_limited`,
 * kernel/dma/mapping.c): a dma-direct device whose mask is below the top of RAM. Devices behind an
 * IOMMU DMA domain are never limited: the IOMMU remaps into the mask.
 */
export function dmaAddressingLimited(dev: Device): boolean {
  if (dev.dmaIommu) return false;
  return dev.dmaMask < dev.machine.phys.size - 1;
}
