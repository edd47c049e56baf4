/**
 * What the workloads share: the quiet context of untimed warm-up runs, the digest they compare
 * the two paths' outcomes with, and the warm-up → measure both paths → compare sequence of the
 * RDMA ODP and VFIO workloads.
 */
import type { DmaPath, PathResult } from '../results.js';
import type { WorkloadContext } from './types.js';

/** FNV-1a over `b`, continuing from `h` (the offset basis by default). */
export function fnv1a(b: Uint8Array, h = 2166136261): number {
  let x = h;
  for (let i = 0; i < b.length; i++) x = Math.imul(x ^ b[i]!, 16777619) >>> 0;
  return x;
}

/** `ctx` without tracer or progress, for untimed warm-up runs. */
export function quietContext(ctx: WorkloadContext): WorkloadContext {
  const { onMachine: _m, onProgress: _p, ...quiet } = ctx;
  return quiet;
}

/** One path's run: its PathResult and stats carrying a digest of what it left behind. */
export interface PathRun<S extends { digest: string }> {
  result: PathResult;
  stats: S;
}

/** Rounds of untimed warm-up runs of both paths before measuring. */
const WARMUP_ROUNDS = 2;

/**
 * Runs `runPath` the way the ODP and VFIO workloads do: `WARMUP_ROUNDS` untimed rounds of both
 * paths at `sizes.warmup` without tracer or progress (otherwise the path measured first also pays
 * for JIT compilation and looks slower), then 'sg' and 'iova' at `sizes.measured`, each reporting
 * `sizes.units` of progress, and throws `${mismatch} (sg digest vs iova digest)` if the two paths
 * left different digests.
 */
export function runBothPaths<Z, S extends { digest: string }>(
  ctx: WorkloadContext,
  runPath: (path: DmaPath, ctx: WorkloadContext, size: Z, progress?: (done: number) => void) => PathRun<S>,
  sizes: { measured: Z; warmup: Z; units: number },
  mismatch: string,
): { sg: PathRun<S>; iova: PathRun<S> } {
  const quiet = quietContext(ctx);
  for (let round = 0; round < WARMUP_ROUNDS; round++) {
    runPath('sg', quiet, sizes.warmup);
    runPath('iova', quiet, sizes.warmup);
  }
  const total = 2 * sizes.units;
  const sg = runPath('sg', ctx, sizes.measured, (d) => ctx.onProgress?.(d, total));
  const iova = runPath('iova', ctx, sizes.measured, (d) => ctx.onProgress?.(sizes.units + d, total));
  if (sg.stats.digest !== iova.stats.digest) {
    throw new Error(`${mismatch} (${sg.stats.digest} vs ${iova.stats.digest})`);
  }
  ctx.onProgress?.(total, total);
  return { sg, iova };
}
