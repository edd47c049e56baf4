import {
  type Device,
  DMA_TO_DEVICE,
  DmaIovaState,
  dmaDebugDeviceTeardown,
  dmaIovaSize,
  dmaUnmapPhys,
  dmaUseIova,
  sgArray,
  sgInitTable,
} from '@iovalink/dma-api';
import { createDmaRig, createKindDevice } from '@iovalink/dma-api/testing';
import { allocScatteredPages, createTestMachine } from '@iovalink/iommu/testing';
import { afterEach, describe, expect, it } from 'vitest';
import { REQ_OP_READ, REQ_OP_WRITE } from '../src/bio.js';
import {
  BlkDmaIter,
  blkCanDmaMapIova,
  blkRqDmaMapCoalesce,
  blkRqDmaMapIterStart,
  blkRqDmaUnmap,
  blkRqMapSg,
} from '../src/blk-mq-dma.js';
import { BLK_STS_IOERR, BLK_STS_OK, BLK_STS_RESOURCE } from '../src/blk-status.js';
import { blkRqNrPhysSegments, type Request, type RequestQueue } from '../src/blkdev.js';
import { makeBio, makeRequest } from '../src/testing/index.js';
import { alignedBlock, dmaMapAll, makeQueue, pattern } from './helpers.js';

/** Maps a request into a fresh table and returns the entries as [page, offset, length]. */
function mapSg(rq: Parameters<typeof blkRqMapSg>[0]): Array<[number, number, number]> {
  const n = blkRqNrPhysSegments(rq);
  const sgl = sgArray(n);
  sgInitTable(sgl[0]!, n);
  const count = blkRqMapSg(rq, sgl[0]!);
  expect(count).toBeLessThanOrEqual(n);
  expect(sgl[count - 1]!.linkFlags & 2).toBe(2); // end mark on the last entry
  return sgl.slice(0, count).map((s) => [s.page, s.offset, s.length]);
}

describe('blk_rq_map_sg', () => {
  it('merges physically contiguous bvecs into one entry', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m);
    const b = alignedBlock(m, 2);
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [b, 4096, 0],
        [b + 4096, 4096, 0],
        [b + 8192, 4096, 0],
      ]),
    ]);
    expect(rq.nrPhysSegments).toBe(3);
    expect(mapSg(rq)).toEqual([[b, 0, 12288]]);
  });

  it('keeps non-contiguous bvecs apart, with their in-page offsets', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m);
    const [p, r] = allocScatteredPages(m, 2) as [number, number];
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [p, 3584, 512],
        [r, 1024, 0],
      ]),
    ]);
    expect(mapSg(rq)).toEqual([
      [p, 512, 3584],
      [r, 0, 1024],
    ]);
  });

  it('cuts at the segment boundary', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m, { segBoundaryMask: 0xffff });
    const b = alignedBlock(m, 5); // 128 KiB, 128 KiB-aligned
    const x = b + 0xe000;
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [x, 4096, 0],
        [x + 4096, 4096, 0],
        [x + 8192, 4096, 0],
      ]),
    ]);
    expect(mapSg(rq)).toEqual([
      [x, 0, 8192],
      [x + 8192, 0, 4096],
    ]);
  });

  it('cuts at the maximum segment size', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m, { maxSegmentSize: 8192 });
    const b = alignedBlock(m, 2);
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [b, 4096, 0],
        [b + 4096, 4096, 0],
        [b + 8192, 4096, 0],
        [b + 12288, 4096, 0],
      ]),
    ]);
    expect(mapSg(rq)).toEqual([
      [b, 0, 8192],
      [b + 8192, 0, 8192],
    ]);
  });

  it('merges across bios of a multi-bio request', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m);
    const b = alignedBlock(m, 3);
    const far = b + 24576; // not adjacent to b + 16 KiB
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [[b, 8192, 0]]),
      makeBio(REQ_OP_WRITE, 16, [[b + 8192, 8192, 0]]),
      makeBio(REQ_OP_WRITE, 32, [[far, 4096, 0]]),
    ]);
    expect(rq.nrPhysSegments).toBe(3);
    expect(mapSg(rq)).toEqual([
      [b, 0, 16384],
      [far, 0, 4096],
    ]);
  });

  it('splits a single large bvec by the segment size, from an unaligned start', () => {
    const m = createTestMachine();
    const { q } = makeQueue(m, { maxHwSectors: 1024 });
    const b = alignedBlock(m, 6); // 256 KiB
    const rq = makeRequest(q, REQ_OP_READ, [makeBio(REQ_OP_READ, 0, [[b, 3 * 65536, 512]])]);
    expect(rq.nrPhysSegments).toBe(3);
    expect(mapSg(rq)).toEqual([
      [b, 512, 65536],
      [b + 65536, 512, 65536],
      [b + 131072, 512, 65536],
    ]);
  });
});

describe('blk_rq_dma_map_iter_start', () => {
  const teardown: Array<() => void> = [];
  afterEach(() => {
    while (teardown.length > 0) teardown.pop()!();
  });

  function setup(kind: 'strict' | 'lazy' | 'identity' | 'none' | 'untrusted', limits = {}, rigOpts = {}) {
    const rig = createDmaRig(rigOpts);
    const dev = createKindDevice(rig, kind);
    const { q } = makeQueue(rig.machine, { maxHwSectors: 2048, ...limits });
    teardown.push(() => dmaDebugDeviceTeardown(dev));
    return { rig, m: rig.machine, dev, q };
  }

  /** A write of whole pages, one bvec each, at sector 0. */
  function pagesRequest(q: RequestQueue, pages: readonly number[]): Request {
    return makeRequest(q, REQ_OP_WRITE, [
      makeBio(
        REQ_OP_WRITE,
        0,
        pages.map((p) => [p, 4096, 0] as [number, number, number]),
      ),
    ]);
  }

  /** Only the first step of the iterator, on fresh state; returns what it returned. */
  function mapStart(rq: Request, dev: Device) {
    const state = new DmaIovaState();
    const iter = new BlkDmaIter();
    const ok = blkRqDmaMapIterStart(rq, dev, state, iter);
    return { ok, state, iter };
  }

  function unmapAll(rq: Request, dev: Device, r: ReturnType<typeof dmaMapAll>) {
    const total = r.segs.reduce((a, [, l]) => a + l, 0);
    if (!blkRqDmaUnmap(rq, dev, r.state, total))
      for (const [a, l] of r.segs) dmaUnmapPhys(dev, a, l, DMA_TO_DEVICE);
  }

  function deviceBytes(dev: Device, segs: Array<[number, number]>): Uint8Array {
    const total = segs.reduce((a, [, l]) => a + l, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const [a, l] of segs) {
      expect(dev.engine.read(a, out.subarray(off, off + l))).toBe(0);
      off += l;
    }
    return out;
  }

  it('maps a request with aligned gaps as one IOVA range and one DMA segment', () => {
    const { m, dev, q } = setup('strict', { virtBoundaryMask: 4095 });
    const pages = allocScatteredPages(m, 4);
    const data = pattern(4 * 4096 - 512, 1);
    m.phys.write(pages[0]! + 512, data.subarray(0, 3584));
    for (let i = 1; i < 4; i++)
      m.phys.write(pages[i]!, data.subarray(3584 + (i - 1) * 4096, 3584 + i * 4096));
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [pages[0]!, 3584, 512],
        ...pages.slice(1).map((p) => [p, 4096, 0] as [number, number, number]),
      ]),
    ]);
    const before = m.counters.snapshot();
    const r = dmaMapAll(rq, dev);
    expect(r.segs).toHaveLength(1);
    expect(blkRqDmaMapCoalesce(r.state)).toBe(true);
    expect(r.segs[0]).toEqual([r.state.addr, dmaIovaSize(r.state)]);
    expect(r.state.addr % 4096).toBe(512);
    expect(m.counters.iovaAllocs - before.events.iovaAllocs).toBe(1);
    expect(m.counters.meta.get('scatterlist')?.allocs ?? 0).toBe(0);
    expect(deviceBytes(dev, r.segs)).toEqual(data);
    unmapAll(rq, dev, r);
  });

  it('falls back to one direct mapping per segment on an unaligned interior gap', () => {
    const { m, dev, q } = setup('strict');
    const pages = allocScatteredPages(m, 2);
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [pages[0]!, 2048, 0],
        [pages[1]!, 4096, 0],
      ]),
    ]);
    expect(blkCanDmaMapIova(rq, dev)).toBe(false);
    const r = dmaMapAll(rq, dev);
    expect(r.segs.map(([, l]) => l)).toEqual([2048, 4096]);
    expect(dmaUseIova(r.state)).toBe(false);
    expect(blkRqDmaUnmap(rq, dev, r.state, 6144)).toBe(false); // the driver must unmap each
    for (const [a, l] of r.segs) dmaUnmapPhys(dev, a, l, DMA_TO_DEVICE);
  });

  it.each(['none', 'identity'] as const)(
    'maps segment by segment without a DMA IOMMU domain (%s)',
    (kind) => {
      const { m, dev, q } = setup(kind, { virtBoundaryMask: 4095 });
      const pages = allocScatteredPages(m, 3);
      const data = pattern(3 * 4096, 2);
      pages.forEach((p, i) => {
        m.phys.write(p, data.subarray(i * 4096, (i + 1) * 4096));
      });
      const rq = pagesRequest(q, pages);
      const r = dmaMapAll(rq, dev);
      expect(r.segs).toEqual(pages.map((p) => [p, 4096]));
      expect(deviceBytes(dev, r.segs)).toEqual(data);
      unmapAll(rq, dev, r);
    },
  );

  it('falls back to direct mappings when the IOVA allocation fails', () => {
    const { m, dev, q } = setup('strict', { virtBoundaryMask: 4095 });
    const pages = allocScatteredPages(m, 4);
    const rq = pagesRequest(q, pages);
    // dma_iova_try_alloc makes three tree attempts (below 4 GiB, full mask, again after flushing
    // the per-CPU caches); fail exactly those, so the per-segment mappings that follow succeed
    m.faults.failNth('iova_alloc', 1, 3);
    const mapsBefore = m.counters.dmaMapCalls;
    const r = dmaMapAll(rq, dev);
    expect(r.iter.status).toBe(BLK_STS_OK);
    expect(dmaUseIova(r.state)).toBe(false);
    expect(r.segs).toHaveLength(4);
    expect(m.counters.dmaMapCalls - mapsBefore).toBe(4);
    unmapAll(rq, dev, r);
  });

  it('fails with BLK_STS_RESOURCE when every IOVA allocation fails (the fallback needs IOVA too)', () => {
    const { m, dev, q } = setup('strict', { virtBoundaryMask: 4095 });
    const pages = allocScatteredPages(m, 4);
    const rq = pagesRequest(q, pages);
    m.faults.failAlways('iova_alloc');
    const { ok, state, iter } = mapStart(rq, dev);
    expect(ok).toBe(false);
    expect(iter.status).toBe(BLK_STS_RESOURCE);
    expect(dmaUseIova(state)).toBe(false);
    m.faults.clear();
    // once IOVA space is back, the same request maps as one range
    const r = dmaMapAll(rq, dev);
    expect(r.segs).toHaveLength(1);
    unmapAll(rq, dev, r);
  });

  it('fails with BLK_STS_RESOURCE when a link cannot get a page-table page, leaving nothing mapped', () => {
    const { m, dev, q } = setup('strict', { virtBoundaryMask: 4095 });
    const pages = allocScatteredPages(m, 2);
    const rq = pagesRequest(q, pages);
    m.faults.failAlways('pgtable_page');
    const { ok, iter } = mapStart(rq, dev);
    expect(ok).toBe(false);
    m.faults.clear();
    expect(iter.status).toBe(BLK_STS_RESOURCE);
    expect(m.counters.iovaFrees).toBe(m.counters.iovaAllocs);
  });

  it('fails the request when a later link fails, instead of reporting a half-mapped range (Dec 2025 fix)', () => {
    // one bvec starting 512 bytes into a page, cut at the 64 KiB segment size: the second
    // segment starts mid-granule, so its link returns -EIO after the first succeeded
    const { m, dev, q } = setup('strict', { maxSegmentSize: 65536 });
    const b = alignedBlock(m, 6);
    const rq = makeRequest(q, REQ_OP_WRITE, [makeBio(REQ_OP_WRITE, 0, [[b, 2 * 65536, 512]])]);
    expect(blkCanDmaMapIova(rq, dev)).toBe(true);
    const state = new DmaIovaState();
    const iter = new BlkDmaIter();
    const linksBefore = m.counters.dmaLinks;
    expect(blkRqDmaMapIterStart(rq, dev, state, iter)).toBe(false);
    expect(iter.status).toBe(BLK_STS_IOERR);
    expect(m.counters.dmaLinks - linksBefore).toBe(1);
    expect(m.counters.iovaFrees).toBe(m.counters.iovaAllocs);
  });

  it('fails with the sync error and unlinks when iotlb_sync_map fails', () => {
    const { m, dev, q } = setup('strict', { virtBoundaryMask: 4095 }, { iommu: { cachesNonPresent: true } });
    const pages = allocScatteredPages(m, 2);
    const rq = pagesRequest(q, pages);
    m.faults.failNth('iotlb_sync_map', 1);
    const { ok, iter } = mapStart(rq, dev);
    expect(ok).toBe(false);
    expect(iter.status).toBe(BLK_STS_RESOURCE);
  });

  it('reports BLK_STS_RESOURCE when a direct mapping fails', () => {
    const { m, dev, q } = setup('strict');
    const pages = allocScatteredPages(m, 2);
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [pages[0]!, 2048, 0],
        [pages[1]!, 4096, 0],
      ]),
    ]);
    m.faults.failAlways('iova_alloc');
    const { ok, iter } = mapStart(rq, dev);
    expect(ok).toBe(false);
    m.faults.clear();
    expect(iter.status).toBe(BLK_STS_RESOURCE);
  });

  it('bounces partial head and tail granules for an untrusted device and still yields one segment', () => {
    const { m, dev, q } = setup('untrusted', { virtBoundaryMask: 4095 });
    const pages = allocScatteredPages(m, 2);
    const data = pattern(3584 + 1024, 3);
    m.phys.write(pages[0]! + 512, data.subarray(0, 3584));
    m.phys.write(pages[1]!, data.subarray(3584));
    const rq = makeRequest(q, REQ_OP_WRITE, [
      makeBio(REQ_OP_WRITE, 0, [
        [pages[0]!, 3584, 512],
        [pages[1]!, 1024, 0],
      ]),
    ]);
    const r = dmaMapAll(rq, dev);
    expect(r.segs).toHaveLength(1);
    expect(deviceBytes(dev, r.segs)).toEqual(data);
    expect(m.counters.bounceBytes).toBeGreaterThan(0);
    unmapAll(rq, dev, r);
  });
});
