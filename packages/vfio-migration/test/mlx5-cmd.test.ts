// The mlx5 migration data buffers in both kernel shapes, and the DMA logging tracker
// (drivers/vfio/pci/mlx5/cmd.c).
import {
  DMA_FROM_DEVICE,
  DMA_NONE,
  DMA_TO_DEVICE,
  dmaUseIova,
  SG_ENTRY_SIZE,
  sgIter,
} from '@iovalink/dma-api';
import { DEVICE_KINDS } from '@iovalink/dma-api/testing';
import { Errno, iommuIovaToPhys, PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { VfioError } from '../src/errors.js';
import { iovaBitmapBytes, iovaBitmapTest } from '../src/iova-bitmap.js';
import {
  MLX5_CREATE_MKEY_IN_SIZE,
  MLX5_META_BULK_PAGE_LIST,
  MLX5_META_DATA_BUFFER,
  MLX5_META_MKEY_IN,
  MLX5_META_PAGE_LIST,
  MLX5_VHCA_DATA_BUFFER_SIZE_IOVA,
  MLX5_VHCA_DATA_BUFFER_SIZE_SG,
  Mlx5VfMigrationFile,
  type Mlx5VhcaDataBuffer,
  type Mlx5vfMapping,
  mlx5vfAllocDataBuffer,
  mlx5vfBufferDmaed,
  mlx5vfFreeDataBuffer,
  mlx5vfGetDataBuffer,
  mlx5vfGetMigrationPage,
  mlx5vfPutDataBuffer,
  mttGet,
  registerDmaPages,
} from '../src/mlx5-cmd.js';
import { MLX5VF_SAVE_FOPS } from '../src/mlx5-main.js';
import { createMigrationRig, migrationMetaLiveBytes, teardownMigrationRig } from '../src/testing/index.js';
import { vfioIoctlDeviceFeature } from '../src/vfio-main.js';
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_SET,
} from '../src/vfio-uapi.js';

const MAPPINGS: readonly Mlx5vfMapping[] = ['sg', 'iova'];

function rigWith(
  mapping: Mlx5vfMapping,
  kind: 'strict' | 'lazy' | 'none' | 'untrusted' | 'identity' = 'strict',
  fragment = 64,
) {
  const m = createMigrationRig({
    mapping,
    kind,
    guestSize: 0,
    memorySize: 16 << 10,
    fragmentPages: fragment,
  });
  const migf = new Mlx5VfMigrationFile(m.source, 'r', MLX5VF_SAVE_FOPS);
  return { m, migf };
}

function allocOk(migf: Mlx5VfMigrationFile, npages: number, dir: 0 | 1 | 2 | 3): Mlx5VhcaDataBuffer {
  const b = mlx5vfAllocDataBuffer(migf, npages, dir);
  if (typeof b === 'number') throw new Error(`alloc failed ${b}`);
  return b;
}

describe('mlx5vf_alloc_data_buffer', () => {
  it.each(MAPPINGS)('%s: counts the kernel metadata and frees it all', (mapping) => {
    const { m, migf } = rigWith(mapping);
    const c = m.machine.counters;
    const freeBefore = m.machine.pages.nrFreePages;
    const n = 33;
    const buf = allocOk(migf, n, DMA_FROM_DEVICE);
    expect(buf.npages).toBe(n);
    const meta = c.snapshot().meta;
    const mkeyIn = MLX5_CREATE_MKEY_IN_SIZE + 8 * 34;
    expect(meta[MLX5_META_MKEY_IN]?.peakBytes).toBe(mkeyIn);
    if (mapping === 'iova') {
      // the command and its MTT stay for the buffer's life
      expect(meta[MLX5_META_MKEY_IN]?.liveBytes).toBe(mkeyIn);
      expect(meta[MLX5_META_DATA_BUFFER]?.liveBytes).toBe(MLX5_VHCA_DATA_BUFFER_SIZE_IOVA);
      expect(meta[MLX5_META_PAGE_LIST]?.liveBytes).toBe(8 * n);
      expect(meta.scatterlist?.liveBytes ?? 0).toBe(0);
    } else {
      expect(meta[MLX5_META_DATA_BUFFER]?.liveBytes).toBe(MLX5_VHCA_DATA_BUFFER_SIZE_SG);
      // v6.15 freed the command once the memory key existed
      expect(meta[MLX5_META_MKEY_IN]?.liveBytes).toBe(0);
      expect(meta[MLX5_META_PAGE_LIST]?.liveBytes ?? 0).toBe(0);
      // the bulk page array lived only during allocation
      expect(meta[MLX5_META_BULK_PAGE_LIST]?.liveBytes).toBe(0);
      expect(meta[MLX5_META_BULK_PAGE_LIST]?.peakBytes).toBe(8 * n);
      // scattered pages: one entry each, in a 128-slot chunk
      expect(buf.table.sgt.origNents).toBe(n);
      expect(meta.scatterlist?.liveBytes).toBe(128 * SG_ENTRY_SIZE);
    }
    expect(freeBefore - m.machine.pages.nrFreePages).toBeGreaterThanOrEqual(n);
    mlx5vfFreeDataBuffer(buf);
    expect(migrationMetaLiveBytes(m.machine)).toBe(0);
    expect(m.source.vhca.liveMkeys).toBe(0);
    expect(() => mlx5vfFreeDataBuffer(buf)).toThrow(VfioError);
    teardownMigrationRig(m);
    expect(m.machine.pages.nrFreePages).toBeGreaterThanOrEqual(freeBefore);
  });

  it.each(MAPPINGS)('%s: a DMA_NONE buffer is never mapped', (mapping) => {
    const { m, migf } = rigWith(mapping);
    const buf = allocOk(migf, 1, DMA_NONE);
    expect(mlx5vfBufferDmaed(buf)).toBe(false);
    expect(m.machine.counters.iovaAllocs).toBe(0);
    mlx5vfFreeDataBuffer(buf);
    teardownMigrationRig(m);
  });

  it.each(MAPPINGS)('%s: a page allocation failure frees everything and returns -ENOMEM', (mapping) => {
    const { m, migf } = rigWith(mapping);
    // a bulk allocation that comes back short is retried; one that gets nothing fails
    m.machine.faults.failNth('page_alloc', 20);
    const ok = allocOk(migf, 40, DMA_FROM_DEVICE);
    expect(ok.npages).toBe(40);
    mlx5vfFreeDataBuffer(ok);
    m.machine.faults.failNth('page_alloc', 20, 1000);
    expect(mlx5vfAllocDataBuffer(migf, 40, DMA_FROM_DEVICE)).toBe(-Errno.ENOMEM);
    m.machine.faults.clear();
    expect(migrationMetaLiveBytes(m.machine)).toBe(0);
    teardownMigrationRig(m);
  });
});

describe('register_dma_pages', () => {
  it('links every page into one IOVA range: MTT[i] = state.addr + i * PAGE_SIZE', () => {
    const { m, migf } = rigWith('iova');
    const c = m.machine.counters;
    const before = c.snapshot().events;
    const buf = allocOk(migf, 20, DMA_TO_DEVICE);
    expect(dmaUseIova(buf.state)).toBe(true);
    expect(c.iovaAllocs - before.iovaAllocs).toBe(1);
    expect(c.dmaLinks - before.dmaLinks).toBe(20);
    const domain = m.sourcePf.domain!;
    for (let i = 0; i < 20; i++) {
      const addr = mttGet(buf.mkeyIn!, i);
      expect(addr).toBe(buf.state.addr + i * PAGE_SIZE);
      expect(iommuIovaToPhys(domain, addr)).toBe(buf.pageList![i]);
    }
    mlx5vfFreeDataBuffer(buf);
    teardownMigrationRig(m);
  });

  it('falls back to one streaming map per page when dma_iova_try_alloc fails', () => {
    const { m, migf } = rigWith('iova');
    const c = m.machine.counters;
    // the 32-bit attempt, the full-range attempt and its retry after flushing the rcaches
    m.machine.faults.failNth('iova_alloc', 1, 3);
    const before = c.snapshot().events;
    const buf = allocOk(migf, 8, DMA_FROM_DEVICE);
    expect(dmaUseIova(buf.state)).toBe(false);
    expect(c.dmaMapCalls - before.dmaMapCalls).toBe(8);
    expect(c.dmaLinks - before.dmaLinks).toBe(0);
    const domain = m.sourcePf.domain!;
    for (let i = 0; i < 8; i++)
      expect(iommuIovaToPhys(domain, mttGet(buf.mkeyIn!, i))).toBe(buf.pageList![i]);
    mlx5vfFreeDataBuffer(buf);
    expect(c.dmaUnmapCalls - before.dmaUnmapCalls).toBe(8);
    teardownMigrationRig(m);
  });

  it('a device without an IOMMU gets bus addresses = physical addresses', () => {
    const { m, migf } = rigWith('iova', 'none');
    const buf = allocOk(migf, 4, DMA_FROM_DEVICE);
    expect(dmaUseIova(buf.state)).toBe(false);
    for (let i = 0; i < 4; i++) expect(mttGet(buf.mkeyIn!, i)).toBe(buf.pageList![i]);
    mlx5vfFreeDataBuffer(buf);
    teardownMigrationRig(m);
  });

  it('a failing link unmaps what was linked, frees the IOVA and reports the error', () => {
    const { m, migf } = rigWith('iova');
    const c = m.machine.counters;
    const buf = allocOk(migf, 4, DMA_NONE);
    const mtt = new Uint8Array(8 * 4);
    // a fresh domain needs page-table pages for the first link
    m.machine.faults.failNth('pgtable_page', 1);
    const before = c.snapshot().events;
    expect(registerDmaPages(m.sourcePf, 4, buf.pageList!, mtt, buf.state, DMA_FROM_DEVICE)).toBe(
      -Errno.ENOMEM,
    );
    expect(c.iovaAllocs - before.iovaAllocs).toBe(1);
    expect(c.iovaFrees - before.iovaFrees).toBe(1);
    expect(m.sourcePf.debug?.liveCount).toBe(0);
    mlx5vfFreeDataBuffer(buf);
    expect(() => registerDmaPages(m.sourcePf, 1, [0x100000], mtt, buf.state, DMA_NONE)).toThrow(VfioError);
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_dma_data_buffer', () => {
  it.each(DEVICE_KINDS)('%s: the sg mapping fills the MTT with one translatable address per page', (kind) => {
    const { m, migf } = rigWith('sg', kind);
    const buf = allocOk(migf, 40, DMA_FROM_DEVICE);
    const pages: number[] = [];
    for (let off = 0; off < 40 * PAGE_SIZE; off += PAGE_SIZE) pages.push(mlx5vfGetMigrationPage(buf, off));
    const domain = m.sourcePf.domain;
    const table = m.source.vhca.mkeyTable(buf.mkey)!;
    expect(table).toHaveLength(40);
    for (let i = 0; i < 40; i++) {
      const addr = table[i]!;
      const phys = domain === undefined || kind === 'identity' ? addr : iommuIovaToPhys(domain, addr);
      expect(phys).toBe(pages[i]);
    }
    mlx5vfFreeDataBuffer(buf);
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_get_migration_page', () => {
  it('sg: the cached cursor finds every page forwards, backwards and at random; iova: an index', () => {
    const { m, migf } = rigWith('sg', 'strict', 0);
    const buf = allocOk(migf, 300, DMA_NONE);
    // unfragmented memory: pages merge into few entries
    expect(buf.table.sgt.origNents).toBeLessThan(300);
    const expected: number[] = [];
    for (const sg of sgIter(buf.table.sgt.sgl, buf.table.sgt.origNents)) {
      for (let off = 0; off < sg.length; off += PAGE_SIZE) expected.push(sg.page + sg.offset + off);
    }
    expect(expected).toHaveLength(300);
    for (let i = 0; i < 300; i++) expect(mlx5vfGetMigrationPage(buf, i * PAGE_SIZE)).toBe(expected[i]);
    for (let i = 299; i >= 0; i -= 7) expect(mlx5vfGetMigrationPage(buf, i * PAGE_SIZE)).toBe(expected[i]);
    expect(mlx5vfGetMigrationPage(buf, 300 * PAGE_SIZE)).toBe(0);
    mlx5vfFreeDataBuffer(buf);
    teardownMigrationRig(m);
    const r = rigWith('iova');
    const ibuf = allocOk(r.migf, 5, DMA_NONE);
    for (let i = 0; i < 5; i++) expect(mlx5vfGetMigrationPage(ibuf, i * PAGE_SIZE)).toBe(ibuf.pageList![i]);
    expect(mlx5vfGetMigrationPage(ibuf, 5 * PAGE_SIZE)).toBe(0);
    mlx5vfFreeDataBuffer(ibuf);
    teardownMigrationRig(r.m);
  });
});

describe('mlx5vf_get_data_buffer', () => {
  it.each(MAPPINGS)('%s: reuses a big enough buffer of the same direction, frees smaller ones', (mapping) => {
    const { m, migf } = rigWith(mapping);
    const c = m.machine.counters;
    const a = allocOk(migf, 8, DMA_FROM_DEVICE);
    mlx5vfPutDataBuffer(a);
    const iovaBefore = c.iovaAllocs;
    const got = mlx5vfGetDataBuffer(migf, 6, DMA_FROM_DEVICE);
    expect(got).toBe(a);
    expect(c.iovaAllocs).toBe(iovaBefore);
    mlx5vfPutDataBuffer(a);
    const other = mlx5vfGetDataBuffer(migf, 2, DMA_TO_DEVICE);
    expect(other).not.toBe(a);
    expect(migf.availList).toEqual([a]);
    const bigger = mlx5vfGetDataBuffer(migf, 16, DMA_FROM_DEVICE);
    expect(bigger).not.toBe(a);
    expect(a.freed).toBe(true);
    expect(migf.availList).toHaveLength(0);
    mlx5vfFreeDataBuffer(other as Mlx5VhcaDataBuffer);
    mlx5vfFreeDataBuffer(bigger as Mlx5VhcaDataBuffer);
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_tracker_read_and_clear', () => {
  function report(
    dev: ReturnType<typeof createMigrationRig>['source'],
    iova: number,
    length: number,
    pageSize = PAGE_SIZE,
  ) {
    const bitmap = new Uint8Array(iovaBitmapBytes(length, pageSize));
    const ret = vfioIoctlDeviceFeature(
      dev,
      VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
      {
        iova,
        length,
        pageSize,
        bitmap,
      },
    );
    expect(ret).toBe(0);
    const pages = new Set<number>();
    for (let i = 0; i < Math.ceil(length / pageSize); i++)
      if (iovaBitmapTest(bitmap, i)) pages.add(iova + i * pageSize);
    return pages;
  }

  it.each(MAPPINGS)('%s: reports exactly the guest pages the device wrote, then clears them', (mapping) => {
    const m = createMigrationRig({ mapping, guestSize: 1 << 20 });
    const dev = m.source;
    const size = 1 << 20;
    // writes before logging starts are not reported
    dev.run(200);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, {
        pageSize: PAGE_SIZE,
        ranges: [{ iova: 0, length: size }],
      }),
    ).toBe(0);
    for (let round = 0; round < 4; round++) {
      m.guestWrites.clear();
      dev.run(300);
      expect(m.guestWrites.size).toBeGreaterThan(0);
      expect(report(dev, 0, size)).toEqual(m.guestWrites);
      expect(report(dev, 0, size).size).toBe(0);
    }
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, undefined),
    ).toBe(0);
    teardownMigrationRig(m);
  });

  it('reports at a coarser page size, only inside the requested and tracked ranges', () => {
    const m = createMigrationRig({ guestSize: 1 << 20 });
    const dev = m.source;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, {
        pageSize: PAGE_SIZE,
        ranges: [{ iova: 0, length: 512 << 10 }],
      }),
    ).toBe(0);
    m.guestWrites.clear();
    dev.run(400);
    const tracked = [...m.guestWrites].filter((a) => a < 512 << 10);
    const want64k = new Set(tracked.map((a) => a - (a % (64 << 10))));
    expect(report(dev, 0, 1 << 20, 64 << 10)).toEqual(want64k);
    // cleared by the first report
    expect(report(dev, 0, 1 << 20).size).toBe(0);
    // a report of part of the range leaves the rest logged
    m.guestWrites.clear();
    dev.run(400);
    const low = [...m.guestWrites].filter((a) => a < 256 << 10);
    const high = [...m.guestWrites].filter((a) => a >= 256 << 10 && a < 512 << 10);
    expect(report(dev, 0, 256 << 10)).toEqual(new Set(low));
    expect(report(dev, 0, 1 << 20)).toEqual(new Set(high));
    teardownMigrationRig(m);
  });

  it('combines ranges beyond what the tracker takes, still reporting exactly', () => {
    const m = createMigrationRig({ guestSize: 1 << 20 });
    const dev = m.source;
    const ranges = Array.from({ length: 8 }, (_, i) => ({ iova: i * (128 << 10), length: 64 << 10 }));
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, {
        pageSize: PAGE_SIZE,
        ranges,
      }),
    ).toBe(0);
    expect(dev.tracker.ranges).toHaveLength(4);
    m.guestWrites.clear();
    dev.run(500);
    // the device writes anywhere in guest memory; combined ranges cover the gaps between requested ones
    const covered = (a: number) => dev.tracker.ranges.some((r) => a >= r.start && a <= r.last);
    expect(report(dev, 0, 1 << 20)).toEqual(new Set([...m.guestWrites].filter(covered)));
    teardownMigrationRig(m);
  });
});
