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

  /**
   * Device read of `dst.length` bytes at bus address `bus` (memory → device). Returns 0, or
   * -EFAULT when a page faulted (bytes before it were read) or lies outside RAM. Pages are
   * translated one by one; physically contiguous runs of them are copied at once.
   */
  read(bus: number, dst: Uint8Array): number {
    return this.#transfer(bus, dst, false);
  }

  /**
   * Device write of `src` at bus address `bus` (device → memory). Returns 0, or -EFAULT when a
   * page faulted (bytes before it were written) or lies outside RAM.
   */
  write(bus: number, src: Uint8Array): number {
    return this.#transfer(bus, src, true);
  }

  /**
   * Traces the access, translates `buf.length` bytes at `bus` page by page and moves them (`toMem`:
   * buf → RAM, a device write); a complete transfer counts its bytes as DMA read or written.
   */
  #transfer(bus: number, buf: Uint8Array, toMem: boolean): number {
    this.machine.tracer?.instant(toMem ? 'device_dma_write' : 'device_dma_read', 'device', {
      requester: this.requester,
      bus,
      len: buf.length,
    });
    const ram = this.machine.phys.size;
    const len = buf.length;
    // A fault ends the transfer, so the domain cannot change under the loop.
    const d = this.domain;
    const requester = this.requester;
    let runPa = 0;
    let runOff = 0;
    let runLen = 0;
    let done = 0;
    while (done < len) {
      const a = bus + done;
      const n = Math.min(PAGE_SIZE - modPow2(a, PAGE_SIZE), len - done);
      const pa = d === undefined ? a : d.iommu.translate(d, a, toMem, requester);
      if (pa < 0 || pa + n > ram) {
        if (runLen > 0) this.#move(runPa, buf, runOff, runLen, toMem);
        return this.#fail(a);
      }
      if (runLen > 0 && pa === runPa + runLen) {
        runLen += n;
      } else {
        if (runLen > 0) this.#move(runPa, buf, runOff, runLen, toMem);
        runPa = pa;
        runOff = done;
        runLen = n;
      }
      done += n;
    }
    if (runLen > 0) this.#move(runPa, buf, runOff, runLen, toMem);
    if (toMem) this.machine.counters.dmaWriteBytes += len;
    else this.machine.counters.dmaReadBytes += len;
    return 0;
  }

  #move(pa: number, buf: Uint8Array, off: number, len: number, toMem: boolean): void {
    if (toMem) this.machine.phys.copyIn(pa, buf, off, len);
    else this.machine.phys.copyOut(pa, buf, off, len);
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
