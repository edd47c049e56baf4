/**
 * A ready ODP system: a DMA system (machine, IOMMU, swiotlb), a NIC DMA function in the chosen
 * translation mode, an mlx5 IB device on it in legacy (≤ v6.15, `dma_map_page` + dma_list) or
 * hmm (v6.16+, `hmm_dma_map`) ODP mode, a process address space and its protection domain; the
 * access flags of an ODP MR; and the ledger of ODP page-list metadata. This is the documented way
 * into `@iovalink/rdma-odp` (kernel: drivers/infiniband/hw/mlx5/main.c `mlx5_ib_add`,
 * drivers/infiniband/core/verbs.c `ib_alloc_pd`, v6.17); the `./testing` fixtures build on it.
 *
 * Deliberate differences: one process, one NIC function, probe and PD allocation in one call; the
 * metadata ledger has no kernel counterpart.
 */
import {
  createDmaSystem,
  createKindDevice,
  type Device,
  type DeviceKind,
  type DeviceOptions,
  type DmaSystem,
} from '@iovalink/dma-api';
import type { IommuDeviceOptions, Machine } from '@iovalink/iommu';
import { HMM_DMA_DMA_LIST, HMM_DMA_PFN_LIST } from './hmm-dma.js';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  type IbPd,
  ibAllocPd,
} from './ib-verbs.js';
import type { Mlx5IbDev } from './mlx5-ib.js';
import { mlx5IbAdd } from './mlx5-main.js';
import { Mm } from './mm.js';
import type { Nic } from './nic.js';
import { type OdpMode, UMEM_ODP_DMA_LIST, UMEM_ODP_PFN_LIST } from './umem-odp.js';

/** Access of a readable and writable ODP MR (local write, remote read and write, on demand). */
export const ODP_ACCESS_RW =
  IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ | IB_ACCESS_ON_DEMAND;
/** Access of a read-only ODP MR (remote read, on demand). */
export const ODP_ACCESS_RO = IB_ACCESS_REMOTE_READ | IB_ACCESS_ON_DEMAND;
/** Metadata kinds of ODP page lists, both modes. */
export const ODP_META_KINDS: readonly string[] = [
  UMEM_ODP_PFN_LIST,
  UMEM_ODP_DMA_LIST,
  HMM_DMA_PFN_LIST,
  HMM_DMA_DMA_LIST,
];

/** A machine, a NIC on a DMA function, an mlx5 device, a process and its PD. */
export interface OdpSystem {
  machine: Machine;
  dma: DmaSystem;
  kind: DeviceKind;
  mode: OdpMode;
  dev: Device;
  ibdev: Mlx5IbDev;
  nic: Nic;
  mm: Mm;
  pd: IbPd;
}

/** Options of `createOdpSystem`. */
export interface OdpSystemOptions {
  /** DMA function kind (default `strict`). */
  kind?: DeviceKind;
  /** ODP generation (default `hmm`). */
  mode?: OdpMode;
  /** dma-debug on the NIC's DMA function (default true; benches pass false). */
  debug?: boolean;
  /** RAM (default 256 MiB). */
  memSize?: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** Implicit child span, log2 (default the kernel's 30). */
  imrMttShift?: number;
  iommu?: IommuDeviceOptions;
  device?: DeviceOptions;
}

/**
 * Builds a machine + IOMMU + swiotlb, a NIC DMA function of `kind`, an mlx5 device bound to it
 * (kernel: `mlx5_ib_add`, drivers/infiniband/hw/mlx5/main.c) in ODP `mode`, a process address
 * space and a protection domain (`ib_alloc_pd`).
 */
export function createOdpSystem(options: OdpSystemOptions = {}): OdpSystem {
  const dma = createDmaSystem({
    machine: { memSize: options.memSize ?? 256 << 20, seed: options.seed ?? 1 },
    ...(options.iommu === undefined ? {} : { iommu: options.iommu }),
  });
  const kind = options.kind ?? 'strict';
  const mode = options.mode ?? 'hmm';
  const dev = createKindDevice(dma, kind, {
    name: `nic-${kind}`,
    debug: options.debug ?? true,
    ...options.device,
  });
  const ibdev = mlx5IbAdd(dev, {
    mode,
    ...(options.imrMttShift === undefined ? {} : { imrMttShift: options.imrMttShift }),
  });
  const mm = new Mm(dma.machine, { name: 'proc' });
  const pd = ibAllocPd(ibdev, mm);
  return { machine: dma.machine, dma, kind, mode, dev, ibdev, nic: ibdev.nic, mm, pd };
}

/** Live bytes of ODP page-list metadata (both modes). */
export function odpMetaLiveBytes(machine: Machine): number {
  return machine.counters.metaTotals(ODP_META_KINDS).liveBytes;
}
