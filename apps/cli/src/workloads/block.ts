/**
 * Block workloads for the demo and `bench block`: the same seeded fio-like I/O run through an
 * NVMe-PCI-style device whose driver maps with the scatterlist path (`mapping: 'sg'`, the driver
 * as before v6.17: `blk_rq_map_sg` + `dma_map_sgtable`) and with the two-step path (`mapping:
 * 'iova'`, v6.17+: `blk_rq_dma_map_iter_*`), every byte read back and checked. One op = one I/O
 * request.
 *
 * The job plays fio's part (no kernel counterpart) and is written so that simulator time measures
 * the model: write payloads are slices of one seeded pool built before timing starts (the same
 * bytes on both paths), the I/O sequence is fixed by the seed alone (an I/O whose block is still
 * in flight waits for it rather than picking another, so completion order cannot change it), and
 * the two harness steps left in the timed region — copying a payload into the request buffer and
 * comparing what a read returned — are timed on their own and reported as harness time. The
 * counter window runs from the first I/O to one flush-queue timeout of virtual time after the last
 * (so lazy domains' deferred invalidations are counted); a final read-back of every block written,
 * outside the window, checks the device's contents and digests them.
 */
import {
  type AllocatedBuffer,
  allocIoBuffer,
  BLK_STS_OK,
  type BlkIoOp,
  type BlkIoResult,
  BlockDevice,
  blkStatusToStr,
  type NvmeDev,
  nvmeProbe,
  nvmeRemove,
} from '@iovalink/blk-mq';
import { type Device, dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { type CounterSnapshot, diffCounters, type Machine, PAGE_SIZE, Prng } from '@iovalink/iommu';
import { type DmaPath, mappingMeta } from '../results.js';
import {
  bothPathsWorkload,
  type ChunkTime,
  createPathRig,
  fnv1a,
  type PathOutcome,
  type PathSession,
  sameBytes,
  seededBytes,
} from './both-paths.js';
import type { Workload, WorkloadContext } from './types.js';

/** One block case: what fio would call a job. */
export interface BlockCase {
  name: string;
  blockSize: number;
  pattern: 'random' | 'sequential';
  readMix: number;
  buffers: 'contiguous' | 'scattered';
  /** I/Os in full and quick mode. */
  ios: number;
  quickIos: number;
}

/** The demo's block cases: 4 KiB random, 128 KiB sequential, 1 MiB, and physically fragmented buffers. */
export const BLOCK_CASES: readonly BlockCase[] = [
  {
    name: 'block 4 KiB random r/w',
    blockSize: 4096,
    pattern: 'random',
    readMix: 0.5,
    buffers: 'contiguous',
    ios: 20_000,
    quickIos: 2_000,
  },
  {
    name: 'block 128 KiB sequential r/w',
    blockSize: 128 << 10,
    pattern: 'sequential',
    readMix: 0.5,
    buffers: 'contiguous',
    ios: 2_000,
    quickIos: 200,
  },
  {
    name: 'block 1 MiB sequential r/w',
    blockSize: 1 << 20,
    pattern: 'sequential',
    readMix: 0.5,
    buffers: 'contiguous',
    ios: 300,
    quickIos: 30,
  },
  {
    name: 'block 128 KiB fragmented pages',
    blockSize: 128 << 10,
    pattern: 'random',
    readMix: 0.5,
    buffers: 'scattered',
    ios: 2_000,
    quickIos: 200,
  },
];

/** The case `iovalink trace` records by default: 128 KiB sequential, where the two paths differ. */
export const TRACE_BLOCK_CASE: BlockCase = BLOCK_CASES[1]!;

/** What one path's block run did, besides its PathResult. */
export interface BlockRunStats {
  reads: number;
  writes: number;
  /** Blocks (I/O-sized) read back at the end and checked. */
  blocksVerified: number;
  /** FNV-1a digest of every written block's final contents, in block order. */
  digest: string;
}

/** One request buffer of the job, with a scratch array to read it into. */
interface Slot extends AllocatedBuffer {
  scratch: Uint8Array;
}

/** Bytes of the seeded payload pool (at least 4 requests' worth). */
function poolBytes(blockSize: number): number {
  return Math.max(1 << 20, 4 * blockSize);
}

/** Copies a buffer's bytes out of physical memory into `out` (a CPU read, no allocation). */
function readInto(machine: Machine, s: Slot): Uint8Array {
  let off = 0;
  for (const seg of s.buf.segments) {
    machine.phys.readInto(seg.phys, s.scratch.subarray(off, off + seg.len));
    off += seg.len;
  }
  return s.scratch;
}

/** One I/O of the seeded sequence: its op, its block, and for a write the pool offset of its payload. */
interface BlockIo {
  op: BlkIoOp;
  block: number;
  at: number;
}

/**
 * Opens one block case on one path on a fresh machine (the default rig, 2 GiB, an NVMe-style
 * device probed with `mapping: path`, a block device of `queueDepth`, default 16). Throws from
 * `finish` if any I/O failed or any byte did not verify.
 */
export function openBlockPath(
  c: BlockCase,
  path: DmaPath,
  ctx: WorkloadContext,
  queueDepth = 16,
): PathSession<BlockRunStats> {
  return new BlockPathSession(c, path, ctx, queueDepth);
}

/**
 * One path's block job: a seeded sequence of reads and writes over `blocks` I/O-sized blocks, at
 * most one I/O a block in flight, every read checked against the block's last write (or zeros),
 * and at the end every written block read back and digested.
 */
class BlockPathSession implements PathSession<BlockRunStats> {
  readonly #c: BlockCase;
  readonly #path: DmaPath;
  readonly #machine: Machine;
  readonly #dev: Device;
  readonly #nvme: NvmeDev;
  readonly #bdev: BlockDevice;
  readonly #ioSectors: number;
  readonly #blocks: number;
  readonly #pool: Uint8Array;
  readonly #slots: Slot[] = [];
  readonly #free: Slot[] = [];
  /** Pool offset of each block's last completed write, -1 if never written (reads as zeros). */
  readonly #written: Int32Array;
  readonly #busy: Uint8Array;
  readonly #zeros: Uint8Array;
  readonly #rng: Prng;
  readonly #problems: string[] = [];
  readonly #stats: BlockRunStats = { reads: 0, writes: 0, blocksVerified: 0, digest: '' };
  readonly #before: CounterSnapshot;
  #cursor = 0;
  #ops = 0;
  #harnessNs = 0;
  /** The next I/O of the seeded sequence, drawn once and kept until its block is free. */
  #next: BlockIo | undefined;
  /** The simulator-time clock (ms): the context's injected clock, else `performance.now`. */
  readonly #now: () => number;

  constructor(c: BlockCase, path: DmaPath, ctx: WorkloadContext, queueDepth: number) {
    const rig = createPathRig(ctx, path, 2 * 2 ** 30);
    this.#c = c;
    this.#path = path;
    this.#now = ctx.clock ?? (() => performance.now());
    this.#machine = rig.machine;
    this.#dev = rig.device(`nvme-${path}`);
    this.#nvme = nvmeProbe(this.#dev, { mapping: path });
    this.#bdev = new BlockDevice(this.#nvme.disk, { queueDepth });
    const bs = c.blockSize;
    this.#ioSectors = bs / 512;
    this.#blocks = Math.floor(Math.max(64 << 11, (bs * 64) / 512) / this.#ioSectors);
    this.#pool = seededBytes(ctx.seed, poolBytes(bs));
    for (let i = 0; i < queueDepth; i++) {
      this.#slots.push({ ...allocIoBuffer(this.#machine, bs, c.buffers), scratch: new Uint8Array(bs) });
    }
    this.#free.push(...this.#slots);
    this.#written = new Int32Array(this.#blocks).fill(-1);
    this.#busy = new Uint8Array(this.#blocks);
    this.#zeros = new Uint8Array(bs);
    this.#rng = new Prng(ctx.seed ^ 0xb10c);
    this.#before = this.#machine.counters.snapshot();
  }

  step(units: number): ChunkTime {
    const issue = { left: units };
    const ops0 = this.#ops;
    this.#harnessNs = 0;
    const t0 = this.#now();
    this.#pump(issue);
    // run until the chunk's I/Os are issued and as many have completed: about as many stay in
    // flight as when the chunk began, so the queue stays full across chunks (finish drains them)
    while (issue.left > 0 || (this.#ops - ops0 < units && this.#bdev.pending > 0)) {
      if (!this.#bdev.step()) this.#pump(issue);
    }
    const total = (this.#now() - t0) * 1e6;
    return { ops: this.#ops - ops0, modelNs: total - this.#harnessNs, harnessNs: this.#harnessNs };
  }

  finish(): PathOutcome<BlockRunStats> {
    const machine = this.#machine;
    this.#bdev.drain();
    machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy domains: the flush-queue timer fires
    const counters = diffCounters(this.#before, machine.counters.snapshot());
    // outside the counter window: read back every written block and digest the contents
    this.#stats.digest = this.#readBack().toString(16).padStart(8, '0');
    for (const s of this.#slots) s.free();
    nvmeRemove(this.#nvme);
    dmaDebugDeviceTeardown(this.#dev); // a no-op unless dma-debug is on
    const problems = this.#problems;
    if (problems.length > 0) {
      throw new Error(
        `${this.#c.name} (${this.#path}): ${problems.length} problem(s); first: ${problems[0]}`,
      );
    }
    return {
      ops: this.#ops,
      counters,
      pages: (this.#ops * this.#c.blockSize) / PAGE_SIZE,
      keptMetaBytes: mappingMeta(counters).bytes,
      verified: true,
      stats: this.#stats,
    };
  }

  /** The next I/O of the seeded sequence. */
  #draw(): BlockIo {
    const c = this.#c;
    const block =
      c.pattern === 'sequential' ? this.#cursor++ % this.#blocks : this.#rng.int(0, this.#blocks - 1);
    const op: BlkIoOp = this.#rng.float() < c.readMix ? 'read' : 'write';
    const at = op === 'write' ? this.#rng.int(0, (this.#pool.length - c.blockSize) >> 9) << 9 : -1;
    return { op, block, at };
  }

  /** Issues I/Os of the sequence until `issue.left` is 0, a slot is missing or the next block is busy. */
  #pump(issue: { left: number }): void {
    const bs = this.#c.blockSize;
    while (issue.left > 0 && this.#free.length > 0) {
      this.#next ??= this.#draw();
      if (this.#busy[this.#next.block] === 1) return;
      const io = this.#next;
      this.#next = undefined;
      const slot = this.#free.pop()!;
      this.#busy[io.block] = 1;
      if (io.op === 'write') {
        const t = this.#now();
        slot.buf.write(this.#machine, this.#pool.subarray(io.at, io.at + bs));
        this.#harnessNs += (this.#now() - t) * 1e6;
      }
      issue.left--;
      this.#bdev.submit(io.op, io.block * this.#ioSectors, slot.buf, (r) => {
        this.#complete(slot, io, r);
        this.#pump(issue);
      });
    }
  }

  /** One I/O done: a write records its payload, a read is checked against the block's last write. */
  #complete(slot: Slot, io: BlockIo, r: BlkIoResult): void {
    this.#busy[io.block] = 0;
    this.#ops++;
    if (r.status !== BLK_STS_OK) {
      this.#problems.push(`${io.op} of block ${io.block}: ${blkStatusToStr(r.status)}`);
    } else if (io.op === 'write') {
      this.#stats.writes++;
      this.#written[io.block] = io.at;
    } else {
      this.#stats.reads++;
      const t = this.#now();
      const at = this.#written[io.block]!;
      const want = at < 0 ? this.#zeros : this.#pool.subarray(at, at + this.#c.blockSize);
      if (!sameBytes(readInto(this.#machine, slot), want))
        this.#problems.push(`read of block ${io.block}: wrong bytes`);
      this.#harnessNs += (this.#now() - t) * 1e6;
    }
    this.#free.push(slot);
  }

  /** Reads back every written block, checks it, and returns the FNV-1a digest of them in block order. */
  #readBack(): number {
    const bs = this.#c.blockSize;
    let digest = 2166136261;
    const slot = this.#slots[0]!;
    for (let b = 0; b < this.#blocks; b++) {
      const at = this.#written[b]!;
      if (at < 0) continue;
      let status = -1;
      this.#bdev.submit('read', b * this.#ioSectors, slot.buf, (r) => {
        status = r.status;
      });
      this.#bdev.drain();
      const got = readInto(this.#machine, slot);
      if (status !== BLK_STS_OK || !sameBytes(got, this.#pool.subarray(at, at + bs))) {
        this.#problems.push(
          `final read-back of block ${b}: ${status === BLK_STS_OK ? 'wrong bytes' : 'failed'}`,
        );
      }
      digest = fnv1a(got, digest);
      this.#stats.blocksVerified++;
    }
    return digest;
  }
}

/** Bytes each untimed warm-up run moves (per path, twice): enough I/Os for the JIT to settle. */
const BLOCK_WARMUP_BYTES = 8 << 20;

/** I/Os of a warm-up run for `c`: BLOCK_WARMUP_BYTES worth, at least 20, at most `ios`. */
export function blockWarmupIos(c: BlockCase, ios: number): number {
  return Math.min(ios, Math.max(20, Math.floor(BLOCK_WARMUP_BYTES / c.blockSize)));
}

/** A demo workload for one block case: both paths, interleaved rounds, same seeded I/O and data. */
export function blockWorkload(c: BlockCase, queueDepth = 16): Workload {
  return bothPathsWorkload(c.name, 'block', (ctx) => {
    const ios = ctx.quick ? c.quickIos : c.ios;
    return {
      open: (path, x, size: BlockCase) => openBlockPath(size, path, x, queueDepth),
      sizes: { measured: c, units: ios, warmup: c, warmupUnits: blockWarmupIos(c, ios) },
      mismatch: `${c.name}: the two paths left different data on the device`,
      bytesPerOp: () => c.blockSize,
    };
  });
}

/** All block cases as workloads. */
export function blockWorkloads(): Workload[] {
  return BLOCK_CASES.map((c) => blockWorkload(c));
}
