import { Errno, iommuIovaToPhys, SZ_4K } from '@iovalink/iommu';
import { patternBytes } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { dmaDebugDeviceTeardown } from '../src/dma-debug.js';
import { DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE } from '../src/dma-direction.js';
import { iommuDmaCookie } from '../src/dma-iommu.js';
import {
  DmaIovaState,
  dmaIovaDestroy,
  dmaIovaFree,
  dmaIovaLink,
  dmaIovaSize,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaIovaUnlink,
  dmaUseIova,
} from '../src/dma-iova.js';
import { DmaDebugError } from '../src/errors.js';
import { createDmaRig, createKindDevice } from '../src/testing/index.js';
import { deviceRead, deviceReadFaults } from './helpers.js';

describe('dma_iova_try_alloc', () => {
  it('returns false without an IOMMU DMA domain and leaves the state unused', () => {
    const rig = createDmaRig();
    for (const kind of ['none', 'identity'] as const) {
      const dev = createKindDevice(rig, kind);
      const state = new DmaIovaState();
      state.addr = 123;
      state.size = 456;
      expect(dmaIovaTryAlloc(dev, state, 0, 8192)).toBe(false);
      expect(dmaUseIova(state)).toBe(false);
      expect(state.addr).toBe(0);
    }
    expect(rig.machine.counters.iovaAllocs).toBe(0);
  });

  it('returns false for a zero size', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    expect(dmaIovaTryAlloc(dev, new DmaIovaState(), 0, 0)).toBe(false);
  });

  it('keeps the in-granule offset of phys in state.addr and allocates once (32-bit first, top-down)', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0x123456, 3 * SZ_4K)).toBe(true);
    expect(dmaUseIova(state)).toBe(true);
    expect(dmaIovaSize(state)).toBe(3 * SZ_4K);
    expect(state.addr % SZ_4K).toBe(0x456);
    // 3 pages + pad = 4 pages, size-aligned, the top of the 32-bit window
    expect(state.addr - 0x456).toBe(0xfffff000 - 3 * SZ_4K);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
  });

  it('returns false when IOVA space cannot be had', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    rig.machine.faults.failAlways('iova_alloc');
    expect(dmaIovaTryAlloc(dev, new DmaIovaState(), 0, SZ_4K)).toBe(false);
  });
});

describe('dma_iova_link / dma_iova_sync', () => {
  it('maps without an IOTLB invalidation, and the device reads the bytes', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const { machine } = rig;
    const pages = [machine.pages.allocPages(0), machine.pages.allocPages(0), machine.pages.allocPages(0)];
    const data = patternBytes(3 * SZ_4K, 7);
    pages.forEach((p, i) => {
      machine.phys.write(p, data.subarray(i * SZ_4K, (i + 1) * SZ_4K));
    });
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 3 * SZ_4K)).toBe(true);
    pages.forEach((p, i) => {
      expect(dmaIovaLink(dev, state, p, i * SZ_4K, SZ_4K, DMA_TO_DEVICE)).toBe(0);
    });
    expect(dmaIovaSync(dev, state, 0, 3 * SZ_4K)).toBe(0);
    expect(machine.counters.iotlbInvRange + machine.counters.iotlbInvAll).toBe(0);
    expect(deviceRead(dev, state.addr, 3 * SZ_4K)).toEqual(data);
    // TO_DEVICE grants read only
    expect(dev.engine.write(state.addr, new Uint8Array(1))).toBe(-Errno.EFAULT);
    dmaIovaDestroy(dev, state, 3 * SZ_4K, DMA_TO_DEVICE);
    dmaDebugDeviceTeardown(dev);
  });

  it('a device DMA after link but before sync faults on an IOMMU that caches non-present entries', () => {
    const rig = createDmaRig({ iommu: { cachesNonPresent: true } });
    const machine = rig.machine;
    const dev = createKindDevice(rig, 'strict');
    const page = machine.pages.allocPages(0);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, SZ_4K)).toBe(true);
    expect(deviceReadFaults(dev, state.addr)).toBe(true); // caches "not present"
    expect(dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_BIDIRECTIONAL)).toBe(0);
    expect(deviceReadFaults(dev, state.addr)).toBe(true);
    expect(dmaIovaSync(dev, state, 0, SZ_4K)).toBe(0);
    expect(machine.counters.iotlbSyncMap).toBe(1);
    expect(deviceReadFaults(dev, state.addr)).toBe(false);
    dmaIovaDestroy(dev, state, SZ_4K, DMA_BIDIRECTIONAL);
  });

  it('rejects an unaligned interior link with -EIO and maps nothing', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(1);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
    const writes = rig.machine.counters.pteWrites;
    expect(dmaIovaLink(dev, state, page + 0x200, SZ_4K, 0x100, DMA_TO_DEVICE)).toBe(-Errno.EIO);
    expect(rig.machine.counters.pteWrites).toBe(writes);
    expect(iommuIovaToPhys(dev.domain!, state.addr + SZ_4K)).toBe(0);
    dmaIovaFree(dev, state);
  });

  it('rejects links outside the allocated IOVA and over a linked range, mapping nothing', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(1);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
    expect(() => dmaIovaLink(dev, state, page, SZ_4K, 2 * SZ_4K, DMA_TO_DEVICE)).toThrow(DmaDebugError);
    expect(dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_TO_DEVICE)).toBe(0);
    const writes = rig.machine.counters.pteWrites;
    expect(() => dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_TO_DEVICE)).toThrow(/over a linked range/);
    expect(rig.machine.counters.pteWrites).toBe(writes);
    dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
  });

  it('a failed link (page-table page allocation) leaves nothing of that call mapped', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(4);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 16 * SZ_4K)).toBe(true);
    const tables = dev.domain!.pgtbl!.tablePages;
    rig.machine.faults.failNth('pgtable_page', 1);
    expect(dmaIovaLink(dev, state, page, 0, 16 * SZ_4K, DMA_TO_DEVICE)).toBe(-Errno.ENOMEM);
    expect(dev.domain!.pgtbl!.leafCount).toBe(0);
    expect(dev.domain!.pgtbl!.tablePages).toBe(tables);
    dmaIovaFree(dev, state);
    dmaDebugDeviceTeardown(dev);
  });
});

describe('dma_iova_unlink / dma_iova_free', () => {
  it('unlink invalidates the IOTLB at once (even lazy) and leaves the IOVA allocated', () => {
    for (const kind of ['strict', 'lazy'] as const) {
      const rig = createDmaRig();
      const dev = createKindDevice(rig, kind);
      const page = rig.machine.pages.allocPages(1);
      const state = new DmaIovaState();
      expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
      expect(dmaIovaLink(dev, state, page, 0, 2 * SZ_4K, DMA_TO_DEVICE)).toBe(0);
      expect(dmaIovaSync(dev, state, 0, 2 * SZ_4K)).toBe(0);
      expect(deviceReadFaults(dev, state.addr)).toBe(false);
      dmaIovaUnlink(dev, state, 0, 2 * SZ_4K, DMA_TO_DEVICE);
      expect(rig.machine.counters.iotlbInvRange).toBe(1);
      expect(deviceReadFaults(dev, state.addr)).toBe(true);
      const { iovad } = iommuDmaCookie(dev.domain!);
      expect(iovad.findIova(state.addr / SZ_4K)).toBeDefined();
      // the same IOVA can be linked again
      expect(dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_TO_DEVICE)).toBe(0);
      dmaIovaUnlink(dev, state, 0, SZ_4K, DMA_TO_DEVICE);
      dmaIovaFree(dev, state);
      dmaDebugDeviceTeardown(dev);
    }
  });

  it('free with links left is a dma-debug error and frees nothing', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(0);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, SZ_4K)).toBe(true);
    expect(dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_TO_DEVICE)).toBe(0);
    const frees = rig.machine.counters.iovaFrees;
    expect(() => dmaIovaFree(dev, state)).toThrow(/links left/);
    expect(rig.machine.counters.iovaFrees).toBe(frees);
    expect(() => dmaDebugDeviceTeardown(dev)).toThrow(/pending DMA allocations/);
    dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
    dmaDebugDeviceTeardown(dev);
  });
});

describe('dma_iova_destroy', () => {
  it('strict: one ranged invalidation and the IOVA is free for reuse at once', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(3);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 8 * SZ_4K)).toBe(true);
    const addr = state.addr;
    for (let i = 0; i < 8; i++)
      expect(dmaIovaLink(dev, state, page + i * SZ_4K, i * SZ_4K, SZ_4K, DMA_FROM_DEVICE)).toBe(0);
    dmaIovaDestroy(dev, state, 8 * SZ_4K, DMA_FROM_DEVICE);
    expect(rig.machine.counters.iotlbInvRange).toBe(1);
    expect(rig.machine.counters.iotlbInvAll).toBe(0);
    const again = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, again, 0, 8 * SZ_4K)).toBe(true);
    expect(again.addr).toBe(addr);
    dmaIovaFree(dev, again);
  });

  it('lazy: no invalidation now, the stale entry stays usable, the IOVA waits for the flush queue', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'lazy');
    const page = rig.machine.pages.allocPages(0);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, SZ_4K)).toBe(true);
    const addr = state.addr;
    expect(dmaIovaLink(dev, state, page, 0, SZ_4K, DMA_TO_DEVICE)).toBe(0);
    expect(deviceReadFaults(dev, addr)).toBe(false);
    dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE);
    expect(rig.machine.counters.iotlbInvRange + rig.machine.counters.iotlbInvAll).toBe(0);
    expect(rig.machine.counters.fqEnqueued).toBe(1);
    expect(deviceReadFaults(dev, addr)).toBe(false); // stale IOTLB entry: the lazy-mode window
    const other = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, other, 0, SZ_4K)).toBe(true);
    expect(other.addr).not.toBe(addr); // not reusable before the flush
    rig.machine.clock.advance(10e6);
    expect(rig.machine.counters.iotlbInvAll).toBe(1);
    expect(deviceReadFaults(dev, addr)).toBe(true);
    dmaIovaFree(dev, other);
    const third = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, third, 0, SZ_4K)).toBe(true);
    expect([addr, other.addr]).toContain(third.addr);
    dmaIovaFree(dev, third);
  });

  it('rejects a destroy whose mapped_len is not the linked range', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'strict');
    const page = rig.machine.pages.allocPages(1);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, 0, 2 * SZ_4K)).toBe(true);
    expect(dmaIovaLink(dev, state, page, 0, 2 * SZ_4K, DMA_TO_DEVICE)).toBe(0);
    expect(() => dmaIovaDestroy(dev, state, SZ_4K, DMA_TO_DEVICE)).toThrow(/not \[0, mapped_len\)/);
    expect(deviceReadFaults(dev, state.addr + SZ_4K)).toBe(false);
    dmaIovaDestroy(dev, state, 2 * SZ_4K, DMA_TO_DEVICE);
  });
});

describe('dma_iova_link on an untrusted device (swiotlb)', () => {
  it('bounces the partial head and tail granules and never exposes neighbouring bytes', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'untrusted');
    const { machine } = rig;
    const base = machine.pages.allocPages(2);
    machine.phys.fill(base, 4 * SZ_4K, 0xee); // secrets around the buffer
    const phys = base + 0x100;
    const len = 2 * SZ_4K;
    const data = patternBytes(len, 3);
    machine.phys.write(phys, data);
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, phys, len)).toBe(true);
    expect(dmaIovaLink(dev, state, phys, 0, len, DMA_BIDIRECTIONAL)).toBe(0);
    expect(state.usedSwiotlb).toBe(true);
    expect(machine.counters.bounceBytes).toBeGreaterThan(0);
    expect(deviceRead(dev, state.addr, len)).toEqual(data);
    // the rest of the head granule is not the neighbouring memory
    const head = deviceRead(dev, state.addr - 0x100, 0x100);
    expect(head.includes(0xee)).toBe(false);
    // the device writes; unlink copies the bounced bytes back
    const upd = patternBytes(len, 9);
    expect(dev.engine.write(state.addr, upd)).toBe(0);
    dmaIovaUnlink(dev, state, 0, len, DMA_BIDIRECTIONAL);
    expect(machine.phys.read(phys, len)).toEqual(upd);
    expect(machine.phys.read(base, 0x100).every((b) => b === 0xee)).toBe(true);
    expect(rig.swiotlb.usedSlots).toBe(0);
    dmaIovaFree(dev, state);
    dmaDebugDeviceTeardown(dev);
  });

  it('without min_align_mask a bounced unaligned head cannot be mapped (-EINVAL, as in the kernel)', () => {
    const rig = createDmaRig();
    const dev = createKindDevice(rig, 'untrusted', { dmaParms: { minAlignMask: 0 } });
    const phys = rig.machine.pages.allocPages(1) + 0x100;
    const state = new DmaIovaState();
    expect(dmaIovaTryAlloc(dev, state, phys, SZ_4K)).toBe(true);
    expect(dmaIovaLink(dev, state, phys, 0, SZ_4K, DMA_TO_DEVICE)).toBe(-Errno.EINVAL);
    expect(rig.swiotlb.usedSlots).toBe(0);
    expect(dev.domain!.pgtbl!.leafCount).toBe(0);
    dmaIovaFree(dev, state);
  });
});
