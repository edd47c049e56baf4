import { DEVICE_KINDS } from '@iovalink/dma-api/testing';
import { describe, expect, it } from 'vitest';
import { SparseStore, STORE_CHUNK_SIZE } from '../src/backing-store.js';
import { allocIoBuffer, createNullBlkRig, createNvmeRig } from '../src/testing/index.js';
import { runWorkload } from '../src/workload.js';

const MAPPINGS = [
  { name: 'two-step (v6.17)', nvme: { mapping: 'iova' as const } },
  { name: 'scatterlist (v6.16)', nvme: { mapping: 'sg' as const } },
  {
    name: 'scatterlist, chained sg pools',
    nvme: { mapping: 'sg' as const, legacySgAlloc: 'chained' as const },
  },
  { name: 'two-step with SGLs', nvme: { mapping: 'iova' as const, sglSupported: true, sglThreshold: 8192 } },
];

describe.each(DEVICE_KINDS)('runWorkload on a %s NVMe device', (kind) => {
  it.each(MAPPINGS)(
    'writes then reads back every byte through the $name path, leaking nothing',
    ({ nvme }) => {
      const r = createNvmeRig({ kind, nvme });
      const mixed = runWorkload(r.bdev, {
        seed: 11,
        ios: 160,
        blockSize: 16384,
        readMix: 0.4,
        discardMix: 0.05,
        flushEvery: 40,
        queueDepth: 8,
        buffers: 'scattered',
        bufferOffset: 512,
        regionSectors: 4096,
        freshRegion: true,
      });
      expect(mixed.mismatchDetails).toEqual([]);
      expect(mixed.errors).toEqual({});
      expect(mixed.blocksVerified).toBeGreaterThan(0);
      const big = runWorkload(r.bdev, {
        seed: 12,
        ios: 24,
        pattern: 'sequential',
        blockSize: 256 * 1024,
        readMix: 0.5,
        queueDepth: 4,
        buffers: 'contiguous',
        startSector: 8192,
        regionSectors: 4096,
        freshRegion: true,
      });
      expect(big.mismatches).toBe(0);
      expect(big.errors).toEqual({});
      // 256 KiB I/Os behind a DMA IOMMU domain are split at the 128 KiB opt mapping size
      if (kind === 'strict' || kind === 'lazy' || kind === 'untrusted')
        expect(r.nvme.queue.stats.splits).toBeGreaterThan(0);
      r.teardown();
    },
  );
});

describe('runWorkload on null_blk', () => {
  it.each(['none', 'softirq', 'timer'] as const)(
    'memory-backed, irqmode %s: every byte matches',
    (irqmode) => {
      const r = createNullBlkRig({ nullb: { irqmode, discard: true } });
      const res = runWorkload(r.bdev, {
        seed: 5,
        ios: 200,
        blockSize: 8192,
        discardMix: 0.1,
        queueDepth: 16,
        regionSectors: 2048,
        freshRegion: true,
      });
      expect(res.mismatches).toBe(0);
      expect(res.errors).toEqual({});
      r.teardown();
    },
  );

  it('is reproducible from the seed: same I/O sequence, same virtual time', () => {
    const run = () => {
      const r = createNvmeRig({ kind: 'lazy' });
      const res = runWorkload(r.bdev, {
        seed: 99,
        ios: 100,
        blockSize: 8192,
        queueDepth: 6,
        regionSectors: 1024,
        freshRegion: true,
      });
      r.teardown();
      return res;
    };
    const a = run();
    const b = run();
    expect(a).toEqual(b);
  });
});

describe('SparseStore', () => {
  it('gives spans inside one chunk: holes read as zeros through a shared chunk, writes allocate', () => {
    const st = new SparseStore();
    const hole = st.spanForRead(STORE_CHUNK_SIZE + 512, 1024);
    expect(hole).toEqual(new Uint8Array(1024));
    expect(st.chunks).toBe(0);
    st.spanForWrite(STORE_CHUNK_SIZE + 512, 1024).fill(7);
    expect(st.chunks).toBe(1);
    const got = new Uint8Array(2048);
    st.read(STORE_CHUNK_SIZE, got);
    expect(Array.from(got.subarray(510, 514))).toEqual([0, 0, 7, 7]);
    expect(st.spanForRead(STORE_CHUNK_SIZE + 1535, 2)).toEqual(new Uint8Array([7, 0]));
    expect(st.spanForWrite(0, STORE_CHUNK_SIZE).length).toBe(STORE_CHUNK_SIZE);
    // another hole still reads as zeros (the shared zero chunk was never written)
    expect(st.spanForRead(5 * STORE_CHUNK_SIZE, 16)).toEqual(new Uint8Array(16));
  });

  it('reports its allocation: never-written and wholly zeroed chunks are holes, written chunks data', () => {
    const C = STORE_CHUNK_SIZE;
    const st = new SparseStore();
    const out: number[] = [99];
    expect(st.extents(0, 8 * C, out)).toBe(8 * C);
    expect(out).toEqual([8 * C, 0]); // a fresh store is one hole
    st.write(C + 100, new Uint8Array([1])); // chunk 1
    st.write(3 * C, new Uint8Array(2 * C).fill(2)); // chunks 3 and 4
    st.write(6 * C, new Uint8Array(C).fill(3)); // chunk 6
    st.zero(6 * C, C); // dropped whole: a hole again
    st.zero(3 * C + 512, 512); // zeroed in part: chunk 3 stays allocated
    expect(st.extents(0, 8 * C, out)).toBe(8 * C);
    expect(out).toEqual([C, 0, C, 1, C, 0, 2 * C, 1, 3 * C, 0]);
    // an unaligned range is clipped at both ends
    expect(st.extents(C + 4096, 3 * C, out)).toBe(3 * C);
    expect(out).toEqual([C - 4096, 1, C, 0, C + 4096, 1]);
    // at most maxRuns runs: the answer stops where the state changes, and says how far it got
    expect(st.extents(0, 8 * C, out, 2)).toBe(2 * C);
    expect(out).toEqual([C, 0, C, 1]);
    expect(st.extents(5 * C, 0, out)).toBe(0);
    expect(out).toEqual([]);
    // bad input: a typed error, `out` untouched
    out.push(7);
    expect(() => st.extents(-1, C, out)).toThrow(/non-negative/);
    expect(() => st.extents(0, C, out, 0)).toThrow(/maxRuns/);
    expect(out).toEqual([7]);
  });

  it('keeps every chunk apart across slabs, and a chunk discarded whole is reused as zeros', () => {
    const st = new SparseStore();
    // 2100 chunks span slabs of 16, 32, …, 1024 chunks and two full 1024-chunk slabs
    const n = 2100;
    const stamp = (i: number) => [i & 0xff, (i >> 8) & 0xff, 0x5a];
    for (let i = 0; i < n; i++) {
      st.spanForWrite(i * 2 * STORE_CHUNK_SIZE, 3).set(stamp(i));
      st.spanForWrite(i * 2 * STORE_CHUNK_SIZE + STORE_CHUNK_SIZE - 2, 2).set([i & 0xff, 0xa5]);
    }
    expect(st.chunks).toBe(n);
    for (let i = 0; i < n; i++) {
      expect(Array.from(st.spanForRead(i * 2 * STORE_CHUNK_SIZE, 3))).toEqual(stamp(i));
      expect(Array.from(st.spanForRead(i * 2 * STORE_CHUNK_SIZE + STORE_CHUNK_SIZE - 2, 2))).toEqual([
        i & 0xff,
        0xa5,
      ]);
      // the odd chunks between them were never written
      expect(st.spanForRead((i * 2 + 1) * STORE_CHUNK_SIZE, 3)).toEqual(new Uint8Array(3));
    }
    // discard chunk 14 whole (and hole 15) and the first byte of chunk 16; a new chunk then takes
    // chunk 14's slot, zeroed
    st.zero(14 * STORE_CHUNK_SIZE, 2 * STORE_CHUNK_SIZE + 1);
    expect(st.chunks).toBe(n - 1);
    expect(Array.from(st.spanForRead(16 * STORE_CHUNK_SIZE, 3))).toEqual([0, 0, 0x5a]);
    expect(st.spanForRead(14 * STORE_CHUNK_SIZE, STORE_CHUNK_SIZE)).toEqual(new Uint8Array(STORE_CHUNK_SIZE));
    st.spanForWrite(1 * STORE_CHUNK_SIZE + 100, 1)[0] = 9;
    const fresh = st.spanForRead(1 * STORE_CHUNK_SIZE, STORE_CHUNK_SIZE);
    expect(fresh[100]).toBe(9);
    expect(fresh.reduce((s, b) => s + b, 0)).toBe(9);
    expect(st.chunks).toBe(n);
  });
});

describe('runWorkload verification', () => {
  it('notices a device that returns wrong bytes', () => {
    const r = createNvmeRig({ kind: 'strict' });
    const store = r.nvme.hw.store;
    const span = store.spanForRead.bind(store);
    store.spanForRead = (off: number, n: number) => {
      const v = span(off, n).slice();
      if (v.length > 100) v[100] = (v[100]! + 1) & 0xff;
      return v;
    };
    const res = runWorkload(r.bdev, { seed: 3, ios: 40, readMix: 0, blockSize: 4096, regionSectors: 256 });
    expect(res.mismatches).toBeGreaterThan(0);
    r.teardown();
  });
});

describe('runWorkload on a used disk', () => {
  it('checks only what the run itself wrote unless told the region is fresh', async () => {
    const r = createNvmeRig({ kind: 'strict' });
    const b = allocIoBuffer(r.machine, 65536, 'contiguous');
    b.buf.write(r.machine, new Uint8Array(65536).fill(0xa5));
    await r.bdev.write(0, b.buf);
    b.free();
    const used = runWorkload(r.bdev, { seed: 8, ios: 60, regionSectors: 256, queueDepth: 4 });
    expect(used.mismatches).toBe(0);
    const strict = runWorkload(r.bdev, {
      seed: 8,
      ios: 60,
      regionSectors: 256,
      queueDepth: 4,
      readMix: 1,
      freshRegion: true,
    });
    expect(strict.mismatches).toBeGreaterThan(0); // the old 0xa5 data is not zeros
    r.teardown();
  });
});
