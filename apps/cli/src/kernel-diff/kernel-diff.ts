/**
 * The kernel diff: parses a recorded kernel trace, runs every replay that has events to compare
 * (the IOVA allocator, the iommu-dma map/unmap path with its flush queue, swiotlb), and reports
 * the events compared per kind and the first divergence of each replay with the trace lines
 * around it. Model-only: this compares the model with a recorded Linux kernel.
 */
import { comparedTotal, type Divergence, type ReplayName, type ReplayResult } from './divergence.js';
import { type KernelTrace, parseKernelTrace } from './kernel-trace.js';
import { replayDmaIommu } from './replay-dma.js';
import { replayIovaAllocator } from './replay-iova.js';
import { replaySwiotlb } from './replay-swiotlb.js';

/** A divergence with the trace lines around it. */
export interface DivergenceWithContext extends Divergence {
  /** Up to 4 lines before and 2 after, each `line: text`; the divergent line is marked `>`. */
  readonly context: string[];
}

/** Everything `iovalink kernel-diff` reports about one trace. */
export interface KernelDiffReport {
  readonly kernelRelease: string;
  readonly mode: string;
  readonly qemu: string;
  readonly cmdline: string;
  /** Trace events parsed (of the kinds a replay understands). */
  readonly events: number;
  /** Kernel events compared over all replays. */
  readonly compared: number;
  /** Replays that found a divergence (each stops at its first). */
  readonly divergences: number;
  /** Lost events the recording reported: a replay may diverge where they are missing. */
  readonly lost: { kprobeMisses: number; ringOverruns: number };
  readonly replays: ReadonlyArray<ReplayResult & { divergence: DivergenceWithContext | undefined }>;
}

function withContext(d: Divergence, lines: readonly string[]): DivergenceWithContext {
  const context: string[] = [];
  for (let l = Math.max(1, d.line - 4); l <= Math.min(lines.length, d.line + 2); l++) {
    context.push(`${l === d.line ? '>' : ' '} ${l}: ${lines[l - 1] ?? ''}`);
  }
  return { ...d, context };
}

/** The replays that have events to compare in `trace`. */
export function applicableReplays(trace: KernelTrace): ReplayName[] {
  const kinds = new Set(trace.events.map((e) => e.kind));
  const out: ReplayName[] = [];
  if (kinds.has('alloc_iova_ret') || kinds.has('free_iova')) out.push('iova-allocator');
  if (
    trace.header.mode !== 'swiotlb' &&
    (kinds.has('map_page') || kinds.has('map_sg') || kinds.has('dma_alloc'))
  ) {
    out.push('dma-iommu');
  }
  if (kinds.has('tbl_map')) out.push('swiotlb');
  return out;
}

/**
 * Replays a trace file's text through the model. Throws `KernelTraceError` for a trace that
 * cannot be read; divergences are reported, not thrown.
 */
export function kernelDiff(text: string): KernelDiffReport {
  const trace = parseKernelTrace(text);
  const lines = text.split('\n');
  const replays = applicableReplays(trace).map((name) => {
    const r =
      name === 'iova-allocator'
        ? replayIovaAllocator(trace)
        : name === 'dma-iommu'
          ? replayDmaIommu(trace)
          : replaySwiotlb(trace);
    return { ...r, divergence: r.divergence === undefined ? undefined : withContext(r.divergence, lines) };
  });
  const h = trace.header;
  return {
    kernelRelease: h.kernelRelease,
    mode: h.mode,
    qemu: h.qemu,
    cmdline: h.cmdline,
    events: trace.events.length,
    compared: replays.reduce((n, r) => n + comparedTotal(r), 0),
    divergences: replays.filter((r) => r.divergence !== undefined).length,
    lost: { kprobeMisses: h.kprobeMisses, ringOverruns: h.ringOverruns },
    replays,
  };
}

/** The report as text: header, one block per replay (counts by kind, notes, first divergence). */
export function formatKernelDiff(report: KernelDiffReport, name = 'trace'): string {
  const out: string[] = [];
  out.push(
    `${name}: Linux ${report.kernelRelease || '(unknown)'}, ${report.mode}${report.qemu ? `, ${report.qemu}` : ''}`,
  );
  if (report.cmdline) out.push(`  command line: ${report.cmdline}`);
  if (report.lost.kprobeMisses > 0 || report.lost.ringOverruns > 0) {
    out.push(
      `  WARNING: the recording lost events (kprobe misses ${report.lost.kprobeMisses}, ring overruns ${report.lost.ringOverruns}); re-record (threadirqs, bigger buffer_size_kb)`,
    );
  }
  if (report.replays.length === 0)
    out.push('  no replayable events (no allocator, map or bounce events found)');
  for (const r of report.replays) {
    const kinds = Object.entries(r.compared)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    out.push(
      `  ${r.replay}: ${comparedTotal(r)} events compared (${kinds || 'none'})${r.divergence ? ', DIVERGED' : ', 0 divergences'}`,
    );
    for (const n of r.notes) out.push(`    note: ${n}`);
    const d = r.divergence;
    if (d !== undefined) {
      out.push(`    first divergence at line ${d.line} (${d.kind}): ${d.what}`);
      out.push(`      kernel: ${d.kernel}`);
      out.push(`      model:  ${d.model}`);
      for (const c of d.context) out.push(`      ${c}`);
    }
  }
  out.push(
    `${report.compared} events, ${report.divergences} divergence${report.divergences === 1 ? '' : 's'}`,
  );
  return out.join('\n');
}
