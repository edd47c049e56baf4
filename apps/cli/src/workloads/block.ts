/**
 * Block workloads for the demo: the same seeded fio-like I/O run through an NVMe-PCI-style device
 * whose driver maps with the scatterlist path (`mapping: 'sg'`, the driver as before v6.17:
 * `blk_rq_map_sg` + `dma_map_sgtable`) and with the two-step path (`mapping: 'iova'`, v6.17+:
 * `blk_rq_dma_map_iter_*`), every byte read back and checked. One op = one I/O request.
 */
import { BlockDevice, nvmeProbe, nvmeRemove, runWorkload, type WorkloadOptions } from '@iovalink/blk-mq';
import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { diffCounters, PAGE_SIZE } from '@iovalink/iommu';
import { type DmaPath, mappingMeta, pathResult, type WorkloadResult } from '../results.js';
import { createRig } from '../rig.js';
import { quietContext } from './both-paths.js';
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

/**
 * Runs one block case through one path on a fresh machine and returns its PathResult (throws if
 * any byte does not verify). `queueDepth` defaults to 16.
 */
export function runBlockPath(
  c: BlockCase,
  path: DmaPath,
  ctx: WorkloadContext,
  done: number,
  total: number,
  queueDepth = 16,
) {
  const rig = createRig({ iommu: ctx.iommu, seed: ctx.seed, debug: ctx.debug, memSize: 2 * 2 ** 30 });
  ctx.onMachine?.(rig.machine, path);
  const dev = rig.device(`nvme-${path}`);
  const nvme = nvmeProbe(dev, { mapping: path });
  const bdev = new BlockDevice(nvme.disk, { queueDepth });
  const ios = ctx.quick ? c.quickIos : c.ios;
  const options: WorkloadOptions = {
    seed: ctx.seed,
    ios,
    pattern: c.pattern,
    blockSize: c.blockSize,
    readMix: c.readMix,
    queueDepth,
    buffers: c.buffers,
    regionSectors: Math.max(64 << 11, (c.blockSize * 64) / 512),
    verifyPass: false,
  };
  const before = rig.machine.counters.snapshot();
  const t0 = performance.now();
  const r = runWorkload(bdev, options);
  const simNs = (performance.now() - t0) * 1e6;
  // let a lazy domain's flush queue fire, so its deferred invalidations are counted
  rig.machine.clock.advance(20e6);
  const verified = r.mismatches === 0 && Object.keys(r.errors).length === 0;
  if (!verified) {
    throw new Error(
      `${c.name} (${path}): ${r.mismatches} mismatching blocks, errors ${JSON.stringify(r.errors)}`,
    );
  }
  const d = diffCounters(before, rig.machine.counters.snapshot());
  const res = pathResult(path, r.ios, simNs, d, ctx.costModel, {
    pages: (r.ios * c.blockSize) / PAGE_SIZE,
    keptMetaBytes: mappingMeta(d).bytes,
    verified,
  });
  bdev.drain();
  nvmeRemove(nvme);
  dmaDebugDeviceTeardown(dev);
  ctx.onProgress?.(done + 1, total);
  return res;
}

/** A demo workload for one block case. */
export function blockWorkload(c: BlockCase): Workload {
  return {
    name: c.name,
    subsystem: 'block',
    run(ctx: WorkloadContext): WorkloadResult {
      // warm the JIT on both paths first (untimed, throwaway machines), so the path measured first
      // is not the one that pays for compilation
      const warm: BlockCase = { ...c, ios: Math.min(c.quickIos, 50), quickIos: Math.min(c.quickIos, 50) };
      const quiet = quietContext(ctx);
      runBlockPath(warm, 'sg', quiet, 0, 1);
      runBlockPath(warm, 'iova', quiet, 0, 1);
      const sg = runBlockPath(c, 'sg', ctx, 0, 2);
      const iova = runBlockPath(c, 'iova', ctx, 1, 2);
      return { name: c.name, subsystem: 'block', bytesPerOp: c.blockSize, paths: [sg, iova] };
    },
  };
}

/** All block cases as workloads. */
export function blockWorkloads(): Workload[] {
  return BLOCK_CASES.map(blockWorkload);
}
