/**
 * The device side of an NBD export: one simulated NVMe-style device on a fresh machine (IOMMU in
 * the chosen mode, the v6.16 scatterlist driver or the v6.17+ two-step IOVA driver), opened as a
 * `BlockDevice`. It takes block requests on caller pages of its machine and delivers their
 * completions when run. Kernel counterpart: the NVMe namespace a user-space server does O_DIRECT
 * I/O on (`block/fops.c` → `drivers/nvme/host/pci.c`), so the server's pinned pages are DMA-mapped
 * by the driver.
 *
 * `NbdBlockDevice` is what the export drives; `LocalNbdDevice` runs the machine on the calling
 * thread, `RemoteNbdDevice` (`nbd-device-remote.ts`) on a worker thread of its own.
 */
import {
  type BlkIoOp,
  type BlkIoResult,
  BlockDevice,
  blkLeakReport,
  IoBuffer,
  type IoSegment,
  type NvmeDev,
  nvmeProbe,
  nvmeRemove,
  SECTOR_SIZE,
} from '@iovalink/blk-mq';
import { type Device, dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import type { PhysMem } from '@iovalink/iommu';
import { createRig, type IommuMode, type Rig } from '../rig.js';

/** Options of the device behind an export. */
export interface NbdDeviceOptions {
  /** Device size in bytes, a positive multiple of 512 (validated by the export). */
  size: number;
  /** Driver version: `'sg'` (≤ v6.16 scatterlist) or `'iova'` (v6.17+ two-step). */
  path: 'sg' | 'iova';
  /** Device translation. */
  iommu: IommuMode;
  /** Block requests in flight on the device. */
  queueDepth: number;
  /** Machine seed. */
  seed: number;
  /** Check every mapping with dma-debug. */
  debug?: boolean;
  /** RAM of the machine in bytes (a power of two; request buffers, driver pools, page tables). */
  memSize: number;
  /** Controller completion latency in virtual ns (default: the model's 10 µs). */
  latencyNs?: number;
}

/** Geometry of the device, as the export advertises it. */
export interface NbdDeviceInfo {
  path: 'sg' | 'iova';
  iommu: IommuMode;
  /** Capacity in bytes. */
  size: number;
  /** Logical block size (bytes). */
  minBlockSize: number;
  /** Largest block request (a power of two ≤ the queue's max_sectors, at most 4 MiB). */
  maxPiece: number;
}

/** Counters of the device side. */
export interface NbdDeviceStats {
  /** Block requests completed, by operation (kernel-style: one per `BlockDevice` I/O). */
  blockRequests: Record<'read' | 'write' | 'flush' | 'discard', number>;
  /** Bytes moved by block requests, by operation. */
  blockBytes: Record<'read' | 'write' | 'flush' | 'discard', number>;
  /** Failed block requests by status name. */
  blockErrors: Record<string, number>;
  /** Bios built. */
  bios: number;
  /** Most block requests in flight at once. */
  maxInFlight: number;
  /** Virtual time the device ran (ns). */
  virtualNs: number;
  /** What the driver did (fast path, coalesced IOVA, scatterlists, PRPs/SGLs). */
  driver: Record<string, number>;
  /** DMA/IOMMU counters of the machine (IOVA allocations, PTE writes, IOTLB invalidations, …). */
  counters: Record<string, number>;
  /** Per-I/O metadata still live at close (must be empty), and other teardown findings. */
  leaks: string[];
  /** Exceptions caught while running the device (must be 0). */
  internalErrors: number;
}

/** Pages for request buffers (kernel: the user pages an O_DIRECT caller pins). */
export interface BufferPages {
  /** 2^order contiguous pages, or 0 when none are free. */
  allocPages(order: number): number;
  freePages(phys: number, order: number): void;
}

/** A block request's completion: a `BLK_STS_*` status. */
export type NbdBlockDone = (status: number) => void;

/**
 * The answer to an allocation query: `(length, allocated)` pairs as `SparseStore.extents` gives
 * them, or `null` when the device could not answer (its thread is gone).
 */
export type NbdAllocationDone = (runs: number[] | null) => void;

/** The device an export drives. */
export interface NbdBlockDevice {
  readonly info: NbdDeviceInfo;
  /** Where request buffers come from. */
  readonly pages: BufferPages;
  /** The CPU's view of the buffer pages. */
  readonly phys: PhysMem;
  /**
   * Queues a block request: `read`/`write` of `segs` (pages from `pages`) at byte `offset`,
   * `discard` of `length` bytes at `offset`, or `flush`. `done` runs from `run`.
   */
  submit(
    op: BlkIoOp,
    offset: number,
    length: number,
    segs: readonly IoSegment[] | null,
    done: NbdBlockDone,
  ): void;
  /**
   * Asks the device's media which runs of `[offset, offset + length)` are allocated (at most
   * `maxRuns` runs; see `SparseStore.extents`). The answer reflects every block request completed
   * before the call. `done` runs on this thread, at once (device on this thread) or when the device
   * thread answers. No kernel counterpart (a file-backed server's `SEEK_DATA`/`SEEK_HOLE`).
   */
  allocation(offset: number, length: number, maxRuns: number, done: NbdAllocationDone): void;
  /** Delivers the completions that are ready. */
  run(): void;
  /** Called when completions become ready between runs (a device on another thread). */
  onReady: () => void;
  /** Called with exceptions caught while running the device. */
  onInternalError: (e: unknown) => void;
  /** Block requests not yet completed. */
  readonly pending: number;
  stats(): NbdDeviceStats;
  /** Completes what is outstanding, removes the driver, checks for leaks; returns the final counters. */
  close(): NbdDeviceStats;
}

/**
 * Hands a `BlockDevice` completion on to an `NbdBlockDone` as its status. Kept for the next
 * request once it has run (kernel: state preallocated per request tag), so a request allocates
 * no completion of its own.
 */
class BlkDoneRelay {
  done: NbdBlockDone | undefined = undefined;
  readonly #free: BlkDoneRelay[];
  readonly cb = (r: BlkIoResult): void => {
    const done = this.done;
    if (done === undefined) throw new Error('nbd device: a block request completed twice');
    this.done = undefined;
    this.#free.push(this);
    done(r.status);
  };

  constructor(free: BlkDoneRelay[]) {
    this.#free = free;
  }
}

/** The device on the calling thread: submissions run the controller, `run` runs the virtual clock. */
export class LocalNbdDevice implements NbdBlockDevice {
  readonly info: NbdDeviceInfo;
  readonly rig: Rig;
  readonly dev: Device;
  readonly nvme: NvmeDev;
  readonly bdev: BlockDevice;
  readonly pages: BufferPages;
  readonly phys: PhysMem;
  onReady: () => void = () => {};
  onInternalError: (e: unknown) => void = () => {};
  #internalErrors = 0;
  #closed = false;
  /** Completion relays not in use. */
  readonly #relays: BlkDoneRelay[] = [];

  /** Builds the machine, probes the NVMe driver on its controller and opens the namespace. */
  constructor(o: NbdDeviceOptions) {
    this.rig = createRig({
      iommu: o.iommu,
      seed: o.seed,
      memSize: o.memSize,
      ...(o.debug === undefined ? {} : { debug: o.debug }),
    });
    this.dev = this.rig.device(`nvme-${o.path}`);
    this.nvme = nvmeProbe(this.dev, {
      mapping: o.path,
      queueDepth: o.queueDepth + 1,
      nsze: o.size / SECTOR_SIZE,
      ...(o.latencyNs === undefined ? {} : { latencyNs: o.latencyNs }),
    });
    this.bdev = new BlockDevice(this.nvme.disk, { queueDepth: o.queueDepth });
    const maxBytes = this.nvme.disk.queue.limits.maxSectors * SECTOR_SIZE;
    this.info = {
      path: o.path,
      iommu: this.rig.mode,
      size: this.bdev.capacity * SECTOR_SIZE,
      minBlockSize: this.bdev.logicalBlockSize,
      maxPiece: Math.min(2 ** Math.floor(Math.log2(maxBytes)), 4 * 2 ** 20),
    };
    this.pages = this.rig.machine.pages;
    this.phys = this.rig.machine.phys;
  }

  submit(
    op: BlkIoOp,
    offset: number,
    length: number,
    segs: readonly IoSegment[] | null,
    done: NbdBlockDone,
  ): void {
    const relay = this.#relays.pop() ?? new BlkDoneRelay(this.#relays);
    relay.done = done;
    const cb = relay.cb;
    if (op === 'flush') this.bdev.submit('flush', 0, 0, cb);
    else if (segs === null) this.bdev.submit(op, offset / SECTOR_SIZE, length / SECTOR_SIZE, cb);
    else this.bdev.submit(op, offset / SECTOR_SIZE, new IoBuffer(segs), cb);
  }

  allocation(offset: number, length: number, maxRuns: number, done: NbdAllocationDone): void {
    const runs: number[] = [];
    this.nvme.hw.store.extents(offset, length, runs, maxRuns);
    done(runs);
  }

  run(): void {
    try {
      // The controller executed each command at submission; run the virtual clock until every
      // completion has been delivered (completion callbacks may submit more, e.g. FUA flushes).
      this.bdev.drain();
    } catch (e) {
      this.#internalErrors++;
      this.onInternalError(e);
    }
  }

  get pending(): number {
    return this.bdev.pending;
  }

  stats(): NbdDeviceStats {
    const s = this.bdev.stats;
    const c = this.rig.machine.counters;
    const driver: Record<string, number> = {};
    for (const [k, v] of Object.entries(this.nvme.stats)) if (typeof v === 'number') driver[k] = v;
    return {
      blockRequests: { ...s.ios },
      blockBytes: { ...s.bytes },
      blockErrors: { ...s.errors },
      bios: s.bios,
      maxInFlight: s.maxInFlight,
      virtualNs: this.rig.machine.clock.nowNs,
      driver,
      counters: {
        iovaAllocs: c.iovaAllocs,
        iovaRcacheHits: c.iovaRcacheHits,
        pteWrites: c.pteWrites,
        pteClears: c.pteClears,
        iotlbInvRange: c.iotlbInvRange,
        iotlbInvAll: c.iotlbInvAll,
        iotlbHits: c.iotlbHits,
        iotlbMisses: c.iotlbMisses,
        iommuFaults: c.iommuFaults,
        dmaMapCalls: c.dmaMapCalls,
        dmaLinks: c.dmaLinks,
        bounceBytes: c.bounceBytes,
        dmaReadBytes: c.dmaReadBytes,
        dmaWriteBytes: c.dmaWriteBytes,
      },
      leaks: blkLeakReport(this.rig.machine),
      internalErrors: this.#internalErrors,
    };
  }

  close(): NbdDeviceStats {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.bdev.drain();
        nvmeRemove(this.nvme);
        dmaDebugDeviceTeardown(this.dev);
      } catch (e) {
        this.#internalErrors++;
        this.onInternalError(e);
      }
    }
    return this.stats();
  }
}
