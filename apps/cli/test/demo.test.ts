import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { demo, runDemo } from '../src/commands/demo.js';
import { recordTrace } from '../src/commands/trace.js';
import { blockWorkload } from '../src/workloads/block.js';

/** A small block case so the test runs in well under a second. */
const small = blockWorkload({
  name: 'block 64 KiB test',
  blockSize: 64 << 10,
  pattern: 'sequential',
  readMix: 0.5,
  buffers: 'scattered',
  ios: 40,
  quickIos: 40,
});

const base = { costModel: 'arm-smmuv3', iommu: 'strict' as const, seed: 7, quick: true, progress: false };

describe('iovalink demo', () => {
  it('runs both paths, verifies data, and shows the two-step path without scatterlists', () => {
    const r = runDemo(base, [small]);
    const [w] = r.workloads;
    const sg = w!.paths.find((p) => p.path === 'sg')!;
    const iova = w!.paths.find((p) => p.path === 'iova')!;
    expect(sg.verified && iova.verified).toBe(true);
    expect(sg.ops).toBe(iova.ops);
    expect(sg.sgBytesPerOp).toBeGreaterThan(0);
    expect(iova.sgBytesPerOp).toBe(0);
    expect(iova.iovaAllocsPerOp).toBeLessThanOrEqual(sg.iovaAllocsPerOp);
    expect(iova.iotlbInvalidationsPerOp).toBeLessThanOrEqual(sg.iotlbInvalidationsPerOp);
    expect(iova.modeledNsPerOp).toBeLessThan(sg.modeledNsPerOp);
  });

  it('is deterministic for a seed in everything but simulator time', () => {
    const strip = (r: ReturnType<typeof runDemo>) =>
      r.workloads.map((w) => w.paths.map(({ simNsPerOp: _s, ...rest }) => rest));
    expect(strip(runDemo(base, [small]))).toEqual(strip(runDemo(base, [small])));
  });

  it('prints a side-by-side table with modeled time labelled, JSON with time kinds, and a report file', () => {
    const text = demo(base, [small]);
    expect(text).toMatch(/MODELED kernel time \/ op \(ns\)/);
    expect(text).toMatch(/simulator time \/ op \(ns\)/);
    expect(text).toMatch(/two-step \/ legacy/);
    const j = JSON.parse(demo({ ...base, json: true }, [small])) as { timeKinds: Record<string, string> };
    expect(j.timeKinds.modeledNsPerOp).toMatch(/modeled/);
    const file = join(mkdtempSync(join(tmpdir(), 'iovalink-demo-')), 'r.html');
    demo({ ...base, report: file }, [small]);
    expect(readFileSync(file, 'utf8')).toContain('"name":"block 64 KiB test"');
  });

  it('runs on a device without an IOMMU (both paths map directly)', () => {
    const r = runDemo({ ...base, iommu: 'none' }, [small]);
    for (const p of r.workloads[0]!.paths) {
      expect(p.verified).toBe(true);
      expect(p.iovaAllocsPerOp).toBe(0);
    }
  });
});

describe('iovalink trace', () => {
  it('records balanced Chrome trace events, one track per path, with each path’s own calls', () => {
    const doc = recordTrace({ workload: 'block', iommu: 'strict', seed: 1 }, [small]);
    expect(doc.otherData.timeKind).toBe('simulator');
    const byTid = new Map<number, string[]>();
    const depth = new Map<number, number>();
    for (const e of doc.traceEvents) {
      if (e.ph === 'M') continue;
      const d = (depth.get(e.tid) ?? 0) + (e.ph === 'B' ? 1 : e.ph === 'E' ? -1 : 0);
      expect(d).toBeGreaterThanOrEqual(0);
      depth.set(e.tid, d);
      if (e.ph !== 'E') byTid.set(e.tid, [...(byTid.get(e.tid) ?? []), e.name]);
    }
    for (const d of depth.values()) expect(d).toBe(0);
    const sg = new Set(byTid.get(1));
    const iova = new Set(byTid.get(2));
    expect(sg.has('dma_map_sg')).toBe(true);
    expect(sg.has('dma_iova_link')).toBe(false);
    expect(iova.has('dma_iova_link')).toBe(true);
    expect(iova.has('dma_map_sg')).toBe(false);
    for (const s of [sg, iova]) {
      expect(s.has('iotlb_inv_range')).toBe(true);
      expect(s.has('device_dma_read') || s.has('device_dma_write')).toBe(true);
    }
    const names = doc.traceEvents
      .filter((e) => e.ph === 'M' && e.name === 'thread_name')
      .map((e) => e.args?.name);
    expect(names).toEqual(['legacy (scatterlist / per-page)', 'two-step IOVA']);
  });
});
