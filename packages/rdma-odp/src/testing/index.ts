/**
 * Fixtures for ODP tests and the integration tests: the main entry's `createOdpSystem` under its
 * fixture name `createOdpRig`, helpers to map memory and register MRs that throw instead of
 * returning -errno, and checkers that compare what the NIC can reach with what the process maps.
 * Exported as `@iovalink/rdma-odp/testing`; applications use the main entry.
 */
import type { Device } from '@iovalink/dma-api';
import { iommuIovaToPhys, PAGE_SIZE } from '@iovalink/iommu';
import { isErr, OdpError } from '../errors.js';
import { type IbPd, ibRegUserMr } from '../ib-verbs.js';
import type { Mlx5IbDev, Mlx5IbMr } from '../mlx5-ib.js';
import type { Mm } from '../mm.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm-types.js';
import { MLX5_IB_MTT_WRITE, MLX5_MKC_ACCESS_MODE_MTT } from '../nic.js';
import { createOdpSystem, ODP_ACCESS_RW, type OdpSystem, type OdpSystemOptions } from '../odp-system.js';

export { ODP_ACCESS_RO, ODP_ACCESS_RW, ODP_META_KINDS, odpMetaLiveBytes } from '../odp-system.js';

/** A ready ODP system (`OdpSystem` of the main entry). */
export type OdpRig = OdpSystem;
/** Options of `createOdpRig` (`OdpSystemOptions`). */
export type OdpRigOptions = OdpSystemOptions;
/** `createOdpSystem` under its fixture name. */
export const createOdpRig: typeof createOdpSystem = createOdpSystem;

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
