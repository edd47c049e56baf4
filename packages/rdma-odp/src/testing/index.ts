/**
 * Fixtures for ODP tests and for the layers above (integration tests, the CLI): a machine with an
 * IOMMU, a NIC on a DMA function of each kind, an mlx5 device in either ODP mode, a process and a
 * PD; helpers to map memory and register MRs; and checkers that compare what the NIC can reach
 * with what the process maps. Exported as `@iovalink/rdma-odp/testing`.
 */
import type { Device, DeviceOptions } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, type DeviceKind, type DmaRig } from '@iovalink/dma-api/testing';
import { type IommuDeviceOptions, iommuIovaToPhys, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { isErr, OdpError } from '../errors.js';
import { HMM_DMA_DMA_LIST, HMM_DMA_PFN_LIST } from '../hmm-dma.js';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  type IbPd,
  ibAllocPd,
  ibRegUserMr,
} from '../ib-verbs.js';
import type { Mlx5IbDev, Mlx5IbMr } from '../mlx5-ib.js';
import { mlx5IbAdd } from '../mlx5-main.js';
import { Mm } from '../mm.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm-types.js';
import { MLX5_IB_MTT_WRITE, MLX5_MKC_ACCESS_MODE_MTT, type Nic } from '../nic.js';
import { type OdpMode, UMEM_ODP_DMA_LIST, UMEM_ODP_PFN_LIST } from '../umem-odp.js';

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
export interface OdpRig {
  machine: Machine;
  dma: DmaRig;
  kind: DeviceKind;
  mode: OdpMode;
  dev: Device;
  ibdev: Mlx5IbDev;
  nic: Nic;
  mm: Mm;
  pd: IbPd;
}

/** Options of `createOdpRig`. */
export interface OdpRigOptions {
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

/** Builds a rig: machine + IOMMU + swiotlb, a NIC DMA function of `kind`, an mlx5 device, a process. */
export function createOdpRig(options: OdpRigOptions = {}): OdpRig {
  const dma = createDmaRig({
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

/** Maps `len` bytes of private anonymous memory (at `addr` with MAP_FIXED when given); throws on error. */
export function mmapAnon(mm: Mm, len: number, prot = PROT_READ | PROT_WRITE, addr?: number): number {
  const flags = MAP_PRIVATE | MAP_ANONYMOUS | (addr === undefined ? 0 : MAP_FIXED);
  const r = mm.mmap(addr ?? 0, len, prot, flags);
  if (isErr(r)) throw new OdpError(`mmap failed: ${r}`, { rule: 'test: mmap', errno: r });
  return r;
}

/** Registers an ODP MR over `[addr, addr + len)` (iova = addr unless given); throws on error. */
export function regOdpMr(pd: IbPd, addr: number, len: number, access = ODP_ACCESS_RW, iova = addr): Mlx5IbMr {
  const r = ibRegUserMr(pd, addr, len, iova, access);
  if (typeof r === 'number')
    throw new OdpError(`ib_reg_user_mr failed: ${r}`, { rule: 'test: reg_mr', errno: r });
  return r as Mlx5IbMr;
}

/** The physical address a bus address of `dev` reaches by the page table (not the IOTLB); 0 if none. */
export function busToPhys(dev: Device, bus: number): number {
  const d = dev.domain;
  if (d === undefined) return bus;
  return iommuIovaToPhys(d, bus);
}

/** Every explicit MR and implicit child of the device (live ones). */
export function mttMrs(ibdev: Mlx5IbDev): Mlx5IbMr[] {
  const out = new Set<Mlx5IbMr>();
  for (const mr of ibdev.odpMkeys.values()) {
    if (mr.isOdpImplicit) for (const c of mr.implicitChildren.values()) out.add(c);
    else out.add(mr);
  }
  return [...out].filter((m) => !m.deregistered && m.mkey.accessMode === MLX5_MKC_ACCESS_MODE_MTT);
}

/**
 * Compares every MTT translation of the device with the process's page table: each valid entry
 * must reach (through the IOMMU page table) exactly the frame the process maps at that address,
 * and may be writable only where the process's entry is writable. Returns the problems found.
 */
export function findStaleTranslations(ibdev: Mlx5IbDev, mm: Mm): string[] {
  const problems: string[] = [];
  for (const mr of mttMrs(ibdev)) {
    const mtt = mr.mkey.mtt;
    for (let i = 0; i < mtt.length; i++) {
      const e = mtt[i]!;
      if (e === 0) continue;
      const va = mr.umem.start + i * PAGE_SIZE;
      const bits = e % 4;
      const phys = busToPhys(ibdev.dmaDevice, e - bits);
      const pte = mm.followPte(va);
      if (pte === undefined) {
        problems.push(
          `mkey 0x${mr.lkey.toString(16)} va 0x${va.toString(16)}: MTT maps a page the process does not map`,
        );
      } else if (phys !== pte.pfn * PAGE_SIZE) {
        problems.push(
          `mkey 0x${mr.lkey.toString(16)} va 0x${va.toString(16)}: MTT reaches phys 0x${phys.toString(16)}, process maps 0x${(pte.pfn * PAGE_SIZE).toString(16)}`,
        );
      } else if ((bits & MLX5_IB_MTT_WRITE) !== 0 && !pte.write) {
        problems.push(
          `mkey 0x${mr.lkey.toString(16)} va 0x${va.toString(16)}: MTT writable, process entry read-only`,
        );
      }
    }
  }
  return problems;
}

/** Live bytes of ODP page-list metadata (both modes). */
export function odpMetaLiveBytes(machine: Machine): number {
  return machine.counters.metaTotals(ODP_META_KINDS).liveBytes;
}

/** Bytes of `len` from a seeded pattern, different per `seed`. */
export function odpPattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
