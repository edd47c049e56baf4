/**
 * What a kernel-trace replay reports: per replay, the recorded events compared by kind, and the
 * first event where the model did something else than the recorded kernel (a replay stops there,
 * because every later comparison would start from a different state). Model-only: the kernel has
 * no counterpart; this is the diff between the kernel's trace and the model's behaviour.
 */

/** The replays `iovalink kernel-diff` runs. */
export type ReplayName = 'iova-allocator' | 'dma-iommu' | 'swiotlb';

/** The first point where the model differs from the recorded kernel. */
export interface Divergence {
  readonly replay: ReplayName;
  /** 1-based line of the kernel event in the trace file. */
  readonly line: number;
  /** The kernel event kind compared there (`alloc_iova`, `map`, `unmap`, `free_iova`, `tbl_map`…). */
  readonly kind: string;
  /** What differs, in words. */
  readonly what: string;
  /** The kernel's value (from the trace). */
  readonly kernel: string;
  /** The model's value. */
  readonly model: string;
}

/** The outcome of one replay. */
export interface ReplayResult {
  readonly replay: ReplayName;
  /** Kernel events compared, by kind (only kinds that occurred). */
  readonly compared: Record<string, number>;
  /** The first divergence, or undefined when every compared event matched. */
  readonly divergence: Divergence | undefined;
  /** Facts about the replay worth reading (version switches used, limits checked). */
  readonly notes: string[];
}

/** Adds one compared event of `kind`. */
export function countCompared(compared: Record<string, number>, kind: string): void {
  compared[kind] = (compared[kind] ?? 0) + 1;
}

/** Total events a replay compared. */
export function comparedTotal(r: ReplayResult): number {
  let n = 0;
  for (const v of Object.values(r.compared)) n += v;
  return n;
}

/** Thrown inside a replay at the first divergence; the replay catches it and reports it. */
export class DivergenceFound extends Error {
  override readonly name = 'DivergenceFound';
  readonly divergence: Divergence;
  constructor(divergence: Divergence) {
    super(`${divergence.replay}: line ${divergence.line} ${divergence.kind}: ${divergence.what}`);
    this.divergence = divergence;
  }
}

/** `0x…` for addresses in messages. */
export function hx(n: number): string {
  return n < 0 ? `-0x${(-n).toString(16)}` : `0x${n.toString(16)}`;
}
