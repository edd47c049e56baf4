import { dmaDebugDeviceTeardown, dmaUseIova } from '@iovalink/dma-api';
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { isErr, OdpError } from '../src/errors.js';
import { HMM_PFN_DMA_MAPPED, HMM_PFN_VALID, HMM_PFN_WRITE } from '../src/hmm.js';
import { HMM_DMA_DMA_LIST, HMM_DMA_PFN_LIST, hmmDmaMapPfn } from '../src/hmm-dma.js';
import { IB_ACCESS_HUGETLB } from '../src/ib-verbs.js';
import { type MmuIntervalNotifierOps, mmuIntervalSetSeq } from '../src/mmu-notifier.js';
import { mutexLock, mutexUnlock } from '../src/mutex.js';
import { createOdpRig, mmapAnon, ODP_ACCESS_RW, odpMetaLiveBytes } from '../src/testing/index.js';
import {
  IbUmemOdp,
  ibUmemOdpGet,
  ibUmemOdpMapDmaAndLock,
  ibUmemOdpRelease,
  ibUmemOdpUnmapDmaPages,
  ODP_READ_ALLOWED_BIT,
  ODP_WRITE_ALLOWED_BIT,
  type OdpMode,
  UMEM_ODP_DMA_LIST,
  UMEM_ODP_PFN_LIST,
} from '../src/umem-odp.js';

/** The kernel's invalidate protocol without a device table: lock, set_seq, unmap. */
const ops: MmuIntervalNotifierOps = {
  invalidate(sub, range, seq) {
    const umem = sub.owner as IbUmemOdp;
    mutexLock(umem.umemMutex, 'test invalidate');
    mmuIntervalSetSeq(sub, seq);
    ibUmemOdpUnmapDmaPages(umem, range.start, range.end);
    mutexUnlock(umem.umemMutex);
    return true;
  },
};

function umemRig(mode: OdpMode, pages: number, kind: 'strict' | 'lazy' | 'none' = 'strict') {
  const rig = createOdpRig({ mode, kind });
  const addr = mmapAnon(rig.mm, pages * PAGE_SIZE);
  const umem = ibUmemOdpGet(rig.ibdev, rig.mm, addr, pages * PAGE_SIZE, ODP_ACCESS_RW, ops, mode);
  if (isErr(umem)) throw new Error(`ib_umem_odp_get: ${umem}`);
  return { rig, addr, umem };
}

const meta = (m: ReturnType<typeof createOdpRig>['machine'], kind: string) =>
  m.counters.meta.get(kind)?.liveBytes ?? 0;

describe('ib_umem_odp_get', () => {
  it('legacy: pfn_list + dma_list, 16 bytes a page, no IOVA until pages are mapped', () => {
    const { rig, umem } = umemRig('legacy', 64);
    expect(meta(rig.machine, UMEM_ODP_PFN_LIST)).toBe(64 * 8);
    expect(meta(rig.machine, UMEM_ODP_DMA_LIST)).toBe(64 * 8);
    expect(odpMetaLiveBytes(rig.machine) / 64).toBe(16);
    expect(rig.machine.counters.iovaAllocs).toBe(0);
    expect(umem.notifier.start).toBe(umem.start);
    expect(umem.notifier.last).toBe(umem.end - 1);
  });

  it('hmm: the pfn list alone, 8 bytes a page, and one IOVA reservation for the whole umem', () => {
    const { rig, umem } = umemRig('hmm', 64);
    expect(meta(rig.machine, HMM_DMA_PFN_LIST)).toBe(64 * 8);
    expect(meta(rig.machine, HMM_DMA_DMA_LIST)).toBe(0);
    expect(odpMetaLiveBytes(rig.machine) / 64).toBe(8);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
    expect(dmaUseIova(umem.map.state)).toBe(true);
    expect(umem.map.state.size).toBe(64 * PAGE_SIZE);
  });

  it('rounds an unaligned range out to whole pages', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
    const umem = ibUmemOdpGet(rig.ibdev, rig.mm, a + 100, PAGE_SIZE, ODP_ACCESS_RW, ops, 'hmm') as IbUmemOdp;
    expect(umem.start).toBe(a);
    expect(umem.end).toBe(a + 2 * PAGE_SIZE);
    expect(umem.numPages).toBe(2);
  });

  it('hmm mode refuses a non-coherent DMA device (-EOPNOTSUPP) where the legacy mode works', () => {
    for (const mode of ['legacy', 'hmm'] as const) {
      const rig = createOdpRig({ mode, device: { coherent: false } });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      const r = ibUmemOdpGet(rig.ibdev, rig.mm, a, PAGE_SIZE, ODP_ACCESS_RW, ops, mode);
      if (mode === 'hmm') expect(r).toBe(-Errno.EOPNOTSUPP);
      else expect(r).toBeInstanceOf(IbUmemOdp);
    }
  });

  it('rejects hugetlb umems and access without IB_ACCESS_ON_DEMAND', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    expect(ibUmemOdpGet(rig.ibdev, rig.mm, a, PAGE_SIZE, ODP_ACCESS_RW | IB_ACCESS_HUGETLB, ops, 'hmm')).toBe(
      -Errno.EOPNOTSUPP,
    );
    expect(() => ibUmemOdpGet(rig.ibdev, rig.mm, a, PAGE_SIZE, 1, ops, 'hmm')).toThrow(OdpError);
    expect(ibUmemOdpGet(rig.ibdev, rig.mm, a, 0, ODP_ACCESS_RW, ops, 'hmm')).toBe(-Errno.EINVAL);
  });
});

describe('ib_umem_odp_map_dma_and_lock', () => {
  it('legacy: faults the range, maps each page with its own dma_map_page, returns with umem_mutex held', () => {
    const { rig, addr, umem } = umemRig('legacy', 8);
    const np = ibUmemOdpMapDmaAndLock(
      umem,
      addr + PAGE_SIZE,
      3 * PAGE_SIZE,
      ODP_READ_ALLOWED_BIT | ODP_WRITE_ALLOWED_BIT,
      true,
    );
    expect(np).toBe(3);
    expect(umem.umemMutex.locked).toBe(true);
    mutexUnlock(umem.umemMutex);
    expect(rig.machine.counters.iovaAllocs).toBe(3);
    expect(rig.machine.counters.dmaMapCalls).toBe(3);
    expect(umem.npages).toBe(3);
    for (let i = 1; i <= 3; i++) {
      const e = umem.legacyDmaList![i]!;
      expect(e % 4).toBe(ODP_READ_ALLOWED_BIT | ODP_WRITE_ALLOWED_BIT);
      expect(umem.pfnList.pfn(i)).toBe(rig.mm.followPte(addr + i * PAGE_SIZE)!.pfn);
    }
    expect(umem.legacyDmaList![0]).toBe(0);
  });

  it('hmm: faults and locks but maps nothing — the driver maps while writing its table', () => {
    const { rig, addr, umem } = umemRig('hmm', 8);
    const np = ibUmemOdpMapDmaAndLock(umem, addr, 2 * PAGE_SIZE, HMM_PFN_WRITE, true);
    expect(np).toBe(2);
    mutexUnlock(umem.umemMutex);
    expect(rig.machine.counters.dmaLinks).toBe(0);
    expect(umem.pfnList.test(0, HMM_PFN_VALID | HMM_PFN_WRITE)).toBe(true);
    expect(umem.pfnList.test(0, HMM_PFN_DMA_MAPPED)).toBe(false);
    expect(rig.machine.counters.iovaAllocs).toBe(1);
  });

  it('returns -EFAULT outside the umem and without a VMA, with the lock released', () => {
    const { rig, addr, umem } = umemRig('hmm', 4);
    expect(ibUmemOdpMapDmaAndLock(umem, addr + 3 * PAGE_SIZE, 2 * PAGE_SIZE, 0, true)).toBe(-Errno.EFAULT);
    rig.mm.munmap(addr, PAGE_SIZE);
    expect(ibUmemOdpMapDmaAndLock(umem, addr, PAGE_SIZE, 0, true)).toBe(-Errno.EFAULT);
    expect(umem.umemMutex.locked).toBe(false);
  });

  it('retries from read_begin when an invalidation lands between hmm_range_fault and the locked retry check', () => {
    for (const mode of ['legacy', 'hmm'] as const) {
      const { rig, addr, umem } = umemRig(mode, 4);
      rig.mm.write(addr, new Uint8Array([9]));
      let first = -1;
      umem.hooks = {
        raceWindow(point, _u, attempt) {
          if (point === 'after_range_fault' && attempt === 0) {
            first = umem.pfnList.pfn(0);
            expect(rig.mm.migratePages(addr, PAGE_SIZE)).toBe(1);
          }
        },
      };
      const np = ibUmemOdpMapDmaAndLock(
        umem,
        addr,
        PAGE_SIZE,
        mode === 'hmm' ? HMM_PFN_WRITE : ODP_READ_ALLOWED_BIT,
        true,
      );
      mutexUnlock(umem.umemMutex);
      expect(np).toBe(1);
      expect(umem.stats.seqRetries).toBe(1);
      expect(umem.pfnList.pfn(0)).not.toBe(first);
      expect(umem.pfnList.pfn(0)).toBe(rig.mm.followPte(addr)!.pfn);
    }
  });

  it('retries -EBUSY from hmm_range_fault when an invalidation lands right after read_begin', () => {
    const { rig, addr, umem } = umemRig('hmm', 2);
    rig.mm.write(addr, new Uint8Array([9]));
    umem.hooks = {
      raceWindow(point, _u, attempt) {
        if (point === 'after_read_begin' && attempt === 0) rig.mm.migratePages(addr, PAGE_SIZE);
      },
    };
    expect(ibUmemOdpMapDmaAndLock(umem, addr, PAGE_SIZE, 0, true)).toBe(1);
    mutexUnlock(umem.umemMutex);
    expect(umem.stats.busyRetries).toBe(1);
    expect(umem.stats.seqRetries).toBe(0);
  });

  it('returns -EINVAL once the process has exited', () => {
    const { rig, addr, umem } = umemRig('hmm', 2);
    rig.mm.exit();
    expect(ibUmemOdpMapDmaAndLock(umem, addr, PAGE_SIZE, 0, true)).toBe(-Errno.EINVAL);
  });
});

describe('ib_umem_odp_unmap_dma_pages', () => {
  it('must be called with umem_mutex held', () => {
    const { umem } = umemRig('hmm', 2);
    expect(() => ibUmemOdpUnmapDmaPages(umem, umem.start, umem.end)).toThrow(/must be held/);
  });

  it('hmm: unlinks mapped pages, clears every flag, dirties pages mapped writable; legacy: unmaps and zeroes dma_list', () => {
    for (const mode of ['legacy', 'hmm'] as const) {
      const { rig, addr, umem } = umemRig(mode, 4);
      const access = mode === 'hmm' ? HMM_PFN_WRITE : ODP_READ_ALLOWED_BIT | ODP_WRITE_ALLOWED_BIT;
      expect(ibUmemOdpMapDmaAndLock(umem, addr, 2 * PAGE_SIZE, access, true)).toBe(2);
      if (mode === 'hmm') {
        for (const i of [0, 1]) hmmDmaMapPfn(rig.dev, umem.map, i);
        umem.npages += 2;
      }
      const page0 = rig.mm.memMap.page(rig.mm.followPte(addr)!.pfn)!;
      page0.dirty = false;
      ibUmemOdpUnmapDmaPages(umem, addr, addr + 4 * PAGE_SIZE);
      mutexUnlock(umem.umemMutex);
      expect(umem.npages).toBe(0);
      expect(page0.dirty).toBe(true);
      if (mode === 'hmm') expect(umem.pfnList.flags(0)).toBe(0);
      else expect(umem.legacyDmaList![0]).toBe(0);
      expect(rig.dev.debug!.liveCount).toBe(mode === 'hmm' ? 1 : 0); // hmm: the IOVA state itself
    }
  });
});

describe('ib_umem_odp_release', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    for (const kind of ['strict', 'lazy', 'none'] as const) {
      it(`${mode} ${kind}: unmaps everything, removes the notifier, frees lists and IOVA`, () => {
        const { rig, addr, umem } = umemRig(mode, 8, kind);
        const access = mode === 'hmm' ? HMM_PFN_WRITE : ODP_READ_ALLOWED_BIT;
        expect(ibUmemOdpMapDmaAndLock(umem, addr, 8 * PAGE_SIZE, access, true)).toBe(8);
        if (mode === 'hmm') for (let i = 0; i < 8; i++) hmmDmaMapPfn(rig.dev, umem.map, i);
        mutexUnlock(umem.umemMutex);
        ibUmemOdpRelease(umem);
        expect(odpMetaLiveBytes(rig.machine)).toBe(0);
        expect(rig.mm.notifierSubscriptions.itree).toEqual([]);
        expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
        expect(() => ibUmemOdpRelease(umem)).toThrow(OdpError);
      });
    }
  }
});
