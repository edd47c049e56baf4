import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { COST_CATEGORIES, type CostCategory } from '../src/cost-model.js';
import { renderReport } from '../src/report.js';
import type { PathResult, RunReport } from '../src/results.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const required = process.env.IOVALINK_REQUIRE_CHROMIUM === '1';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && required) throw new Error(`IOVALINK_REQUIRE_CHROMIUM=1 but no Chromium at ${CHROMIUM}`);

/** Modeled time by category: invalidation and PTE writes on both paths, scatterlist on legacy only. */
function byCategory(p: 'sg' | 'iova', scale: number): Record<CostCategory, number> {
  const c = Object.fromEntries(COST_CATEGORIES.map((k) => [k, 0])) as Record<CostCategory, number>;
  c.invalidation = 500 * scale;
  c['page-table'] = 200 * scale;
  if (p === 'sg') c.scatterlist = 100 * scale;
  return c;
}

function path(p: 'sg' | 'iova', scale: number): PathResult {
  const cats = byCategory(p, scale);
  return {
    path: p,
    ops: 1024,
    simNsPerOp: 1000 * scale,
    simNsPerOpRounds: [1000 * scale, 1100 * scale, 900 * scale],
    harnessNsPerOp: 300 * scale,
    modeledNsPerOp: Object.values(cats).reduce((a, b) => a + b, 0),
    modeledNsPerOpByCategory: cats,
    metaBytesPerOp: p === 'sg' ? 1056 : 16,
    allocsPerOp: p === 'sg' ? 2 : 0,
    sgBytesPerOp: p === 'sg' ? 1024 : 0,
    // one IOVA allocation per run on the two-step path: 1/1024 per op must not print as 0.00
    iovaAllocsPerOp: p === 'sg' ? 1 : 1 / 1024,
    pteWritesPerOp: 32,
    iotlbInvalidationsPerOp: 1,
    invalidationCmdsPerOp: 32,
    invalidationSyncsPerOp: 1,
    bounceBytesPerOp: 0,
    metaBytesPerPage: p === 'sg' ? 32 : 0.5,
    verified: true,
  };
}

const sample: RunReport = {
  title: 'iovalink demo <test>',
  costModel: 'arm-smmuv3',
  iommu: 'strict',
  seed: 1,
  workloads: [
    {
      name: 'block 4 KiB',
      subsystem: 'block',
      bytesPerOp: 4096,
      paths: [path('sg', 1), path('iova', 0.8)],
      sim: { ratio: 0.8, low: 0.7, high: 0.9, rounds: 24, similar: false },
    },
    {
      name: 'VFIO migration',
      subsystem: 'vfio',
      bytesPerOp: 8 << 20,
      paths: [path('sg', 4000), path('iova', 2000)],
      sim: { ratio: 1.02, low: 0.9, high: 1.1, rounds: 6, similar: true },
    },
  ],
};

describe('renderReport', () => {
  it('is one self-contained document: no external URL, data embedded, title escaped', () => {
    const html = renderReport(sample);
    expect(html).not.toMatch(/<script[^>]+src=/);
    expect(html).not.toMatch(/<link[^>]+href=/);
    expect(html).toContain('iovalink demo &#60;test&#62;');
    expect(html).toContain('"name":"VFIO migration"');
    expect(html).toMatch(/Modeled kernel time<\/b> is counted events/);
  });

  it('shows per-op counts in significant digits, times in scaled units, and ratio columns', () => {
    const html = renderReport(sample);
    const row = /<tr><td>block 4 KiB<\/td><td>two-step IOVA<\/td>(.*?)<\/tr>/.exec(html)?.[1] ?? '';
    const cells = [...row.matchAll(/<td>(.*?)<\/td>/g)].map((m) => m[1]);
    // ops, sim/op, sim ratio, harness/op, modeled/op, modeled ratio, meta, allocs, IOVA allocs/op
    expect(cells.slice(0, 9)).toEqual([
      '1,024',
      '800 ns',
      '0.80× (0.70–0.90×)',
      '240 ns',
      '560 ns',
      '0.70×',
      '16',
      '0',
      '0.000977',
    ]);
    const vfio = /<tr><td>VFIO migration<\/td><td>two-step IOVA<\/td>(.*?)<\/tr>/.exec(html)?.[1] ?? '';
    // simulator 2000 × 1000 ns, ratio within its interval, harness 2000 × 300 ns, modeled 2000 × 700
    // ns against legacy's 4000 × 800 ns
    expect(vfio).toMatch(
      /^<td>1,024<\/td><td>2 ms<\/td><td>≈ \(0.90–1.10×\)<\/td><td>600 µs<\/td><td>1.4 ms<\/td><td>0.44×<\/td>/,
    );
  });

  it.runIf(haveChromium)(
    'renders modeled and simulator charts apart, with the right series, in headless Chromium',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'iovalink-report-'));
      const file = join(dir, 'report.html');
      writeFileSync(file, renderReport(sample));
      const browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-background-networking',
          '--disable-component-update',
          '--no-first-run',
        ],
      });
      try {
        const page = await browser.newPage();
        const errors: string[] = [];
        page.on('pageerror', (e) => errors.push(e.message));
        await page.goto(pathToFileURL(file).href);
        await page.waitForSelector('body[data-rendered="yes"]', { timeout: 10_000 });
        const charts = await page.evaluate(() => {
          type Canvas = { id: string; width: number };
          type Tick = { label: string | string[] };
          type Scale = { ticks: Tick[]; getPixelForTick(i: number): number };
          const g = globalThis as unknown as {
            Chart: {
              defaults: { font: { size: number } };
              getChart(el: Canvas): {
                data: {
                  labels: string[];
                  datasets: Array<{ label: string; data: number[]; timeKind?: string }>;
                };
                scales: { x: Scale; y: Scale };
              };
            };
            document: { querySelectorAll(s: string): ArrayLike<Canvas> };
          };
          return Array.from(g.document.querySelectorAll('canvas')).map((c) => {
            const ch = g.Chart.getChart(c);
            const y = ch.scales.y;
            // smallest distance between consecutive category labels, minus one line of text
            const pos = y.ticks.map((_, i) => y.getPixelForTick(i));
            let gap = Number.POSITIVE_INFINITY;
            for (let i = 1; i < pos.length; i++) gap = Math.min(gap, Math.abs(pos[i]! - pos[i - 1]!));
            return {
              id: c.id,
              width: c.width,
              labels: ch.data.labels,
              series: ch.data.datasets.map((d) => [d.label, d.data]),
              kinds: ch.data.datasets.flatMap((d) => (d.timeKind === undefined ? [] : [d.timeKind])),
              ticks: ch.scales.x.ticks.map((t) => String(t.label)),
              labelGap: gap - g.Chart.defaults.font.size,
              yTicks: y.ticks.length,
            };
          });
        });
        expect(errors).toEqual([]);
        expect(charts.map((c) => c.id)).toEqual(['modeled-0', 'sim-0', 'modeled-1', 'sim-1', 'memory']);
        const paths = ['legacy (scatterlist / per-page)', 'two-step IOVA'];
        for (const c of charts) {
          expect(c.width).toBeGreaterThan(100);
          // no chart mixes modeled and simulator time
          expect(new Set(c.kinds).size).toBeLessThanOrEqual(1);
        }
        for (const [i, scale] of [
          [0, [1, 0.8]],
          [1, [4000, 2000]],
        ] as const) {
          const modeled = charts.find((c) => c.id === `modeled-${i}`)!;
          expect(modeled.labels).toEqual(paths);
          expect(modeled.kinds).toEqual(['modeled', 'modeled', 'modeled']);
          // the stacked categories: only those with time, each path's ns per op
          expect(modeled.series).toEqual([
            ['modeled · invalidation', [500 * scale[0], 500 * scale[1]]],
            ['modeled · page-table', [200 * scale[0], 200 * scale[1]]],
            ['modeled · scatterlist', [100 * scale[0], 0]],
          ]);
          const sim = charts.find((c) => c.id === `sim-${i}`)!;
          expect(sim.labels).toEqual(paths);
          expect(sim.kinds).toEqual(['simulator', 'simulator']);
          expect(sim.series).toEqual([
            ['simulator · model (median)', [1000 * scale[0], 1000 * scale[1]]],
            ['simulator · harness (median)', [300 * scale[0], 300 * scale[1]]],
          ]);
          for (const c of [modeled, sim]) {
            expect(c.ticks.length).toBeGreaterThan(1);
            for (const t of c.ticks) expect(t).toMatch(/^-?[\d.]+ (ns|µs|ms|s)$/);
          }
        }
        // the VFIO charts run into milliseconds: ticks scale the unit instead of printing 6-digit ns
        expect(charts.find((c) => c.id === 'modeled-1')!.ticks.some((t) => t.endsWith(' ms'))).toBe(true);
        const memory = charts.find((c) => c.id === 'memory')!;
        expect(memory.kinds).toEqual([]);
        expect(memory.labels).toEqual(['block 4 KiB', 'VFIO migration']);
        expect(memory.series).toEqual([
          ['legacy (scatterlist / per-page) · metadata bytes per page', [32, 32]],
          ['two-step IOVA · metadata bytes per page', [0.5, 0.5]],
        ]);
        // labels do not overlap: on every chart's category axis, consecutive labels are apart
        for (const c of charts) expect(c.labelGap).toBeGreaterThan(0);
        expect(await page.locator('#results tbody tr').count()).toBe(4);
      } finally {
        await browser.close();
      }
    },
  );
});
