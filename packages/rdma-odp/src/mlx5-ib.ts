/**
 * The mlx5 RDMA driver's objects: the device (an `ib_device` over one NIC and its DMA function,
 * with the ODP configuration and counters) and its memory regions. Kernel counterpart:
 * drivers/infiniband/hw/mlx5/mlx5_ib.h (`struct mlx5_ib_dev`, `struct mlx5_ib_mr`,
 * `MLX5_IMR_MTT_*`), with the ODP statistics of `mlx5_ib_odp_stats`.
 * Deliberate differences: the ODP mode (`legacy` ≤ v6.15 or `hmm` v6.16+) is a device option so
 * both generations run side by side; the implicit-MR granule (`imrMttShift`) is an option
 * (kernel: 1 GiB, `MLX5_IMR_MTT_SHIFT` = 30; 16 GiB with 5-level paging since a late-2025 patch);
 * work queued by the driver (child-MR teardown, asynchronous prefetch) runs when the device is next
 * entered or on `flushWork`, not on a kernel thread.
 */
import type { Device } from '@iovalink/dma-api';
import type { Machine } from '@iovalink/iommu';
import type { IbDevice, IbDeviceOps, IbMr, IbPd } from './ib-verbs.js';
import type { Nic, NicMkey } from './nic.js';
import {
  type IbUmemOdp,
  newOdpUmemStats,
  type OdpHooks,
  type OdpMode,
  type OdpUmemStats,
} from './umem-odp.js';

/** log2 of an implicit-MR child's span (kernel: `MLX5_IMR_MTT_SHIFT` = 30, 1 GiB). */
export const MLX5_IMR_MTT_SHIFT = 30;
/** MTT entries a UMR zap block is aligned to (kernel: `MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT`, 64 B / 8 B). */
export const MLX5_UMR_MTT_NUM_ENTRIES_ALIGNMENT = 8;

/** ODP counters of one device (kernel: `mlx5_ib_odp_stats` plus model counters). */
export interface Mlx5OdpStats {
  /** Page-fault events handled (kernel: `num_page_faults`, per MR). */
  pageFaults: number;
  /** Page-fault events whose resolution failed. */
  pageFaultErrors: number;
  /** Pages made valid by faults (kernel: `num_pages` of the fault path). */
  pagesMapped: number;
  /** Invalidation callbacks that did work (kernel: `num_invalidations` events). */
  invalidations: number;
  /** MTT entries zapped by invalidations (kernel: `invalidations` pages). */
  invalidatedPages: number;
  /** Prefetch requests (kernel: `num_prefetch`). */
  prefetches: number;
  /** Implicit-MR children created. */
  implicitChildrenCreated: number;
  /** Implicit-MR children destroyed after their last page was invalidated. */
  implicitChildrenDestroyed: number;
  /** Umem-level retry and mapping counters. */
  umem: OdpUmemStats;
}

/** Options of an mlx5 device. */
export interface Mlx5IbDevOptions {
  /** ODP generation (default `hmm`). */
  mode?: OdpMode;
  /** Device name (default `mlx5_0`). */
  name?: string;
  /** log2 of an implicit-MR child's span (default `MLX5_IMR_MTT_SHIFT`). */
  imrMttShift?: number;
  /** ODP capability (default true). */
  odp?: boolean;
  /** Implicit ODP capability (default true). */
  implicitOdp?: boolean;
}

/** One mlx5 RDMA device (kernel: `struct mlx5_ib_dev`). */
export class Mlx5IbDev implements IbDevice {
  readonly name: string;
  readonly machine: Machine;
  readonly nic: Nic;
  readonly dmaDevice: Device;
  readonly mode: OdpMode;
  readonly odpSupport: boolean;
  readonly implicitOdpSupport: boolean;
  /** log2 of an implicit child's span (kernel: `mlx5_imr_mtt_shift`). */
  readonly imrMttShift: number;
  /** Granules an implicit MR covers (kernel: `mlx5_imr_ksm_entries` = TASK_SIZE >> shift). */
  readonly imrKsmEntries: number;
  /** ODP mkeys by key (kernel: `odp_mkeys` xarray). */
  readonly odpMkeys = new Map<number, Mlx5IbMr>();
  readonly stats: Mlx5OdpStats;
  /** Test hooks shared by every umem of the device (set `hooks.raceWindow` to inject races). */
  readonly hooks: OdpHooks = {};
  /** Deferred work (kernel: `system_unbound_wq` items, `odp_destroy.work`, prefetch work). */
  readonly workQueue: Array<() => void> = [];
  ops: IbDeviceOps;
  #pdn = 0;

  constructor(nic: Nic, ops: IbDeviceOps, options: Mlx5IbDevOptions, taskSize: number) {
    this.nic = nic;
    this.dmaDevice = nic.dev;
    this.machine = nic.dev.machine;
    this.name = options.name ?? 'mlx5_0';
    this.mode = options.mode ?? 'hmm';
    this.odpSupport = options.odp ?? true;
    this.implicitOdpSupport = options.implicitOdp ?? true;
    this.imrMttShift = options.imrMttShift ?? MLX5_IMR_MTT_SHIFT;
    this.imrKsmEntries = Math.floor(taskSize / 2 ** this.imrMttShift);
    this.ops = ops;
    this.stats = {
      pageFaults: 0,
      pageFaultErrors: 0,
      pagesMapped: 0,
      invalidations: 0,
      invalidatedPages: 0,
      prefetches: 0,
      implicitChildrenCreated: 0,
      implicitChildrenDestroyed: 0,
      umem: newOdpUmemStats(),
    };
  }

  /** Next PD number. */
  allocPdn(): number {
    return ++this.#pdn;
  }

  /** Runs queued work until none is left (kernel: `flush_workqueue`). */
  flushWork(): void {
    while (this.workQueue.length > 0) this.workQueue.shift()!();
  }
}

/** A memory region (kernel: `struct mlx5_ib_mr`). */
export class Mlx5IbMr implements IbMr {
  readonly device: Mlx5IbDev;
  readonly pd: IbPd;
  readonly umem: IbUmemOdp;
  /** The hardware mkey (kernel: `mmkey`). */
  readonly mkey: NicMkey;
  readonly iova: number;
  readonly length: number;
  readonly access: number;
  /** The implicit parent of a child MR (kernel: `parent`). */
  readonly parent: Mlx5IbMr | undefined;
  /** Implicit parent: children by granule index (kernel: `implicit_children` xarray). */
  readonly implicitChildren = new Map<number, Mlx5IbMr>();
  /** An implicit parent (kernel: `is_odp_implicit`). */
  readonly isOdpImplicit: boolean;
  /** Page faults handled for this MR (kernel: `odp_stats.faults`). */
  faults = 0;
  /** Pages invalidated (kernel: `odp_stats.invalidations`). */
  invalidations = 0;
  deregistered = false;

  constructor(
    device: Mlx5IbDev,
    pd: IbPd,
    umem: IbUmemOdp,
    mkey: NicMkey,
    iova: number,
    length: number,
    access: number,
    parent: Mlx5IbMr | undefined,
    implicit: boolean,
  ) {
    this.device = device;
    this.pd = pd;
    this.umem = umem;
    this.mkey = mkey;
    this.iova = iova;
    this.length = length;
    this.access = access;
    this.parent = parent;
    this.isOdpImplicit = implicit;
  }

  /** Local key (kernel: `ibmr.lkey`). */
  get lkey(): number {
    return this.mkey.key;
  }

  /** Remote key (kernel: `ibmr.rkey`). */
  get rkey(): number {
    return this.mkey.key;
  }
}
