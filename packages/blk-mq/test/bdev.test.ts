import { sgArray, sgInitTable } from '@iovalink/dma-api';
import { Machine, PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { allocIoPages, type IoBuffer } from '../src/bdev.js';
import { REQ_OP_WRITE } from '../src/bio.js';
import { blkRqMapSg } from '../src/blk-mq-dma.js';
import { BLK_STS_OK } from '../src/blk-status.js';
import { allocIoBuffer } from '../src/nvme-system.js';
import { createNvmeRig, makeBio, makeRequest } from '../src/testing/index.js';
import { pattern, sameBytes } from './helpers.js';

/** Page-aligned physical address of each page the buffer touches, in buffer order. */
function pagesOf(buf: IoBuffer): number[] {
  return buf.segments.map((s) => s.phys - (s.phys % PAGE_SIZE));
}

describe('allocIoPages: scattered', () => {
  const sizes = [2 * PAGE_SIZE, 5 * PAGE_SIZE, 32 * PAGE_SIZE, 64 * PAGE_SIZE, 256 * PAGE_SIZE];
  const seeds = [1, 2, 7, 0x5eed];

  for (const seed of seeds) {
    for (const bytes of sizes) {
      for (const offset of [0, 512]) {
        it(`${bytes / PAGE_SIZE} pages, offset ${offset}, seed ${seed}: no two pages adjacent`, () => {
          const m = new Machine({ memSize: 64 << 20, seed });
          // an earlier, freed buffer leaves holes in the free lists, as a running system has
          const earlier = allocIoPages(m, 16 * PAGE_SIZE, 'scattered');
          const free0 = m.pages.nrFreePages;
          const io = allocIoPages(m, bytes, 'scattered', offset)!;
          for (const [p, o] of earlier!.allocs) m.pages.freePages(p, o);
          const pages = pagesOf(io.buf);
          const n = Math.ceil((bytes + offset) / PAGE_SIZE);
          expect(pages.length).toBe(n);
          expect(io.buf.length).toBe(bytes);
          expect(io.buf.segments[0]!.phys % PAGE_SIZE).toBe(offset);
          // no pair of the buffer's pages is physically adjacent, in either order
          const sorted = [...pages].sort((a, b) => a - b);
          for (let i = 1; i < n; i++) expect(sorted[i]! - sorted[i - 1]!).toBeGreaterThan(PAGE_SIZE);
          // and the buffer does not walk memory upwards either (ascending order has odds 1/n!)
          if (n >= 5) expect(pages).not.toEqual(sorted);
          // the allocator holds exactly the buffer's pages: the holes went back
          expect(free0 - m.pages.nrFreePages).toBe(n - 16);
          for (const [p, o] of io.allocs) expect(m.pages.orderOf(p)).toBe(o);
        });
      }
    }
  }

  it('frees back to the boot state of the buddy allocator', () => {
    const m = new Machine({ memSize: 64 << 20 });
    const boot = m.pages.buddyinfo();
    const bufs = [1, 3, 17, 64].map((n) => allocIoPages(m, n * PAGE_SIZE, 'scattered')!);
    for (const io of bufs) for (const [p, o] of io.allocs) m.pages.freePages(p, o);
    expect(m.pages.buddyinfo()).toEqual(boot);
  });

  it('returns null with nothing held when memory runs out part way', () => {
    const m = new Machine({ memSize: 8 << 20 });
    const free0 = m.pages.nrFreePages;
    // needs twice its pages while choosing: more than the machine has
    expect(allocIoPages(m, Math.ceil(free0 / 2 + 1) * PAGE_SIZE, 'scattered')).toBeNull();
    expect(m.pages.nrFreePages).toBe(free0);
    m.faults.failNth('page_alloc', 7);
    expect(allocIoPages(m, 8 * PAGE_SIZE, 'scattered')).toBeNull();
    expect(m.pages.nrFreePages).toBe(free0);
  });
});

describe('allocIoPages through blk_rq_map_sg', () => {
  /** Scatterlist entries `blk_rq_map_sg` makes of a write of the buffer, one bvec a page as submitted. */
  function sgEntries(layout: 'contiguous' | 'scattered', bytes: number): number {
    const r = createNvmeRig({ kind: 'strict' });
    const io = allocIoPages(r.machine, bytes, layout)!;
    const bvecs: Array<[number, number, number]> = [];
    for (const s of io.buf.segments) {
      for (let off = 0; off < s.len; off += PAGE_SIZE) bvecs.push([s.phys + off, PAGE_SIZE, 0]);
    }
    const rq = makeRequest(r.nvme.queue, REQ_OP_WRITE, [makeBio(REQ_OP_WRITE, 0, bvecs)]);
    const sgl = sgArray(bvecs.length);
    sgInitTable(sgl[0]!, bvecs.length);
    return blkRqMapSg(rq, sgl[0]!);
  }

  for (const pages of [2, 8, 32]) {
    it(`${pages} pages: scattered gives one entry a page, contiguous merges into one`, () => {
      expect(sgEntries('scattered', pages * PAGE_SIZE)).toBe(pages);
      // the NVMe queue's max_segment_size is UINT_MAX: nothing splits a contiguous buffer
      expect(sgEntries('contiguous', pages * PAGE_SIZE)).toBe(1);
    });
  }
});

describe('BlockDevice bios (kernel: __blkdev_direct_IO building bios from the buffer)', () => {
  // A contiguous run becomes one multi-page bvec; scattered pages one bvec each, BIO_MAX_VECS
  // (256) to a bio. The data must arrive either way.
  for (const layout of ['contiguous', 'scattered'] as const) {
    for (const offset of [0, 512]) {
      for (const pages of [1, 5, 300]) {
        it(`${layout}, ${pages} pages at offset ${offset}: the data round-trips, bios as the kernel builds them`, async () => {
          const r = createNvmeRig({ kind: 'strict' });
          const bytes = pages * PAGE_SIZE;
          const src = allocIoBuffer(r.machine, bytes, layout, offset);
          const dst = allocIoBuffer(r.machine, bytes, layout === 'contiguous' ? 'scattered' : 'contiguous');
          const data = pattern(bytes, pages + offset);
          src.buf.write(r.machine, data);
          const touched = Math.ceil((bytes + offset) / PAGE_SIZE);
          const bios0 = r.bdev.stats.bios;
          expect((await r.bdev.write(8, src.buf)).status).toBe(BLK_STS_OK);
          expect(r.bdev.stats.bios - bios0).toBe(layout === 'contiguous' ? 1 : Math.ceil(touched / 256));
          expect((await r.bdev.read(8, dst.buf)).status).toBe(BLK_STS_OK);
          expect(sameBytes(dst.buf.read(r.machine), data)).toBe(true);
          src.free();
          dst.free();
          r.teardown();
        });
      }
    }
  }
});
