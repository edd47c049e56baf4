/**
 * The block-device face a user of the disk sees: asynchronous read/write/flush/discard by sector
 * into caller buffers of physical memory, with a queue depth and per-I/O accounting. As in Linux
 * `block/fops.c` (`blkdev_direct_IO`: alignment checks, one bio per up to BIO_MAX_VECS bvecs under
 * a plug, completion when every bio has ended) and `block/blk-lib.c` (`blkdev_issue_discard`,
 * `blkdev_issue_flush`), v6.17.
 * The device models complete I/O on the machine's virtual clock; this face runs the clock: the
 * promise-returning calls schedule it themselves (a microtask, then one macrotask per event so
 * callers can keep the queue full), and `drain()` runs it synchronously. Callback-style
 * `submit()` is for generators that keep a precise queue depth.
 * Differs on purpose: no page cache (every I/O is direct), no file position or EOF clamping (an
 * I/O past the end fails with BLK_STS_IOERR from the block layer), statuses instead of errnos.
 */
import { type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { allocScatteredPageList } from '@iovalink/iommu/internal';
import {
  BIO_MAX_VECS,
  Bio,
  bioAddPage,
  bioAlloc,
  bioPut,
  bioReuse,
  REQ_OP_DISCARD,
  REQ_OP_READ,
  REQ_OP_WRITE,
  REQ_PREFLUSH,
  REQ_SYNC,
  SECTOR_SIZE,
  UINT_MAX,
} from './bio.js';
import {
  type BlkPlug,
  blkFinishPlug,
  blkQueueNextEventNs,
  blkStartPlug,
  blkStartPlugOn,
  submitBio,
} from './blk-mq.js';
import { BLK_STS_INVAL, BLK_STS_NOTSUPP, BLK_STS_OK, type BlkStatus, blkStatusToStr } from './blk-status.js';
import type { Gendisk } from './blkdev.js';
import { BlkError } from './errors.js';

/** One physically contiguous piece of a caller buffer. */
export interface IoSegment {
  /** Physical address of the first byte. */
  readonly phys: number;
  /** Bytes. */
  readonly len: number;
}

/** A caller buffer: physically contiguous pieces in order (kernel: the pages of an `iov_iter`). */
export class IoBuffer {
  readonly segments: readonly IoSegment[];
  /** Total bytes. */
  readonly length: number;

  constructor(segments: readonly IoSegment[]) {
    this.segments = segments;
    let n = 0;
    for (const s of segments) n += s.len;
    this.length = n;
  }

  /** Copies the buffer's bytes out of physical memory (a CPU read). */
  read(machine: Machine): Uint8Array {
    const out = new Uint8Array(this.length);
    let off = 0;
    for (const s of this.segments) {
      machine.phys.readInto(s.phys, out.subarray(off, off + s.len));
      off += s.len;
    }
    return out;
  }

  /** Writes `data` (at most `length` bytes) into the buffer's physical memory (a CPU write). */
  write(machine: Machine, data: Uint8Array): void {
    let off = 0;
    for (const s of this.segments) {
      if (off >= data.length) break;
      const n = Math.min(s.len, data.length - off);
      machine.phys.write(s.phys, data.subarray(off, off + n));
      off += n;
    }
  }
}

/** A caller buffer and the `[phys, order]` page blocks behind it. */
export interface IoPages {
  buf: IoBuffer;
  allocs: Array<[number, number]>;
}

/**
 * Allocates a caller buffer of `bytes` starting `offset` bytes into its first page: physically
 * contiguous (one block of pages), or scattered (single pages, no two of them physically adjacent,
 * in no ascending order: what a driver sees of a user buffer pinned from a fragmented buddy
 * allocator). Null when memory runs out, with nothing left allocated.
 * No kernel counterpart: it stands in for a user's pinned pages.
 */
export function allocIoPages(
  machine: Machine,
  bytes: number,
  layout: 'contiguous' | 'scattered',
  offset = 0,
): IoPages | null {
  const pages = Math.ceil((bytes + offset) / PAGE_SIZE);
  if (layout === 'contiguous') {
    const order = Math.ceil(Math.log2(pages));
    const phys = machine.pages.allocPages(order);
    if (phys === 0) return null;
    return { buf: new IoBuffer([{ phys: phys + offset, len: bytes }]), allocs: [[phys, order]] };
  }
  const kept = allocScatteredPageList(machine.pages, pages);
  if (kept === null) return null;
  // a fragmented free list hands pages out in no particular order
  const picked = machine.rng.shuffle(kept);
  const allocs: Array<[number, number]> = [];
  const segs: IoSegment[] = [];
  let left = bytes;
  for (let p = 0; p < pages; p++) {
    const phys = picked[p]!;
    const off = p === 0 ? offset : 0;
    const n = Math.min(PAGE_SIZE - off, left);
    allocs.push([phys, 0]);
    segs.push({ phys: phys + off, len: n });
    left -= n;
  }
  return { buf: new IoBuffer(segs), allocs };
}

/** An I/O operation of the face. */
export type BlkIoOp = 'read' | 'write' | 'flush' | 'discard';

/** Outcome of one I/O. */
export interface BlkIoResult {
  /** BLK_STS_OK, or the first error status of its bios. */
  status: BlkStatus;
  /** Bytes requested. */
  bytes: number;
  /** Virtual nanoseconds from submission (queueing included) to completion. */
  latencyNs: number;
}

/** Per-I/O accounting of the face (the requests it became are in `disk.stats`). */
export class BdevStats {
  /** I/Os completed, by operation. */
  readonly ios: Record<BlkIoOp, number> = { read: 0, write: 0, flush: 0, discard: 0 };
  /** Bytes completed, by operation. */
  readonly bytes: Record<BlkIoOp, number> = { read: 0, write: 0, flush: 0, discard: 0 };
  /** Virtual latency summed, by operation. */
  readonly latencyNs: Record<BlkIoOp, number> = { read: 0, write: 0, flush: 0, discard: 0 };
  /** Largest latency seen. */
  maxLatencyNs = 0;
  /** Bios built. */
  bios = 0;
  /** I/Os that completed with an error, by status name. */
  readonly errors: Record<string, number> = {};
  /** Most I/Os in flight at once. */
  maxInFlight = 0;
}

/**
 * Adds `n` to `r[op]` with a named store per operation: a store keyed by the `op` string goes
 * through V8's megamorphic keyed-store path on every completion.
 */
function addByOp(r: Record<BlkIoOp, number>, op: BlkIoOp, n: number): void {
  if (op === 'read') r.read += n;
  else if (op === 'write') r.write += n;
  else if (op === 'flush') r.flush += n;
  else r.discard += n;
}

/**
 * One I/O of the face (kernel: `struct blkdev_dio`, block/fops.c): the caller's request, the bios
 * still out (`ref`), the first error, and its first bio embedded (the kernel allocates the dio as
 * front padding of that bio from `blkdev_dio_pool`). The block device keeps finished dios, bio
 * included, and hands them to later I/Os, as that bio_set's mempool does.
 */
class BlkdevDio {
  readonly bdev: BlockDevice;
  op: BlkIoOp = 'read';
  sector = 0;
  buf: IoBuffer | null = null;
  nrSectors = 0;
  done: ((r: BlkIoResult) => void) | null = null;
  /** Virtual time of submission (latency includes waiting for queue depth). */
  submitNs = 0;
  /** Bios built and not yet completed (kernel: `ref`). */
  ref = 0;
  /** The first error status of its bios (kernel: the first `bi_status` kept in `dio->bio`). */
  status: BlkStatus = BLK_STS_OK;
  /** Bytes requested. */
  bytes = 0;
  /** The first bio (kernel: `dio->bio`, the last member of `struct blkdev_dio`). */
  readonly bio = new Bio(BIO_MAX_VECS, REQ_OP_READ);

  constructor(bdev: BlockDevice) {
    this.bdev = bdev;
  }
}

/** Options of the face. */
export interface BlockDeviceOptions {
  /** I/Os in flight at most; more wait in submission order (default: the tag set's depth). */
  queueDepth?: number;
}

/** A disk opened for direct I/O (kernel: a `struct block_device` opened with O_DIRECT). */
export class BlockDevice {
  readonly disk: Gendisk;
  readonly machine: Machine;
  readonly queueDepth: number;
  readonly stats = new BdevStats();
  #inFlight = 0;
  readonly #backlog: BlkdevDio[] = [];
  /** Finished dios for later I/Os (kernel: the mempool of `blkdev_dio_pool`). */
  readonly #freeDios: BlkdevDio[] = [];
  /** One plug per nesting level of submission (kernel: the submitter's on-stack plug). */
  readonly #plugs: BlkPlug[] = [];
  #plugDepth = 0;
  #pumpScheduled = false;

  constructor(disk: Gendisk, options: BlockDeviceOptions = {}) {
    this.disk = disk;
    this.machine = disk.queue.machine;
    this.queueDepth = options.queueDepth ?? disk.queue.tagSet.queueDepth;
    if (!(Number.isInteger(this.queueDepth) && this.queueDepth >= 1)) {
      throw new BlkError(`block device: queue depth ${this.queueDepth} must be a positive integer`, {
        rule: 'bdev: queue depth',
      });
    }
  }

  /** Size in 512-byte sectors. */
  get capacity(): number {
    return this.disk.capacity;
  }

  /** Logical block size in bytes. */
  get logicalBlockSize(): number {
    return this.disk.queue.limits.logicalBlockSize;
  }

  /** I/Os submitted and not completed (in flight or waiting for queue depth). */
  get pending(): number {
    return this.#inFlight + this.#backlog.length;
  }

  /** Reads `buf.length` bytes at `sector` into `buf`. */
  read(sector: number, buf: IoBuffer): Promise<BlkIoResult> {
    return this.#promise('read', sector, buf, 0);
  }

  /** Writes `buf` at `sector`. */
  write(sector: number, buf: IoBuffer): Promise<BlkIoResult> {
    return this.#promise('write', sector, buf, 0);
  }

  /** Flushes the device's volatile cache (kernel: `blkdev_issue_flush`). */
  flush(): Promise<BlkIoResult> {
    return this.#promise('flush', 0, null, 0);
  }

  /** Discards `nrSectors` at `sector` (kernel: `blkdev_issue_discard`). */
  discard(sector: number, nrSectors: number): Promise<BlkIoResult> {
    return this.#promise('discard', sector, null, nrSectors);
  }

  #promise(op: BlkIoOp, sector: number, buf: IoBuffer | null, nr: number): Promise<BlkIoResult> {
    return new Promise((resolve) => {
      this.submit(op, sector, buf ?? nr, resolve);
      this.#kick();
    });
  }

  /**
   * Submits one I/O; `done` is called (from inside the clock run) when it completes. `data` is the
   * buffer for reads and writes, the sector count for discards, ignored for flushes.
   */
  submit(op: BlkIoOp, sector: number, data: IoBuffer | number, done: (r: BlkIoResult) => void): void {
    const io = this.#freeDios.pop() ?? new BlkdevDio(this);
    io.op = op;
    io.sector = sector;
    io.buf = typeof data === 'number' ? null : data;
    io.nrSectors = typeof data === 'number' ? data : 0;
    io.done = done;
    io.submitNs = this.machine.clock.nowNs;
    io.ref = 0;
    io.status = BLK_STS_OK;
    io.bytes = 0;
    if (this.#inFlight >= this.queueDepth) this.#backlog.push(io);
    else this.#start(io);
  }

  /**
   * Completion of one bio of a dio (kernel: `blkdev_bio_end_io`): the first error sticks, the bio
   * is put, and the last one ends the I/O. Throws for a bio of a dio that has no bio out (ended
   * twice, or after its I/O finished).
   */
  static readonly #bioEndIo = (b: Bio): void => {
    const io = b.biPrivate as BlkdevDio;
    if (io.ref <= 0) {
      throw new BlkError('block device: a bio completed after its I/O had finished (ended twice?)', {
        rule: 'bdev: bio ended twice',
      });
    }
    if (b.biStatus !== BLK_STS_OK && io.status === BLK_STS_OK) io.status = b.biStatus;
    bioPut(b);
    if (--io.ref === 0) io.bdev.#finish(io, io.status, io.bytes);
  };

  #finish(io: BlkdevDio, status: BlkStatus, bytes: number): void {
    const latency = this.machine.clock.nowNs - io.submitNs;
    const s = this.stats;
    addByOp(s.ios, io.op, 1);
    addByOp(s.bytes, io.op, bytes);
    addByOp(s.latencyNs, io.op, latency);
    if (latency > s.maxLatencyNs) s.maxLatencyNs = latency;
    if (status !== BLK_STS_OK) {
      const k = blkStatusToStr(status);
      s.errors[k] = (s.errors[k] ?? 0) + 1;
    }
    this.#inFlight--;
    const done = io.done!;
    // the dio goes back to the pool before anything can submit again (its bios are all put)
    io.buf = null;
    io.done = null;
    this.#freeDios.push(io);
    const next = this.#backlog.shift();
    if (next !== undefined) this.#start(next);
    done({ status, bytes, latencyNs: latency });
  }

  #start(io: BlkdevDio): void {
    this.#inFlight++;
    if (this.#inFlight > this.stats.maxInFlight) this.stats.maxInFlight = this.#inFlight;
    const q = this.disk.queue;
    const lbs = q.limits.logicalBlockSize;
    let bytes = 0;
    let opf: number;
    if (io.op === 'flush') {
      opf = REQ_OP_WRITE | REQ_PREFLUSH;
    } else if (io.op === 'discard') {
      // blkdev_issue_discard: -EINVAL for misaligned ranges, -EOPNOTSUPP without discard support
      bytes = io.nrSectors * SECTOR_SIZE;
      if (
        !Number.isInteger(io.nrSectors) ||
        io.nrSectors <= 0 ||
        (io.sector * SECTOR_SIZE) % lbs !== 0 ||
        bytes % lbs !== 0
      ) {
        this.#finish(io, BLK_STS_INVAL, bytes);
        return;
      }
      if (q.limits.maxDiscardSectors === 0) {
        this.#finish(io, BLK_STS_NOTSUPP, bytes);
        return;
      }
      opf = REQ_OP_DISCARD;
    } else {
      const buf = io.buf!;
      bytes = buf.length;
      // blkdev_dio_invalid: position and size in logical blocks, segments aligned to dma_alignment
      if (
        bytes === 0 ||
        !Number.isSafeInteger(io.sector) ||
        io.sector < 0 ||
        (io.sector * SECTOR_SIZE) % lbs !== 0 ||
        bytes % lbs !== 0 ||
        !this.#aligned(buf)
      ) {
        this.#finish(io, BLK_STS_INVAL, bytes);
        return;
      }
      opf = io.op === 'write' ? REQ_OP_WRITE | REQ_SYNC : REQ_OP_READ;
    }
    io.bytes = bytes;
    // every bio is counted in `ref` before the first is submitted, so none can end the I/O early
    let bio: Bio | null = this.#buildBios(io, opf);
    this.stats.bios += io.ref;
    const plug = this.#takePlug();
    while (bio !== null) {
      const next: Bio | null = bio.biNext;
      bio.biNext = null;
      submitBio(this.disk, bio, plug);
      bio = next;
    }
    blkFinishPlug(plug);
    this.#plugDepth--;
  }

  /** The plug of this submission level, started (kernel: `blk_start_plug` on the stack). */
  #takePlug(): BlkPlug {
    const depth = this.#plugDepth++;
    let plug = this.#plugs[depth];
    if (plug === undefined) {
      plug = blkStartPlug();
      this.#plugs.push(plug);
      return plug;
    }
    return blkStartPlugOn(plug);
  }

  #aligned(buf: IoBuffer): boolean {
    const mask = this.disk.queue.limits.dmaAlignment;
    const lbsMask = this.disk.queue.limits.logicalBlockSize - 1;
    for (const s of buf.segments) {
      if (s.phys % (mask + 1) !== 0 || s.len % (lbsMask + 1) !== 0 || s.len <= 0) return false;
    }
    return true;
  }

  /**
   * Builds the bios of one I/O (kernel: `__blkdev_direct_IO` / `bio_iov_iter_get_pages`): the
   * dio's own bio first, further ones from `bioAlloc` when the buffer needs more than
   * BIO_MAX_VECS bvecs. Returns the first; the rest follow through `biNext` until submitted (a
   * `struct bio_list`), and `io.ref` counts them all.
   */
  #buildBios(io: BlkdevDio, opf: number): Bio {
    const machine = this.machine;
    if (io.buf === null) {
      const bio = this.#dioBio(io, 0, opf);
      bio.biIter.biSector = io.sector;
      bio.biIter.biSize = io.nrSectors * SECTOR_SIZE;
      return bio;
    }
    let sector = io.sector;
    const first = this.#dioBio(io, BIO_MAX_VECS, opf);
    let bio = first;
    bio.biIter.biSector = sector;
    const segs = io.buf.segments;
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i]!;
      let phys = seg.phys;
      let left = seg.len;
      while (left > 0) {
        const off = phys % PAGE_SIZE;
        // The rest of the segment in one call when the bio's size allows it: page by page, each
        // page would merge into the same bvec (physically contiguous), so the bvecs come out the
        // same (kernel: `bio_iov_add_folio` adds a folio's contiguous run in one call).
        const n = bio.biIter.biSize + left <= UINT_MAX ? left : Math.min(left, PAGE_SIZE - off);
        if (bioAddPage(bio, phys - off, n, off) === 0) {
          sector += bio.biIter.biSize / SECTOR_SIZE;
          const more = bioAlloc(machine, BIO_MAX_VECS, opf);
          more.biEndIo = BlockDevice.#bioEndIo;
          more.biPrivate = io;
          io.ref++;
          bio.biNext = more;
          bio = more;
          bio.biIter.biSector = sector;
          continue;
        }
        phys += n;
        left -= n;
      }
    }
    return first;
  }

  /** The dio's embedded bio, taken back for this I/O with `nrVecs` slots and counted as `bioAlloc` counts. */
  #dioBio(io: BlkdevDio, nrVecs: number, opf: number): Bio {
    const bio = bioReuse(io.bio, this.machine, nrVecs, opf);
    bio.biEndIo = BlockDevice.#bioEndIo;
    bio.biPrivate = io;
    io.ref = 1;
    return bio;
  }

  /** Runs the virtual clock to the next device or requeue event; false when nothing is pending. */
  step(): boolean {
    if (this.#inFlight === 0) return false;
    const t = blkQueueNextEventNs(this.disk.queue);
    if (t === undefined) {
      throw new BlkError(
        `${this.disk.diskName}: ${this.#inFlight} I/O(s) in flight but no device event pending`,
        {
          rule: 'bdev: stalled',
        },
      );
    }
    const clock = this.machine.clock;
    clock.advance(Math.max(0, t - clock.nowNs));
    return true;
  }

  /** Runs the virtual clock until every submitted I/O has completed. */
  drain(): void {
    while (this.step()) {
      // keep stepping
    }
  }

  #kick(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => this.#pump());
  }

  #pump(): void {
    this.#pumpScheduled = false;
    if (!this.step()) return;
    if (this.#inFlight === 0) return;
    this.#pumpScheduled = true;
    const later = (globalThis as { setImmediate?: (fn: () => void) => void }).setImmediate ?? queueMicrotask;
    later(() => this.#pump());
  }
}
