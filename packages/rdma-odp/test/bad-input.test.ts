// Bad input: an MR outside any VMA, accesses beyond the MR, permission mismatches, invalid
// registration arguments and allocation failures. Each gives an error (errno or error completion),
// and afterwards nothing is leaked: no DMA mapping (dma-debug), no ODP metadata, no frames.
import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  IB_ACCESS_HUGETLB,
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  ibAdviseMr,
  ibDeregMr,
  ibRegUserMr,
} from '../src/ib-verbs.js';
import type { Mlx5IbMr } from '../src/mlx5-ib.js';
import { pagefaultMr } from '../src/mlx5-odp.js';
import { PROT_READ } from '../src/mm-types.js';
import {
  createOdpRig,
  mmapAnon,
  ODP_ACCESS_RO,
  ODP_ACCESS_RW,
  type OdpRig,
  odpMetaLiveBytes,
  regOdpMr,
} from '../src/testing/index.js';

/** Deregisters, then checks that the device holds no DMA mapping and the mm no frame. */
function expectNothingLeaked(rig: OdpRig, mrs: Mlx5IbMr[]): void {
  for (const mr of mrs) expect(ibDeregMr(mr)).toBe(0);
  expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
  expect(odpMetaLiveBytes(rig.machine)).toBe(0);
  expect(rig.nic.mkeys.size).toBe(0);
  expect(rig.mm.notifierSubscriptions.itree).toEqual([]);
  rig.mm.exit();
  expect(rig.mm.memMap.nrPages).toBe(0);
}

describe('ib_reg_user_mr (bad input)', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    it(`${mode}: an ODP MR outside any VMA registers (nothing is touched) but every access and prefetch fails`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      rig.mm.munmap(a, PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      const w = rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(8));
      expect(w.status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(w.errno).toBe(-Errno.EFAULT);
      expect(w.byteLen).toBe(0);
      expect(rig.nic.rdmaRead(mr.rkey, a + PAGE_SIZE, 8).status).toBe('IB_WC_REM_ACCESS_ERR');
      const sge = [{ addr: a, length: PAGE_SIZE, lkey: mr.lkey }];
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, sge),
      ).toBe(-Errno.EFAULT);
      expect(rig.mm.nrPtes).toBe(0);
      expect(rig.ibdev.stats.pageFaultErrors).toBe(2);
      expectNothingLeaked(rig, [mr]);
    });

    it(`${mode}: a VMA ending inside the MR: accesses reaching past it fail, the rest works`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 2 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      expect(rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(2 * PAGE_SIZE).fill(1)).status).toBe(
        'IB_WC_SUCCESS',
      );
      expect(rig.nic.rdmaRead(mr.rkey, a + PAGE_SIZE, 2 * PAGE_SIZE).status).toBe('IB_WC_REM_ACCESS_ERR');
      expectNothingLeaked(rig, [mr]);
    });
  }

  it('rejects bad registrations with the kernel errnos and allocates nothing', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
    const reg = (start: number, len: number, access: number, iova = start) =>
      ibRegUserMr(rig.pd, start, len, iova, access);
    // remote write without local write (ib_check_mr_access)
    expect(reg(a, PAGE_SIZE, IB_ACCESS_REMOTE_WRITE | IB_ACCESS_ON_DEMAND)).toBe(-Errno.EINVAL);
    // unknown access bits
    expect(reg(a, PAGE_SIZE, ODP_ACCESS_RW | (1 << 12))).toBe(-Errno.EINVAL);
    // pinned (non-ODP) MRs are not modelled
    expect(reg(a, PAGE_SIZE, IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_READ)).toBe(-Errno.EOPNOTSUPP);
    // hugetlb umems are not modelled
    expect(reg(a, PAGE_SIZE, ODP_ACCESS_RW | IB_ACCESS_HUGETLB)).toBe(-Errno.EOPNOTSUPP);
    // empty range, wrapping range, iova with a different page offset, implicit with iova != 0
    expect(reg(a, 0, ODP_ACCESS_RW)).toBe(-Errno.EINVAL);
    expect(reg(a, Number.MAX_SAFE_INTEGER - 10, ODP_ACCESS_RW)).toBe(-Errno.EOVERFLOW);
    expect(reg(a, PAGE_SIZE, ODP_ACCESS_RW, a + 8)).toBe(-Errno.EINVAL);
    expect(reg(0, Number.MAX_SAFE_INTEGER, ODP_ACCESS_RW, PAGE_SIZE)).toBe(-Errno.EINVAL);
    expect(rig.machine.counters.iovaAllocs).toBe(0);
    expectNothingLeaked(rig, []);
  });

  it('hmm mode refuses a device needing cache syncs (-EOPNOTSUPP) where legacy registers', () => {
    for (const mode of ['legacy', 'hmm'] as const) {
      const rig = createOdpRig({ mode, device: { coherent: false } });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      const r = ibRegUserMr(rig.pd, a, PAGE_SIZE, a, ODP_ACCESS_RW);
      if (mode === 'hmm') {
        expect(r).toBe(-Errno.EOPNOTSUPP);
        expectNothingLeaked(rig, []);
      } else {
        const mr = r as Mlx5IbMr;
        expect(rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([1])).status).toBe('IB_WC_SUCCESS');
        expect(rig.machine.counters.cpuCacheSyncs).toBeGreaterThan(0);
        expectNothingLeaked(rig, [mr]);
      }
    }
  });

  it('an allocation failure of the page lists is -ENOMEM with nothing left behind', () => {
    for (const mode of ['legacy', 'hmm'] as const) {
      for (const nth of [1, 2]) {
        const rig = createOdpRig({ mode });
        const a = mmapAnon(rig.mm, PAGE_SIZE);
        rig.machine.faults.failNth('kvcalloc', nth);
        const r = ibRegUserMr(rig.pd, a, PAGE_SIZE, a, ODP_ACCESS_RW);
        rig.machine.faults.clear();
        if (mode === 'hmm' && nth === 2) {
          // the IOVA path needs no dma_list: only one allocation to fail
          expectNothingLeaked(rig, [r as Mlx5IbMr]);
        } else {
          expect(r).toBe(-Errno.ENOMEM);
          expectNothingLeaked(rig, []);
        }
      }
    }
  });
});

describe('RDMA access beyond the MR', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    it(`${mode}: is rejected by the NIC before any page fault; the handler refuses it too`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 8 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a + PAGE_SIZE, 2 * PAGE_SIZE);
      for (const [va, len] of [
        [a, 8],
        [a + 3 * PAGE_SIZE - 4, 8],
        [a + 3 * PAGE_SIZE, 1],
        [a + PAGE_SIZE, 2 * PAGE_SIZE + 1],
      ] as const) {
        expect(rig.nic.rdmaWrite(mr.rkey, va, new Uint8Array(len)).status).toBe('IB_WC_REM_ACCESS_ERR');
        expect(rig.nic.rdmaRead(mr.rkey, va, len).status).toBe('IB_WC_REM_ACCESS_ERR');
      }
      expect(rig.nic.stats.pageFaultEvents).toBe(0);
      expect(rig.nic.rdmaRead(0xdead00, a, 1).status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(pagefaultMr(mr, a, 8, undefined, 0)).toBe(-Errno.EFAULT);
      expect(pagefaultMr(mr, a + 3 * PAGE_SIZE - 4, 8, undefined, 0)).toBe(-Errno.EFAULT);
      expect(rig.mm.nrPtes).toBe(0);
      expectNothingLeaked(rig, [mr]);
    });
  }
});

describe('permission mismatch', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    it(`${mode}: a writable MR over a read-only VMA fails every fault with -EPERM and maps nothing`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 2 * PAGE_SIZE, PROT_READ);
      const mr = regOdpMr(rig.pd, a, 2 * PAGE_SIZE);
      const r = rig.nic.rdmaRead(mr.rkey, a, 16);
      expect(r.status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(r.errno).toBe(-Errno.EPERM);
      expect(rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(16)).errno).toBe(-Errno.EPERM);
      expect(mr.mkey.mtt.every((e) => e === 0)).toBe(true);
      expect(rig.machine.counters.dmaMapCalls + rig.machine.counters.dmaLinks).toBe(0);
      expectNothingLeaked(rig, [mr]);
    });

    it(`${mode}: a read-only MR over a read-only VMA serves RDMA READ and refuses RDMA WRITE without faulting`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, PAGE_SIZE, PROT_READ);
      const mr = regOdpMr(rig.pd, a, PAGE_SIZE, ODP_ACCESS_RO);
      expect(rig.nic.rdmaRead(mr.rkey, a, 16).status).toBe('IB_WC_SUCCESS');
      const faults = rig.nic.stats.pageFaultEvents;
      const w = rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(16));
      expect(w.status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(w.reason).toMatch(/REMOTE_WRITE/);
      expect(rig.nic.stats.pageFaultEvents).toBe(faults);
      expectNothingLeaked(rig, [mr]);
    });
  }

  it('an MR of another PD cannot be prefetched (-ENOENT); deregistering twice is an error', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
    const other = { ...rig.pd, pdn: 99 } as typeof rig.pd;
    expect(
      ibAdviseMr(other, 0, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [{ addr: a, length: 8, lkey: mr.lkey }]),
    ).toBe(-Errno.ENOENT);
    expect(ibDeregMr(mr)).toBe(0);
    expect(() => ibDeregMr(mr)).toThrow(/twice/);
  });
});
