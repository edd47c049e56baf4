/**
 * The NBD export: what the server's commands become. Every command turns into block requests on a
 * simulated NVMe-style device (`nbd-device.ts`) whose data sits in physical pages of the simulated
 * machine and moves by device DMA through the IOMMU. The export owns the request buffers (pages
 * of the machine, within a byte budget), splits commands into block requests of at most
 * `maxPiece` bytes, and receives write payloads straight into the buffers. Kernel counterpart:
 * what `drivers/block/nbd.c`'s peer would do on Linux, a user-space server doing O_DIRECT I/O on
 * an NVMe namespace (`block/fops.c`), so pages pinned from its buffers are DMA-mapped by the NVMe
 * driver (`drivers/nvme/host/pci.c`).
 *
 * The device runs on the server's thread (default) or on a thread of its own (`deviceThread`):
 * then the buffers are a pool of the device machine's RAM shared with the server thread, which
 * receives into them and hands the device block requests through a shared ring, while the device
 * thread maps them, moves the data and completes them, as a server thread and an NVMe controller
 * work side by side.
 *
 * Zero writes either deallocate or write from one zero page (`zeroes`), and allocation queries read
 * the device's media map (`allocation`); both are documented where they are defined.
 *
 * Concurrency: requests from all connections are submitted as they are parsed and the device's
 * completions are delivered once per event-loop turn (`setImmediate`) or when the device thread
 * reports them, which batches the completions of every socket read in that turn.
 */
import {
  BLK_STS_INVAL,
  BLK_STS_NOSPC,
  BLK_STS_NOTSUPP,
  BLK_STS_OK,
  type IoSegment,
  SECTOR_SIZE,
} from '@iovalink/blk-mq';
import { PAGE_SIZE } from '@iovalink/iommu';
import { alignDown, alignUp } from '@iovalink/iommu/internal';
import type { IommuMode } from '../rig.js';
import {
  LocalNbdDevice,
  type NbdBlockDevice,
  type NbdDeviceOptions,
  type NbdDeviceStats,
} from './nbd-device.js';
import { RemoteNbdDevice } from './nbd-device-remote.js';
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
  /** Run the device on a worker thread of its own (`NbdExport.open` only; default false). */
  deviceThread?: boolean;
}

/** Counters of an export: the device's, and the export's buffer waits. */
export interface NbdExportStats extends NbdDeviceStats {
  /** Driver version (mapping path). */
  path: 'sg' | 'iova';
  /** Device translation. */
  iommu: IommuMode;
  /** Export size in bytes. */
  size: number;
  /** Largest block request the server sends (bytes). */
  maxRequestBytes: number;
  /** Times a connection waited for buffer memory. */
  memoryWaits: number;
  /** Bytes of the buffer budget reserved now (zero once every connection is gone). */
  memReserved: number;
  /** Reservations queued for buffer memory now. */
  memWaiting: number;
  /** Whether the device ran on a thread of its own. */
  deviceThread: boolean;
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

/** The data of a completed read: views of the request's pages, in order, until `release`. */
export interface NbdReadData {
  parts: Uint8Array[];
  /** Frees the pages (idempotent); the views must not be used after it. */
  release(): void;
}

/** Pages of one piece: the caller buffer and how to free it. */
interface PieceBuf {
  segs: IoSegment[];
  /** [phys, order] pairs to free. */
  allocs: number[];
  bytes: number;
}

const DEFAULT_SIZE = 2 ** 30;
const DEFAULT_QUEUE_DEPTH = 64;
const DEFAULT_BUDGET = 128 * 2 ** 20;

/** NBD error value for a block status (kernel: `blk_status_to_errno`, then the protocol's set). */
export function blkStatusToNbd(status: number): number {
  if (status === BLK_STS_OK) return 0;
  if (status === BLK_STS_NOSPC) return NBD_ENOSPC;
  if (status === BLK_STS_INVAL || status === BLK_STS_NOTSUPP) return NBD_EINVAL;
  return NBD_EIO;
}

/** Checks an export's options and returns what its device is built from. */
function deviceOptions(options: NbdExportOptions): NbdDeviceOptions & { budget: number } {
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
  return {
    size,
    path: options.path ?? 'iova',
    iommu: options.iommu ?? 'strict',
    queueDepth: qd,
    seed: options.seed ?? 1,
    budget,
    // RAM: the request buffers (at most twice the budget after rounding to page blocks), the
    // driver's pools and the page tables; lazily backed, so only what is touched costs memory.
    memSize: 2 ** Math.ceil(Math.log2(4 * budget + 256 * 2 ** 20)),
    ...(options.debug === undefined ? {} : { debug: options.debug }),
    ...(options.latencyNs === undefined ? {} : { latencyNs: options.latencyNs }),
  };
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
  /** Device translation. */
  readonly iommu: IommuMode;
  /** The device: on this thread (`LocalNbdDevice`) or on its own (`RemoteNbdDevice`). */
  readonly device: NbdBlockDevice;
  readonly #layout: 'contiguous' | 'scattered';
  readonly #budget: number;
  #reserved = 0;
  #liveBufs = 0;
  readonly #memWaiters: Array<{ bytes: number; granted: () => void }> = [];
  #scheduled = false;
  readonly #afterRun: Array<() => void> = [];
  /** The device's counters at close (set once closed). */
  #final: NbdDeviceStats | undefined;
  #memoryWaits = 0;
  #internalErrors = 0;
  /** Called with exceptions caught while running the device or a completion callback. */
  onInternalError: (e: unknown) => void = () => {};
  /** The page of zeroes every zero write takes its data from (kernel: `ZERO_PAGE(0)`); 0 until first used. */
  #zeroPage = 0;
  /** Segments of a full zero-write piece, every one the zero page (built with the page). */
  #zeroSegs: IoSegment[] = [];

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
    this.#layout = options.buffers ?? 'contiguous';
    this.#budget = d.budget;
    this.description =
      options.description ??
      `iovalink simulated NVMe namespace (${this.path === 'sg' ? 'scatterlist path' : 'two-step IOVA path'}, IOMMU ${this.iommu})`;
    this.device = device ?? new LocalNbdDevice(d);
    this.device.onInternalError = (e) => this.onInternalError(e); // counted by the device
    this.device.onReady = this.#run;
    this.minBlockSize = this.device.info.minBlockSize;
    this.size = this.device.info.size;
    this.maxPiece = this.device.info.maxPiece;
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

  /**
   * Queues a reservation of `bytes`; `granted` runs once it is made (the caller then owns it and
   * must `release` it). Returns a function that withdraws the reservation if it is still queued
   * (true) and does nothing once it has been granted (false).
   */
  waitForMemory(bytes: number, granted: () => void): () => boolean {
    this.#memoryWaits++;
    const w = { bytes, granted };
    this.#memWaiters.push(w);
    return () => {
      const i = this.#memWaiters.indexOf(w);
      if (i < 0) return false;
      this.#memWaiters.splice(i, 1);
      // the head may have been the one holding the others back
      this.release(0);
      return true;
    };
  }

  #fits(bytes: number): boolean {
    return this.#reserved === 0 || this.#reserved + bytes <= this.#budget;
  }

  #allocPiece(bytes: number): PieceBuf | undefined {
    const pages = Math.ceil(bytes / PAGE_SIZE);
    const mp = this.device.pages;
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
    return { segs, allocs, bytes };
  }

  #freePiece(p: PieceBuf): void {
    const mp = this.device.pages;
    for (let i = 0; i < p.allocs.length; i += 2) mp.freePages(p.allocs[i]!, p.allocs[i + 1]!);
    this.#liveBufs--;
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
    const pieces: PieceBuf[] = [];
    let err = 0;
    let refs = 1;
    const finish = () => {
      if (--refs !== 0) return;
      if (err !== 0) {
        for (const p of pieces) this.#freePiece(p);
        this.#guard(() => done(err, null));
        return;
      }
      const parts: Uint8Array[] = [];
      const phys = this.device.phys;
      for (const p of pieces) {
        for (const s of p.segs) {
          for (let at = 0; at < s.len; ) {
            const v = phys.span(s.phys + at, s.len - at);
            parts.push(v);
            at += v.length;
          }
        }
      }
      let live = true;
      const release = () => {
        if (!live) return;
        live = false;
        for (const p of pieces) this.#freePiece(p);
      };
      this.#guard(() => done(0, { parts, release }));
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
      this.device.submit('read', offset + pos, n, p.segs, (status) => {
        if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
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
    const phys = this.device.phys;
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
      this.device.submit('write', offset + at, p.bytes, p.segs, (status) => {
        this.#freePiece(p);
        if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
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
        const s = cur!.segs[seg]!;
        return phys.span(s.phys + segOff, Math.min(max, s.len - segOff, length - received));
      },
      advance: (k: number) => {
        received += k;
        if (cur !== undefined) {
          curFill += k;
          segOff += k;
          if (segOff === cur.segs[seg]!.len) {
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
   * with `fua`. Two ways, as NBD_CMD_WRITE_ZEROES allows (§ `NBD_CMD_WRITE_ZEROES`):
   *
   * - `'deallocate'` (the client allows a hole): discards, as `trim` does. Our controller's
   *   deallocate reads back as zeroes (`nvme-hw.ts` Dataset Management), and the range becomes a
   *   hole of the backing store. The kernel does the same for controllers known to read
   *   deallocated blocks as zeroes: `nvme_setup_write_zeroes` (drivers/nvme/host/core.c) turns the
   *   write-zeroes request into `nvme_setup_discard` under `NVME_QUIRK_DEALLOCATE_ZEROES`.
   *   Deliberate difference: the block layer itself never zeroes through a discard; a real server
   *   would call `fallocate(PUNCH_HOLE)`, i.e. `blkdev_issue_zeroout` with `BLKDEV_ZERO_NOFALLBACK`
   *   (block/fops.c `blkdev_fallocate`), which needs a write-zeroes capable queue.
   * - `'write'` (NBD_CMD_FLAG_NO_HOLE: the range must stay allocated): ordinary write block
   *   requests whose every segment is one page of zeroes, DMA-mapped like any write — what
   *   `blkdev_issue_zeroout(…, BLKDEV_ZERO_NOUNMAP)` falls back to (`__blkdev_issue_zero_pages`
   *   adding `ZERO_PAGE(0)` to bios, block/blk-lib.c) on a device without Write Zeroes. Our model
   *   device has none (`max_write_zeroes_sectors` 0). Had it one, the NVMe Write Zeroes command
   *   (`nvme_setup_write_zeroes`) sets only the LBA range, no data pointer: it would map nothing.
   *   Pieces of `maxPiece` bytes, at most four in flight.
   *
   * `done(0)` or `done(error)` (the first failure; pieces already written stay written).
   */
  zeroes(offset: number, length: number, how: 'deallocate' | 'write', fua: boolean, done: NbdDone): void {
    if (how === 'deallocate') {
      this.trim(offset, length, fua, done);
      return;
    }
    const segs = this.#zeroPieceSegs();
    if (segs === undefined) {
      this.#guard(() => done(NBD_ENOMEM));
      return;
    }
    let next = 0;
    let inFlight = 0;
    let err = 0;
    let finished = false;
    const pump = (): void => {
      while (err === 0 && inFlight < 4 && next < length) {
        const at = next;
        const n = Math.min(this.maxPiece, length - at);
        next += n;
        inFlight++;
        const pieceSegs = n === this.maxPiece ? segs : zeroSegsFor(this.#zeroPage, n);
        this.device.submit('write', offset + at, n, pieceSegs, (status) => {
          inFlight--;
          if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
          pump();
        });
      }
      if (inFlight > 0) {
        this.#kick();
        return;
      }
      if (finished) return;
      finished = true;
      if (err === 0 && fua) this.flush(done);
      else this.#guard(() => done(err));
    };
    pump();
  }

  /** The segments of a full zero-write piece, allocating and clearing the zero page on first use. */
  #zeroPieceSegs(): IoSegment[] | undefined {
    if (this.#zeroPage === 0) {
      const phys = this.device.pages.allocPages(0);
      if (phys === 0) return undefined;
      this.device.phys.span(phys, PAGE_SIZE).fill(0);
      this.#zeroPage = phys;
      this.#zeroSegs = zeroSegsFor(phys, this.maxPiece);
    }
    return this.#zeroSegs;
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
    this.device.run();
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
    return this.device.pending;
  }

  // -------------------------------------------------------------------------------------------
  // Stats and teardown
  // -------------------------------------------------------------------------------------------

  /** A snapshot of the export's counters. */
  stats(): NbdExportStats {
    const d = this.#final ?? this.device.stats();
    const leaks = [...d.leaks];
    if (this.#liveBufs !== 0) leaks.push(`nbd buffers: ${this.#liveBufs} still allocated`);
    if (this.#final !== undefined && this.#reserved !== 0)
      leaks.push(`nbd buffer budget: ${this.#reserved} bytes still reserved`);
    return {
      ...d,
      path: this.path,
      iommu: this.iommu,
      size: this.size,
      maxRequestBytes: this.maxPiece,
      memoryWaits: this.#memoryWaits,
      memReserved: this.#reserved,
      memWaiting: this.#memWaiters.length,
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
      this.#final = this.device.close();
      if (this.#zeroPage !== 0) this.device.pages.freePages(this.#zeroPage, 0);
      this.#zeroPage = 0;
    }
    return this.stats();
  }
}

/** `bytes` of zeroes as segments that all point at the zero page `phys` (a page each, the last shorter). */
function zeroSegsFor(phys: number, bytes: number): IoSegment[] {
  const segs: IoSegment[] = [];
  for (let at = 0; at < bytes; at += PAGE_SIZE) segs.push({ phys, len: Math.min(PAGE_SIZE, bytes - at) });
  return segs;
}
