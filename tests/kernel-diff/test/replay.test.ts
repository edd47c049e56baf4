/**
 * The committed Linux 6.1 traces replay through the model with 0 divergences, and every recorded
 * event of a replayed kind is compared (the counts come from the raw trace lines, not from the
 * replay).
 */
import { kernelDiff, parseKernelTrace } from 'iovalink';
import { describe, expect, it } from 'vitest';
import { eventLines, SCENARIOS, type Scenario, traceText } from './fixtures.js';

function counts(text: string): Record<string, number> {
  const n = (k: string): number => eventLines(text, k).length;
  return {
    alloc: n('alloc_iova_ret'),
    free: n('free_iova'),
    map: n('map'),
    unmap: n('unmap'),
    fq: n('fq_timeout'),
    tblMap: n('tbl_map_ret'),
    tblUnmap: n('tbl_unmap'),
  };
}

describe('recorded Linux 6.1 traces', () => {
  it.each(SCENARIOS)('%s: the recording lost no events', (s: Scenario) => {
    const h = parseKernelTrace(traceText(s)).header;
    expect(h.kernelRelease).toMatch(/^6\.1\./);
    expect(h.kprobeMisses).toBe(0);
    expect(h.ringOverruns).toBe(0);
  });

  it.each(SCENARIOS)('%s: replays with 0 divergences, every event compared', (s: Scenario) => {
    const text = traceText(s);
    const c = counts(text);
    const report = kernelDiff(text);
    expect(report.replays.map((r) => r.divergence)).toEqual(report.replays.map(() => undefined));
    expect(report.divergences).toBe(0);
    const by = Object.fromEntries(report.replays.map((r) => [r.replay, r.compared]));
    if (s === 'swiotlb') {
      expect(Object.keys(by)).toEqual(['swiotlb']);
      expect(by.swiotlb).toEqual({ tbl_map: c.tblMap, tbl_unmap: c.tblUnmap });
      expect(c.tblMap).toBeGreaterThan(1000);
      expect(report.compared).toBe(c.tblMap + c.tblUnmap);
      return;
    }
    expect(Object.keys(by)).toEqual(['iova-allocator', 'dma-iommu']);
    expect(by['iova-allocator']).toEqual({ alloc_iova: c.alloc, free_iova: c.free });
    const dma: Record<string, number> = {
      alloc_iova: c.alloc,
      map: c.map,
      unmap: c.unmap,
      free_iova: c.free,
    };
    if (s === 'lazy') dma.fq_batch = c.fq;
    expect(by['dma-iommu']).toEqual(dma);
    expect(report.compared).toBe(2 * c.alloc + 2 * c.free + c.map + c.unmap + (s === 'lazy' ? c.fq : 0));
  });

  it('the scenarios hold several thousand events, with multi-page runs, DAC and lazy batches', () => {
    let total = 0;
    for (const s of SCENARIOS) total += kernelDiff(traceText(s)).compared;
    expect(total).toBeGreaterThan(5000);
    // iommu_map_sg coalesced physically contiguous pages into runs longer than one page
    expect(eventLines(traceText('strict-single'), 'map').some((l) => !l.text.endsWith('size=4096'))).toBe(
      true,
    );
    // forcedac: every allocation went straight to the 39-bit limit (VT-d host address width 39)
    const fdac = eventLines(traceText('forcedac'), 'alloc_iova');
    expect(fdac.length).toBeGreaterThan(100);
    expect(fdac.every((l) => l.text.includes('limit=0x7ffffff flush=1'))).toBe(true);
    // strict: 32-bit first (limit 4 GiB >> 12, no rcache flush)
    expect(
      eventLines(traceText('strict-single'), 'alloc_iova').every((l) =>
        l.text.includes('limit=0xfffff flush=0'),
      ),
    ).toBe(true);
    // lazy: frees left the queue at several timer expiries
    expect(eventLines(traceText('lazy'), 'fq_timeout').length).toBeGreaterThan(10);
  });
});
