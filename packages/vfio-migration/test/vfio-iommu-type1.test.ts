// Guest memory in a VFIO-owned domain (drivers/vfio/vfio_iommu_type1.c, vfio_dma_rw).
import { createDmaRig } from '@iovalink/dma-api/testing';
import { DmaEngine, Errno, iommuIovaToPhys } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  vfioDmaDoMap,
  vfioDmaDoUnmap,
  vfioDmaRw,
  vfioIommuType1Open,
  vfioIommuType1Release,
} from '../src/vfio-iommu-type1.js';

describe('vfio_dma_do_map', () => {
  it('maps fresh pages IOVA = GPA for device reads and writes; refuses unaligned and overlapping ranges', () => {
    const rig = createDmaRig();
    const free = rig.machine.pages.nrFreePages;
    const vi = vfioIommuType1Open(rig.iommu);
    expect(vfioDmaDoMap(vi, 0x1000, 0x800)).toBe(-Errno.EINVAL);
    expect(vfioDmaDoMap(vi, 0x10000, 0x4000)).toBe(0);
    expect(vfioDmaDoMap(vi, 0x12000, 0x4000)).toBe(-Errno.EEXIST);
    expect(vfioDmaDoMap(vi, 0, 0x4000)).toBe(0);
    expect(vi.dmaList.map((d) => d.iova)).toEqual([0, 0x10000]);
    expect(vi.mappedBytes).toBe(0x8000);
    // a device on the domain writes; the CPU reads it back through vfio_dma_rw
    const engine = new DmaEngine(rig.machine, 'vf', vi.domain);
    expect(
      engine.write(
        0x10ff0,
        new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
      ),
    ).toBe(0);
    const back = new Uint8Array(20);
    expect(vfioDmaRw(vi, 0x10ff0, back, false)).toBe(0);
    expect([...back]).toEqual([...Array(20).keys()].map((i) => i + 1));
    expect(vfioDmaRw(vi, 0x8000, back, false)).toBe(-Errno.EINVAL);
    expect(vfioDmaRw(vi, 0, new Uint8Array(0), true)).toBe(-Errno.EINVAL);
    expect(iommuIovaToPhys(vi.domain, 0x10000)).toBe(vi.dmaList[1]!.pages[0]);
    expect(vfioDmaDoUnmap(vi, 0x10000, 0x4000)).toBe(0x4000);
    expect(iommuIovaToPhys(vi.domain, 0x10000)).toBe(0);
    vfioIommuType1Release(vi);
    vfioIommuType1Release(vi);
    expect(rig.machine.pages.nrFreePages).toBe(free);
  });

  it('undoes a partial map when pages run out', () => {
    const rig = createDmaRig();
    const vi = vfioIommuType1Open(rig.iommu);
    const free = rig.machine.pages.nrFreePages;
    rig.machine.faults.failNth('page_alloc', 3);
    expect(vfioDmaDoMap(vi, 0, 0x8000)).toBe(-Errno.ENOMEM);
    expect(vi.dmaList).toHaveLength(0);
    expect(iommuIovaToPhys(vi.domain, 0)).toBe(0);
    vfioIommuType1Release(vi);
    expect(rig.machine.pages.nrFreePages).toBe(free + 1); // the domain's root table went back too
  });
});
