/**
 * A seeded I/O workload generator that drives a `BlockDevice` and checks every byte it reads
 * against what it wrote: random or sequential offsets, a block size, a read/write mix, an optional
 * discard mix and periodic flushes, a queue depth kept full, and per-slot buffers that are either
 * physically contiguous or one page at a time with holes between pages. A final pass reads back
 * every block the run touched. No kernel counterpart (it plays fio's part); it runs on the
 * machine's virtual clock, so a seed gives the same I/O sequence, the same data and the same
 * virtual timings on every run.
 * Data model: every write of a logical block stamps it with a new generation; a block's expected
 * bytes are a function of (block, generation), zeros when discarded (or, on a fresh region,
 * never written). Two I/Os in
 * flight never overlap, so expectations are exact; a block whose write failed is no longer checked.
 */
import { type Machine, Prng } from '@iovalink/iommu';
import { allocIoPages, type BlkIoOp, type BlockDevice, type IoPages } from './bdev.js';
import { BLK_STS_OK, blkStatusToStr } from './blk-status.js';
import { BlkError } from './errors.js';

/** Workload parameters. */
export interface WorkloadOptions {
  /** Seed of the I/O sequence (default 1). */
  seed?: number;
  /** I/Os to issue in the main phase. */
  ios: number;
  /** Offsets: random (default) or sequential. */
  pattern?: 'random' | 'sequential';
  /** Bytes per I/O, a multiple of the logical block size (default 4096). */
  blockSize?: number;
  /** Fraction of reads among reads and writes (default 0.5). */
  readMix?: number;
  /** Fraction of discards among all I/Os (default 0). */
  discardMix?: number;
  /** Issue a flush every N I/Os (default 0: never). */
  flushEvery?: number;
  /** I/Os kept in flight (default 8). */
  queueDepth?: number;
  /** Buffer layout (default 'scattered'). */
  buffers?: 'contiguous' | 'scattered';
  /** Offset of the data in the first buffer page, a multiple of the DMA alignment + 1 (default 0). */
  bufferOffset?: number;
  /** First sector of the region (default 0). */
  startSector?: number;
  /** Sectors of the region (default: min(capacity − start, 64 MiB)). */
  regionSectors?: number;
  /** Read back and check every touched block at the end (default true). */
  verifyPass?: boolean;
  /**
   * The region holds zeros when the run starts (a fresh device): blocks the run never wrote are
   * then checked to read as zeros. Default false: only blocks this run wrote or discarded are
   * checked, so a run on a used disk does not report old data as mismatches.
   */
  freshRegion?: boolean;
}

/** What a run did. */
export interface WorkloadResult {
  /** I/Os completed, verify pass included. */
  ios: number;
  reads: number;
  writes: number;
  discards: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Logical blocks compared. */
  blocksVerified: number;
  /** Logical blocks whose bytes differed from the expectation. */
  mismatches: number;
  /** First mismatches, for messages. */
  mismatchDetails: string[];
  /** I/Os that completed with an error, by status name. */
  errors: Record<string, number>;
  /** Virtual nanoseconds the run took. */
  virtualNs: number;
}

/** Expected byte `i` of logical block `lba` at generation `gen` (0 = never written: zero). */
function patternByte(lba: number, gen: number, i: number): number {
  return (lba * 131 + gen * 251 + i * 7 + (i >> 9)) & 0xff;
}

interface Slot extends IoPages {
  busy: boolean;
}

function allocSlot(
  machine: Machine,
  bytes: number,
  offset: number,
  layout: 'contiguous' | 'scattered',
): Slot {
  const io = allocIoPages(machine, bytes, layout, offset);
  if (io === null) {
    throw new BlkError(
      `workload: out of memory for a ${layout === 'contiguous' ? 'contiguous ' : ''}buffer`,
      {
        rule: 'workload: buffers',
      },
    );
  }
  return { ...io, busy: false };
}

/**
 * Runs a workload to completion on the machine's virtual clock and verifies the data. Returns
 * the counts; I/O errors are counted, not thrown. Buffers are allocated from the machine's pages
 * and freed at the end. No kernel counterpart (fio's part).
 */
export function runWorkload(bdev: BlockDevice, options: WorkloadOptions): WorkloadResult {
  const run = new WorkloadRun(bdev, options);
  run.mainPhase();
  if (options.verifyPass ?? true) run.verifyPass();
  return run.finish();
}

/** Zero counts, the start of a result. */
function emptyResult(): WorkloadResult {
  return {
    ios: 0,
    reads: 0,
    writes: 0,
    discards: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    blocksVerified: 0,
    mismatches: 0,
    mismatchDetails: [],
    errors: {},
    virtualNs: 0,
  };
}

/** One run's geometry, buffers and data model; `runWorkload` drives it phase by phase. */
class WorkloadRun {
  readonly #bdev: BlockDevice;
  readonly #machine: Machine;
  readonly #options: WorkloadOptions;
  readonly #rng: Prng;
  /** Logical block size, bytes per I/O, and the I/O size in sectors and in logical blocks. */
  readonly #lbs: number;
  readonly #bs: number;
  readonly #ioSectors: number;
  readonly #lbaPerIo: number;
  /** First sector and first logical block of the region, and how many I/O-sized slots it has. */
  readonly #start: number;
  readonly #firstLba: number;
  readonly #slotsInRegion: number;
  readonly #slots: Slot[] = [];
  /** Generation each written block holds (0: discarded). */
  readonly #gen = new Map<number, number>();
  /** Blocks whose write or discard failed: their contents are no longer known. */
  readonly #unknown = new Set<number>();
  /** I/O slots of the region this run touched, and those with an I/O in flight. */
  readonly #touched = new Set<number>();
  readonly #busyIdx = new Set<number>();
  #nextGen = 1;
  #seqCursor = 0;
  readonly #res = emptyResult();
  readonly #t0: number;

  constructor(bdev: BlockDevice, options: WorkloadOptions) {
    this.#bdev = bdev;
    this.#machine = bdev.machine;
    this.#options = options;
    this.#rng = new Prng(options.seed ?? 1);
    const lbs = bdev.logicalBlockSize;
    const bs = options.blockSize ?? 4096;
    if (!(Number.isInteger(bs) && bs > 0 && bs % lbs === 0)) {
      throw new BlkError(`workload: block size ${bs} is not a multiple of ${lbs}`, {
        rule: 'workload: block size',
      });
    }
    const start = options.startSector ?? 0;
    const region = options.regionSectors ?? Math.min(bdev.capacity - start, (64 << 20) / 512);
    this.#lbs = lbs;
    this.#bs = bs;
    this.#ioSectors = bs / 512;
    this.#lbaPerIo = bs / lbs;
    this.#start = start;
    this.#firstLba = (start * 512) / lbs;
    this.#slotsInRegion = Math.floor(region / this.#ioSectors);
    if (this.#slotsInRegion < 1)
      throw new BlkError('workload: region smaller than one I/O', { rule: 'workload: region' });
    const qd = options.queueDepth ?? 8;
    for (let i = 0; i < qd; i++) {
      this.#slots.push(
        allocSlot(this.#machine, bs, options.bufferOffset ?? 0, options.buffers ?? 'scattered'),
      );
    }
    this.#t0 = this.#machine.clock.nowNs;
  }

  /** Issues `options.ios` I/Os (and the periodic flushes), keeping the queue depth full, until all complete. */
  mainPhase(): void {
    const { ios, flushEvery = 0, discardMix = 0, readMix = 0.5 } = this.#options;
    const bdev = this.#bdev;
    const rng = this.#rng;
    let issued = 0;
    let sinceFlush = 0;
    const pump = (): void => {
      while (issued < ios) {
        const slot = this.#freeSlot();
        if (slot === undefined) return;
        if (flushEvery > 0 && sinceFlush >= flushEvery) {
          sinceFlush = 0;
          this.#flush(slot, pump);
          continue;
        }
        const idx = this.#pickIdx();
        if (idx === undefined) return;
        const u = rng.float();
        const op: BlkIoOp = u < discardMix ? 'discard' : rng.float() < readMix ? 'read' : 'write';
        issued++;
        sinceFlush++;
        this.#issue(op, idx, slot, pump);
      }
    };
    pump();
    for (let guard = 0; issued < ios || bdev.pending > 0; guard++) {
      if (!bdev.step()) pump();
      if (guard > 50_000_000) throw new BlkError('workload: no progress', { rule: 'workload: stalled' });
    }
  }

  /** Reads back every I/O-sized block the run touched, in address order, and checks it. */
  verifyPass(): void {
    const toVerify = [...this.#touched].sort((a, b) => a - b);
    let k = 0;
    const pumpVerify = (): void => {
      while (k < toVerify.length) {
        const slot = this.#freeSlot();
        if (slot === undefined) return;
        this.#issue('read', toVerify[k++]!, slot, pumpVerify);
      }
    };
    pumpVerify();
    this.#bdev.drain();
  }

  /** Frees the buffers and returns the result with the virtual time the run took. */
  finish(): WorkloadResult {
    for (const s of this.#slots)
      for (const [phys, order] of s.allocs) this.#machine.pages.freePages(phys, order);
    this.#res.virtualNs = this.#machine.clock.nowNs - this.#t0;
    return this.#res;
  }

  #freeSlot(): Slot | undefined {
    return this.#slots.find((s) => !s.busy);
  }

  /** The next I/O slot of the region to use: the sequential cursor, or up to 16 random picks; undefined when busy. */
  #pickIdx(): number | undefined {
    if ((this.#options.pattern ?? 'random') === 'sequential') {
      const idx = this.#seqCursor % this.#slotsInRegion;
      if (this.#busyIdx.has(idx)) return undefined;
      this.#seqCursor++;
      return idx;
    }
    for (let tries = 0; tries < 16; tries++) {
      const idx = this.#rng.int(0, this.#slotsInRegion - 1);
      if (!this.#busyIdx.has(idx)) return idx;
    }
    return undefined;
  }

  /** Submits a flush on `slot`'s queue position; `then` runs when it completes. */
  #flush(slot: Slot, then: () => void): void {
    const res = this.#res;
    slot.busy = true;
    this.#bdev.submit('flush', 0, 0, (r) => {
      slot.busy = false;
      res.ios++;
      if (r.status === BLK_STS_OK) res.flushes++;
      else this.#countError(r.status);
      then();
    });
  }

  /** Submits `op` on I/O slot `idx` of the region with `slot`'s buffer; `then` runs when it completes. */
  #issue(op: BlkIoOp, idx: number, slot: Slot, then: () => void): void {
    const sector = this.#start + idx * this.#ioSectors;
    this.#busyIdx.add(idx);
    slot.busy = true;
    const writeGen = op === 'write' ? this.#fillWriteBuffer(idx, slot) : 0;
    const done = (status: number): void => {
      this.#busyIdx.delete(idx);
      slot.busy = false;
      this.#complete(op, idx, slot, writeGen, status);
      then();
    };
    if (op === 'discard') this.#bdev.submit('discard', sector, this.#ioSectors, (r) => done(r.status));
    else this.#bdev.submit(op, sector, slot.buf, (r) => done(r.status));
    this.#touched.add(idx);
  }

  /** Stamps the blocks of I/O slot `idx` with a new generation in `slot`'s buffer; returns the generation. */
  #fillWriteBuffer(idx: number, slot: Slot): number {
    const lbs = this.#lbs;
    const lba0 = this.#firstLba + idx * this.#lbaPerIo;
    const writeGen = this.#nextGen++;
    const data = new Uint8Array(this.#bs);
    for (let b = 0; b < this.#lbaPerIo; b++) {
      for (let i = 0; i < lbs; i++) data[b * lbs + i] = patternByte(lba0 + b, writeGen, i);
    }
    slot.buf.write(this.#machine, data);
    return writeGen;
  }

  /** Counts a completed I/O and updates the data model: verify a read, record a write's or discard's blocks. */
  #complete(op: BlkIoOp, idx: number, slot: Slot, writeGen: number, status: number): void {
    const res = this.#res;
    const lba0 = this.#firstLba + idx * this.#lbaPerIo;
    res.ios++;
    if (status !== BLK_STS_OK) {
      this.#countError(status);
      if (op === 'write' || op === 'discard')
        for (let b = 0; b < this.#lbaPerIo; b++) this.#unknown.add(lba0 + b);
    } else if (op === 'read') {
      res.reads++;
      res.bytesRead += this.#bs;
      this.#verify(idx, slot.buf.read(this.#machine));
    } else if (op === 'write' || op === 'discard') {
      if (op === 'write') {
        res.writes++;
        res.bytesWritten += this.#bs;
      } else {
        res.discards++;
      }
      for (let b = 0; b < this.#lbaPerIo; b++) {
        this.#gen.set(lba0 + b, writeGen);
        this.#unknown.delete(lba0 + b);
      }
    }
  }

  #countError(status: number): void {
    const k = blkStatusToStr(status);
    this.#res.errors[k] = (this.#res.errors[k] ?? 0) + 1;
  }

  /** The bytes logical block `lba` should hold now. */
  #expectedBlock(lba: number): Uint8Array {
    const g = this.#gen.get(lba) ?? 0;
    const out = new Uint8Array(this.#lbs);
    if (g !== 0) for (let i = 0; i < this.#lbs; i++) out[i] = patternByte(lba, g, i);
    return out;
  }

  /** Compares the bytes read from I/O slot `idx` with the model, block by block (known blocks only). */
  #verify(idx: number, data: Uint8Array): void {
    const res = this.#res;
    const lbs = this.#lbs;
    const fresh = this.#options.freshRegion ?? false;
    const lba0 = this.#firstLba + idx * this.#lbaPerIo;
    for (let b = 0; b < this.#lbaPerIo; b++) {
      const lba = lba0 + b;
      if (this.#unknown.has(lba) || (!fresh && !this.#gen.has(lba))) continue;
      const want = this.#expectedBlock(lba);
      const got = data.subarray(b * lbs, (b + 1) * lbs);
      res.blocksVerified++;
      for (let i = 0; i < lbs; i++) {
        if (got[i] !== want[i]) {
          res.mismatches++;
          if (res.mismatchDetails.length < 8) {
            res.mismatchDetails.push(
              `lba ${lba} byte ${i}: got ${got[i]}, want ${want[i]} (gen ${this.#gen.get(lba) ?? 0})`,
            );
          }
          break;
        }
      }
    }
  }
}
