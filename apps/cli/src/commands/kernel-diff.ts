/**
 * `iovalink kernel-diff <trace>`: replays a DMA/IOMMU trace recorded from a running Linux kernel
 * (by `tools/kernel-record/record.sh` under QEMU, or by hand with the same tracefs setup on real
 * hardware) through the model, and prints the divergence report: events compared per replay and
 * kind, the first divergent event with the trace lines around it, `N events, 0 divergences`.
 * Exits 1 when a replay diverged.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Command } from 'commander';
import { formatKernelDiff, kernelDiff } from '../kernel-diff/kernel-diff.js';

/** Options of `iovalink kernel-diff`. */
export interface KernelDiffOptions {
  json?: boolean;
}

/** Runs the diff on the trace file at `path`; returns the output and whether it diverged. */
export function kernelDiffCommand(
  path: string,
  options: KernelDiffOptions,
): { text: string; diverged: boolean } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`kernel-diff: cannot read trace '${path}': ${(e as Error).message}`);
  }
  const report = kernelDiff(text);
  return {
    text: options.json ? JSON.stringify(report, null, 2) : formatKernelDiff(report, basename(path)),
    diverged: report.divergences > 0,
  };
}

/** Adds the `kernel-diff` command to the program. */
export function registerKernelDiff(program: Command, out: (s: string) => void): void {
  program
    .command('kernel-diff')
    .description(
      'replay a DMA/IOMMU trace recorded from a real Linux kernel (tools/kernel-record) through the model and report divergences',
    )
    .argument(
      '<trace>',
      'trace file written by tools/kernel-record/record.sh (or recorded by hand, see its README)',
    )
    .option('--json', 'machine-readable report')
    .action((path: string, o: KernelDiffOptions) => {
      const r = kernelDiffCommand(path, o);
      out(r.text);
      if (r.diverged) process.exitCode = 1;
    });
}
