import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { renderReport } from '../src/report.js';
import type { PathResult, RunReport } from '../src/results.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const required = process.env.IOVALINK_REQUIRE_CHROMIUM === '1';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && required) throw new Error(`IOVALINK_REQUIRE_CHROMIUM=1 but no Chromium at ${CHROMIUM}`);

function path(p: 'sg' | 'iova', scale: number): PathResult {
  return {
    path: p,
    ops: 100,
    simNsPerOp: 1000 * scale,
    modeledNsPerOp: 800 * scale,
    metaBytesPerOp: p === 'sg' ? 1056 : 16,
    allocsPerOp: p === 'sg' ? 2 : 0,
    sgBytesPerOp: p === 'sg' ? 1024 : 0,
    iovaAllocsPerOp: 1,
    pteWritesPerOp: 32,
    iotlbInvalidationsPerOp: 1,
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
    { name: 'block 4 KiB', subsystem: 'block', bytesPerOp: 4096, paths: [path('sg', 1), path('iova', 0.8)] },
    {
      name: 'block 128 KiB',
      subsystem: 'block',
      bytesPerOp: 131072,
      paths: [path('sg', 4), path('iova', 2)],
    },
  ],
};

describe('renderReport', () => {
  it('is one self-contained document: no external URL, data embedded, title escaped', () => {
    const html = renderReport(sample);
    expect(html).not.toMatch(/<script[^>]+src=/);
    expect(html).not.toMatch(/<link[^>]+href=/);
    expect(html).toContain('iovalink demo &#60;test&#62;');
    expect(html).toContain('"name":"block 128 KiB"');
    expect(html).toMatch(/Modeled kernel time<\/b> is counted events/);
  });

  it.runIf(haveChromium)('renders both charts with the right series in headless Chromium', async () => {
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
        const g = globalThis as unknown as {
          Chart: {
            getChart(el: Canvas): {
              data: { labels: string[]; datasets: Array<{ label: string; data: number[] }> };
            };
          };
          document: { querySelectorAll(s: string): ArrayLike<Canvas> };
        };
        return Array.from(g.document.querySelectorAll('canvas')).map((c) => {
          const ch = g.Chart.getChart(c);
          return {
            id: c.id,
            width: c.width,
            labels: ch.data.labels,
            series: ch.data.datasets.map((d) => [d.label, d.data]),
          };
        });
      });
      expect(errors).toEqual([]);
      expect(charts.map((c) => c.id)).toEqual(['cost', 'memory']);
      for (const c of charts) {
        expect(c.width).toBeGreaterThan(100);
        expect(c.labels).toEqual(['block 4 KiB', 'block 128 KiB']);
      }
      expect(charts[0]!.series).toEqual([
        ['legacy (scatterlist / per-page) · modeled kernel ns/op', [800, 3200]],
        ['legacy (scatterlist / per-page) · simulator ns/op', [1000, 4000]],
        ['two-step IOVA · modeled kernel ns/op', [640, 1600]],
        ['two-step IOVA · simulator ns/op', [800, 2000]],
      ]);
      expect(charts[1]!.series).toEqual([
        ['legacy (scatterlist / per-page) · metadata bytes per page', [32, 32]],
        ['two-step IOVA · metadata bytes per page', [0.5, 0.5]],
      ]);
      expect(await page.locator('#results tbody tr').count()).toBe(4);
    } finally {
      await browser.close();
    }
  });
});
