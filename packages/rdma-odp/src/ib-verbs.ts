/**
 * The verbs layer an ODP memory region is created through: access flags, the access check,
 * protection domains, `ib_reg_user_mr` / `ib_dereg_mr` / `ib_advise_mr` dispatched through the
 * device's ops, and the `ib_dma_*` wrappers that let software-RDMA devices skip the DMA API.
 * Kernel counterparts: include/rdma/ib_verbs.h (`IB_ACCESS_*`, `ib_access_writable`,
 * `ib_check_mr_access`, `ib_uses_virt_dma`, `ib_dma_map_page`, `ib_dma_mapping_error`,
 * `ib_dma_unmap_page`), drivers/infiniband/core/verbs.c and uverbs_std_types_mr.c (advise_mr),
 * include/uapi/rdma/ib_user_ioctl_verbs.h (`IB_UVERBS_ADVISE_MR_*`).
 * Deliberate differences: no ucontext/uobject layer — a PD carries the process's address space
 * (the kernel takes `current->mm` at registration); only user MRs exist.
 */
import {
  type Device,
  type DmaDataDirection,
  dmaMapPage,
  dmaMappingError,
  dmaUnmapPage,
} from '@iovalink/dma-api';
import { Errno, type Machine } from '@iovalink/iommu';
import type { Mm } from './mm.js';

/** Local write (kernel: `IB_ACCESS_LOCAL_WRITE`). */
export const IB_ACCESS_LOCAL_WRITE = 1 << 0;
/** Remote peers may RDMA WRITE (kernel: `IB_ACCESS_REMOTE_WRITE`). */
export const IB_ACCESS_REMOTE_WRITE = 1 << 1;
/** Remote peers may RDMA READ (kernel: `IB_ACCESS_REMOTE_READ`). */
export const IB_ACCESS_REMOTE_READ = 1 << 2;
/** Remote atomics (kernel: `IB_ACCESS_REMOTE_ATOMIC`). */
export const IB_ACCESS_REMOTE_ATOMIC = 1 << 3;
/** Memory-window binding (kernel: `IB_ACCESS_MW_BIND`). */
export const IB_ACCESS_MW_BIND = 1 << 4;
/** Zero-based virtual addresses (kernel: `IB_ZERO_BASED`). */
export const IB_ZERO_BASED = 1 << 5;
/** On-demand paging: pages are faulted by the device, never pinned (kernel: `IB_ACCESS_ON_DEMAND`). */
export const IB_ACCESS_ON_DEMAND = 1 << 6;
/** Huge-page umem (kernel: `IB_ACCESS_HUGETLB`); not modelled. */
export const IB_ACCESS_HUGETLB = 1 << 7;
/** Flags `ib_check_mr_access` accepts here. */
export const IB_ACCESS_SUPPORTED =
  IB_ACCESS_LOCAL_WRITE |
  IB_ACCESS_REMOTE_WRITE |
  IB_ACCESS_REMOTE_READ |
  IB_ACCESS_REMOTE_ATOMIC |
  IB_ACCESS_MW_BIND |
  IB_ZERO_BASED |
  IB_ACCESS_ON_DEMAND |
  IB_ACCESS_HUGETLB;

/** Prefetch for read; may map read-only (kernel: `IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH`). */
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH = 0;
/** Prefetch for write (kernel: `IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE`). */
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE = 1;
/** Map what is present, fault nothing (kernel: `IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT`). */
export const IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT = 2;
/** Run the advice synchronously (kernel: `IB_UVERBS_ADVISE_MR_FLAG_FLUSH`). */
export const IB_UVERBS_ADVISE_MR_FLAG_FLUSH = 1 << 0;

/** A scatter/gather element naming part of an MR (kernel: `struct ib_sge`). */
export interface IbSge {
  addr: number;
  length: number;
  lkey: number;
}

/** A memory region (kernel: `struct ib_mr`). */
export interface IbMr {
  readonly device: IbDevice;
  readonly pd: IbPd;
  readonly lkey: number;
  readonly rkey: number;
  /** First device-visible address (kernel: `ibmr.iova`). */
  readonly iova: number;
  readonly length: number;
  /** `IB_ACCESS_*` flags. */
  readonly access: number;
}

/** The driver entry points verbs dispatch to (kernel: the `ib_device_ops` members used here). */
export interface IbDeviceOps {
  /** Registers a user MR (kernel: `reg_user_mr`); the MR or -errno. */
  regUserMr(pd: IbPd, start: number, length: number, iova: number, access: number): IbMr | number;
  /** Deregisters an MR (kernel: `dereg_mr`); 0 or -errno. */
  deregMr(mr: IbMr): number;
  /** Advice on an MR range (kernel: `advise_mr`); 0 or -errno. */
  adviseMr(pd: IbPd, advice: number, flags: number, sgList: readonly IbSge[]): number;
}

/** An RDMA device (kernel: `struct ib_device`). */
export interface IbDevice {
  readonly name: string;
  readonly machine: Machine;
  /** Device used for DMA mapping; undefined for software RDMA (kernel: `dma_device`, `ib_uses_virt_dma`). */
  readonly dmaDevice: Device | undefined;
  /** ODP supported (kernel: `IBK_ON_DEMAND_PAGING`). */
  readonly odpSupport: boolean;
  readonly ops: IbDeviceOps;
  /** Hands out the next PD number (kernel: the PD's `pdn` from firmware). */
  allocPdn(): number;
}

/** A protection domain of one process (kernel: `struct ib_pd` in a ucontext). */
export class IbPd {
  readonly device: IbDevice;
  /** The process that owns the PD (kernel: `current->mm` of the ucontext). */
  readonly mm: Mm;
  readonly pdn: number;

  constructor(device: IbDevice, mm: Mm, pdn: number) {
    this.device = device;
    this.mm = mm;
    this.pdn = pdn;
  }
}

/** Allocates a PD for the process `mm` (kernel: `ib_alloc_pd` via uverbs). */
export function ibAllocPd(device: IbDevice, mm: Mm): IbPd {
  return new IbPd(device, mm, device.allocPdn());
}

/** True when an MR with `access` can be written by the device (kernel: `ib_access_writable`). */
export function ibAccessWritable(access: number): boolean {
  return (
    (access &
      (IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_ATOMIC | IB_ACCESS_MW_BIND)) !==
    0
  );
}

/**
 * Checks MR access flags (kernel: `ib_check_mr_access`): remote write or atomic needs local write
 * (-EINVAL), unknown flags are -EINVAL, ODP on a device without it -EOPNOTSUPP.
 */
export function ibCheckMrAccess(device: IbDevice, flags: number): number {
  if (
    (flags & (IB_ACCESS_REMOTE_ATOMIC | IB_ACCESS_REMOTE_WRITE)) !== 0 &&
    (flags & IB_ACCESS_LOCAL_WRITE) === 0
  ) {
    return -Errno.EINVAL;
  }
  if ((flags & ~IB_ACCESS_SUPPORTED) !== 0) return -Errno.EINVAL;
  if ((flags & IB_ACCESS_ON_DEMAND) !== 0 && !device.odpSupport) return -Errno.EOPNOTSUPP;
  return 0;
}

/**
 * Registers a user memory region (kernel: `ib_reg_user_mr` / uverbs `reg_mr`). Like the kernel's
 * `ERR_PTR` returns throughout this package, the result is the MR or a negative errno (-EINVAL,
 * -EOPNOTSUPP, -EOVERFLOW, -ENOMEM): narrow it with `isErr` before use, never with a cast. The MR
 * is the driver's own type (`Mlx5IbMr` for `mlx5IbAdd` devices) seen through `IbMr`.
 */
export function ibRegUserMr(
  pd: IbPd,
  start: number,
  length: number,
  iova: number,
  access: number,
): IbMr | number {
  const r = ibCheckMrAccess(pd.device, access);
  if (r !== 0) return r;
  return pd.device.ops.regUserMr(pd, start, length, iova, access);
}

/** Deregisters an MR (kernel: `ib_dereg_mr`). Returns 0 or -errno. */
export function ibDeregMr(mr: IbMr): number {
  return mr.device.ops.deregMr(mr);
}

/**
 * Advises the device about MR ranges (kernel: `ib_advise_mr`, uverbs `advise_mr`): prefetch for
 * read, for write, or without faulting. Returns 0 or -errno (-EOPNOTSUPP for an unknown advice).
 */
export function ibAdviseMr(pd: IbPd, advice: number, flags: number, sgList: readonly IbSge[]): number {
  if (advice < IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH || advice > IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT) {
    return -Errno.EOPNOTSUPP;
  }
  if ((flags & ~IB_UVERBS_ADVISE_MR_FLAG_FLUSH) !== 0 || sgList.length === 0) return -Errno.EINVAL;
  return pd.device.ops.adviseMr(pd, advice, flags, sgList);
}

/** True for software RDMA devices that access memory by CPU (kernel: `ib_uses_virt_dma`). */
export function ibUsesVirtDma(device: IbDevice): boolean {
  return device.dmaDevice === undefined;
}

/**
 * Maps a page for the device (kernel: `ib_dma_map_page`): software RDMA gets the physical address
 * back (the kernel returns the kernel virtual address), others go through `dma_map_page`.
 */
export function ibDmaMapPage(
  device: IbDevice,
  page: number,
  offset: number,
  size: number,
  dir: DmaDataDirection,
): number {
  const dev = device.dmaDevice;
  if (dev === undefined) return page + offset;
  return dmaMapPage(dev, page, offset, size, dir);
}

/** True when `addr` is a mapping error (kernel: `ib_dma_mapping_error`). */
export function ibDmaMappingError(device: IbDevice, addr: number): boolean {
  const dev = device.dmaDevice;
  if (dev === undefined) return false;
  return dmaMappingError(dev, addr);
}

/** Unmaps a page mapping (kernel: `ib_dma_unmap_page`); nothing to do for software RDMA. */
export function ibDmaUnmapPage(device: IbDevice, addr: number, size: number, dir: DmaDataDirection): void {
  const dev = device.dmaDevice;
  if (dev === undefined) return;
  dmaUnmapPage(dev, addr, size, dir);
}
