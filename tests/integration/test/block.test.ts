// Block I/O across packages: the same seeded fio-like workload through the NVMe-style driver in
// its two versions — `mapping: 'sg'` (blk_rq_map_sg + dma_map_sgtable, before v6.17) and
// `mapping: 'iova'` (blk_rq_dma_map_iter_*, v6.17+) — on every device kind. Both must leave
// identical bytes on the disk; the two-step path must use no scatterlist and no more IOVA
// allocations or IOTLB invalidations.
import { BlockDevice, nvmeProbe, nvmeRemove, runWorkload } from '@iovalink/blk-mq';
import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, type DeviceKind } from '@iovalink/dma-api/testing';
import { diffCounters } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';

const REGION = 16 << 20;

function run(
  kind: DeviceKind,
  mapping: 'sg' | 'iova',
  blockSize: number,
  buffers: 'contiguous' | 'scattered',
) {
  const rig = createDmaRig({ machine: { memSize: 512 << 20 } });
  const dev = createKindDevice(rig, kind, { name: `nvme-${mapping}` });
  const nvme = nvmeProbe(dev, { mapping });
  const bdev = new BlockDevice(nvme.disk, { queueDepth: 8 });
  const before = rig.machine.counters.snapshot();
  const r = runWorkload(bdev, {
    seed: 42,
    ios: 120,
    blockSize,
    pattern: 'random',
    readMix: 0.4,
    queueDepth: 8,
    buffers,
    regionSectors: REGION / 512,
  });
  bdev.drain();
  rig.machine.clock.advance(20e6); // lazy domains: let the flush queue run
  const d = diffCounters(before, rig.machine.counters.snapshot());
  const disk = new Uint8Array(REGION);
  nvme.hw.store.read(0, disk);
  nvmeRemove(nvme);
  dmaDebugDeviceTeardown(dev);
  return { r, d, disk, requests: r.ios };
}

describe.each(['strict', 'lazy', 'identity', 'none', 'untrusted'] as const)(
  'block I/O on a %s device',
  (kind) => {
    for (const [blockSize, buffers] of [
      [128 << 10, 'scattered'],
      [64 << 10, 'contiguous'],
    ] as const) {
      it(`${blockSize >> 10} KiB ${buffers}: same bytes on disk, no scatterlist on the two-step path`, () => {
        const sg = run(kind, 'sg', blockSize, buffers);
        const iova = run(kind, 'iova', blockSize, buffers);
        for (const x of [sg, iova]) {
          expect(x.r.mismatches).toBe(0);
          expect(x.r.errors).toEqual({});
        }
        expect(iova.requests).toBe(sg.requests);
        expect(Buffer.compare(Buffer.from(iova.disk), Buffer.from(sg.disk))).toBe(0);
        expect(iova.d.meta.scatterlist?.bytes ?? 0).toBe(0);
        expect(iova.d.meta.sg_pool?.bytes ?? 0).toBe(0);
        expect(sg.d.meta.scatterlist?.bytes ?? 0).toBeGreaterThan(0);
        expect(iova.d.events.iovaAllocs).toBeLessThanOrEqual(sg.d.events.iovaAllocs);
        const inval = (x: typeof sg) => x.d.events.iotlbInvRange + x.d.events.iotlbInvAll;
        expect(inval(iova)).toBeLessThanOrEqual(inval(sg));
        if (kind === 'strict' || kind === 'lazy' || kind === 'untrusted') {
          // one IOVA range per request (requests are at most 128 KiB behind an IOMMU DMA domain),
          // plus the driver's PRP-list pool page, mapped once with dma_map_phys when the pool grows
          expect(iova.d.events.iovaAllocs).toBeGreaterThanOrEqual(iova.requests);
          expect(iova.d.events.iovaAllocs).toBeLessThanOrEqual(iova.requests + 2);
          expect(iova.d.events.dmaLinks).toBeGreaterThan(0);
        } else {
          expect(iova.d.events.dmaLinks).toBe(0);
        }
      });
    }
  },
);
