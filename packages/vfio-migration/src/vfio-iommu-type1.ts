/**
 * The guest side of a VFIO assignment: an UNMANAGED IOMMU domain owned by VFIO in which the
 * VMM maps guest memory at IOVA = guest physical address, so the assigned device's DMA lands in
 * guest RAM. This is the domain whose hardware dirty bits feed DMA dirty logging. Kernel
 * counterpart: drivers/vfio/vfio_iommu_type1.c (`vfio_iommu_type1_open`, `vfio_dma_do_map`,
 * `vfio_dma_do_unmap`, release) and `vfio_dma_rw` of drivers/vfio/vfio_main.c (v6.17).
 *
 * Differs on purpose: "pinning user memory" allocates fresh pages from the machine (there is no
 * process address space here); every 4 KiB page is mapped separately so dirty tracking reports
 * 4 KiB granules; no groups, containers, iommufd IOAS, locked-memory accounting or
 * VFIO_IOMMU_DIRTY_PAGES (the type1 pinned-page tracker).
 */
import {
  Errno,
  IOMMU_DOMAIN_UNMANAGED,
  IOMMU_READ,
  IOMMU_WRITE,
  type IommuDevice,
  type IommuDomain,
  iommuDomainAlloc,
  iommuDomainFree,
  iommuMap,
  iommuUnmap,
  type Machine,
  PAGE_SIZE,
} from '@iovalink/iommu';
import { VfioError } from './errors.js';

/** One mapped range of guest memory (kernel: `struct vfio_dma`). */
export interface VfioDma {
  /** Guest physical address = IOVA. */
  iova: number;
  size: number;
  /** Physical address of each 4 KiB page ("pinned" backing). */
  pages: number[];
}

/** A VFIO IOMMU context: one UNMANAGED domain and its mapped ranges (kernel: `struct vfio_iommu`). */
export class VfioIommu {
  readonly machine: Machine;
  readonly iommu: IommuDevice;
  readonly domain: IommuDomain;
  /** Mapped ranges, sorted by IOVA (kernel: `dma_list`). */
  readonly dmaList: VfioDma[] = [];
  released = false;

  constructor(iommu: IommuDevice, domain: IommuDomain) {
    this.machine = iommu.machine;
    this.iommu = iommu;
    this.domain = domain;
  }

  /** Bytes mapped in total. */
  get mappedBytes(): number {
    let n = 0;
    for (const d of this.dmaList) n += d.size;
    return n;
  }
}

/**
 * Opens a VFIO IOMMU context on `iommu` (kernel: `vfio_iommu_type1_open` plus attaching the
 * group, which allocates the UNMANAGED domain). Throws `VfioError` when the domain cannot be
 * allocated.
 */
export function vfioIommuType1Open(iommu: IommuDevice): VfioIommu {
  const domain = iommuDomainAlloc(iommu, IOMMU_DOMAIN_UNMANAGED);
  if (domain === undefined) {
    throw new VfioError('vfio_iommu_type1: could not allocate the UNMANAGED domain', {
      rule: 'vfio_iommu_type1_attach_group: domain alloc',
      errno: -Errno.ENOMEM,
    });
  }
  return new VfioIommu(iommu, domain);
}

/**
 * Maps `size` bytes of fresh guest memory at `iova` for device read and write (kernel:
 * `vfio_dma_do_map` with READ|WRITE). Returns 0, -EINVAL for an unaligned or empty range,
 * -EEXIST over an existing range, or -ENOMEM (no page, no page-table page), undoing its own
 * work on failure.
 */
export function vfioDmaDoMap(vi: VfioIommu, iova: number, size: number): number {
  if (!(size > 0) || iova % PAGE_SIZE !== 0 || size % PAGE_SIZE !== 0 || !Number.isSafeInteger(iova + size)) {
    return -Errno.EINVAL;
  }
  for (const d of vi.dmaList) if (iova < d.iova + d.size && d.iova < iova + size) return -Errno.EEXIST;
  const dma: VfioDma = { iova, size, pages: [] };
  for (let off = 0; off < size; off += PAGE_SIZE) {
    const pa = vi.machine.pages.allocPages(0);
    let ret = pa === 0 ? -Errno.ENOMEM : 0;
    if (ret === 0) {
      ret = iommuMap(vi.domain, iova + off, pa, PAGE_SIZE, IOMMU_READ | IOMMU_WRITE);
      if (ret !== 0) vi.machine.pages.freePages(pa, 0);
    }
    if (ret !== 0) {
      unmapDma(vi, dma);
      return ret;
    }
    dma.pages.push(pa);
  }
  vi.dmaList.push(dma);
  vi.dmaList.sort((a, b) => a.iova - b.iova);
  return 0;
}

function unmapDma(vi: VfioIommu, dma: VfioDma): void {
  if (dma.pages.length > 0) iommuUnmap(vi.domain, dma.iova, dma.pages.length * PAGE_SIZE);
  for (const pa of dma.pages) vi.machine.pages.freePages(pa, 0);
  dma.pages.length = 0;
}

/**
 * Unmaps every range wholly inside `[iova, iova + size)` and frees its pages (kernel:
 * `vfio_dma_do_unmap`). Returns the bytes unmapped.
 */
export function vfioDmaDoUnmap(vi: VfioIommu, iova: number, size: number): number {
  let done = 0;
  for (let i = vi.dmaList.length - 1; i >= 0; i--) {
    const d = vi.dmaList[i] as VfioDma;
    if (d.iova >= iova && d.iova + d.size <= iova + size) {
      done += d.size;
      unmapDma(vi, d);
      vi.dmaList.splice(i, 1);
    }
  }
  return done;
}

/** Unmaps everything and frees the domain (kernel: `vfio_iommu_type1_release`). */
export function vfioIommuType1Release(vi: VfioIommu): void {
  if (vi.released) return;
  for (const d of vi.dmaList) unmapDma(vi, d);
  vi.dmaList.length = 0;
  iommuDomainFree(vi.domain);
  vi.released = true;
}

/** The physical address of guest address `iova`, or -1 if not mapped. */
function guestPhys(vi: VfioIommu, iova: number): number {
  for (const d of vi.dmaList) {
    if (iova >= d.iova && iova < d.iova + d.size) {
      const off = iova - d.iova;
      return (d.pages[Math.floor(off / PAGE_SIZE)] as number) + (off % PAGE_SIZE);
    }
  }
  return -1;
}

/**
 * CPU access to guest memory at `iova` (kernel: `vfio_dma_rw`): reads into `data`, or writes it
 * with `write`. Returns 0, or -EINVAL for an empty buffer or an address not mapped.
 */
export function vfioDmaRw(vi: VfioIommu, iova: number, data: Uint8Array, write: boolean): number {
  if (data.length === 0) return -Errno.EINVAL;
  let done = 0;
  while (done < data.length) {
    const a = iova + done;
    const pa = guestPhys(vi, a);
    if (pa < 0) return -Errno.EINVAL;
    const n = Math.min(PAGE_SIZE - (a % PAGE_SIZE), data.length - done);
    if (write) vi.machine.phys.write(pa, data.subarray(done, done + n));
    else vi.machine.phys.readInto(pa, data.subarray(done, done + n));
    done += n;
  }
  return 0;
}
