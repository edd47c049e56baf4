/**
 * The NBD export: what the server's commands become. Every command turns into block requests on a
 * simulated NVMe-style device (`nbd-device.ts`) whose data sits in physical pages of the simulated
 * machine and moves by device DMA through the IOMMU. The export owns the request buffers (pages
 * of the machine, within a byte budget: `nbd-export-buffers.ts`), splits commands into block
 * requests of at most `maxPiece` bytes, and receives write payloads straight into the buffers
 * (`nbd-export-data.ts`). Kernel counterpart: what `drivers/block/nbd.c`'s peer would do on Linux,
 * a user-space server doing O_DIRECT I/O on an NVMe namespace (`block/fops.c`), so pages pinned
 * from its buffers are DMA-mapped by the NVMe driver (`drivers/nvme/host/pci.c`).
 *
 * The device runs on the server's thread (default) or on a thread of its own (`deviceThread`):
 * then the buffers are a pool of the device machine's RAM shared with the server thread, which
 * receives into them and hands the device block requests through a shared ring, while the device
 * thread maps them, moves the data and completes them, as a server thread and an NVMe controller
 * work side by side.
 *
 * Zero writes either deallocate or write from one zero page (`zeroes`, `nbd-export-zeroes.ts`), and
 * allocation queries read the device's media map (`allocation`). Options and counters are in
 * `nbd-export-options.ts`.
 *
 * Concurrency: requests from all connections are submitted as they are parsed and the device's
 * completions are delivered once per event-loop turn (`setImmediate`) or when the device thread
 * reports them, which batches the completions of every socket read in that turn.
 */
import { BLK_STS_OK } from '@iovalink/blk-mq';
import { PAGE_SIZE } from '@iovalink/iommu';
import { alignDown, alignUp } from '@iovalink/iommu/internal';
import type { IommuMode } from '../rig.js';
import { LocalNbdDevice, type NbdBlockDevice, type NbdDeviceStats } from './nbd-device.js';
import { RemoteNbdDevice } from './nbd-device-remote.js';
import { NbdBufferPool } from './nbd-export-buffers.js';
import {
  blkStatusToNbd,
  type NbdDone,
  type NbdExportIo,
  type NbdReadData,
  type NbdWriteSink,
  readPieces,
  writePieces,
} from './nbd-export-data.js';
import { deviceOptions, type NbdExportOptions, type NbdExportStats } from './nbd-export-options.js';
import { NbdZeroWriter } from './nbd-export-zeroes.js';
import { NBD_EIO, NBD_MAX_PORTABLE_PAYLOAD } from './nbd-proto.js';

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
  /** Device translation. */
  readonly iommu: IommuMode;
  /** The device: on this thread (`LocalNbdDevice`) or on its own (`RemoteNbdDevice`). */
  readonly device: NbdBlockDevice;
  /** The request buffers: the budget and the pages of pieces. */
  readonly #buffers: NbdBufferPool;
  /** What the data operations use of this export. */
  readonly #io: NbdExportIo;
  /** Zero writes from the zero page. */
  readonly #zeroWriter: NbdZeroWriter;
  #scheduled = false;
  /** Functions to run after the next clock run: the first `#afterRunCount` slots (the rest are free). */
  #afterRun: Array<(() => void) | undefined> = [];
  #afterRunCount = 0;
  /** A list with no functions for the next run (the two swap at every run); none while a run uses it. */
  #afterRunSpare: Array<(() => void) | undefined> | undefined = [];
  /** The device's counters at close (set once closed). */
  #final: NbdDeviceStats | undefined;
  #internalErrors = 0;
  /** Called with exceptions caught while running the device or a completion callback. */
  onInternalError: (e: unknown) => void = () => {};

  /**
   * An export whose device runs on this thread, or on the given `device` (from `open`).
   * Invalid options throw an `NbdError` before anything is built.
   */
  constructor(options: NbdExportOptions = {}, device?: NbdBlockDevice) {
    const d = deviceOptions(options);
    this.name = options.name ?? 'iovalink';
    this.path = d.path;
    this.iommu = d.iommu;
    this.queueDepth = d.queueDepth;
    this.description =
      options.description ??
      `iovalink simulated NVMe namespace (${this.path === 'sg' ? 'scatterlist path' : 'two-step IOVA path'}, IOMMU ${this.iommu})`;
    this.device = device ?? new LocalNbdDevice(d);
    this.device.onInternalError = (e) => this.onInternalError(e); // counted by the device
    this.device.onReady = this.#run;
    this.minBlockSize = this.device.info.minBlockSize;
    this.size = this.device.info.size;
    this.maxPiece = this.device.info.maxPiece;
    const guard = (fn: () => void): void => this.#guard(fn);
    this.#buffers = new NbdBufferPool(this.device.pages, options.buffers ?? 'contiguous', d.budget, guard);
    this.#io = {
      device: this.device,
      maxPiece: this.maxPiece,
      buffers: this.#buffers,
      kick: () => this.#kick(),
      guard,
      fault: (e) => this.#fault(e),
      flush: (done) => this.flush(done),
    };
    this.#zeroWriter = new NbdZeroWriter(this.#io);
  }

  /**
   * Opens an export: as the constructor, but with `deviceThread` the device starts on a worker
   * thread of its own first (its machine's buffer pool shared with this thread).
   */
  static async open(options: NbdExportOptions = {}): Promise<NbdExport> {
    const d = deviceOptions(options);
    if (options.deviceThread !== true) return new NbdExport(options);
    return new NbdExport(options, await RemoteNbdDevice.start(d, 2 * d.budget));
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
    return this.#buffers.tryReserve(bytes);
  }

  /** Returns `bytes` to the budget and grants queued reservations that now fit. */
  release(bytes: number): void {
    this.#buffers.release(bytes);
  }

  /**
   * Queues a reservation of `bytes`; `granted` runs once it is made (the caller then owns it and
   * must `release` it). Returns a function that withdraws the reservation if it is still queued
   * (true) and does nothing once it has been granted (false).
   */
  waitForMemory(bytes: number, granted: () => void): () => boolean {
    return this.#buffers.waitForMemory(bytes, granted);
  }

  // -------------------------------------------------------------------------------------------
  // Operations
  // -------------------------------------------------------------------------------------------

  /**
   * Reads `length` bytes at `offset` (both multiples of the minimum block size, in range): one
   * block request per piece of at most `maxPiece` bytes, into pages of the machine. When all have
   * completed, `done(0, data)` gets views of those pages in order (no copy: the reply is sent
   * straight from simulated memory, as a server's `send` from its O_DIRECT buffer) and must call
   * `data.release()` once the views are no longer needed (the reply was sent or dropped), which
   * frees the pages; or `done(error, null)`, the pages already freed.
   */
  read(offset: number, length: number, done: (error: number, data: NbdReadData | null) => void): void {
    readPieces(this.#io, offset, length, done);
  }

  /**
   * Starts a write of `length` bytes at `offset` (validated by the caller); the payload is pushed
   * into the returned sink as it arrives, each full piece submitted at once. When every piece has
   * completed (and, with `fua`, a flush after them: kernel `REQ_FUA` done as a post-flush, as
   * `blk-flush.c` does for a device without FUA), `done` runs with 0 or an NBD error. After
   * `abort()`, `done` still runs once the pieces already submitted have completed (with NBD_EIO).
   */
  write(offset: number, length: number, fua: boolean, done: NbdDone): NbdWriteSink {
    return writePieces(this.#io, offset, length, fua, done);
  }

  /** Flushes the device's volatile write cache (kernel: `blkdev_issue_flush`). */
  flush(done: NbdDone): void {
    this.device.submit('flush', 0, 0, null, (status) => {
      const e = blkStatusToNbd(status);
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
    const start = alignUp(offset, lbs);
    const end = alignDown(offset + length, lbs);
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
      this.device.submit('discard', pos, n, null, (status) => {
        if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
        finish();
      });
    }
    this.#kick();
    finish();
  }

  /**
   * Zeroes `length` bytes at `offset` (whole logical blocks, validated by the caller), then flushes
   * with `fua`. Two ways, as NBD_CMD_WRITE_ZEROES allows (§ `NBD_CMD_WRITE_ZEROES`): `'deallocate'`
   * (the client allows a hole) discards, as `trim` does, and the range reads back as zeroes;
   * `'write'` (NBD_CMD_FLAG_NO_HOLE: the range must stay allocated) writes pages of zeroes through
   * the device like any write, in pieces of `maxPiece` bytes, at most four in flight. The kernel
   * counterparts of both are given in `nbd-export-zeroes.ts`.
   *
   * `done(0)` or `done(error)` (the first failure; pieces already written stay written).
   */
  zeroes(offset: number, length: number, how: 'deallocate' | 'write', fua: boolean, done: NbdDone): void {
    if (how === 'deallocate') {
      this.trim(offset, length, fua, done);
      return;
    }
    this.#zeroWriter.write(offset, length, fua, done);
  }

  /**
   * The allocation state of `[offset, offset + length)` (validated by the caller) from the
   * device's backing store (`NbdBlockDevice.allocation`): `done(0, runs, covered)` with at most
   * `maxRuns` `(length, allocated)` runs covering `covered` bytes from `offset`, or
   * `done(NBD_EIO, null, 0)` when the device cannot answer. Delivered after the next clock run,
   * like every other completion.
   */
  allocation(
    offset: number,
    length: number,
    maxRuns: number,
    done: (error: number, runs: number[] | null) => void,
  ): void {
    this.device.allocation(offset, length, maxRuns, (runs) => {
      this.afterRun(() => done(runs === null ? NBD_EIO : 0, runs));
    });
  }

  // -------------------------------------------------------------------------------------------
  // The clock
  // -------------------------------------------------------------------------------------------

  /** Runs `fn` after the next clock run (replies are corked until then); schedules a run. */
  afterRun(fn: () => void): void {
    this.#afterRun[this.#afterRunCount++] = fn;
    this.#kick();
  }

  #kick(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(this.#run);
  }

  readonly #run = (): void => {
    this.#scheduled = false;
    this.device.run();
    const n = this.#afterRunCount;
    if (n === 0) return;
    // functions queued while these run wait for the next run, in the other list
    const after = this.#afterRun;
    this.#afterRun = this.#afterRunSpare ?? [];
    this.#afterRunCount = 0;
    this.#afterRunSpare = undefined;
    for (let i = 0; i < n; i++) {
      const fn = after[i]!;
      after[i] = undefined;
      this.#guard(fn);
    }
    this.#afterRunSpare = after;
  };

  #guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#fault(e);
    }
  }

  /** Counts and reports an exception a completion callback threw. */
  #fault(e: unknown): void {
    this.#internalErrors++;
    this.onInternalError(e);
  }

  /** Block requests not yet completed. */
  get pending(): number {
    return this.device.pending;
  }

  // -------------------------------------------------------------------------------------------
  // Stats and teardown
  // -------------------------------------------------------------------------------------------

  /** A snapshot of the export's counters. */
  stats(): NbdExportStats {
    const d = this.#final ?? this.device.stats();
    const b = this.#buffers;
    const leaks = [...d.leaks];
    if (b.liveBufs !== 0) leaks.push(`nbd buffers: ${b.liveBufs} still allocated`);
    if (this.#final !== undefined && b.reserved !== 0)
      leaks.push(`nbd buffer budget: ${b.reserved} bytes still reserved`);
    return {
      ...d,
      path: this.path,
      iommu: this.iommu,
      size: this.size,
      maxRequestBytes: this.maxPiece,
      memoryWaits: b.memoryWaits,
      memReserved: b.reserved,
      memWaiting: b.waiting,
      deviceThread: this.device instanceof RemoteNbdDevice,
      leaks,
      internalErrors: d.internalErrors + this.#internalErrors,
    };
  }

  /**
   * Completes outstanding block requests, removes the driver (kernel: `nvme_remove`) and checks
   * with dma-debug that nothing stayed mapped; returns the final counters. Idempotent.
   */
  close(): NbdExportStats {
    if (this.#final === undefined) {
      this.#buffers.drainCache();
      this.#final = this.device.close();
      this.#zeroWriter.release();
    }
    return this.stats();
  }
}
