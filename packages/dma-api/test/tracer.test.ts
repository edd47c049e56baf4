import { SZ_4K, type Tracer } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { DMA_TO_DEVICE } from '../src/dma-direction.js';
import { DmaIovaState, dmaIovaDestroy, dmaIovaLink, dmaIovaSync, dmaIovaTryAlloc } from '../src/dma-iova.js';
import { dmaMapPhys, dmaMappingError, dmaUnmapPhys } from '../src/mapping.js';
import { createDmaRig, createKindDevice } from '../src/testing/index.js';

/** Records events as "B name", "E", "I name". */
function recorder(): { tracer: Tracer; log: string[] } {
  const log: string[] = [];
  return {
    log,
    tracer: {
      begin: (name) => log.push(`B ${name}`),
      end: () => log.push('E'),
      instant: (name) => log.push(`I ${name}`),
    },
  };
}

describe('machine.tracer', () => {
  it('sees one two-step map in order: try_alloc, link → iommu_map, sync, destroy → unmap + one invalidation, device DMA', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(0);
    const { tracer, log } = recorder();
    rig.machine.tracer = tracer;
    const st = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, st, 0, SZ_4K)).toBe(true);
    expect(dmaIovaLink(dev, st, page, 0, SZ_4K, DMA_TO_DEVICE)).toBe(0);
    expect(dmaIovaSync(dev, st, 0, SZ_4K)).toBe(0);
    expect(dev.engine.read(st.addr, new Uint8Array(8))).toBe(0);
    dmaIovaDestroy(dev, st, SZ_4K, DMA_TO_DEVICE);
    expect(log).toEqual([
      'I dma_iova_try_alloc',
      'B dma_iova_link',
      'B iommu_map',
      'E',
      'E',
      'I dma_iova_sync',
      'I device_dma_read',
      'B dma_iova_destroy',
      'B iommu_unmap',
      'E',
      'I iotlb_inv_range',
      'E',
    ]);
  });

  it('sees a legacy single map and unmap, and nothing once removed', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const { tracer, log } = recorder();
    rig.machine.tracer = tracer;
    const a = dmaMapPhys(dev, 0x200000, 64, DMA_TO_DEVICE);
    dmaMappingError(dev, a);
    dmaUnmapPhys(dev, a, 64, DMA_TO_DEVICE);
    expect(log).toEqual([
      'B dma_map_phys',
      'B iommu_map',
      'E',
      'E',
      'B dma_unmap_phys',
      'B iommu_unmap',
      'E',
      'I iotlb_inv_range',
      'E',
    ]);
    rig.machine.tracer = undefined;
    const b = dmaMapPhys(dev, 0x200000, 64, DMA_TO_DEVICE);
    expect(dmaMappingError(dev, b)).toBe(false);
    dmaUnmapPhys(dev, b, 64, DMA_TO_DEVICE);
    expect(log).toHaveLength(9);
  });
});
