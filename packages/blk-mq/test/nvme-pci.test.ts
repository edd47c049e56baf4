import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { getLe64 } from '@iovalink/iommu/internal';
import { allocScatteredPages } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { REQ_OP_WRITE } from '../src/bio.js';
import { blkMqFreeRequest } from '../src/blk-mq.js';
import { BLK_STS_OK } from '../src/blk-status.js';
import { blkMqRqToPdu } from '../src/blkdev.js';
import { NVME_CMD_SGL_METABUF, NVME_SGL_FMT_DATA_DESC, NVME_SGL_FMT_LAST_SEG_DESC } from '../src/nvme.js';
import {
  type NvmeIod,
  type NvmeOptions,
  nvmeMapData,
  nvmeRemove,
  nvmeSetupCmd,
  nvmeUnmapData,
} from '../src/nvme-pci.js';
import { assertNoBlkLeaks, createNvmeRig, makeBio, makeRequest } from '../src/testing/index.js';
import { pattern, sameBytes } from './helpers.js';

type Kind = 'strict' | 'none';
type Bvecs = Array<[number, number, number]>;

interface Mapped {
  prp1: number;
  prp2: number;
  sgl: boolean;
  sglType: number;
  sglLength: number;
  /** Entries of each descriptor block, as 64-bit words (PRPs) or [addr, len] (SGL). */
  lists: number[][];
  /** What the controller reads through the data pointer. */
  bytes: Uint8Array;
  /** Bytes of descriptor lists the controller fetched to resolve the data pointer. */
  fetched: number;
  /** IOVA base of a coalesced mapping, granule-aligned (0 when direct). */
  base: number;
  iova: boolean;
}

/**
 * Builds a write request from a layout, maps it with the driver, captures the command and
 * descriptor lists and the bytes the controller would read, then unmaps and checks for leaks.
 */
function mapLayout(
  kind: Kind,
  mapping: 'iova' | 'sg',
  layout: (alloc: (order: number) => number, scattered: (n: number) => number[]) => Bvecs,
  nvme: NvmeOptions = {},
): Mapped {
  const r = createNvmeRig({ kind, nvme: { mapping, clampToOptMappingSize: false, ...nvme } });
  const m = r.machine;
  const bvecs = layout(
    (order) => m.pages.allocPages(order),
    (n) => allocScatteredPages(m, n),
  );
  const total = bvecs.reduce((a, [, l]) => a + l, 0);
  const data = pattern(total, 7);
  let off = 0;
  for (const [p, l, o] of bvecs) {
    m.phys.write(p + o, data.subarray(off, off + l));
    off += l;
  }
  const rq = makeRequest(r.nvme.queue, REQ_OP_WRITE, [makeBio(REQ_OP_WRITE, 0, bvecs)]);
  expect(nvmeSetupCmd(rq)).toBe(BLK_STS_OK);
  expect(nvmeMapData(rq)).toBe(BLK_STS_OK);
  const iod = blkMqRqToPdu<NvmeIod>(rq);
  const cmd = iod.cmd;
  const sgl = (cmd.flags & NVME_CMD_SGL_METABUF) !== 0;
  const lists: number[][] = [];
  for (let i = 0; i < iod.nrDescriptors; i++) {
    const v = iod.descriptors[i]!.view;
    const words: number[] = [];
    for (let o = 0; o + 8 <= v.byteLength; o += 8) words.push(getLe64(v, o));
    lists.push(words);
  }
  const ranges: number[] = [];
  const before = m.counters.dmaReadBytes;
  expect(r.nvme.hw.dataRanges(cmd, total, ranges)).toBe(0);
  const fetched = m.counters.dmaReadBytes - before;
  const bytes = new Uint8Array(total);
  off = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    expect(r.dev.engine.read(ranges[i]!, bytes.subarray(off, off + ranges[i + 1]!))).toBe(0);
    off += ranges[i + 1]!;
  }
  const out: Mapped = {
    prp1: cmd.prp1,
    prp2: cmd.prp2,
    sgl,
    sglType: cmd.sglType >> 4,
    sglLength: cmd.sglLength,
    lists,
    bytes,
    fetched,
    base: iod.dmaState.size !== 0 ? iod.dmaState.addr - (iod.dmaState.addr % 4096) : 0,
    iova: iod.dmaState.size !== 0,
  };
  expect(sameBytes(bytes, data)).toBe(true);
  nvmeUnmapData(rq);
  blkMqFreeRequest(rq);
  nvmeRemove(r.nvme);
  dmaDebugDeviceTeardown(r.dev);
  assertNoBlkLeaks(m);
  return out;
}

const pages = (ps: number[], len = 4096): Bvecs => ps.map((p) => [p, len, 0]);

describe('nvme_pci_setup_data_prp', () => {
  it('one page: PRP1 only', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (_a, s) => pages(s(1)));
      expect(r.prp2).toBe(0);
      expect(r.lists).toEqual([]);
    }
  });

  it('one page at an offset that crosses into a second page: PRP2 is the next page', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (a) => [[a(1), 4096, 512]]);
      expect(r.prp1 % 4096).toBe(512);
      expect(r.prp2).toBe(r.prp1 + 3584);
    }
  });

  it('two scattered pages: coalesced behind the IOMMU, PRP2 points at data', () => {
    const r = mapLayout('strict', 'iova', (_a, s) => pages(s(2)));
    expect(r.iova).toBe(true);
    expect([r.prp1, r.prp2]).toEqual([r.base, r.base + 4096]);
    const d = mapLayout('none', 'iova', (_a, s) => pages(s(2)));
    expect(d.iova).toBe(false);
    expect(d.prp2 % 4096).toBe(0);
    expect(d.prp2).not.toBe(d.prp1 + 4096);
  });

  it('three pages: PRP2 points at a list of two entries (small pool)', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (_a, s) => pages(s(3)));
      expect(r.lists).toHaveLength(1);
      expect(r.lists[0]!.length).toBe(256 / 8);
      expect(r.lists[0]!.slice(0, 2)).toEqual([r.prp1 + 4096, r.prp1 + 8192]);
      expect(r.fetched).toBe(2 * 8); // the controller reads the two entries it uses, not the block
    }
    const d = mapLayout('none', 'iova', (_a, s) => pages(s(3)));
    expect(d.lists[0]!.slice(0, 2).every((e) => e % 4096 === 0)).toBe(true);
  });

  it('8 KiB starting 512 bytes into a page: PRP1 carries the offset, then a list of two', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (_a, s) => {
        const p = s(3);
        return [
          [p[0]!, 3584, 512],
          [p[1]!, 4096, 0],
          [p[2]!, 512, 0],
        ];
      });
      const base = r.prp1 - (r.prp1 % 4096);
      expect(r.prp1 % 4096).toBe(512);
      expect(r.lists[0]!.slice(0, 2)).toEqual([base + 4096, base + 8192]);
    }
  });

  it('128 KiB of scattered pages: one small-pool list of 31 entries', () => {
    const r = mapLayout('strict', 'iova', (_a, s) => pages(s(32)));
    expect(r.lists).toHaveLength(1);
    expect(r.lists[0]!.slice(0, 31)).toEqual(Array.from({ length: 31 }, (_, i) => r.base + (i + 1) * 4096));
    expect(r.fetched).toBe(31 * 8);
  });

  // drivers/nvme/host/pci.c: the list comes from the 256-byte small pool when the bytes after PRP1
  // need at most NVME_SMALL_POOL_SIZE / 8 = 32 entries (DIV_ROUND_UP(length, 4 KiB) <= 32), else
  // from the 4 KiB page pool. A block's entry count (its bytes / 8) shows which pool served it.
  it('33 pages: the 32 entries after PRP1 exactly fill a small-pool block (the boundary is inclusive)', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (a) => [[a(6), 33 * 4096, 0]]);
      expect(r.lists).toHaveLength(1);
      expect(r.lists[0]!.length).toBe(256 / 8);
      expect(r.lists[0]).toEqual(Array.from({ length: 32 }, (_, i) => r.prp1 + (i + 1) * 4096));
    }
  });

  it('34 pages, or 33 pages starting mid-page: 33 entries after PRP1 need a page from the large pool', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout('strict', mapping, (a) => [[a(6), 34 * 4096, 0]]);
      expect(r.lists).toHaveLength(1);
      expect(r.lists[0]!.length).toBe(4096 / 8);
      expect(r.lists[0]!.slice(0, 33)).toEqual(Array.from({ length: 33 }, (_, i) => r.prp1 + (i + 1) * 4096));
      expect(r.fetched).toBe(33 * 8); // 33 of the page's 512 slots
      // PRP1 covers 3584 bytes, so 33 * 4096 bytes leave 32 pages and 512 bytes: 33 entries
      const o = mapLayout('strict', mapping, (a) => [[a(6), 33 * 4096, 512]]);
      expect(o.lists[0]!.length).toBe(4096 / 8);
    }
  });

  it('4 MiB (1024 pages): the first list page holds 511 entries and chains to the second', () => {
    for (const kind of ['strict', 'none'] as const) {
      for (const mapping of ['iova', 'sg'] as const) {
        const r = mapLayout(kind, mapping, (a) => [[a(10), 4 << 20, 0]]);
        expect(r.lists).toHaveLength(2);
        expect(r.lists[0]!.length).toBe(512);
        expect(r.lists[0]!.slice(0, 511)).toEqual(
          Array.from({ length: 511 }, (_, i) => r.prp1 + (i + 1) * 4096),
        );
        // the last slot of page 1 is the chain pointer; page 2 continues with entry 512
        expect(r.lists[0]![511]! % 4096).toBe(0);
        expect(r.lists[1]![0]).toBe(r.prp1 + 512 * 4096);
        expect(r.lists[1]![511]).toBe(r.prp1 + 1023 * 4096);
        // 511 entries and the chain pointer, then the 512 entries left
        expect(r.fetched).toBe(1024 * 8);
      }
    }
  });
});

describe('nvme_pci_setup_data_sgl', () => {
  const sglNvme: NvmeOptions = { sglSupported: true };

  it('uses one in-command data descriptor for a coalesced request at or above the threshold', () => {
    const r = mapLayout('strict', 'iova', (_a, s) => pages(s(8)), sglNvme);
    expect(r.sgl).toBe(true);
    expect([r.sglType, r.sglLength]).toEqual([NVME_SGL_FMT_DATA_DESC, 32768]);
  });

  it('keeps PRPs below the threshold (direct 4 KiB segments average 4 KiB)', () => {
    const r = mapLayout('none', 'iova', (_a, s) => pages(s(8)), sglNvme);
    expect(r.sgl).toBe(false);
  });

  it('builds a descriptor list when large direct segments average above the threshold', () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = mapLayout(
        'none',
        mapping,
        (a) => {
          const x = a(4);
          a(0);
          const y = a(4);
          return [
            [x, 65536, 0],
            [y, 65536, 0],
          ];
        },
        sglNvme,
      );
      expect(r.sgl).toBe(true);
      expect([r.sglType, r.sglLength]).toEqual([NVME_SGL_FMT_LAST_SEG_DESC, 32]);
    }
  });

  it('never uses SGLs with sgl_threshold 0 or without controller support', () => {
    expect(
      mapLayout('strict', 'iova', (_a, s) => pages(s(16)), { sglSupported: true, sglThreshold: 0 }).sgl,
    ).toBe(false);
    expect(mapLayout('strict', 'iova', (_a, s) => pages(s(16))).sgl).toBe(false);
  });

  it('before v6.17 the threshold counts DMA segments after dma_map_sgtable', () => {
    // map_sg merges the scattered pages into one IOVA segment: average 64 KiB -> one descriptor
    const r = mapLayout('strict', 'sg', (_a, s) => pages(s(16)), sglNvme);
    expect(r.sgl).toBe(true);
    expect(r.sglType).toBe(NVME_SGL_FMT_DATA_DESC);
  });
});

describe('nvme_map_data', () => {
  it('moves identical bytes through both paths for every layout and device kind', () => {
    const layouts: Array<(a: (o: number) => number, s: (n: number) => number[]) => Bvecs> = [
      (_a, s) => pages(s(1)),
      (_a, s) => pages(s(5)),
      (_a, s) => {
        const p = s(3);
        return [
          [p[0]!, 3072, 1024],
          [p[1]!, 4096, 0],
          [p[2]!, 1024, 0],
        ];
      },
      (a) => [[a(4), 65536, 0]],
    ];
    for (const kind of ['strict', 'none'] as const) {
      for (const layout of layouts) {
        const a = mapLayout(kind, 'iova', layout);
        const b = mapLayout(kind, 'sg', layout);
        expect(sameBytes(a.bytes, b.bytes)).toBe(true);
      }
    }
  });
});

describe('nvme_probe', () => {
  it('caps max_hw_sectors at dma_opt_mapping_size behind a DMA IOMMU domain (§5.8)', () => {
    const cases: Array<[Kind | 'identity', 'iova' | 'sg', number, number]> = [
      ['strict', 'iova', 256, 33],
      ['none', 'iova', 16384, 256],
      ['strict', 'sg', 256, 33],
      ['none', 'sg', 16384, 128],
    ];
    for (const [kind, mapping, sectors, segs] of cases) {
      const r = createNvmeRig({ kind, nvme: { mapping } });
      const lim = r.nvme.queue.limits;
      expect([
        lim.maxHwSectors,
        lim.maxSegments,
        lim.virtBoundaryMask,
        lim.maxSegmentSize,
        lim.dmaAlignment,
      ]).toEqual([sectors, segs, 4095, 0xffffffff, 3]);
      r.teardown();
    }
  });

  it('refuses to drop the virt boundary on a controller without SGLs', () => {
    expect(() => createNvmeRig({ nvme: { virtBoundary: false } })).toThrow(/virt boundary/);
  });
});

describe('nvme_pci_use_sgls without a virt boundary (v6.19 model)', () => {
  it('forces SGLs for a request whose gaps PRPs cannot express, and maps it segment by segment', () => {
    const r = mapLayout(
      'strict',
      'iova',
      (_a, s) => {
        const p = s(2);
        return [
          [p[0]!, 2048, 0],
          [p[1]!, 4096, 0],
        ];
      },
      { sglSupported: true, virtBoundary: false },
    );
    expect(r.iova).toBe(false);
    expect(r.sgl).toBe(true);
    expect([r.sglType, r.sglLength]).toEqual([NVME_SGL_FMT_LAST_SEG_DESC, 32]);
  });
});
