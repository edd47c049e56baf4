/**
 * Where Linux 6.1 differs from the newer kernel the model follows, the replay switches on the
 * recorded kernel version; these tests show each difference is real (replaying with the other
 * version's rule diverges) and where it shows.
 */
import { kernelDiff, parseKernelTrace, replayDmaIommu, swiotlbRulesFor } from 'iovalink';
import { describe, expect, it } from 'vitest';
import { argOf, eventLines, traceText } from './fixtures.js';

/** The same trace claiming another kernel release. */
function asRelease(text: string, release: string): string {
  return text.replace(/^# kernel-release .*$/m, `# kernel-release ${release}`);
}

describe('swiotlb slot search: 6.1 rules vs v6.9+', () => {
  it('picks the rules by kernel version', () => {
    expect(swiotlbRulesFor([6, 1])).toBe('v6.1');
    expect(swiotlbRulesFor([5, 15])).toBe('v6.1');
    expect(swiotlbRulesFor([6, 9])).toBe('current');
    expect(swiotlbRulesFor([6, 17])).toBe('current');
  });

  it('the 6.1 trace diverges under the v6.9+ rules at the first page-sized bounce whose 2-slot and 4-slot starts differ', () => {
    const text = traceText('swiotlb');
    const report = kernelDiff(asRelease(text, '6.17.0-test'));
    const d = report.replays.find((r) => r.replay === 'swiotlb')?.divergence;
    expect(d?.kind).toBe('tbl_map_ret');
    // derive the expected event from the rules: NVMe's min_align_mask 0xfff, page-aligned buffers;
    // 6.1 starts page-or-larger searches on a 4-slot boundary, v6.9+ on a 2-slot one. The first
    // such bounce placed on a slot that is 0 mod 4 right after an allocation that ended 2 mod 4
    // is where the two differ.
    const maps = eventLines(text, 'tbl_map');
    const rets = eventLines(text, 'tbl_map_ret');
    const pool = argOf(maps[0]?.text ?? '', 'pool');
    let areaIndex = 0;
    let expected: number | undefined;
    for (let i = 0; i < rets.length && expected === undefined; i++) {
      const call = maps[i]?.text ?? '';
      const ret = rets[i] as { line: number; text: string };
      const slot = (argOf(ret.text, 'tlb') - pool) / 2048;
      const size = argOf(call, 'mapsize');
      const pageAligned = (argOf(call, 'orig') & 0xfff) === 0;
      if (size >= 4096 && pageAligned && areaIndex % 4 === 2 && slot === areaIndex + 2) expected = ret.line;
      areaIndex = Math.floor(slot) + Math.ceil((size + (argOf(call, 'orig') & 0x7ff)) / 2048);
    }
    expect(d?.line).toBe(expected);
  });
});

/** A synthetic strict trace whose whole 32-bit IOVA space is reserved: every SAC attempt fails. */
function sacTrace(release: string): string {
  const lines = [
    '# mode strict',
    `# kernel-release ${release}`,
    '# group 1 device 0000:00:01.0',
    '# reserved 1 0x0000000000001000 0x00000000ffffffff reserved',
    '# dmesg [    0.1] DMAR: Host address width 39',
    '# dmesg [    4.5] nvme nvme0: pci function 0000:00:01.0',
  ];
  let t = 1_000_000;
  const ev = (s: string): void => {
    t += 1;
    lines.push(`[000] ${Math.floor(t / 1e6)}.${String(t % 1e6).padStart(6, '0')}: ${s}`);
  };
  for (let i = 0; i < 2; i++) {
    ev('map_page: off=0 size=4096 dir=1');
    ev('alloc_iova: dom=0xffff0001 size=1 limit=0xfffff flush=0');
    ev('alloc_iova_ret: (iommu_dma_alloc_iova+0x1/0x2 <- alloc_iova_fast) pfn=0x0');
    ev('alloc_iova: dom=0xffff0001 size=1 limit=0x7ffffff flush=1');
    ev('alloc_iova_ret: (iommu_dma_alloc_iova+0x3/0x4 <- alloc_iova_fast) pfn=0x7ffffff');
    ev('map: iova=0x0000007ffffff000 - 0x0000008000000000 paddr=0x0000000000200000 size=4096');
    ev('unmap_page: addr=0x7ffffff000 size=4096 dir=1');
    ev('unmap: iova=0x0000007ffffff000 - 0x0000008000000000 size=4096 unmapped_size=4096');
    ev('free_iova: dom=0xffff0001 pfn=0x7ffffff size=1');
  }
  return `${lines.join('\n')}\n`;
}

describe('32-bit-first IOVA allocation: 6.1 tries on every call, later kernels stop after a failure', () => {
  it('6.1: both requests try below 4 GiB first, fail, then use the 39-bit aperture; the model agrees', () => {
    const r = replayDmaIommu(parseKernelTrace(sacTrace('6.1.0-test')));
    expect(r.divergence).toBeUndefined();
    expect(r.compared).toEqual({ alloc_iova: 4, map: 2, unmap: 2, free_iova: 2 });
  });

  it('the same trace claimed by a 6.5 kernel diverges at the second request: the model no longer tries 32 bits', () => {
    const text = sacTrace('6.5.0-test');
    const r = replayDmaIommu(parseKernelTrace(text));
    const secondSac = eventLines(text, 'alloc_iova_ret')[2];
    expect(r.divergence?.line).toBe(secondSac?.line);
    expect(r.divergence?.kernel).toContain('limit 0xfffff');
    expect(r.divergence?.model).toContain('limit 0x7ffffff');
  });
});
