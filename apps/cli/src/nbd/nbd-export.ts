/**
 * The NBD export's backing: one simulated NVMe-style device on a fresh machine (IOMMU in the
 * chosen mode, the v6.16 scatterlist driver or the v6.17+ two-step IOVA driver), opened as a
 * `BlockDevice`, with every NBD command turned into block requests whose data sits in physical
 * pages of the simulated machine and moves by device DMA through the IOMMU. Kernel counterpart:
 * what `drivers/block/nbd.c`'s peer would do on Linux, a user-space server doing O_DIRECT I/O on
 * an NVMe namespace (`block/fops.c`), so pages pinned from its buffers are DMA-mapped by the NVMe
 * driver (`drivers/nvme/host/pci.c`).
 *
 * Concurrency: the machine is single-threaded JavaScript, so every access to it is serialized by
 * construction; requests from all connections are submitted as they are parsed (the controller
 * executes them at submission) and the virtual clock is run to deliver their completions once per
 * event-loop turn (`setImmediate`), which batches the completions of every socket read in that turn.
 */
import {
  BLK_STS_INVAL,
  BLK_STS_NOSPC,
  BLK_STS_NOTSUPP,
  BLK_STS_OK,
  type BlkIoResult,
  BlockDevice,
  IoBuffer,
  type IoSegment,
  type NvmeDev,
  nvmeProbe,
  nvmeRemove,
  SECTOR_SIZE,
} from '@iovalink/blk-mq';
import { blkLeakReport } from '@iovalink/blk-mq/testing';
import { type Device, dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import { createRig, type IommuMode, type Rig } from '../rig.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_MAX_PORTABLE_PAYLOAD,
  NbdError,
} from './nbd-proto.js';

/** Options of an export. */
export interface NbdExportOptions {
  /** Canonical export name (default `"iovalink"`); the empty name selects it too. */
  name?: string;
  /** Description sent with NBD_REP_SERVER and NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Device size in bytes, a positive multiple of 512 (default 1 GiB). */
  size?: number;
  /** Driver version: `'sg'` (≤ v6.16 scatterlist) or `'iova'` (v6.17+ two-step). Default `'iova'`. */
  path?: 'sg' | 'iova';
  /** Device translation (default `'strict'`). */
  iommu?: IommuMode;
  /** Block requests in flight on the device, and NBD requests in flight per connection (default 64). */
  queueDepth?: number;
  /** Machine seed (default 1). */
  seed?: number;
  /** Check every mapping with dma-debug (slower; default off). */
  debug?: boolean;
  /** Layout of the pages holding request data: one block (default) or single pages, none adjacent. */
  buffers?: 'contiguous' | 'scattered';
  /** Bytes of request data the export holds in simulated RAM at once (default 128 MiB, at least 32 MiB). */
  memBudget?: number;
  /** Controller completion latency in virtual ns (default: the model's 10 µs). */
  latencyNs?: number;
}

/** Counters of an export (device side). */
export interface NbdExportStats {
  /** Driver version (mapping path). */
  path: 'sg' | 'iova';
  /** Device translation. */
  iommu: IommuMode;
  /** Export size in bytes. */
  size: number;
  /** Largest block request the server sends (bytes). */
  maxRequestBytes: number;
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
  /** Times a connection waited for buffer memory. */
  memoryWaits: number;
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

/** Completion of an export operation: 0 or an NBD error value. */
export type NbdDone = (error: number) => void;

/**
 * A write in progress: the payload arrives from the socket either straight into the request's
 * pages (`span`, then `advance`) or as chunks copied in (`push`); full pieces are submitted at once.
 */
export interface NbdWriteSink {
  /**
   * Where the next payload bytes go: a writable view of the request's pages (physical memory of
   * the machine) of at most `max` bytes, or `undefined` when the rest of the payload is being
   * swallowed (no buffer memory, or an earlier piece failed). Fill it, then call `advance`.
   */
  span(max: number): Uint8Array | undefined;
  /** `n` bytes were written at the start of the last `span`. */
  advance(n: number): void;
  /** Copies the next payload bytes into the request's pages. */
  push(chunk: Uint8Array): void;
  /** Abandons the write (client gone): unsubmitted pieces are freed, the callback never runs. */
  abort(): void;
}

/** Pages of one piece: the caller buffer and how to free it. */
interface PieceBuf {
  io: IoBuffer;
  /** [phys, order] pairs to free. */
  allocs: number[];
  bytes: number;
}

const DEFAULT_SIZE = 2 ** 30;
const DEFAULT_QUEUE_DEPTH = 64;
const DEFAULT_BUDGET = 128 * 2 ** 20;
const SLAB_SIZE = 2 ** 20;

/** NBD error value for a block status (kernel: `blk_status_to_errno`, then the protocol's set). */
export function blkStatusToNbd(status: number): number {
  if (status === BLK_STS_OK) return 0;
  if (status === BLK_STS_NOSPC) return NBD_ENOSPC;
  if (status === BLK_STS_INVAL || status === BLK_STS_NOTSUPP) return NBD_EINVAL;
  return NBD_EIO;
}

/** The simulated NVMe device behind an NBD export. */
export class NbdExport {
  /** Canonical export name. */
  readonly name: string;
  /** Human-readable description (NBD_REP_SERVER, NBD_INFO_DESCRIPTION). */
  readonly description: string;
  /** Export size in bytes. */
  readonly size: number;
  /** § "Block size constraints": minimum (the logical block size), preferred, maximum. */
  readonly minBlockSize: number;
  /** Preferred block size: the page size (no read-modify-write below it in the model either). */
  readonly preferredBlockSize = PAGE_SIZE;
  /** Maximum block size: 32 MiB, the most the protocol says a client may assume (§ "Block size constraints"). */
  readonly maxBlockSize = NBD_MAX_PORTABLE_PAYLOAD;
  /** Largest block request (a power of two ≤ the queue's max_sectors). */
  readonly maxPiece: number;
  /** Block requests in flight on the device, and commands in flight per connection. */
  readonly queueDepth: number;
  /** Driver version: `'sg'` (≤ v6.16) or `'iova'` (v6.17+). */
  readonly path: 'sg' | 'iova';
  /** The simulated machine, IOMMU and swiotlb. */
  readonly rig: Rig;
  /** The NVMe controller's PCI function (its DMA side). */
  readonly dev: Device;
  /** The NVMe driver bound to it (kernel: `struct nvme_dev`). */
  readonly nvme: NvmeDev;
  /** The namespace opened for direct I/O. */
  readonly bdev: BlockDevice;
  readonly #layout: 'contiguous' | 'scattered';
  readonly #budget: number;
  #reserved = 0;
  #liveBufs = 0;
  readonly #memWaiters: Array<{ bytes: number; granted: () => void }> = [];
  #scheduled = false;
  readonly #afterRun: Array<() => void> = [];
  #closed = false;
  #slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
  #slabOff = 0;
  #memoryWaits = 0;
  #internalErrors = 0;
  /** Called with exceptions caught while running the device or a completion callback. */
  onInternalError: (e: unknown) => void = () => {};

  constructor(options: NbdExportOptions = {}) {
    const size = options.size ?? DEFAULT_SIZE;
    if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0) {
      throw new NbdError(`export size ${size} must be a positive multiple of ${SECTOR_SIZE} bytes`, {
        rule: 'nbd export: size',
      });
    }
    const qd = options.queueDepth ?? DEFAULT_QUEUE_DEPTH;
    if (!Number.isInteger(qd) || qd < 1 || qd > 1023) {
      throw new NbdError(`queue depth ${qd} must be an integer in 1..1023`, {
        rule: 'nbd export: queue depth',
      });
    }
    const budget = options.memBudget ?? DEFAULT_BUDGET;
    if (!Number.isSafeInteger(budget) || budget < NBD_MAX_PORTABLE_PAYLOAD) {
      throw new NbdError(`memory budget ${budget} must be at least ${NBD_MAX_PORTABLE_PAYLOAD} bytes`, {
        rule: 'nbd export: memory budget',
      });
    }
    this.name = options.name ?? 'iovalink';
    this.path = options.path ?? 'iova';
    this.queueDepth = qd;
    this.#layout = options.buffers ?? 'contiguous';
    this.#budget = budget;
    const iommu = options.iommu ?? 'strict';
    this.description =
      options.description ??
      `iovalink simulated NVMe namespace (${this.path === 'sg' ? 'scatterlist path' : 'two-step IOVA path'}, IOMMU ${iommu})`;
    // RAM: the request buffers (at most twice the budget after rounding to page blocks), the
    // driver's pools and the page tables; lazily backed, so only what is touched costs memory.
    const memSize = 2 ** Math.ceil(Math.log2(4 * budget + 256 * 2 ** 20));
    this.rig = createRig({
      iommu,
      seed: options.seed ?? 1,
      memSize,
      ...(options.debug === undefined ? {} : { debug: options.debug }),
    });
    this.dev = this.rig.device(`nvme-${this.path}`);
    this.nvme = nvmeProbe(this.dev, {
      mapping: this.path,
      queueDepth: qd + 1,
      nsze: size / SECTOR_SIZE,
      ...(options.latencyNs === undefined ? {} : { latencyNs: options.latencyNs }),
    });
    this.bdev = new BlockDevice(this.nvme.disk, { queueDepth: qd });
    this.minBlockSize = this.bdev.logicalBlockSize;
    this.size = this.bdev.capacity * SECTOR_SIZE;
    const maxBytes = this.nvme.disk.queue.limits.maxSectors * SECTOR_SIZE;
    this.maxPiece = Math.min(2 ** Math.floor(Math.log2(maxBytes)), 8 * 2 ** 20);
  }

  /** True if `name` selects this export (its canonical name, or '' for the default export). */
  matches(name: string): boolean {
    return name === '' || name === this.name;
  }

  // -------------------------------------------------------------------------------------------
  // Buffer memory
  // -------------------------------------------------------------------------------------------

  /**
   * Reserves `bytes` of the buffer budget; false when it would be exceeded or others already wait
   * (then queue with `waitForMemory`, first come first served, so large requests do not starve).
   * A request always fits when nothing else is reserved.
   */
  tryReserve(bytes: number): boolean {
    if (this.#memWaiters.length > 0 || !this.#fits(bytes)) return false;
    this.#reserved += bytes;
    return true;
  }

  /** Returns `bytes` to the budget and grants queued reservations that now fit. */
  release(bytes: number): void {
    this.#reserved -= bytes;
    while (this.#memWaiters.length > 0 && this.#fits(this.#memWaiters[0]!.bytes)) {
      const w = this.#memWaiters.shift()!;
      this.#reserved += w.bytes;
      this.#guard(w.granted);
    }
  }

  /** Queues a reservation of `bytes`; `granted` runs once it is made (the caller then owns it). */
  waitForMemory(bytes: number, granted: () => void): void {
    this.#memoryWaits++;
    this.#memWaiters.push({ bytes, granted });
  }

  #fits(bytes: number): boolean {
    return this.#reserved === 0 || this.#reserved + bytes <= this.#budget;
  }

  #allocPiece(bytes: number): PieceBuf | undefined {
    const pages = Math.ceil(bytes / PAGE_SIZE);
    const mp = this.rig.machine.pages;
    const allocs: number[] = [];
    const segs: IoSegment[] = [];
    if (this.#layout === 'contiguous') {
      const order = Math.ceil(Math.log2(pages));
      const phys = mp.allocPages(order);
      if (phys === 0) return undefined;
      allocs.push(phys, order);
      segs.push({ phys, len: bytes });
    } else {
      // a page, then a hole kept until the piece is complete, so no two of its pages are adjacent
      const holes: number[] = [];
      let left = bytes;
      let ok = true;
      for (let p = 0; p < pages && ok; p++) {
        const phys = mp.allocPages(0);
        const hole = mp.allocPages(0);
        if (hole !== 0) holes.push(hole);
        if (phys === 0) {
          ok = false;
          break;
        }
        allocs.push(phys, 0);
        const n = Math.min(PAGE_SIZE, left);
        segs.push({ phys, len: n });
        left -= n;
      }
      for (const h of holes) mp.freePages(h, 0);
      if (!ok) {
        for (let i = 0; i < allocs.length; i += 2) mp.freePages(allocs[i]!, 0);
        return undefined;
      }
    }
    this.#liveBufs++;
    return { io: new IoBuffer(segs), allocs, bytes };
  }

  #freePiece(p: PieceBuf): void {
    const mp = this.rig.machine.pages;
    for (let i = 0; i < p.allocs.length; i += 2) mp.freePages(p.allocs[i]!, p.allocs[i + 1]!);
    this.#liveBufs--;
  }

  /**
   * A buffer for a read reply: a slice of a 1 MiB slab (a new slab when it is used up; a slab is
   * freed by the GC once the socket has sent every slice), or its own allocation when large.
   * Saves an ArrayBuffer allocation per 4 KiB reply.
   */
  #outBuffer(n: number): Buffer {
    if (n > SLAB_SIZE / 4) return Buffer.allocUnsafeSlow(n);
    if (this.#slabOff + n > SLAB_SIZE) {
      this.#slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
      this.#slabOff = 0;
    }
    const b = this.#slab.subarray(this.#slabOff, this.#slabOff + n);
    this.#slabOff += (n + 7) & ~7;
    return b;
  }

  // -------------------------------------------------------------------------------------------
  // Operations
  // -------------------------------------------------------------------------------------------

  /**
   * Reads `length` bytes at `offset` (both multiples of the minimum block size, in range): one
   * block request per piece of at most `maxPiece` bytes, into pages of the machine; when all have
   * completed, the bytes are copied into a new buffer after `headerRoom` bytes the caller fills
   * with its reply header. `done(0, buf)` or `done(error, null)`.
   */
  read(
    offset: number,
    length: number,
    headerRoom: number,
    done: (error: number, buf: Buffer | null) => void,
  ): void {
    const pieces: PieceBuf[] = [];
    let err = 0;
    let refs = 1;
    const finish = () => {
      if (--refs !== 0) return;
      let out: Buffer | null = null;
      if (err === 0) {
        out = this.#outBuffer(headerRoom + length);
        let pos = headerRoom;
        const phys = this.rig.machine.phys;
        for (const p of pieces) {
          for (const s of p.io.segments) {
            phys.readInto(s.phys, out.subarray(pos, pos + s.len));
            pos += s.len;
          }
        }
      }
      for (const p of pieces) this.#freePiece(p);
      this.#guard(() => done(err, out));
    };
    for (let pos = 0; pos < length; pos += this.maxPiece) {
      const n = Math.min(this.maxPiece, length - pos);
      const p = this.#allocPiece(n);
      if (p === undefined) {
        err = NBD_ENOMEM;
        break;
      }
      pieces.push(p);
      refs++;
      this.bdev.submit('read', (offset + pos) / SECTOR_SIZE, p.io, (r: BlkIoResult) => {
        if (r.status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(r.status);
        finish();
      });
    }
    this.#kick();
    finish();
  }

  /**
   * Starts a write of `length` bytes at `offset` (validated by the caller); the payload is pushed
   * into the returned sink as it arrives, each full piece submitted at once. When every piece has
   * completed (and, with `fua`, a flush after them: kernel `REQ_FUA` done as a post-flush, as
   * `blk-flush.c` does for a device without FUA), `done` runs with 0 or an NBD error. After
   * `abort()`, `done` still runs once the pieces already submitted have completed (with NBD_EIO).
   */
  write(offset: number, length: number, fua: boolean, done: NbdDone): NbdWriteSink {
    const phys = this.rig.machine.phys;
    let err = 0;
    let refs = 1; // the submission reference, dropped when the payload is complete or abandoned
    let open = true;
    let received = 0;
    let cur: PieceBuf | undefined;
    let curStart = 0;
    let curFill = 0;
    let seg = 0;
    let segOff = 0;
    const finish = () => {
      if (--refs !== 0) return;
      if (err === 0 && fua) this.flush(done);
      else this.#guard(() => done(err));
    };
    const close = () => {
      open = false;
      finish();
    };
    const submit = (p: PieceBuf, at: number) => {
      refs++;
      this.bdev.submit('write', (offset + at) / SECTOR_SIZE, p.io, (r: BlkIoResult) => {
        this.#freePiece(p);
        if (r.status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(r.status);
        finish();
      });
      this.#kick();
    };
    /** Opens the next piece if none is open; false when the payload is being swallowed. */
    const openPiece = (): boolean => {
      if (cur !== undefined) return true;
      if (err !== 0) return false;
      const n = Math.min(this.maxPiece, length - received);
      cur = this.#allocPiece(n);
      if (cur === undefined) {
        err = NBD_ENOMEM; // no machine memory: the rest of the payload is swallowed
        return false;
      }
      curStart = received;
      curFill = 0;
      seg = 0;
      segOff = 0;
      return true;
    };
    const sink: NbdWriteSink = {
      span: (max: number) => {
        if (!open || received === length || !openPiece()) return undefined;
        const s = cur!.io.segments[seg]!;
        return phys.span(s.phys + segOff, Math.min(max, s.len - segOff, length - received));
      },
      advance: (k: number) => {
        received += k;
        if (cur !== undefined) {
          curFill += k;
          segOff += k;
          if (segOff === cur.io.segments[seg]!.len) {
            seg++;
            segOff = 0;
          }
          if (curFill === cur.bytes) {
            const p = cur;
            cur = undefined;
            submit(p, curStart);
          }
        }
        if (received === length) close();
      },
      push: (chunk: Uint8Array) => {
        let at = 0;
        while (open && at < chunk.length && received < length) {
          const dst = sink.span(chunk.length - at);
          const k = dst === undefined ? Math.min(chunk.length - at, length - received) : dst.length;
          if (dst !== undefined) dst.set(at === 0 && k === chunk.length ? chunk : chunk.subarray(at, at + k));
          at += k;
          sink.advance(k);
        }
      },
      abort: () => {
        if (!open) return;
        if (cur !== undefined) {
          this.#freePiece(cur);
          cur = undefined;
        }
        if (err === 0) err = NBD_EIO;
        close();
      },
    };
    if (length === 0) close();
    return sink;
  }

  /** Flushes the device's volatile write cache (kernel: `blkdev_issue_flush`). */
  flush(done: NbdDone): void {
    this.bdev.submit('flush', 0, 0, (r: BlkIoResult) => {
      const e = blkStatusToNbd(r.status);
      this.#guard(() => done(e));
    });
    this.#kick();
  }

  /**
   * Discards the whole logical blocks inside `[offset, offset + length)` (§ `NBD_CMD_TRIM`: the
   * server may round the start up and the end down), in pieces of at most 1 GiB (kernel:
   * `blkdev_issue_discard` splitting at `max_discard_sectors`), then flushes with `fua`.
   */
  trim(offset: number, length: number, fua: boolean, done: NbdDone): void {
    const lbs = this.minBlockSize;
    const start = Math.ceil(offset / lbs) * lbs;
    const end = Math.floor((offset + length) / lbs) * lbs;
    let err = 0;
    let refs = 1;
    const finish = () => {
      if (--refs !== 0) return;
      if (err === 0 && fua) this.flush(done);
      else this.#guard(() => done(err));
    };
    const maxDiscard = 2 ** 30;
    for (let pos = start; pos < end; pos += maxDiscard) {
      const n = Math.min(maxDiscard, end - pos);
      refs++;
      this.bdev.submit('discard', pos / SECTOR_SIZE, n / SECTOR_SIZE, (r: BlkIoResult) => {
        if (r.status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(r.status);
        finish();
      });
    }
    this.#kick();
    finish();
  }

  // -------------------------------------------------------------------------------------------
  // The clock
  // -------------------------------------------------------------------------------------------

  /** Runs `fn` after the next clock run (replies are corked until then); schedules a run. */
  afterRun(fn: () => void): void {
    this.#afterRun.push(fn);
    this.#kick();
  }

  #kick(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(this.#run);
  }

  readonly #run = (): void => {
    this.#scheduled = false;
    try {
      // The controller executed each command at submission; run the virtual clock until every
      // completion has been delivered (completion callbacks may submit more, e.g. FUA flushes).
      this.bdev.drain();
    } catch (e) {
      this.#internalErrors++;
      this.onInternalError(e);
    }
    const after = this.#afterRun.splice(0);
    for (const fn of after) this.#guard(fn);
  };

  #guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#internalErrors++;
      this.onInternalError(e);
    }
  }

  /** Block requests not yet completed. */
  get pending(): number {
    return this.bdev.pending;
  }

  // -------------------------------------------------------------------------------------------
  // Stats and teardown
  // -------------------------------------------------------------------------------------------

  /** A snapshot of the export's counters. */
  stats(): NbdExportStats {
    const s = this.bdev.stats;
    const c = this.rig.machine.counters;
    const driver: Record<string, number> = {};
    for (const [k, v] of Object.entries(this.nvme.stats)) if (typeof v === 'number') driver[k] = v;
    const leaks = blkLeakReport(this.rig.machine);
    if (this.#liveBufs !== 0) leaks.push(`nbd buffers: ${this.#liveBufs} still allocated`);
    return {
      path: this.path,
      iommu: this.rig.mode,
      size: this.size,
      maxRequestBytes: this.maxPiece,
      blockRequests: { ...s.ios },
      blockBytes: { ...s.bytes },
      blockErrors: { ...s.errors },
      bios: s.bios,
      maxInFlight: s.maxInFlight,
      memoryWaits: this.#memoryWaits,
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
      leaks,
      internalErrors: this.#internalErrors,
    };
  }

  /**
   * Completes outstanding block requests, removes the driver (kernel: `nvme_remove`) and checks
   * with dma-debug that nothing stayed mapped; returns the final counters. Idempotent.
   */
  close(): NbdExportStats {
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
