import { describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli.js';

async function run(args: string[]): Promise<string> {
  let text = '';
  const program = buildProgram((s) => {
    text += `${s}\n`;
  });
  const all = (c: typeof program): Array<typeof program> => [c, ...c.commands.flatMap(all)];
  for (const c of all(program)) {
    c.exitOverride();
    c.configureOutput({ writeOut: (s) => (text += s), writeErr: (s) => (text += s) });
  }
  await program.parseAsync(['node', 'iovalink', ...args]);
  return text;
}

describe('iovalink bench map', () => {
  it('prints the kernel tool header, simulator percentiles and the MODELED figures for --hw', async () => {
    const out = await run(['bench', 'map', '--loops', '200', '-g', '4', '--hw', 'intel-vtd']);
    expect(out).toMatch(/dma mapping benchmark: threads:1 seconds:20 node:-1 dir:BIDIRECTIONAL granule: 4/);
    expect(out).toMatch(
      /map latency\(us\) \[simulator\]: p50:\d+\.\d+ p90:\d+\.\d+ p99:\d+\.\d+ min:\d+\.\d+ max:\d+\.\d+/,
    );
    expect(out).toMatch(/unmap latency\(us\) \[MODELED intel-vtd \/ intel-vtd\]: \d+\.\d{3}/);
    expect(out).toMatch(/DMA_IOVA_LINK_MODE/);
    expect(out).toMatch(/simulator: how fast this model runs here/);
  });

  it('rejects out-of-range flags with a message naming the range', async () => {
    await expect(run(['bench', 'map', '-g', '2000'])).rejects.toThrow(
      /granule must be an integer in 1\.\.1024/,
    );
    await expect(run(['bench', 'map', '-d', '3'])).rejects.toThrow(/dir must be an integer in 0\.\.2/);
  });

  it('runs without an IOMMU (single mode: dma-direct)', async () => {
    const out = await run(['bench', 'map', '--loops', '100', '-m', 'single', '--iommu', 'none', '--csv']);
    expect(out.split('\n')[0]).toBe(
      'mode,granule,loops,MODELED map µs,MODELED unmap µs,sim map p50 ns,sim map p99 ns,sim unmap p50 ns,sim unmap p99 ns,sim batch',
    );
  });
});

describe('iovalink bench block', () => {
  it('sweeps size × depth for both paths with 0 scatterlist bytes on the two-step path', async () => {
    const out = await run(['bench', 'block', '--sizes', '64k', '--depths', '1,4', '--ios', '20', '--json']);
    const j = JSON.parse(out) as { rows: Array<Record<string, string | number>> };
    expect(j.rows).toHaveLength(4);
    for (const r of j.rows) {
      expect(r.size).toBe('64 KiB');
      if (r.path === 'iova') expect(r['sg B/io']).toBe(0);
      else expect(r['sg B/io']).toBeGreaterThan(0);
    }
  });

  it('measures both paths in the same interleaved rounds: the two-step row carries the ratio and its interval', async () => {
    const out = await run(['bench', 'block', '--sizes', '4k', '--depths', '4', '--ios', '48', '--json']);
    const j = JSON.parse(out) as { rounds: number; rows: Array<Record<string, string | number>> };
    expect(j.rounds).toBe(24);
    const [sg, iova] = j.rows;
    expect(sg!.path).toBe('sg');
    expect(sg!['sim two-step/legacy']).toBe('');
    expect(iova!['sim two-step/legacy']).toMatch(/^(≈|\d+\.\d+×) \(\d+\.\d+–\d+\.\d+×\)$/);
    // 4 KiB I/O is one segment on either path: the same modeled time, ratio 1.00×
    expect(iova!['modeled ns/io']).toBe(sg!['modeled ns/io']);
    expect(iova!['modeled two-step/legacy']).toBe('1.00×');
    for (const r of j.rows) expect(r['IOPS (sim)']).toBe(Math.round(1e9 / (r['sim ns/io median'] as number)));
  });

  it('runs one path alone with the same round structure', async () => {
    const out = await run([
      'bench',
      'block',
      '--sizes',
      '4k',
      '--depths',
      '1',
      '--ios',
      '10',
      '--path',
      'iova',
    ]);
    expect(out).toMatch(/median of 10 rounds/);
    expect(out.split('\n').filter((l) => /^│ 4 KiB/.test(l))).toHaveLength(1);
  });

  it('rejects a size that is not a multiple of 512 bytes, naming it', async () => {
    await expect(run(['bench', 'block', '--sizes', '4k,1000'])).rejects.toThrow(
      /size "1000" must be a multiple of 512/,
    );
  });
});
