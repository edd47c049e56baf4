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
 * and freed at the end.
 */
export function runWorkload(bdev: BlockDevice, options: WorkloadOptions): WorkloadResult {
  const machine = bdev.machine;
  const rng = new Prng(options.seed ?? 1);
  const lbs = bdev.logicalBlockSize;
  const bs = options.blockSize ?? 4096;
  if (!(Number.isInteger(bs) && bs > 0 && bs % lbs === 0)) {
    throw new BlkError(`workload: block size ${bs} is not a multiple of ${lbs}`, {
      rule: 'workload: block size',
    });
  }
  const qd = options.queueDepth ?? 8;
  const start = options.startSector ?? 0;
  const region = options.regionSectors ?? Math.min(bdev.capacity - start, (64 << 20) / 512);
  const ioSectors = bs / 512;
  const slotsInRegion = Math.floor(region / ioSectors);
  if (slotsInRegion < 1)
    throw new BlkError('workload: region smaller than one I/O', { rule: 'workload: region' });
  const readMix = options.readMix ?? 0.5;
  const discardMix = options.discardMix ?? 0;
  const flushEvery = options.flushEvery ?? 0;
  const slots: Slot[] = [];
  for (let i = 0; i < qd; i++) {
    slots.push(allocSlot(machine, bs, options.bufferOffset ?? 0, options.buffers ?? 'scattered'));
  }
  const gen = new Map<number, number>();
  const fresh = options.freshRegion ?? false;
  /** Blocks this run wrote (generation) or discarded (0). */
  const unknown = new Set<number>();
  const touched = new Set<number>();
  const busyIdx = new Set<number>();
  let nextGen = 1;
  let seqCursor = 0;
  const res: WorkloadResult = {
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
  const t0 = machine.clock.nowNs;
  const lbaPerIo = bs / lbs;
  const firstLba = (start * 512) / lbs;

  const expectedBlock = (lba: number): Uint8Array => {
    const g = gen.get(lba) ?? 0;
    const out = new Uint8Array(lbs);
    if (g !== 0) for (let i = 0; i < lbs; i++) out[i] = patternByte(lba, g, i);
    return out;
  };

  const verify = (idx: number, data: Uint8Array): void => {
    const lba0 = firstLba + idx * lbaPerIo;
    for (let b = 0; b < lbaPerIo; b++) {
      const lba = lba0 + b;
      if (unknown.has(lba) || (!fresh && !gen.has(lba))) continue;
      const want = expectedBlock(lba);
      const got = data.subarray(b * lbs, (b + 1) * lbs);
      res.blocksVerified++;
      for (let i = 0; i < lbs; i++) {
        if (got[i] !== want[i]) {
          res.mismatches++;
          if (res.mismatchDetails.length < 8) {
            res.mismatchDetails.push(
              `lba ${lba} byte ${i}: got ${got[i]}, want ${want[i]} (gen ${gen.get(lba) ?? 0})`,
            );
          }
          break;
        }
      }
    }
  };

  const countError = (status: number): void => {
    const k = blkStatusToStr(status);
    res.errors[k] = (res.errors[k] ?? 0) + 1;
  };

  const pickIdx = (): number | undefined => {
    if ((options.pattern ?? 'random') === 'sequential') {
      const idx = seqCursor % slotsInRegion;
      if (busyIdx.has(idx)) return undefined;
      seqCursor++;
      return idx;
    }
    for (let tries = 0; tries < 16; tries++) {
      const idx = rng.int(0, slotsInRegion - 1);
      if (!busyIdx.has(idx)) return idx;
    }
    return undefined;
  };

  const issue = (op: BlkIoOp, idx: number, slot: Slot, then: () => void): void => {
    const sector = start + idx * ioSectors;
    const lba0 = firstLba + idx * lbaPerIo;
    busyIdx.add(idx);
    slot.busy = true;
    let writeGen = 0;
    if (op === 'write') {
      writeGen = nextGen++;
      const data = new Uint8Array(bs);
      for (let b = 0; b < lbaPerIo; b++) {
        for (let i = 0; i < lbs; i++) data[b * lbs + i] = patternByte(lba0 + b, writeGen, i);
      }
      slot.buf.write(machine, data);
    }
    const done = (status: number): void => {
      busyIdx.delete(idx);
      slot.busy = false;
      res.ios++;
      if (status !== BLK_STS_OK) {
        countError(status);
        if (op === 'write' || op === 'discard') for (let b = 0; b < lbaPerIo; b++) unknown.add(lba0 + b);
      } else if (op === 'read') {
        res.reads++;
        res.bytesRead += bs;
        verify(idx, slot.buf.read(machine));
      } else if (op === 'write') {
        res.writes++;
        res.bytesWritten += bs;
        for (let b = 0; b < lbaPerIo; b++) {
          gen.set(lba0 + b, writeGen);
          unknown.delete(lba0 + b);
        }
      } else if (op === 'discard') {
        res.discards++;
        for (let b = 0; b < lbaPerIo; b++) {
          gen.set(lba0 + b, 0);
          unknown.delete(lba0 + b);
        }
      }
      then();
    };
    if (op === 'discard') bdev.submit('discard', sector, ioSectors, (r) => done(r.status));
    else bdev.submit(op, sector, slot.buf, (r) => done(r.status));
    touched.add(idx);
  };

  // main phase: keep `qd` I/Os in flight
  let issued = 0;
  let sinceFlush = 0;
  const pump = (): void => {
    while (issued < options.ios) {
      const slot = slots.find((s) => !s.busy);
      if (slot === undefined) return;
      if (flushEvery > 0 && sinceFlush >= flushEvery) {
        sinceFlush = 0;
        slot.busy = true;
        bdev.submit('flush', 0, 0, (r) => {
          slot.busy = false;
          res.ios++;
          if (r.status === BLK_STS_OK) res.flushes++;
          else countError(r.status);
          pump();
        });
        continue;
      }
      const idx = pickIdx();
      if (idx === undefined) return;
      const u = rng.float();
      const op: BlkIoOp = u < discardMix ? 'discard' : rng.float() < readMix ? 'read' : 'write';
      issued++;
      sinceFlush++;
      issue(op, idx, slot, pump);
    }
  };
  pump();
  for (let guard = 0; issued < options.ios || bdev.pending > 0; guard++) {
    if (!bdev.step()) pump();
    if (guard > 50_000_000) throw new BlkError('workload: no progress', { rule: 'workload: stalled' });
  }

  // verify pass: read back every touched I/O-sized block
  if (options.verifyPass ?? true) {
    const toVerify = [...touched].sort((a, b) => a - b);
    let k = 0;
    const pumpVerify = (): void => {
      while (k < toVerify.length) {
        const slot = slots.find((s) => !s.busy);
        if (slot === undefined) return;
        issue('read', toVerify[k++]!, slot, pumpVerify);
      }
    };
    pumpVerify();
    bdev.drain();
  }
  for (const s of slots) for (const [phys, order] of s.allocs) machine.pages.freePages(phys, order);
  res.virtualNs = machine.clock.nowNs - t0;
  return res;
}
