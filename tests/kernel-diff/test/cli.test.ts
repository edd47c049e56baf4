/**
 * `iovalink kernel-diff <trace>` on the committed traces and on a mutated copy, and the trace
 * reader's errors for files it cannot use.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram, KernelTraceError, kernelDiff, kernelDiffCommand, parseKernelTrace } from 'iovalink';
import { afterEach, describe, expect, it } from 'vitest';
import { eventLines, fixturePath, replaceLine, traceText } from './fixtures.js';

describe('iovalink kernel-diff', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
    process.exitCode = undefined;
  });

  it('prints the counts per replay and kind and ends with "N events, 0 divergences"', async () => {
    const out: string[] = [];
    await buildProgram((s) => out.push(s)).parseAsync([
      'node',
      'iovalink',
      'kernel-diff',
      fixturePath('lazy.trace'),
    ]);
    const text = out.join('\n');
    const expected = kernelDiff(traceText('lazy')).compared;
    expect(text).toContain('Linux 6.1.');
    expect(text).toMatch(
      /iova-allocator: \d+ events compared \(alloc_iova \d+, free_iova \d+\), 0 divergences/,
    );
    expect(text).toMatch(/dma-iommu: .*fq_batch \d+.*0 divergences/);
    expect(text.trim().split('\n').at(-1)).toBe(`${expected} events, 0 divergences`);
    expect(process.exitCode).toBeUndefined();
  });

  it('--json gives the report as data', () => {
    const r = kernelDiffCommand(fixturePath('swiotlb.trace'), { json: true });
    const report = JSON.parse(r.text) as {
      divergences: number;
      mode: string;
      replays: Array<{ replay: string }>;
    };
    expect(r.diverged).toBe(false);
    expect(report.divergences).toBe(0);
    expect(report.mode).toBe('swiotlb');
    expect(report.replays.map((x) => x.replay)).toEqual(['swiotlb']);
  });

  it('a mutated trace: first divergent event with context, exit code 1', async () => {
    const text = traceText('strict-single');
    const target = eventLines(text, 'free_iova')[10];
    if (target === undefined) throw new Error('fixture too short');
    const dir = mkdtempSync(join(tmpdir(), 'kernel-diff-'));
    dirs.push(dir);
    const file = join(dir, 'mutated.trace');
    writeFileSync(file, replaceLine(text, target.line, target.text.replace(/size=(\d+)$/, 'size=64')));
    const out: string[] = [];
    await buildProgram((s) => out.push(s)).parseAsync(['node', 'iovalink', 'kernel-diff', file]);
    const printed = out.join('\n');
    expect(printed).toContain(`first divergence at line ${target.line} (free_iova)`);
    expect(printed).toContain(`> ${target.line}: ${target.text.replace(/size=(\d+)$/, 'size=64')}`);
    expect(printed).toMatch(/\d+ events, 2 divergences$/);
    expect(process.exitCode).toBe(1);
  });

  it('an unreadable file names the path', () => {
    expect(() => kernelDiffCommand('/nonexistent/x.trace', {})).toThrow(
      /cannot read trace '\/nonexistent\/x.trace'/,
    );
  });
});

describe('parseKernelTrace rejects what it cannot replay', () => {
  it('a trace without a mode header', () => {
    expect(() => parseKernelTrace('[000] 1.000000: map_page: off=0 size=4096 dir=1\n')).toThrow(
      KernelTraceError,
    );
    expect(() => parseKernelTrace('[000] 1.000000: map_page: off=0 size=4096 dir=1\n')).toThrow(/no '# mode/);
  });

  it('an unknown mode', () => {
    expect(() => parseKernelTrace('# mode passthrough\n')).toThrow(
      /mode 'passthrough' is not one of strict, lazy, forcedac, swiotlb/,
    );
  });

  it('a known event without its arguments, naming the line', () => {
    const text = '# mode strict\n[000] 1.000000: map: iova=0x1000 paddr=0x2000\n';
    expect(() => parseKernelTrace(text)).toThrow(/line 2: map event without 'size='/);
  });

  it('reads the ftrace format with task, cpu and flags columns as well', () => {
    const t = parseKernelTrace(
      '# mode strict\n          dd-71      [000] d..1.    12.345678: free_iova: dom=0xffff88 pfn=0x1f size=2\n',
    );
    expect(t.events).toHaveLength(1);
    expect(t.events[0]).toMatchObject({
      kind: 'free_iova',
      ts: 12_345_678_000,
      cpu: 0,
      args: { pfn: 0x1f, size: 2 },
      dom: '0xffff88',
    });
  });
});
