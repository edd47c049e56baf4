import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  ibAdviseMr,
  ibDeregMr,
} from '../src/ib-verbs.js';
import { IMPLICIT_MR_LENGTH } from '../src/mlx5-mr.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE } from '../src/mm-types.js';
import { MLX5_IB_MTT_READ, MLX5_IB_MTT_WRITE } from '../src/nic.js';
import {
  busToPhys,
  createOdpRig,
  findStaleTranslations,
  mmapAnon,
  ODP_ACCESS_RO,
  odpMetaLiveBytes,
  odpPattern,
  regOdpMr,
} from '../src/testing/index.js';
import { ODP_MAX_RETRIES } from '../src/umem-odp.js';

const MODES = ['legacy', 'hmm'] as const;
const KINDS = ['strict', 'lazy', 'identity', 'none', 'untrusted'] as const;

/** Physical frames any live MTT entry of the device reaches. */
function reachableFrames(rig: ReturnType<typeof createOdpRig>): Set<number> {
  const out = new Set<number>();
  for (const mr of rig.ibdev.odpMkeys.values()) {
    for (const e of mr.mkey.mtt) if (e !== 0) out.add(busToPhys(rig.dev, e - (e % 4)));
  }
  return out;
}

describe('pagefault_real_mr', () => {
  for (const mode of MODES) {
    for (const kind of KINDS) {
      it(`${mode} ${kind}: RDMA WRITE faults pages in and the CPU reads the bytes; CPU writes reach RDMA READ`, () => {
        const rig = createOdpRig({ mode, kind });
        const a = mmapAnon(rig.mm, 8 * PAGE_SIZE);
        const mr = regOdpMr(rig.pd, a, 8 * PAGE_SIZE);
        const data = odpPattern(5 * PAGE_SIZE, 11);
        const c = rig.nic.rdmaWrite(mr.rkey, a + 300, data);
        expect(c.status).toBe('IB_WC_SUCCESS');
        expect(c.pageFaults).toBe(1);
        expect(rig.mm.read(a + 300, data.length)).toEqual(data);
        const cpu = odpPattern(PAGE_SIZE, 12);
        rig.mm.write(a + 7 * PAGE_SIZE, cpu);
        const r = rig.nic.rdmaRead(mr.rkey, a + 7 * PAGE_SIZE, PAGE_SIZE);
        expect(r.status).toBe('IB_WC_SUCCESS');
        expect(r.data).toEqual(cpu);
        expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
        expect(rig.nic.stats.iommuFaults).toBe(0);
        // the MR's page translations: hmm mode uses one IOVA range, legacy one IOVA per page
        const iova = rig.machine.counters.iovaAllocs;
        if (rig.dev.dmaIommu) expect(iova).toBe(mode === 'hmm' ? 1 : 7);
        else expect(iova).toBe(0);
        expect(ibDeregMr(mr)).toBe(0);
        expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
        expect(odpMetaLiveBytes(rig.machine)).toBe(0);
      });
    }
  }

  it('a writable MR maps pages writable even for a read fault (the kernel asks for write access up front)', () => {
    for (const mode of MODES) {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 2 * PAGE_SIZE);
      const rw = regOdpMr(rig.pd, a, PAGE_SIZE);
      const ro = regOdpMr(rig.pd, a + PAGE_SIZE, PAGE_SIZE, ODP_ACCESS_RO);
      rig.nic.rdmaRead(rw.rkey, a, 8);
      rig.nic.rdmaRead(ro.rkey, a + PAGE_SIZE, 8);
      expect(rw.mkey.mtt[0]! % 4).toBe(MLX5_IB_MTT_READ | MLX5_IB_MTT_WRITE);
      // read-only MR: legacy writes the caller's READ-only access mask into the dma_list; hmm mode's
      // populate_mtt copies HMM_PFN_WRITE of the (writable) CPU entry. The mkey's access flags still
      // forbid remote writes either way.
      expect(ro.mkey.mtt[0]! % 4).toBe(
        mode === 'legacy' ? MLX5_IB_MTT_READ : MLX5_IB_MTT_READ | MLX5_IB_MTT_WRITE,
      );
      expect(rig.nic.rdmaWrite(ro.rkey, a + PAGE_SIZE, new Uint8Array(1)).status).toBe(
        'IB_WC_REM_ACCESS_ERR',
      );
    }
  });

  for (const mode of MODES) {
    it(`${mode}: an invalidation between read_begin/hmm_range_fault and the locked retry check makes the handler retry; no stale translation survives`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
      const data = odpPattern(PAGE_SIZE, 5);
      rig.mm.write(a + PAGE_SIZE, data);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      // the snapshot at registration already mapped the present page: drop it so the NIC faults
      rig.mm.migratePages(a + PAGE_SIZE, PAGE_SIZE);
      let raced = -1;
      rig.ibdev.hooks.raceWindow = (point, umem, attempt) => {
        if (point === 'after_range_fault' && attempt === 0) {
          raced = umem.pfnList.pfn(1) * PAGE_SIZE;
          expect(rig.mm.migratePages(a + PAGE_SIZE, PAGE_SIZE)).toBe(1);
          rig.machine.phys.fill(raced, PAGE_SIZE, 0xee); // the old frame is reused by someone else
        }
      };
      const r = rig.nic.rdmaRead(mr.rkey, a + PAGE_SIZE, PAGE_SIZE);
      rig.ibdev.hooks.raceWindow = undefined;
      expect(r.status).toBe('IB_WC_SUCCESS');
      expect(r.data).toEqual(data);
      expect(rig.ibdev.stats.umem.seqRetries).toBe(1);
      expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
      expect(reachableFrames(rig).has(raced)).toBe(false);
    });
  }

  it('an invalidation after read_begin is caught by hmm_range_fault itself (-EBUSY, retried)', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    rig.mm.write(a, new Uint8Array([1]));
    const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
    rig.mm.migratePages(a, PAGE_SIZE);
    rig.ibdev.hooks.raceWindow = (point, _u, attempt) => {
      if (point === 'after_read_begin' && attempt === 0) rig.mm.migratePages(a, PAGE_SIZE);
    };
    expect(rig.nic.rdmaRead(mr.rkey, a, 1).data).toEqual(new Uint8Array([1]));
    rig.ibdev.hooks.raceWindow = undefined;
    expect(rig.ibdev.stats.umem.busyRetries).toBe(1);
    expect(rig.ibdev.stats.umem.seqRetries).toBe(0);
    expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
  });

  it('gives up with an error completion when every attempt collides (bounded retries)', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    rig.mm.write(a, new Uint8Array([1]));
    const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
    rig.mm.madviseDontneed(a, PAGE_SIZE);
    rig.ibdev.hooks.raceWindow = (point) => {
      if (point === 'after_range_fault') rig.mm.migratePages(a, PAGE_SIZE);
    };
    const r = rig.nic.rdmaRead(mr.rkey, a, 1);
    rig.ibdev.hooks.raceWindow = undefined;
    expect(r.status).toBe('IB_WC_REM_ACCESS_ERR');
    expect(rig.ibdev.stats.umem.seqRetries).toBe(ODP_MAX_RETRIES);
    expect(rig.nic.rdmaRead(mr.rkey, a, 1).status).toBe('IB_WC_SUCCESS');
  });
});

describe('mlx5_ib_invalidate_range', () => {
  for (const mode of MODES) {
    for (const kind of KINDS) {
      it(`${mode} ${kind}: after migration the NIC re-faults to the new frame; after munmap it faults and fails; the old frame is never touched`, () => {
        const rig = createOdpRig({ mode, kind });
        const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
        const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
        const data = odpPattern(4 * PAGE_SIZE, 21);
        expect(rig.nic.rdmaWrite(mr.rkey, a, data).status).toBe('IB_WC_SUCCESS');
        const old = rig.mm.followPte(a + 2 * PAGE_SIZE)!.phys;
        expect(rig.mm.migratePages(a + 2 * PAGE_SIZE, PAGE_SIZE)).toBe(1);
        const sentinel = new Uint8Array(PAGE_SIZE).fill(0x5a);
        rig.machine.phys.write(old, sentinel); // the freed frame now belongs to someone else
        expect(reachableFrames(rig).has(old)).toBe(false);
        const r = rig.nic.rdmaRead(mr.rkey, a, 4 * PAGE_SIZE);
        expect(r.status).toBe('IB_WC_SUCCESS');
        expect(r.data).toEqual(data);
        const update = odpPattern(PAGE_SIZE, 22);
        expect(rig.nic.rdmaWrite(mr.rkey, a + 2 * PAGE_SIZE, update).status).toBe('IB_WC_SUCCESS');
        expect(rig.mm.read(a + 2 * PAGE_SIZE, PAGE_SIZE)).toEqual(update);
        expect(rig.machine.phys.read(old, PAGE_SIZE)).toEqual(sentinel);
        expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);

        const gone = rig.mm.followPte(a + PAGE_SIZE)!.phys;
        expect(rig.mm.munmap(a + PAGE_SIZE, PAGE_SIZE)).toBe(0);
        rig.machine.phys.write(gone, sentinel);
        expect(reachableFrames(rig).has(gone)).toBe(false);
        expect(rig.nic.rdmaRead(mr.rkey, a + PAGE_SIZE, 16).status).toBe('IB_WC_REM_ACCESS_ERR');
        expect(rig.nic.rdmaWrite(mr.rkey, a + PAGE_SIZE, new Uint8Array(16)).status).toBe(
          'IB_WC_REM_ACCESS_ERR',
        );
        expect(rig.machine.phys.read(gone, PAGE_SIZE)).toEqual(sentinel);
        expect(rig.nic.stats.iommuFaults).toBe(0);
        ibDeregMr(mr);
        expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
      });
    }
  }

  for (const mode of MODES) {
    it(`${mode} lazy: the IOTLB ${mode === 'hmm' ? 'is invalidated inside dma_iova_unlink' : 'stays stale until the flush queue flushes'}`, () => {
      const rig = createOdpRig({ mode, kind: 'lazy' });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
      rig.nic.rdmaWrite(mr.rkey, a, odpPattern(PAGE_SIZE, 1));
      const e = mr.mkey.mtt[0]!;
      const bus = e - (e % 4);
      const inv = rig.machine.counters.iotlbInvRange + rig.machine.counters.iotlbInvAll;
      rig.mm.munmap(a, PAGE_SIZE);
      const probe = new Uint8Array(16);
      // only a device ignoring its zapped MTT could try this bus address
      const raw = rig.dev.engine.read(bus, probe);
      const invNow = rig.machine.counters.iotlbInvRange + rig.machine.counters.iotlbInvAll;
      if (mode === 'hmm') {
        expect(raw).not.toBe(0);
        expect(invNow - inv).toBe(1);
      } else {
        expect(raw).toBe(0); // stale IOTLB entry still translates
        expect(invNow - inv).toBe(0);
        rig.machine.clock.advance(11e6); // flush-queue timeout (10 ms)
        expect(rig.dev.engine.read(bus, probe)).not.toBe(0);
      }
      expect(rig.nic.rdmaRead(mr.rkey, a, 16).status).toBe('IB_WC_REM_ACCESS_ERR');
    });
  }

  it('refuses a non-blockable invalidation: the OOM reaper skips the MR-covered VMA', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
    rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([3]));
    expect(rig.mm.oomReap()).toEqual({ reaped: 0, skipped: 1 });
    expect(rig.nic.rdmaRead(mr.rkey, a, 1).data).toEqual(new Uint8Array([3]));
  });

  for (const mode of MODES) {
    it(`${mode}: pages the NIC wrote are dirtied on unmap, so reclaim writes a shared file page back`, () => {
      const rig = createOdpRig({ mode });
      const f = rig.mm.createFile('shared', PAGE_SIZE);
      const a = rig.mm.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, f);
      const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
      const data = odpPattern(64, 8);
      expect(rig.nic.rdmaWrite(mr.rkey, a + 64, data).status).toBe('IB_WC_SUCCESS');
      expect(rig.mm.reclaim(a, PAGE_SIZE)).toBe(1);
      expect(f.writebacks).toBe(1);
      expect(f.readBacking(0).subarray(64, 128)).toEqual(data);
      expect(rig.mm.read(a + 64, 64)).toEqual(data);
    });

    it(`${mode}: fork write-protects; the next RDMA WRITE breaks COW in the parent and the child keeps its copy`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
      rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([1, 1]));
      const child = rig.mm.fork();
      expect(mr.mkey.mtt[0]).toBe(0);
      expect(rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([2, 2])).status).toBe('IB_WC_SUCCESS');
      expect(rig.mm.read(a, 2)).toEqual(new Uint8Array([2, 2]));
      expect(child.read(a, 2)).toEqual(new Uint8Array([1, 1]));
      expect(rig.mm.stats.cowBreaks).toBe(1);
      expect(rig.ibdev.stats.umem.busyRetries).toBe(1); // hmm_range_fault's own COW invalidated the range
      expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
      child.exit();
    });

    it(`${mode}: mprotect(PROT_READ) zaps the MR; a writable MR then fails every fault with -EPERM`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, PAGE_SIZE);
      rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([1]));
      rig.mm.mprotect(a, PAGE_SIZE, PROT_READ);
      const w = rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array([2]));
      expect(w.status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(w.errno).toBe(-1);
      expect(rig.nic.rdmaRead(mr.rkey, a, 1).status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(rig.mm.read(a, 1)).toEqual(new Uint8Array([1]));
    });

    it(`${mode}: process exit zaps and unmaps everything (RELEASE); the MR then fails and deregisters cleanly`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(4 * PAGE_SIZE).fill(1));
      const free = rig.machine.pages.nrFreePages;
      rig.mm.exit();
      expect(rig.machine.pages.nrFreePages).toBe(free + 4);
      expect(mr.mkey.mtt.every((e) => e === 0)).toBe(true);
      expect(rig.nic.rdmaRead(mr.rkey, a, 1).status).toBe('IB_WC_REM_ACCESS_ERR');
      ibDeregMr(mr);
      expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
      expect(odpMetaLiveBytes(rig.machine)).toBe(0);
    });
  }
});

describe('pagefault_implicit_mr', () => {
  const SHIFT = 21; // 2 MiB children keep the test small; the kernel uses 1 GiB
  for (const mode of MODES) {
    it(`${mode}: faults create one child MR per granule (hmm: one IOVA reservation each), reachable through the KSM`, () => {
      const rig = createOdpRig({ mode, imrMttShift: SHIFT });
      const a = mmapAnon(rig.mm, 4 << 20);
      const imr = regOdpMr(rig.pd, 0, IMPLICIT_MR_LENGTH, undefined, 0);
      expect(imr.isOdpImplicit).toBe(true);
      const data = odpPattern(2 * PAGE_SIZE, 31);
      const va = a + (2 << 20) - PAGE_SIZE - 100;
      expect(rig.nic.rdmaWrite(imr.rkey, va, data).status).toBe('IB_WC_SUCCESS');
      expect(rig.mm.read(va, data.length)).toEqual(data);
      expect(imr.implicitChildren.size).toBe(2);
      expect(rig.ibdev.stats.implicitChildrenCreated).toBe(2);
      expect(imr.mkey.ksm.size).toBe(2);
      if (mode === 'hmm') expect(rig.machine.counters.iovaAllocs).toBe(2);
      else expect(rig.machine.counters.iovaAllocs).toBe(3); // one per page mapped
      expect(rig.nic.rdmaRead(imr.rkey, va, data.length).data).toEqual(data);
      expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
      // a page outside any VMA fails
      expect(rig.nic.rdmaRead(imr.rkey, a + (8 << 20), 8).status).toBe('IB_WC_REM_ACCESS_ERR');
      expect(ibDeregMr(imr)).toBe(0);
      expect(odpMetaLiveBytes(rig.machine)).toBe(0);
      expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
      expect(rig.nic.mkeys.size).toBe(0);
    });

    it(`${mode}: a child emptied by munmap is reaped by queued work; the next fault creates a new one`, () => {
      const rig = createOdpRig({ mode, imrMttShift: SHIFT });
      const a = mmapAnon(rig.mm, 2 << 20);
      const imr = regOdpMr(rig.pd, 0, IMPLICIT_MR_LENGTH, undefined, 0);
      rig.nic.rdmaWrite(imr.rkey, a + PAGE_SIZE, new Uint8Array([1]));
      const child = imr.implicitChildren.get(a / (2 << 20))!;
      rig.mm.munmap(a, 2 << 20);
      expect(imr.implicitChildren.size).toBe(0);
      expect(rig.ibdev.workQueue.length).toBe(1);
      rig.ibdev.flushWork();
      expect(rig.ibdev.stats.implicitChildrenDestroyed).toBe(1);
      expect(child.deregistered).toBe(true);
      expect(imr.mkey.ksm.size).toBe(0);
      mmapAnon(rig.mm, 2 << 20, PROT_READ | PROT_WRITE, a);
      expect(rig.nic.rdmaWrite(imr.rkey, a, new Uint8Array([2])).status).toBe('IB_WC_SUCCESS');
      expect(rig.ibdev.stats.implicitChildrenCreated).toBe(2);
      ibDeregMr(imr);
      expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
    });
  }

  it('npages drifts up in hmm mode (populate_mtt counts re-populated pages), so an emptied child can survive', () => {
    const outcome: Record<string, { npages: number; destroyed: number }> = {};
    for (const mode of MODES) {
      const rig = createOdpRig({ mode, imrMttShift: SHIFT });
      const a = mmapAnon(rig.mm, 2 << 20);
      const imr = regOdpMr(rig.pd, 0, IMPLICIT_MR_LENGTH, undefined, 0);
      rig.nic.rdmaWrite(imr.rkey, a, new Uint8Array([1]));
      const child = imr.implicitChildren.get(a / (2 << 20))!;
      expect(child.umem.npages).toBe(1);
      // prefetch the page that is already mapped: populate_mtt runs over it again
      const sge = [{ addr: a, length: PAGE_SIZE, lkey: imr.lkey }];
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, sge),
      ).toBe(0);
      rig.mm.munmap(a, PAGE_SIZE);
      rig.ibdev.flushWork();
      outcome[mode] = { npages: child.umem.npages, destroyed: rig.ibdev.stats.implicitChildrenDestroyed };
      ibDeregMr(imr);
      expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
    }
    expect(outcome).toEqual({ legacy: { npages: 0, destroyed: 1 }, hmm: { npages: 1, destroyed: 0 } });
  });
});

describe('mlx5_ib_advise_mr', () => {
  for (const mode of MODES) {
    it(`${mode}: PREFETCH maps read-only; a later RDMA WRITE faults again and upgrades the entry`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      const sge = [{ addr: a, length: 4 * PAGE_SIZE, lkey: mr.lkey }];
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, sge),
      ).toBe(0);
      expect([...mr.mkey.mtt].map((e) => e % 4)).toEqual([1, 1, 1, 1]);
      expect(rig.nic.rdmaRead(mr.rkey, a, 4 * PAGE_SIZE).pageFaults).toBe(0);
      const w = rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(8));
      expect(w.status).toBe('IB_WC_SUCCESS');
      expect(w.pageFaults).toBe(1);
      expect(mr.mkey.mtt[0]! % 4).toBe(MLX5_IB_MTT_READ | MLX5_IB_MTT_WRITE);
      expect(rig.ibdev.stats.prefetches).toBe(1);
      expect(findStaleTranslations(rig.ibdev, rig.mm)).toEqual([]);
    });

    it(`${mode}: PREFETCH_WRITE maps writable; PREFETCH_NO_FAULT maps only present pages`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 4 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 4 * PAGE_SIZE);
      rig.mm.write(a + 3 * PAGE_SIZE, new Uint8Array([1]));
      const faults = rig.mm.stats.faults;
      const sge = [{ addr: a, length: 4 * PAGE_SIZE, lkey: mr.lkey }];
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, sge),
      ).toBe(0);
      expect(rig.mm.stats.faults).toBe(faults);
      expect([...mr.mkey.mtt].map((e) => e !== 0)).toEqual([false, false, false, true]);
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, sge),
      ).toBe(0);
      expect([...mr.mkey.mtt].map((e) => e % 4)).toEqual([3, 3, 3, 3]);
      expect(rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(4 * PAGE_SIZE)).pageFaults).toBe(0);
    });

    it(`${mode}: without FLUSH the prefetch is queued and runs with the next device work`, () => {
      const rig = createOdpRig({ mode });
      const a = mmapAnon(rig.mm, 2 * PAGE_SIZE);
      const mr = regOdpMr(rig.pd, a, 2 * PAGE_SIZE);
      expect(
        ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, 0, [
          { addr: a, length: 2 * PAGE_SIZE, lkey: mr.lkey },
        ]),
      ).toBe(0);
      expect(mr.mkey.mtt[0]).toBe(0);
      rig.ibdev.flushWork();
      expect(mr.mkey.mtt[0]).not.toBe(0);
    });
  }

  it('rejects PREFETCH_WRITE on a read-only MR and unknown keys (-ENOENT), a range without VMA (-EFAULT)', () => {
    const rig = createOdpRig();
    const a = mmapAnon(rig.mm, PAGE_SIZE);
    const ro = regOdpMr(rig.pd, a, 2 * PAGE_SIZE, ODP_ACCESS_RO);
    const flush = IB_UVERBS_ADVISE_MR_FLAG_FLUSH;
    expect(
      ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE, flush, [
        { addr: a, length: 8, lkey: ro.lkey },
      ]),
    ).toBe(-2);
    expect(
      ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, flush, [{ addr: a, length: 8, lkey: 0x999 }]),
    ).toBe(-2);
    expect(
      ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, flush, [
        { addr: a, length: 2 * PAGE_SIZE, lkey: ro.lkey },
      ]),
    ).toBe(-14);
    expect(ibAdviseMr(rig.pd, 7, flush, [{ addr: a, length: 8, lkey: ro.lkey }])).toBe(-95);
  });
});
