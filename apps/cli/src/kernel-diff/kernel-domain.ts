/**
 * Builds the model's objects the way the recorded kernel built its own: an IOVA domain with the
 * kernel's granule, start pfn and reservations, and a PCI device behind an IOMMU with the recorded
 * address width and strict/lazy policy. Kernel counterparts (v6.1): `iommu_dma_init_domain`,
 * `iova_reserve_iommu_regions` and `iova_reserve_pci_windows` in drivers/iommu/dma-iommu.c,
 * `init_iova_domain` in drivers/iommu/iova.c.
 *
 * Deliberate differences: the machine's RAM is sized to cover every physical address the trace
 * names (the model backs frames lazily, so this costs nothing); the model's own page-table pages
 * come from that RAM too, which the replays never read as data.
 */
import { createDevice, type Device, iommuDmaCookie } from '@iovalink/dma-api';
import { IommuDevice, IovaDomain, Machine } from '@iovalink/iommu';
import type { KernelTraceHeader } from './kernel-trace.js';

/** Granule of the kernel's DMA domains on x86-64: the smallest IOMMU page, 4 KiB. */
export const KERNEL_IOVA_GRANULE = 4096;
/** IOVA bits when the header does not name the IOMMU's address width (VT-d's common 48). */
const DEFAULT_ADDRESS_WIDTH = 48;
/** Smallest RAM the replay machine gets: enough for the model's page tables and pools. */
const MIN_MEM = 1 << 30;

/**
 * The pfn ranges the kernel reserves in a DMA domain's IOVA space: the host bridge's memory
 * windows (`iova_reserve_pci_windows`) and the group's reserved regions
 * (`iova_reserve_iommu_regions`), as [lo, hi] pfn pairs. Differs: sysfs prints both hardware and
 * software MSI regions as `msi`; the kernel skips software MSI windows (arm64 SMMU) and maps them
 * on demand, so a trace from such a machine needs its `msi` line removed from the header.
 */
export function kernelReservedPfns(header: KernelTraceHeader): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const g = KERNEL_IOVA_GRANULE;
  for (const w of header.pciWindows) out.push([Math.floor(w.start / g), Math.floor(w.end / g)]);
  for (const r of header.reserved) {
    out.push([Math.floor(r.start / g), Math.floor(r.end / g)]);
  }
  return out;
}

/** Reserves `ranges` in `iovad`; overlapping ranges merge (the model keeps one node for them). */
function reserveAll(iovad: IovaDomain, ranges: Array<[number, number]>): void {
  for (const [lo, hi] of ranges) {
    if (hi > iovad.maxPfn) continue;
    iovad.reserveIova(lo, Math.min(hi, iovad.maxPfn));
  }
}

/** A machine with RAM covering `maxPhys` (at least 1 GiB) and the recorded CPU count. */
export function replayMachine(maxPhys: number, cpus: number): Machine {
  let mem = MIN_MEM;
  while (mem <= maxPhys) mem *= 2;
  return new Machine({ memSize: mem, cpus, seed: 1 });
}

/**
 * An IOVA domain as `iommu_dma_init_domain` sets one up for a PCI device: granule 4 KiB, start
 * pfn 1 (the aperture starts at 0), the header's windows and regions reserved.
 */
export function kernelIovaDomain(machine: Machine, header: KernelTraceHeader): IovaDomain {
  const iovad = new IovaDomain(machine, KERNEL_IOVA_GRANULE, 1);
  reserveAll(iovad, kernelReservedPfns(header));
  return iovad;
}

/** Options of `kernelDevice`. */
export interface KernelDeviceOptions {
  /** DMA_FQ (lazy) default domain instead of DMA (strict). */
  lazy: boolean;
}

/**
 * The traced NVMe device as the model's PCI device: 64-bit DMA mask, NVMe's 4 GiB - 1 maximum
 * segment size (`dma_set_max_seg_size(dev, 0xffffffff)` in drivers/nvme/host/pci.c), behind an
 * IOMMU whose input width is the recorded host address width, in a strict or lazy DMA domain
 * whose IOVA space has the kernel's reservations.
 */
export function kernelDevice(
  machine: Machine,
  header: KernelTraceHeader,
  options: KernelDeviceOptions,
): Device {
  const iommu = new IommuDevice(machine, {
    name: 'dmar0',
    ias: header.hostAddressWidth ?? DEFAULT_ADDRESS_WIDTH,
    oas: header.hostAddressWidth ?? DEFAULT_ADDRESS_WIDTH,
  });
  const dev = createDevice(machine, {
    name: header.device ?? 'nvme',
    iommu,
    translation: options.lazy ? 'lazy' : 'strict',
    dmaBits: 64,
    pci: true,
    debug: false,
    dmaParms: { maxSegmentSize: 0xffffffff },
  });
  if (dev.domain === undefined) throw new Error('kernelDevice: the model gave the device no domain');
  reserveAll(iommuDmaCookie(dev.domain).iovad, kernelReservedPfns(header));
  return dev;
}
