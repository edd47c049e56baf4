/**
 * A bus-master DMA engine: the only way a simulated device reaches memory. It reads and writes at
 * bus addresses, translated by the IOMMU domain the device is attached to (IOTLB first, then the
 * page-table walk), or 1:1 when there is no IOMMU. A fault stops the transfer at the faulting
 * page: earlier pages have moved, the faulting one never touches memory. Kernel counterpart: the
 * device side of DMA (PCIe memory reads/writes through the IOMMU); no kernel source file.
 */
import { modPow2 } from './bits.js';
import { Errno } from './errno.js';
import type { IommuDomain } from './iommu-domain.js';
import type { Machine } from './machine.js';
import { PAGE_SIZE } from './phys-mem.js';

/** A device's DMA engine. */
export class DmaEngine {
  readonly machine: Machine;
  /** Requester name, recorded in faults. */
  readonly requester: string;
  /** The domain DMA goes through, or undefined for no IOMMU (bus address = physical). */
  domain: IommuDomain | undefined;
  /** Bus address of the last fault, or -1. */
  lastFaultIova = -1;

  constructor(machine: Machine, requester: string, domain?: IommuDomain) {
    this.machine = machine;
    this.requester = requester;
    this.domain = domain;
  }

  /** Physical address for one access, or -1 on an IOMMU fault. */
  #translate(bus: number, write: boolean): number {
    const d = this.domain;
    if (d === undefined) return bus;
    return d.iommu.translate(d, bus, write, this.requester);
  }

  /**
   * Device read of `dst.length` bytes at bus address `bus` (memory → device). Returns 0, or
   * -EFAULT when a page faulted (bytes before it were read) or lies outside RAM.
   */
  read(bus: number, dst: Uint8Array): number {
    const tr = this.machine.tracer;
    tr?.instant('device_dma_read', 'device', { requester: this.requester, bus, len: dst.length });
    let done = 0;
    while (done < dst.length) {
      const a = bus + done;
      const n = Math.min(PAGE_SIZE - modPow2(a, PAGE_SIZE), dst.length - done);
      const pa = this.#translate(a, false);
      if (pa < 0 || pa + n > this.machine.phys.size) return this.#fail(a);
      this.machine.phys.readInto(pa, dst.subarray(done, done + n));
      done += n;
    }
    this.machine.counters.dmaReadBytes += dst.length;
    return 0;
  }

  /**
   * Device write of `src` at bus address `bus` (device → memory). Returns 0, or -EFAULT when a
   * page faulted (bytes before it were written) or lies outside RAM.
   */
  write(bus: number, src: Uint8Array): number {
    const tr = this.machine.tracer;
    tr?.instant('device_dma_write', 'device', { requester: this.requester, bus, len: src.length });
    let done = 0;
    while (done < src.length) {
      const a = bus + done;
      const n = Math.min(PAGE_SIZE - modPow2(a, PAGE_SIZE), src.length - done);
      const pa = this.#translate(a, true);
      if (pa < 0 || pa + n > this.machine.phys.size) return this.#fail(a);
      this.machine.phys.write(pa, src.subarray(done, done + n));
      done += n;
    }
    this.machine.counters.dmaWriteBytes += src.length;
    return 0;
  }

  /** Device-side copy of `len` bytes from bus address `from` to bus address `to`. */
  copy(to: number, from: number, len: number): number {
    const buf = new Uint8Array(len);
    const r = this.read(from, buf);
    return r !== 0 ? r : this.write(to, buf);
  }

  #fail(bus: number): number {
    this.lastFaultIova = bus;
    return -Errno.EFAULT;
  }
}
