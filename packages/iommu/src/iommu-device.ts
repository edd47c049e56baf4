/**
 * One IOMMU instance: the hardware (page-table walker, IOTLB, fault reporting, dirty tracking)
 * and the driver's domain ops over it. Kernel counterpart: `struct iommu_device` with its
 * `iommu_ops`/`iommu_domain_ops` as implemented by arm-smmu-v3, intel-iommu and amd-iommu over
 * io-pgtable (v6.17). Variants are data, not subclasses: an `IommuHw` description (`iommu-hw.ts`,
 * default preset `smmuv3-norange`) gives page sizes, IOTLB size, whether non-present entries are
 * cached (VT-d caching mode / AMD NpCache: needs `iotlb_sync_map`) and the driver's invalidation
 * rules; `iotlbSync` / `flushIotlbAll` / `iotlbSyncMap` issue that driver's commands, counted by
 * kind (`iotlbInvPageCmds`, `iotlbInvRangeCmds`, `iotlbInvDomainCmds`, `iotlbInvSyncs`), and drop
 * exactly what those commands cover from the IOTLB model. `deferredFlush` models
 * IOMMU_CAP_DEFERRED_FLUSH (flush queues allowed).
 */
import { amdIommuDomainFlushAll, amdIommuDomainFlushPages } from './amd-iommu-inv.js';
import { armSmmuTlbInvContext, armSmmuTlbInvRange } from './arm-smmu-v3-tlbi.js';
import { IommuError } from './errors.js';
import { cacheTagFlushAll, cacheTagFlushRange, cacheTagFlushRangeNp } from './intel-cache-tag.js';
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
import { DEFAULT_IOMMU_HW, type IommuHw, type IommuInvalidation, iommuHwPreset } from './iommu-hw.js';
import { IOMMU_READ, IOMMU_WRITE } from './iommu-prot.js';
import { Iotlb, walkFill, walkLookup } from './iotlb.js';
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
  /**
   * The hardware followed: a preset name or a validated description (default `smmuv3-norange`).
   * `pgsizeBitmap`, `iotlbEntries` and `cachesNonPresent` below override its fields.
   */
  hw?: IommuHw | string;
  /** Page sizes supported (default: the hardware's, 4K|2M|1G in every preset). */
  pgsizeBitmap?: number;
  /** Input (IOVA) address bits, ≤ 48 (default 48). */
  ias?: number;
  /** Output (physical) address bits, ≤ 52 (default 48). */
  oas?: number;
  /** IOTLB capacity in entries (default: the hardware's). */
  iotlbEntries?: number;
  /** Caches non-present entries: needs `iotlb_sync_map` after mapping (default: the hardware's). */
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
  /** The hardware description this instance follows. */
  readonly hw: IommuHw;
  readonly #inv: IommuInvalidation;
  #nextDomainId = 1;
  readonly #lookup: PteLookup = { leafIova: 0, leafPhys: 0, leafSize: 0, prot: 0, dirty: false };
  readonly #domains = new Set<IommuDomain>();

  constructor(machine: Machine, options: IommuDeviceOptions = {}) {
    this.machine = machine;
    this.name = options.name ?? 'iommu0';
    const hw = typeof options.hw === 'object' ? options.hw : iommuHwPreset(options.hw ?? DEFAULT_IOMMU_HW);
    this.hw = hw;
    this.#inv = hw.invalidation;
    this.pgsizeBitmap = options.pgsizeBitmap ?? hw.pgsizeBitmap;
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
    this.cachesNonPresent = options.cachesNonPresent ?? hw.cachesNonPresent;
    this.deferredFlush = options.deferredFlush ?? true;
    this.supportsDirtyTracking = options.dirtyTracking ?? true;
    this.iotlb = new Iotlb(machine, options.iotlbEntries ?? hw.iotlbEntries);
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
        {
          addPage: (g, iova, size) => this.#gatherAddPage(domain, g, iova, size),
          addRun: (g, iova, count, size) => this.#gatherAddRun(domain, g, iova, count, size),
        },
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
   * Driver `iotlb_sync`: issues the driver's invalidation commands for the gathered range, then
   * frees the page-table pages the unmap unlinked (safe only now), then re-initialises the gather.
   * Kernel: `arm_smmu_iotlb_sync` (granule = the gathered leaf size), `intel_iommu_tlb_sync`
   * (`cache_tag_flush_range`), `amd_iommu_iotlb_sync` (`amd_iommu_domain_flush_pages`). Differs: an
   * empty gather issues nothing, and a gather holding only freed tables is flushed domain-wide.
   */
  iotlbSync(domain: IommuDomain, gather: IommuIotlbGather): void {
    if (!iommuIotlbGatherIsEmpty(gather)) {
      const size = gather.end - gather.start + 1;
      this.machine.tracer?.instant('iotlb_inv_range', 'iotlb', {
        domain: domain.id,
        iova: gather.start,
        size,
      });
      this.#flushRange(domain, gather.start, size, gather.pgsize === 0 ? SZ_4K : gather.pgsize);
    } else if (gather.freelist.length > 0) {
      this.flushIotlbAll(domain);
    }
    const freelist = gather.freelist;
    for (let i = 0; i < freelist.length; i++) freeTablePage(this.machine, freelist[i]!);
    iommuIotlbGatherReset(gather);
  }

  /** The range flush of the hardware's driver (commands counted, IOTLB entries dropped). */
  #flushRange(domain: IommuDomain, iova: number, size: number, granule: number): void {
    const c = this.machine.counters;
    const inv = this.#inv;
    if (inv.kind === 'arm-smmu-v3') {
      armSmmuTlbInvRange(
        c,
        this.iotlb,
        inv,
        this.pgsizeBitmap & -this.pgsizeBitmap,
        domain.id,
        iova,
        size,
        granule,
      );
    } else if (inv.kind === 'intel-vtd') {
      cacheTagFlushRange(c, this.iotlb, inv, domain.id, iova, iova + size - 1);
    } else {
      amdIommuDomainFlushPages(c, this.iotlb, this.cachesNonPresent, domain.id, iova, size);
    }
  }

  /**
   * Driver `flush_iotlb_all`: the domain-wide invalidation and its wait; drops every IOTLB entry of
   * the domain. Kernel: `arm_smmu_flush_iotlb_all` (CMD_TLBI_NH_ASID + CMD_SYNC),
   * `intel_flush_iotlb_all` (DSI + wait), `amd_iommu_flush_iotlb_all` (all pages + COMPLETION_WAIT).
   */
  flushIotlbAll(domain: IommuDomain): void {
    this.machine.tracer?.instant('iotlb_inv_all', 'iotlb', { domain: domain.id });
    const c = this.machine.counters;
    const inv = this.#inv;
    if (inv.kind === 'arm-smmu-v3') armSmmuTlbInvContext(c, this.iotlb, domain.id);
    else if (inv.kind === 'intel-vtd') cacheTagFlushAll(c, this.iotlb, inv, domain.id);
    else amdIommuDomainFlushAll(c, this.iotlb, this.cachesNonPresent, domain.id);
  }

  /**
   * Driver `iotlb_sync_map`: only IOMMUs that cache non-present entries need it; it issues the
   * range invalidation for the new mapping and the model drops the cached non-present entries
   * there. Returns false when the IOMMU has no such op (nothing to do). Kernel:
   * `cache_tag_flush_range_np` (VT-d caching mode), `amd_iommu_iotlb_sync_map` (NpCache). SMMUv3
   * never caches non-present entries; an SMMUv3 device forced to (`cachesNonPresent` option, a
   * test hook) issues its range TLBI at the smallest page size.
   */
  iotlbSyncMap(domain: IommuDomain, iova: number, size: number): boolean {
    if (!this.cachesNonPresent) return false;
    const c = this.machine.counters;
    const inv = this.#inv;
    if (inv.kind === 'intel-vtd') {
      cacheTagFlushRangeNp(c, this.iotlb, inv, domain.id, iova, iova + size - 1);
    } else if (inv.kind === 'amd-vi') {
      amdIommuDomainFlushPages(c, this.iotlb, true, domain.id, iova, size, true);
    } else {
      const min = this.pgsizeBitmap & -this.pgsizeBitmap;
      const cmds = inv.rangeInvalidation ? 1 : Math.ceil(size / min);
      if (inv.rangeInvalidation) c.iotlbInvRangeCmds += cmds;
      else c.iotlbInvPageCmds += cmds;
      c.iotlbInvSyncs++;
      this.iotlb.invalidateNonPresent(domain.id, iova, size);
    }
    return true;
  }

  /**
   * The driver's gather hook for one cleared leaf. arm-smmu-v3 (`arm_smmu_tlb_inv_page_nosync` →
   * `iommu_iotlb_gather_add_page`): sync first if the page size changes or the range is disjoint.
   * intel-iommu (`intel_iommu_unmap` → `iommu_iotlb_gather_add_range`): only widen. amd-iommu
   * (`amd_iommu_iotlb_gather_add_page`): sync first only when NpCache is on and the page is disjoint.
   */
  #gatherAddPage(domain: IommuDomain, g: IommuIotlbGather, iova: number, size: number): void {
    const kind = this.#inv.kind;
    if (kind === 'arm-smmu-v3') {
      if ((g.pgsize !== 0 && g.pgsize !== size) || iommuIotlbGatherIsDisjoint(g, iova, size)) {
        this.iotlbSync(domain, g);
      }
      g.pgsize = size;
    } else {
      if (kind === 'amd-vi' && this.cachesNonPresent && iommuIotlbGatherIsDisjoint(g, iova, size)) {
        this.iotlbSync(domain, g);
      }
      if (g.pgsize === 0 || size < g.pgsize) g.pgsize = size;
    }
    iommuIotlbGatherAddRange(g, iova, size);
  }

  /**
   * `count` contiguous leaves of `size` from `iova`, with the result of `#gatherAddPage` per leaf:
   * only the first leaf can trigger a sync (every later one has the gathered size and touches the
   * gathered range, so it is neither a size change nor disjoint), the rest only widen the range.
   */
  #gatherAddRun(domain: IommuDomain, g: IommuIotlbGather, iova: number, count: number, size: number): void {
    this.#gatherAddPage(domain, g, iova, size);
    if (count > 1) iommuIotlbGatherAddRange(g, iova + size, (count - 1) * size);
  }

  /**
   * The hardware walk for one device access: IOTLB first, then the page table. Returns the
   * physical address of the byte at `iova`, or -1 after recording and reporting a fault. Writes
   * set the leaf's dirty bit when the domain tracks dirty pages. Kernel counterpart: what the
   * IOMMU hardware does; faults reach `report_iommu_fault`.
   */
  translate(domain: IommuDomain, iova: number, write: boolean, requester: string): number {
    const type = domain.type;
    if (type === IOMMU_DOMAIN_IDENTITY) return iova;
    const pgtbl = domain.pgtbl;
    if (type === IOMMU_DOMAIN_BLOCKED || pgtbl === undefined) {
      return this.#fault(domain, iova, write, 'blocked', requester);
    }
    const need = write ? IOMMU_WRITE : IOMMU_READ;
    const iotlb = this.iotlb;
    // `lookupSlot` and `insertLeaf` without re-checking the domain id or the leaf the page table
    // returned (always a valid, aligned leaf).
    let slot = walkLookup(iotlb, domain.id, iova);
    if (slot < 0) {
      const l = this.#lookup;
      if (!pgtbl.lookup(iova, l)) {
        if (this.cachesNonPresent) iotlb.insertLeaf(domain.id, iova - (iova % SZ_4K), 0, SZ_4K, 0, false);
        return this.#fault(domain, iova, write, 'not-present', requester);
      }
      slot = walkFill(iotlb, domain.id, l);
    }
    if (!iotlb.slotPresent(slot)) return this.#fault(domain, iova, write, 'not-present', requester);
    if ((iotlb.slotProt(slot) & need) === 0) return this.#fault(domain, iova, write, 'permission', requester);
    const pa = iotlb.slotPhys(slot, iova);
    if (write && domain.dirtyTracking) pgtbl.setDirty(iova);
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
