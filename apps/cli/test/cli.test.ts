import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counters, diffCounters } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli.js';
import { CostModelError, loadCostModel, loadPreset, modeledNs } from '../src/cost-model.js';

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
  it('prints the kernel tool output shape for both modes', async () => {
    const out = await run(['bench', 'map', '--loops', '500', '-g', '4']);
    expect(out).toMatch(/dma mapping benchmark: threads:1 seconds:20 node:-1 dir:BIDIRECTIONAL granule: 4/);
    expect(out).toMatch(/average map latency\(us\):\d+\.\d standard deviation:\d+\.\d/);
    expect(out).toMatch(/average unmap latency\(us\):\d+\.\d standard deviation:\d+\.\d/);
    expect(out).toMatch(/DMA_IOVA_LINK_MODE/);
    expect(out).toMatch(/simulator time/);
  });

  it('emits JSON labelled as simulator time', async () => {
    const out = await run(['bench', 'map', '--loops', '200', '-m', 'single', '-d', '1', '--json']);
    const j = JSON.parse(out) as {
      timeKind: string;
      results: Array<{ loops: number; params: { dmaDir: number } }>;
    };
    expect(j.timeKind).toBe('simulator');
    expect(j.results).toHaveLength(1);
    expect(j.results[0]!.loops).toBe(200);
    expect(j.results[0]!.params.dmaDir).toBe(1);
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
      'mode,loops,map ns (sim),unmap ns (sim),avg_map_100ns,map_stddev,avg_unmap_100ns,unmap_stddev',
    );
  });
});

describe('cost model', () => {
  it('ships two presets whose every figure has a source', () => {
    for (const name of ['arm-smmuv3', 'intel-vtd'] as const) {
      const m = loadPreset(name);
      expect(Object.keys(m.events).length).toBeGreaterThan(10);
      for (const e of Object.values(m.events)) expect(e!.source.length).toBeGreaterThan(10);
    }
    expect(
      loadPreset('arm-smmuv3').events.iommuMapCalls!.ns + loadPreset('arm-smmuv3').events.pteWrites!.ns,
    ).toBe(54);
  });

  it('turns counts into modeled time as counts × costs', () => {
    const m = loadPreset('arm-smmuv3');
    const c = new Counters();
    const before = c.snapshot();
    c.iommuMapCalls += 2;
    c.pteWrites += 10;
    c.iotlbInvRange += 1;
    c.kmalloc('scatterlist', 1024);
    const d = diffCounters(before, c.snapshot());
    expect(modeledNs(m, d)).toBeCloseTo(2 * 52.5 + 10 * 1.5 + 600 + 60, 6);
  });

  it('loads a user file and names what is wrong in a bad one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'iovalink-cm-'));
    const good = join(dir, 'good.json');
    writeFileSync(
      good,
      JSON.stringify({
        name: 'mine',
        events: {
          pteWrites: { ns: 2, category: 'page-table', source: 'measured on my box', estimate: false },
        },
        metadata: { default: { allocNs: 1, freeNs: 1, category: 'metadata', source: 'x', estimate: true } },
      }),
    );
    expect(loadCostModel(good).events.pteWrites!.ns).toBe(2);
    const bad = join(dir, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify({ name: 'b', events: { pteWritez: { ns: 1, source: 's' } }, metadata: {} }),
    );
    expect(() => loadCostModel(bad)).toThrow(CostModelError);
    expect(() => loadCostModel(bad)).toThrow(/unknown event "pteWritez"/);
    expect(() => loadCostModel(join(dir, 'missing.json'))).toThrow(/not a preset .* and not a readable file/);
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
