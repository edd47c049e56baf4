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
  nvmeProbe,
  nvmeRemove,
} from '@iovalink/blk-mq';
import { dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { diffCounters, type Machine, PAGE_SIZE, Prng } from '@iovalink/iommu';
import { type DmaPath, mappingMeta, type WorkloadResult } from '../results.js';
import { createRig } from '../rig.js';
import { type ChunkTime, fnv1a, type PathSession, runBothPaths, seededBytes } from './both-paths.js';
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

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
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
  const rig = createRig({
    iommu: ctx.iommu,
    ...(ctx.hw === undefined ? {} : { hw: ctx.hw }),
    seed: ctx.seed,
    debug: ctx.debug,
    memSize: 2 * 2 ** 30,
  });
  ctx.onMachine?.(rig.machine, path);
  const machine = rig.machine;
  const dev = rig.device(`nvme-${path}`);
  const nvme = nvmeProbe(dev, { mapping: path });
  const bdev = new BlockDevice(nvme.disk, { queueDepth });
  const bs = c.blockSize;
  const ioSectors = bs / 512;
  const blocks = Math.floor(Math.max(64 << 11, (bs * 64) / 512) / ioSectors);
  const pool = seededBytes(ctx.seed, poolBytes(bs));
  const free: Slot[] = [];
  for (let i = 0; i < queueDepth; i++) {
    free.push({ ...allocIoBuffer(machine, bs, c.buffers), scratch: new Uint8Array(bs) });
  }
  const slots = [...free];
  /** Pool offset of each block's last completed write, -1 if never written (reads as zeros). */
  const written = new Int32Array(blocks).fill(-1);
  const busy = new Uint8Array(blocks);
  const zeros = new Uint8Array(bs);
  const rng = new Prng(ctx.seed ^ 0xb10c);
  const problems: string[] = [];
  const stats: BlockRunStats = { reads: 0, writes: 0, blocksVerified: 0, digest: '' };
  let cursor = 0;
  let ops = 0;
  let harnessNs = 0;
  /** The next I/O of the seeded sequence, drawn once and kept until its block is free. */
  let next: { op: BlkIoOp; block: number; at: number } | undefined;

  const draw = () => {
    const block = c.pattern === 'sequential' ? cursor++ % blocks : rng.int(0, blocks - 1);
    const op: BlkIoOp = rng.float() < c.readMix ? 'read' : 'write';
    const at = op === 'write' ? rng.int(0, (pool.length - bs) >> 9) << 9 : -1;
    return { op, block, at };
  };

  const complete = (slot: Slot, io: { op: BlkIoOp; block: number; at: number }, r: BlkIoResult) => {
    busy[io.block] = 0;
    ops++;
    if (r.status !== BLK_STS_OK) {
      problems.push(`${io.op} of block ${io.block}: ${blkStatusToStr(r.status)}`);
    } else if (io.op === 'write') {
      stats.writes++;
      written[io.block] = io.at;
    } else {
      stats.reads++;
      const t = performance.now();
      const at = written[io.block]!;
      const want = at < 0 ? zeros : pool.subarray(at, at + bs);
      if (!sameBytes(readInto(machine, slot), want)) problems.push(`read of block ${io.block}: wrong bytes`);
      harnessNs += (performance.now() - t) * 1e6;
    }
    free.push(slot);
  };

  /** Issues I/Os of the sequence until `issue.left` is 0, a slot is missing or the next block is busy. */
  const pump = (issue: { left: number }) => {
    while (issue.left > 0 && free.length > 0) {
      next ??= draw();
      if (busy[next.block] === 1) return;
      const io = next;
      next = undefined;
      const slot = free.pop()!;
      busy[io.block] = 1;
      if (io.op === 'write') {
        const t = performance.now();
        slot.buf.write(machine, pool.subarray(io.at, io.at + bs));
        harnessNs += (performance.now() - t) * 1e6;
      }
      issue.left--;
      bdev.submit(io.op, io.block * ioSectors, slot.buf, (r) => {
        complete(slot, io, r);
        pump(issue);
      });
    }
  };

  const before = machine.counters.snapshot();
  return {
    step(units: number): ChunkTime {
      const issue = { left: units };
      const ops0 = ops;
      harnessNs = 0;
      const t0 = performance.now();
      pump(issue);
      // run until the chunk's I/Os are issued and as many have completed: about as many stay in
      // flight as when the chunk began, so the queue stays full across chunks (finish drains them)
      while (issue.left > 0 || (ops - ops0 < units && bdev.pending > 0)) {
        if (!bdev.step()) pump(issue);
      }
      const total = (performance.now() - t0) * 1e6;
      return { ops: ops - ops0, modelNs: total - harnessNs, harnessNs };
    },
    finish() {
      bdev.drain();
      machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy domains: the flush-queue timer fires
      const counters = diffCounters(before, machine.counters.snapshot());
      // outside the counter window: read back every written block and digest the contents
      let digest = 2166136261;
      const slot = slots[0]!;
      for (let b = 0; b < blocks; b++) {
        if (written[b]! < 0) continue;
        let status = -1;
        bdev.submit('read', b * ioSectors, slot.buf, (r) => {
          status = r.status;
        });
        bdev.drain();
        const got = readInto(machine, slot);
        if (status !== BLK_STS_OK || !sameBytes(got, pool.subarray(written[b]!, written[b]! + bs))) {
          problems.push(`final read-back of block ${b}: ${status === BLK_STS_OK ? 'wrong bytes' : 'failed'}`);
        }
        digest = fnv1a(got, digest);
        stats.blocksVerified++;
      }
      stats.digest = digest.toString(16).padStart(8, '0');
      for (const s of slots) s.free();
      nvmeRemove(nvme);
      dmaDebugDeviceTeardown(dev); // a no-op unless dma-debug is on
      if (problems.length > 0) {
        throw new Error(`${c.name} (${path}): ${problems.length} problem(s); first: ${problems[0]}`);
      }
      return {
        ops,
        counters,
        pages: (ops * bs) / PAGE_SIZE,
        keptMetaBytes: mappingMeta(counters).bytes,
        verified: true,
        stats,
      };
    },
  };
}

/** Bytes each untimed warm-up run moves (per path, twice): enough I/Os for the JIT to settle. */
const BLOCK_WARMUP_BYTES = 8 << 20;

/** I/Os of a warm-up run for `c`: BLOCK_WARMUP_BYTES worth, at least 20, at most `ios`. */
export function blockWarmupIos(c: BlockCase, ios: number): number {
  return Math.min(ios, Math.max(20, Math.floor(BLOCK_WARMUP_BYTES / c.blockSize)));
}

/** A demo workload for one block case: both paths, interleaved rounds, same seeded I/O and data. */
export function blockWorkload(c: BlockCase, queueDepth = 16): Workload {
  return {
    name: c.name,
    subsystem: 'block',
    async run(ctx: WorkloadContext): Promise<WorkloadResult> {
      const ios = ctx.quick ? c.quickIos : c.ios;
      const { sg, iova, sim } = await runBothPaths(
        ctx,
        (path, x, size: BlockCase) => openBlockPath(size, path, x, queueDepth),
        { measured: c, units: ios, warmup: c, warmupUnits: blockWarmupIos(c, ios) },
        `${c.name}: the two paths left different data on the device`,
      );
      return {
        name: c.name,
        subsystem: 'block',
        bytesPerOp: c.blockSize,
        paths: [sg.result, iova.result],
        sim,
      };
    },
  };
}

/** All block cases as workloads. */
export function blockWorkloads(): Workload[] {
  return BLOCK_CASES.map((c) => blockWorkload(c));
}
