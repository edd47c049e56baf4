/**
 * The replay can fail: a fixture with one recorded value changed (a pfn, a map size, a bounce
 * slot, a flush-queue batch) is reported as a divergence at exactly the changed event, and the
 * replays that do not look at that value still match.
 */
import { kernelDiff, type ReplayName } from 'iovalink';
import { describe, expect, it } from 'vitest';
import { argOf, eventLines, removeLine, replaceLine, traceText } from './fixtures.js';

function divergenceOf(text: string, replay: ReplayName) {
  const r = kernelDiff(text).replays.find((x) => x.replay === replay);
  if (r === undefined) throw new Error(`no ${replay} replay`);
  return r.divergence;
}

describe('a mutated fixture diverges at the mutated event', () => {
  it('one alloc_iova_fast result changed: both allocator replays stop at that line', () => {
    const text = traceText('strict-single');
    const target = eventLines(text, 'alloc_iova_ret')[60];
    if (target === undefined) throw new Error('fixture too short');
    const pfn = argOf(target.text, 'pfn');
    const mutated = replaceLine(
      text,
      target.line,
      target.text.replace(/pfn=0x[0-9a-f]+/, `pfn=0x${(pfn - 1).toString(16)}`),
    );
    for (const replay of ['iova-allocator', 'dma-iommu'] as const) {
      const d = divergenceOf(mutated, replay);
      expect(d?.line).toBe(target.line);
      expect(d?.kind).toBe(replay === 'iova-allocator' ? 'alloc_iova_ret' : 'alloc_iova');
      expect(d?.kernel).toContain(`0x${(pfn - 1).toString(16)}`);
      expect(d?.model).toContain(`0x${pfn.toString(16)}`);
    }
    const report = kernelDiff(mutated);
    expect(report.divergences).toBe(2);
    expect(report.replays[0]?.divergence?.context.some((c) => c.startsWith(`> ${target.line}:`))).toBe(true);
  });

  it('one iommu_map size changed: the map/unmap replay stops there, the allocator replay still matches', () => {
    const text = traceText('strict-concurrent');
    // a dma_map_page request (its length comes from the probe, its page from the map event):
    // the map event follows the map_page probe and its alloc_iova entry and return
    const pageOps = new Set(eventLines(text, 'map_page').map((l) => l.line));
    const target = eventLines(text, 'map').filter(
      (l) => pageOps.has(l.line - 3) && l.text.endsWith('size=4096'),
    )[100];
    if (target === undefined) throw new Error('fixture too short');
    const mutated = replaceLine(text, target.line, target.text.replace(/size=4096$/, 'size=8192'));
    const d = divergenceOf(mutated, 'dma-iommu');
    expect(d?.line).toBe(target.line);
    expect(d?.kind).toBe('map');
    expect(d?.kernel).toContain('size 0x2000');
    expect(d?.model).toContain('size 0x1000');
    expect(divergenceOf(mutated, 'iova-allocator')).toBeUndefined();
  });

  it('one page added to a scatterlist request: the rebuilt request is larger, so its allocation diverges', () => {
    const text = traceText('strict-single');
    const sgOps = eventLines(text, 'map_sg');
    const op = sgOps[20];
    if (op === undefined) throw new Error('fixture too short');
    const ret = eventLines(text, 'alloc_iova_ret').find((l) => l.line > op.line);
    const map = eventLines(text, 'map').find((l) => l.line > op.line && l.text.endsWith('size=4096'));
    if (ret === undefined || map === undefined) throw new Error('fixture too short');
    const d = divergenceOf(
      replaceLine(text, map.line, map.text.replace(/size=4096$/, 'size=8192')),
      'dma-iommu',
    );
    // the kernel allocated for the recorded pages; the model for one page more
    expect(d?.line).toBe(ret.line);
    expect(d?.kind).toBe('alloc_iova');
  });

  it('one bounce slot moved by one slot: the swiotlb replay stops there', () => {
    const text = traceText('swiotlb');
    const target = eventLines(text, 'tbl_map_ret')[300];
    if (target === undefined) throw new Error('fixture too short');
    const tlb = argOf(target.text, 'tlb');
    const mutated = replaceLine(
      text,
      target.line,
      target.text.replace(/tlb=0x[0-9a-f]+/, `tlb=0x${(tlb + 2048).toString(16)}`),
    );
    const d = divergenceOf(mutated, 'swiotlb');
    expect(d?.line).toBe(target.line);
    expect(d?.kind).toBe('tbl_map_ret');
  });

  it('lazy: one free taken out of a timer batch is a divergence at that batch', () => {
    const text = traceText('lazy');
    const timeouts = eventLines(text, 'fq_timeout');
    const t = timeouts[3];
    if (t === undefined) throw new Error('fixture too short');
    const freeAfter = eventLines(text, 'free_iova').find((f) => f.line === t.line + 1);
    if (freeAfter === undefined) throw new Error('the batch does not start with a free');
    const d = divergenceOf(removeLine(text, freeAfter.line), 'dma-iommu');
    // the model freed the range at this expiry; the mutated kernel trace did not
    expect(d?.kind).toBe('free_iova');
    expect(d?.line).toBe(t.line + 1);
    expect(d?.model).toBe(
      freeAfter.text.replace(/.*pfn=(0x[0-9a-f]+) size=(\d+)$/, 'free_iova_fast(pfn $1, size $2)'),
    );
  });

  it('lazy: a kernel timer expiry before the model timer is due is a divergence (the kernel never fires early)', () => {
    const text = traceText('lazy');
    const first = eventLines(text, 'fq_timeout')[0];
    const firstUnmap = [...eventLines(text, 'unmap_page'), ...eventLines(text, 'unmap_sg')].sort(
      (a, b) => a.line - b.line,
    )[0];
    if (first === undefined || firstUnmap === undefined) throw new Error('fixture too short');
    // 5 ms after the first queued IOVA: half the 10 ms IOVA_FQ_TIMEOUT
    const armedAt = Number(/\] (\d+\.\d+):/.exec(firstUnmap.text)?.[1]);
    const early = (armedAt + 0.005).toFixed(6);
    const d = divergenceOf(
      replaceLine(text, first.line, first.text.replace(/\] \d+\.\d+:/, `] ${early}:`)),
      'dma-iommu',
    );
    expect(d?.line).toBe(first.line);
    expect(d?.kind).toBe('fq_timeout');
    expect(d?.what).toContain('before the model timer was due');
  });
});
