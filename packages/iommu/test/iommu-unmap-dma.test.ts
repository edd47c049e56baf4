// A device loses its translation when iommu_unmap returns (drivers/iommu/iommu.c, v6.17): the
// unmap gathers the range and syncs the IOTLB before returning, so a device access after it
// faults even though the translation sat in the IOTLB. The second test skips that sync
// (iommu_unmap_fast without iommu_iotlb_sync) and sees the stale translation still used, which is
// what makes the first test able to fail.
import { describe, expect, it } from 'vitest';
import { DmaEngine } from '../src/dma-engine.js';
import { Errno } from '../src/errno.js';
import { iommuIotlbSync, iommuIovaToPhys, iommuMap, iommuUnmap, iommuUnmapFast } from '../src/iommu.js';
import { IommuDevice, SZ_2M, SZ_4K } from '../src/iommu-device.js';
import { IOMMU_DOMAIN_DMA } from '../src/iommu-domain.js';
import { iommuIotlbGatherInit } from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';
import { patternBytes } from '../src/testing/index.js';

const IOVA = 0x40000000;

/** Byte equality without a per-element diff (2 MiB arrays). */
const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** Maps `size` bytes at IOVA to fresh memory holding a pattern and lets the device read it twice. */
function mappedAndCached(size: number) {
  const machine = new Machine({ memSize: 64 << 20 });
  const iommu = new IommuDevice(machine, {});
  const domain = iommu.domainAlloc(IOMMU_DOMAIN_DMA)!;
  const paddr = machine.pages.allocPages(Math.log2(size / SZ_4K));
  const data = patternBytes(size, 3);
  machine.phys.write(paddr, data);
  expect(iommuMap(domain, IOVA, paddr, size, IOMMU_READ | IOMMU_WRITE)).toBe(0);
  const engine = new DmaEngine(machine, 'dev', domain);
  const buf = new Uint8Array(size);
  expect(engine.read(IOVA, buf)).toBe(0);
  expect(same(buf, data)).toBe(true);
  // The second pass is served from the IOTLB: the engine translates page by page, every one a hit.
  const hits = machine.counters.iotlbHits;
  expect(engine.read(IOVA, buf)).toBe(0);
  expect(machine.counters.iotlbHits - hits).toBe(size / SZ_4K);
  return { machine, domain, engine, paddr, data };
}

describe('iommu_unmap: device DMA after the unmap', () => {
  for (const [name, size] of [
    ['four 4 KiB leaves', 4 * SZ_4K],
    ['one 2 MiB leaf', SZ_2M],
  ] as const) {
    it(`faults on read and write once iommu_unmap has returned (${name})`, () => {
      const { machine, domain, engine, paddr, data } = mappedAndCached(size);
      expect(iommuUnmap(domain, IOVA, size)).toBe(size);
      const faults = domain.faults.length;
      const buf = new Uint8Array(SZ_4K);
      for (const off of [0, size - SZ_4K]) {
        expect(engine.read(IOVA + off, buf)).toBe(-Errno.EFAULT);
        expect(buf.every((b) => b === 0)).toBe(true);
        expect(engine.write(IOVA + off, new Uint8Array(SZ_4K).fill(0xee))).toBe(-Errno.EFAULT);
      }
      expect(domain.faults.slice(faults).map((f) => [f.iova, f.reason])).toEqual([
        [IOVA, 'not-present'],
        [IOVA, 'not-present'],
        [IOVA + size - SZ_4K, 'not-present'],
        [IOVA + size - SZ_4K, 'not-present'],
      ]);
      // the refused writes never reached the page that was mapped
      expect(same(machine.phys.read(paddr, size), data)).toBe(true);
    });
  }

  it('without the IOTLB sync the device keeps reading and writing the unmapped page until the sync', () => {
    const { machine, domain, engine, paddr, data } = mappedAndCached(4 * SZ_4K);
    const gather = iommuIotlbGatherInit();
    expect(iommuUnmapFast(domain, IOVA, 4 * SZ_4K, gather)).toBe(4 * SZ_4K);
    expect(iommuIovaToPhys(domain, IOVA)).toBe(0); // gone from the page table
    const buf = new Uint8Array(SZ_4K);
    expect(engine.read(IOVA + SZ_4K, buf)).toBe(0); // but the IOTLB still translates it
    expect(buf).toEqual(data.subarray(SZ_4K, 2 * SZ_4K));
    const scribble = new Uint8Array(SZ_4K).fill(0xee);
    expect(engine.write(IOVA, scribble)).toBe(0); // and a write lands in the page the CPU got back
    expect(machine.phys.read(paddr, SZ_4K)).toEqual(scribble);
    iommuIotlbSync(domain, gather);
    expect(engine.read(IOVA + SZ_4K, buf)).toBe(-Errno.EFAULT);
    expect(engine.write(IOVA, scribble)).toBe(-Errno.EFAULT);
  });
});
