/**
 * One IOMMU instance: the hardware (page-table walker, IOTLB, fault reporting, dirty tracking)
 * and the driver's domain ops over it. Kernel counterpart: `struct iommu_device` with its
 * `iommu_ops`/`iommu_domain_ops` as implemented by drivers such as arm-smmu-v3 or intel-iommu
 * over io-pgtable. Variants are options, not subclasses: `cachesNonPresent` models VT-d caching
 * mode / virtualised IOMMUs (needs `iotlb_sync_map`), `deferredFlush` models
 * IOMMU_CAP_DEFERRED_FLUSH (flush queues allowed).
 */
import { IommuError } from './errors.js';
import { freeTablePage, IoPgtable, type PteLookup } from './io-pgtable.js';
import {
  IOMMU_DOMAIN_BLOCKED,
  IOMMU_DOMAIN_IDENTITY,
  IOMMU_FAULT_WRITE,
  IommuDomain,
  type IommuDomainType,
  type IommuFault,
} from './iommu-domain.js';
import {
  type IommuIotlbGather,
  iommuIotlbGatherAddRange,
  iommuIotlbGatherIsDisjoint,
  iommuIotlbGatherIsEmpty,
  iommuIotlbGatherReset,
} from './iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from './iommu-prot.js';
import { Iotlb } from './iotlb.js';
import type { Machine } from './machine.js';

/** 4 KiB | 2 MiB | 1 GiB: the page sizes of our format (x86-64 / ARM 4K granule). */
export const SZ_4K = 0x1000;
/** 2 MiB. */
export const SZ_2M = 0x200000;
/** 1 GiB. */
export const SZ_1G = 0x40000000;
/** The default page-size bitmap. */
export const DEFAULT_PGSIZE_BITMAP = SZ_4K | SZ_2M | SZ_1G;

/** Options of an IOMMU instance. */
export interface IommuDeviceOptions {
  /** Name for traces and messages (default `"iommu0"`). */
  name?: string;
  /** Page sizes supported (default 4K|2M|1G). */
  pgsizeBitmap?: number;
  /** Input (IOVA) address bits, ≤ 48 (default 48). */
  ias?: number;
  /** Output (physical) address bits, ≤ 52 (default 48). */
  oas?: number;
  /** IOTLB capacity in entries (default 512). */
  iotlbEntries?: number;
  /** Caches non-present entries: needs `iotlb_sync_map` after mapping (default false). */
  cachesNonPresent?: boolean;
  /** IOMMU_CAP_DEFERRED_FLUSH: flush queues may be used (default true). */
  deferredFlush?: boolean;
  /** Hardware dirty tracking supported (default true). */
  dirtyTracking?: boolean;
}

/** An IOMMU instance (kernel: `struct iommu_device` + driver ops). */
export class IommuDevice {
  readonly machine: Machine;
  readonly name: string;
  readonly pgsizeBitmap: number;
  readonly ias: number;
  readonly oas: number;
  readonly cachesNonPresent: boolean;
  readonly deferredFlush: boolean;
  readonly supportsDirtyTracking: boolean;
  readonly iotlb: Iotlb;
  #nextDomainId = 1;
  readonly #lookup: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
  readonly #domains = new Set<IommuDomain>();

  constructor(machine: Machine, options: IommuDeviceOptions = {}) {
    this.machine = machine;
    this.name = options.name ?? 'iommu0';
    this.pgsizeBitmap = options.pgsizeBitmap ?? DEFAULT_PGSIZE_BITMAP;
    this.ias = options.ias ?? 48;
    this.oas = options.oas ?? 48;
    if ((this.pgsizeBitmap & SZ_4K) === 0 || (this.pgsizeBitmap & ~DEFAULT_PGSIZE_BITMAP) !== 0) {
      throw new IommuError(
        `iommu: pgsizeBitmap 0x${this.pgsizeBitmap.toString(16)} must include 4K and only 4K/2M/1G`,
        { rule: 'iommu: pgsize_bitmap' },
      );
    }
    if (!(this.ias >= 32 && this.ias <= 48 && this.oas >= 32 && this.oas <= 52)) {
      throw new IommuError(`iommu: ias ${this.ias} / oas ${this.oas} outside 32..48 / 32..52`, {
        rule: 'iommu: address size',
      });
    }
    this.cachesNonPresent = options.cachesNonPresent ?? false;
    this.deferredFlush = options.deferredFlush ?? true;
    this.supportsDirtyTracking = options.dirtyTracking ?? true;
    this.iotlb = new Iotlb(machine, options.iotlbEntries ?? 512);
  }

  /** Live domains of this IOMMU. */
  get domains(): ReadonlySet<IommuDomain> {
    return this.#domains;
  }

  /**
   * Allocates a domain of `type` (kernel: `ops->domain_alloc_paging` / the static identity and
   * blocked domains). Returns undefined when the page-table root cannot be allocated.
   */
  domainAlloc(type: IommuDomainType): IommuDomain | undefined {
    let pgtbl: IoPgtable | undefined;
    if (type !== IOMMU_DOMAIN_BLOCKED && type !== IOMMU_DOMAIN_IDENTITY) {
      pgtbl = IoPgtable.create(
        this.machine,
        { pgsizeBitmap: this.pgsizeBitmap, ias: this.ias, oas: this.oas },
        { addPage: (g, iova, size) => this.#gatherAddPage(domain, g, iova, size) },
      );
      if (pgtbl === undefined) return undefined;
    }
    const domain: IommuDomain = new IommuDomain(this, this.#nextDomainId++, type, pgtbl);
    this.#domains.add(domain);
    return domain;
  }

  /** Frees a domain: its page table and its IOTLB entries (kernel: `iommu_domain_free`). */
  domainFree(domain: IommuDomain): void {
    if (!this.#domains.delete(domain)) {
      throw new IommuError(`iommu_domain_free: domain ${domain.id} is not live on ${this.name}`, {
        rule: 'iommu_domain_free: not live',
      });
    }
    this.iotlb.invalidateAll(domain.id);
    domain.pgtbl?.destroy();
  }

  /**
   * Driver `iotlb_sync`: invalidates the gathered range, then frees the page-table pages the
   * unmap unlinked (safe only now), then re-initialises the gather.
   */
  iotlbSync(domain: IommuDomain, gather: IommuIotlbGather): void {
    if (!iommuIotlbGatherIsEmpty(gather)) {
      this.machine.tracer?.instant('iotlb_inv_range', 'iotlb', {
        domain: domain.id,
        iova: gather.start,
        size: gather.end - gather.start + 1,
      });
      this.iotlb.invalidateRange(domain.id, gather.start, gather.end - gather.start + 1);
    } else if (gather.freelist.length > 0) {
      this.iotlb.invalidateAll(domain.id);
    }
    for (const pa of gather.freelist) freeTablePage(this.machine, pa);
    iommuIotlbGatherReset(gather);
  }

  /** Driver `flush_iotlb_all`: drops every IOTLB entry of the domain. */
  flushIotlbAll(domain: IommuDomain): void {
    this.machine.tracer?.instant('iotlb_inv_all', 'iotlb', { domain: domain.id });
    this.iotlb.invalidateAll(domain.id);
  }

  /**
   * Driver `iotlb_sync_map`: only IOMMUs that cache non-present entries implement it; it drops
   * those entries in the range. Returns false when the IOMMU has no such op (nothing to do).
   */
  iotlbSyncMap(domain: IommuDomain, iova: number, size: number): boolean {
    if (!this.cachesNonPresent) return false;
    this.iotlb.invalidateNonPresent(domain.id, iova, size);
    return true;
  }

  /** iommu_iotlb_gather_add_page: sync first if the page size changes or the range is disjoint. */
  #gatherAddPage(domain: IommuDomain, g: IommuIotlbGather, iova: number, size: number): void {
    if ((g.pgsize !== 0 && g.pgsize !== size) || iommuIotlbGatherIsDisjoint(g, iova, size)) {
      this.iotlbSync(domain, g);
    }
    g.pgsize = size;
    iommuIotlbGatherAddRange(g, iova, size);
  }

  /**
   * The hardware walk for one device access: IOTLB first, then the page table. Returns the
   * physical address of the byte at `iova`, or -1 after recording and reporting a fault. Writes
   * set the leaf's dirty bit when the domain tracks dirty pages. Kernel counterpart: what the
   * IOMMU hardware does; faults reach `report_iommu_fault`.
   */
  translate(domain: IommuDomain, iova: number, write: boolean, requester: string): number {
    if (domain.type === IOMMU_DOMAIN_IDENTITY) return iova;
    if (domain.type === IOMMU_DOMAIN_BLOCKED || domain.pgtbl === undefined) {
      return this.#fault(domain, iova, write, 'blocked', requester);
    }
    const need = write ? IOMMU_WRITE : IOMMU_READ;
    const iotlb = this.iotlb;
    let slot = iotlb.lookupSlot(domain.id, iova);
    if (slot < 0) {
      const l = this.#lookup;
      if (!domain.pgtbl.lookup(iova, l)) {
        if (this.cachesNonPresent) iotlb.insertLeaf(domain.id, iova - (iova % SZ_4K), 0, SZ_4K, 0, false);
        return this.#fault(domain, iova, write, 'not-present', requester);
      }
      slot = iotlb.insertLeaf(domain.id, l.leafIova, l.leafPhys, l.leafSize, l.prot, true);
    }
    if (!iotlb.slotPresent(slot)) return this.#fault(domain, iova, write, 'not-present', requester);
    if ((iotlb.slotProt(slot) & need) === 0) return this.#fault(domain, iova, write, 'permission', requester);
    const pa = iotlb.slotPhys(slot, iova);
    if (write && domain.dirtyTracking) domain.pgtbl.setDirty(iova);
    return pa;
  }

  #fault(
    domain: IommuDomain,
    iova: number,
    write: boolean,
    reason: IommuFault['reason'],
    requester: string,
  ): number {
    const fault: IommuFault = {
      domainId: domain.id,
      iova,
      flags: write ? IOMMU_FAULT_WRITE : 0,
      reason,
      timeNs: this.machine.clock.nowNs,
      requester,
    };
    this.machine.counters.iommuFaults++;
    domain.faults.push(fault);
    if (domain.faults.length > 1024) domain.faults.shift();
    domain.faultHandler?.(domain, fault);
    return -1;
  }
}
