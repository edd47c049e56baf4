/**
 * What the workloads share: the quiet context of untimed warm-up runs, the seeded data and digest
 * they compare the two paths' outcomes with, and the one measuring procedure of the demo and
 * `bench block`: both paths warm up, then run interleaved in rounds (A B, B A, B A, A B, …), each
 * round's per-op simulator time recorded, the event loop given back between chunks so progress
 * bars draw. No kernel counterpart.
 */
import type { CounterSnapshot } from '@iovalink/iommu';
import { compareRounds, roundOrder, type SimComparison, splitUnits } from '../measure.js';
import { yieldToEventLoop } from '../progress.js';
import { type DmaPath, type PathResult, pathResult, type WorkloadResult } from '../results.js';
import { createRig, type Rig } from '../rig.js';
import type { Workload, WorkloadContext } from './types.js';

/** FNV-1a over `b`, continuing from `h` (the offset basis by default). */
export function fnv1a(b: Uint8Array, h = 2166136261): number {
  let x = h;
  for (let i = 0; i < b.length; i++) x = Math.imul(x ^ b[i]!, 16777619) >>> 0;
  return x;
}

/** True when `a` and `b` hold the same bytes (what a path read back against what it wrote). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/** `n` seeded xorshift bytes: written data that differs per write and is the same for a seed. */
export function seededBytes(seed: number, n: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 4));
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, n);
}

/** `ctx` without tracer or progress, for untimed warm-up runs. */
export function quietContext(ctx: WorkloadContext): WorkloadContext {
  const { onMachine: _m, onProgress: _p, ...quiet } = ctx;
  return quiet;
}

/** Simulator time of one chunk of work, split into the model's part and the harness's part. */
export interface ChunkTime {
  /** Operations the chunk completed (what per-op figures divide by). */
  ops: number;
  /** Simulator ns spent in the model (the path under test). */
  modelNs: number;
  /** Simulator ns spent by the harness: preparing payloads and checking what came back. */
  harnessNs: number;
}

/** What a path's run leaves when it ends: its counters and what the PathResult needs. */
export interface PathOutcome<S extends { digest: string }> {
  /** Operations over the whole run. */
  ops: number;
  /** Counter diff over the run's counter window. */
  counters: CounterSnapshot;
  /** Pages the run mapped and the mapping metadata kept while mapped (metaBytesPerPage). */
  pages: number;
  keptMetaBytes: number;
  verified: boolean;
  /** Workload-specific figures, with a digest of what the run left behind. */
  stats: S;
}

/**
 * One path's run in progress: `step` runs more units of work (timed inside, model and harness
 * apart), `finish` ends the counter window, checks the data and tears down (untimed), throwing if
 * anything did not verify.
 */
export interface PathSession<S extends { digest: string }> {
  step(units: number): ChunkTime;
  finish(): PathOutcome<S>;
}

/** Opens a session of one path at size `size` on a fresh machine. */
export type OpenPath<Z, S extends { digest: string }> = (
  path: DmaPath,
  ctx: WorkloadContext,
  size: Z,
) => PathSession<S>;

/** One path's run: its PathResult and stats carrying a digest of what it left behind. */
export interface PathRun<S extends { digest: string }> {
  result: PathResult;
  stats: S;
}

/** Rounds of untimed warm-up runs of the paths before measuring. */
export const WARMUP_ROUNDS = 2;
/** Measured rounds by default (even, so the A B / B A orders balance). */
export const ROUNDS = 24;

/**
 * How much work to run: `units` of `measured` per path in `rounds` rounds (default ROUNDS; fewer
 * if there are fewer units), and `warmupUnits` of `warmup` per warm-up run.
 */
export interface RunSizes<Z> {
  measured: Z;
  units: number;
  rounds?: number;
  warmup: Z;
  warmupUnits: number;
}

/**
 * Runs `paths` the honest way: `WARMUP_ROUNDS` untimed runs of each at `sizes.warmup` without
 * tracer or progress (otherwise the path measured first also pays for JIT compilation), then one
 * session per path at `sizes.measured`, its `sizes.units` cut into rounds; in each round every path
 * runs its chunk, two paths in ABBA order (A B, B A, B A, A B, …) so neither is always first, with
 * `ctx.onProgress` called and the event loop yielded after every chunk (outside the timing). Each
 * PathResult carries the per-round per-op simulator times and their median.
 */
export async function runPaths<Z, S extends { digest: string }>(
  ctx: WorkloadContext,
  open: OpenPath<Z, S>,
  paths: readonly DmaPath[],
  sizes: RunSizes<Z>,
): Promise<Map<DmaPath, PathRun<S>>> {
  const quiet = quietContext(ctx);
  for (let round = 0; round < WARMUP_ROUNDS; round++) {
    for (const p of paths) {
      const s = open(p, quiet, sizes.warmup);
      s.step(sizes.warmupUnits);
      s.finish();
    }
  }
  const sessions = new Map(paths.map((p) => [p, open(p, ctx, sizes.measured)] as const));
  const model = new Map(paths.map((p) => [p, [] as number[]]));
  const harness = new Map(paths.map((p) => [p, [] as number[]]));
  const total = paths.length * sizes.units;
  let done = 0;
  for (const [round, units] of splitUnits(sizes.units, sizes.rounds ?? ROUNDS).entries()) {
    const order = paths.length === 2 ? roundOrder(round, paths[0]!, paths[1]!) : paths;
    for (const p of order) {
      const t = sessions.get(p)!.step(units);
      model.get(p)!.push(t.ops > 0 ? t.modelNs / t.ops : 0);
      harness.get(p)!.push(t.ops > 0 ? t.harnessNs / t.ops : 0);
      done += units;
      ctx.onProgress?.(done, total);
      await yieldToEventLoop();
    }
  }
  const runs = new Map<DmaPath, PathRun<S>>();
  for (const p of paths) {
    const o = sessions.get(p)!.finish();
    const result = pathResult(
      p,
      o.ops,
      { modelNsPerOpRounds: model.get(p)!, harnessNsPerOpRounds: harness.get(p)! },
      o.counters,
      ctx.costModel,
      o,
    );
    runs.set(p, { result, stats: o.stats });
  }
  return runs;
}

/**
 * `runPaths` over both paths, then the paths' digests compared (throws `${mismatch} (sg digest vs
 * iova digest)` if they left different outcomes) and their simulator times compared round by round.
 */
export async function runBothPaths<Z, S extends { digest: string }>(
  ctx: WorkloadContext,
  open: OpenPath<Z, S>,
  sizes: RunSizes<Z>,
  mismatch: string,
): Promise<{ sg: PathRun<S>; iova: PathRun<S>; sim: SimComparison }> {
  const runs = await runPaths(ctx, open, ['sg', 'iova'], sizes);
  const sg = runs.get('sg')!;
  const iova = runs.get('iova')!;
  if (sg.stats.digest !== iova.stats.digest) {
    throw new Error(`${mismatch} (${sg.stats.digest} vs ${iova.stats.digest})`);
  }
  const sim = compareRounds(sg.result.simNsPerOpRounds, iova.result.simNsPerOpRounds);
  return { sg, iova, sim };
}

/**
 * The fresh rig one path of a workload runs on: the context's IOMMU mode, hardware, seed and
 * dma-debug, `memSize` bytes of RAM; the context's `onMachine` hook sees the machine first.
 */
export function createPathRig(ctx: WorkloadContext, path: DmaPath, memSize: number): Rig {
  const rig = createRig({
    iommu: ctx.iommu,
    ...(ctx.hw === undefined ? {} : { hw: ctx.hw }),
    seed: ctx.seed,
    debug: ctx.debug,
    memSize,
  });
  ctx.onMachine?.(rig.machine, path);
  return rig;
}

/** What one run of a both-paths workload measures: `runBothPaths`'s arguments and the bytes per op. */
export interface BothPathsPlan<Z, S extends { digest: string }> {
  open: OpenPath<Z, S>;
  sizes: RunSizes<Z>;
  /** The error message when the two paths' digests differ. */
  mismatch: string;
  /** Bytes one op moves, from the sg path's run. */
  bytesPerOp: (sg: PathRun<S>) => number;
}

/**
 * A workload named `name` whose run is `runBothPaths` over what `plan` gives for the context,
 * reporting the sg path's result first, then the iova path's, and their simulator comparison.
 */
export function bothPathsWorkload<Z, S extends { digest: string }>(
  name: string,
  subsystem: Workload['subsystem'],
  plan: (ctx: WorkloadContext) => BothPathsPlan<Z, S>,
): Workload {
  return {
    name,
    subsystem,
    async run(ctx: WorkloadContext): Promise<WorkloadResult> {
      const { open, sizes, mismatch, bytesPerOp } = plan(ctx);
      const { sg, iova, sim } = await runBothPaths(ctx, open, sizes, mismatch);
      return { name, subsystem, bytesPerOp: bytesPerOp(sg), paths: [sg.result, iova.result], sim };
    },
  };
}
