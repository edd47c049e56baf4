// RDMA ODP across iommu + dma-api + rdma-odp: one seeded workload of NIC RDMA READs/WRITEs (page
// faults), CPU writes, migrations, reclaim, MADV_DONTNEED and munmap + mmap (invalidations) on an
// ODP MR, run through the legacy umem (≤ v6.15: dma_map_page per page + pfn_list + dma_list) and
// the hmm_dma_map umem (v6.16+: one dma_iova_try_alloc per umem, link per page, pfn list only).
//
// The counter claims are checked on the packages directly (a driver below, with dma-debug on and
// a stale-translation check after every mm event), so a failure points at the layer that broke;
// the CLI's `odpWorkload` then gets an end-to-end smoke run through both paths, checking that
// what the demo prints carries the same claims.
import { dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { type CounterSnapshot, diffCounters, PAGE_SIZE, Prng } from '@iovalink/iommu';
import { ibDeregMr, type OdpMode, PROT_READ, PROT_WRITE } from '@iovalink/rdma-odp';
import {
  createOdpRig,
  findStaleTranslations,
  mmapAnon,
  odpMetaLiveBytes,
  odpPattern,
  regOdpMr,
} from '@iovalink/rdma-odp/testing';
import { odpWorkload } from 'iovalink/workloads';
import { describe, expect, it } from 'vitest';
import { digest, withoutSimTime, workloadCtx } from './helpers.js';

const PAGES = 48;
const STEPS = 400;

type Kind = 'strict' | 'lazy' | 'identity' | 'none';

/** One seeded ODP run: what the process saw, and what the kernel spent from reg_mr to dereg_mr. */
function runOdp(mode: OdpMode, kind: Kind, seed: number, debug = true) {
  const rig = createOdpRig({ mode, kind, debug, memSize: 64 << 20, seed });
  const { mm, nic, machine } = rig;
  const len = PAGES * PAGE_SIZE;
  const a = mmapAnon(mm, len);
  const ops = new Prng(seed);
  const transcript: string[] = [];
  const before: CounterSnapshot = machine.counters.snapshot();
  const mr = regOdpMr(rig.pd, a, len);
  for (let step = 0; step < STEPS; step++) {
    const r = ops.int(0, 99);
    const off = ops.int(0, len - 1);
    const n = Math.min(ops.int(1, 3 * PAGE_SIZE), len - off);
    const page = ops.int(0, PAGES - 1);
    const count = Math.min(ops.int(1, 6), PAGES - page);
    const va = a + page * PAGE_SIZE;
    if (r < 35) {
      const c = nic.rdmaWrite(mr.rkey, a + off, odpPattern(n, step));
      transcript.push(`W ${off}+${n}: ${c.status} ${c.byteLen}`);
    } else if (r < 65) {
      const c = nic.rdmaRead(mr.rkey, a + off, n);
      transcript.push(`R ${off}+${n}: ${c.status} ${c.byteLen} ${digest(c.data!.subarray(0, c.byteLen))}`);
    } else if (r < 75) {
      mm.write(a + off, odpPattern(Math.min(n, 128), step + 7777));
      transcript.push(`cpu W ${off}`);
    } else {
      if (r < 87) transcript.push(`migrate ${page}+${count}: ${mm.migratePages(va, count * PAGE_SIZE)}`);
      else if (r < 92) transcript.push(`reclaim ${page}+${count}: ${mm.reclaim(va, count * PAGE_SIZE)}`);
      else if (r < 96)
        transcript.push(`dontneed ${page}+${count}: ${mm.madviseDontneed(va, count * PAGE_SIZE)}`);
      else {
        transcript.push(`munmap ${page}+${count}: ${mm.munmap(va, count * PAGE_SIZE)}`);
        mmapAnon(mm, count * PAGE_SIZE, PROT_READ | PROT_WRITE, va);
      }
      const stale = findStaleTranslations(rig.ibdev, mm);
      if (stale.length > 0) throw new Error(`${mode} ${kind} step ${step}: ${stale[0]}`);
    }
  }
  const liveMetaBytes = odpMetaLiveBytes(machine);
  expect(ibDeregMr(mr)).toBe(0);
  machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy: the flush-queue timer fires
  const d = diffCounters(before, machine.counters.snapshot());
  let memory = 2166136261;
  for (let p = 0; p < PAGES; p++) memory = digest(mm.read(a + p * PAGE_SIZE, PAGE_SIZE), memory);
  // nothing left behind: page lists freed, no live DMA mapping, no IOMMU fault on the way
  expect(odpMetaLiveBytes(machine)).toBe(0);
  expect(nic.stats.iommuFaults).toBe(0);
  if (debug) expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
  const stats = rig.ibdev.stats;
  mm.exit();
  return {
    transcript,
    memory,
    liveMetaBytes,
    sgBytes: (d.meta.scatterlist?.bytes ?? 0) + (d.meta.sg_pool?.bytes ?? 0),
    iovaAllocs: d.events.iovaAllocs,
    iotlbInvalidations: d.events.iotlbInvRange + d.events.iotlbInvAll,
    dmaMapCalls: d.events.dmaMapCalls,
    dmaLinks: d.events.dmaLinks,
    legacyPageMaps: stats.umem.legacyPageMaps,
    pageFaults: stats.pageFaults,
    invalidations: stats.invalidations,
  };
}

describe('ODP legacy umem vs hmm_dma_map umem (iommu + dma-api + rdma-odp)', () => {
  for (const kind of ['strict', 'lazy'] as const) {
    for (const seed of [1, 2]) {
      it(`${kind}, seed ${seed}: same bytes; no scatterlists; 16 vs 8 B/page; one IOVA allocation per faulted page vs one per umem`, () => {
        const legacy = runOdp('legacy', kind, seed);
        const hmm = runOdp('hmm', kind, seed);
        // the workload really exercised faults and invalidations
        expect(legacy.pageFaults).toBeGreaterThan(20);
        expect(legacy.invalidations).toBeGreaterThan(10);
        // same data outcomes, step by step and at the end
        expect(hmm.transcript).toEqual(legacy.transcript);
        expect(hmm.memory).toBe(legacy.memory);
        expect(hmm.pageFaults).toBe(legacy.pageFaults);
        // ODP never used scatterlists, in either generation
        expect(legacy.sgBytes).toBe(0);
        expect(hmm.sgBytes).toBe(0);
        // pfn_list + dma_list vs the pfn list alone
        expect(legacy.liveMetaBytes).toBe(16 * PAGES);
        expect(hmm.liveMetaBytes).toBe(8 * PAGES);
        // the same page mappings happen in both modes (pages re-faulted after invalidations too):
        // legacy maps each with its own dma_map_page and IOVA allocation, hmm links each into the
        // one IOVA range it reserved when the umem was created
        expect(legacy.legacyPageMaps).toBeGreaterThan(PAGES);
        expect(legacy.dmaMapCalls).toBe(legacy.legacyPageMaps);
        expect(legacy.iovaAllocs).toBe(legacy.legacyPageMaps);
        expect(hmm.dmaLinks).toBe(legacy.legacyPageMaps);
        expect(hmm.dmaMapCalls).toBe(0);
        expect(hmm.legacyPageMaps).toBe(0);
        expect(hmm.iovaAllocs).toBe(1);
        // IOTLB: both unmap page by page; on a strict domain that is one ranged invalidation per
        // unmapped page in either mode. On a flush-queue domain legacy defers to the queue's
        // flush-all while dma_iova_unlink invalidates at once (rdma-odp README, "Measured").
        if (kind === 'strict') expect(hmm.iotlbInvalidations).toBe(legacy.iotlbInvalidations);
        else expect(legacy.iotlbInvalidations).toBeLessThan(hmm.iotlbInvalidations);
      });
    }
  }

  it.each(['identity', 'none'] as const)(
    '%s device (dma-debug off): same bytes, no IOVA allocations, still 16 vs 8 B/page',
    (kind) => {
      const legacy = runOdp('legacy', kind, 3, false);
      const hmm = runOdp('hmm', kind, 3, false);
      expect(hmm.transcript).toEqual(legacy.transcript);
      expect(hmm.memory).toBe(legacy.memory);
      expect(legacy.iovaAllocs).toBe(0);
      expect(hmm.iovaAllocs).toBe(0);
      expect(legacy.sgBytes + hmm.sgBytes).toBe(0);
      expect(legacy.liveMetaBytes).toBe(16 * PAGES);
      expect(hmm.liveMetaBytes).toBe(8 * PAGES);
    },
  );
});

describe('iovalink odpWorkload (end to end, both paths)', () => {
  const small = odpWorkload({ quick: { pages: 32, steps: 600 }, full: { pages: 32, steps: 600 } });

  it.each(['strict', 'lazy'] as const)('%s: verified; the table shows the ODP claims', async (iommu) => {
    const progress: number[] = [];
    const r = await small.run({ ...workloadCtx(iommu), onProgress: (done) => progress.push(done) });
    expect(r.subsystem).toBe('odp');
    const sg = r.paths.find((p) => p.path === 'sg')!;
    const iova = r.paths.find((p) => p.path === 'iova')!;
    expect(sg.verified && iova.verified).toBe(true);
    expect(sg.ops).toBe(iova.ops);
    expect(sg.ops).toBeGreaterThan(300);
    expect(sg.sgBytesPerOp).toBe(0);
    expect(iova.sgBytesPerOp).toBe(0);
    expect(sg.metaBytesPerPage).toBe(16);
    expect(iova.metaBytesPerPage).toBe(8);
    expect(iova.iovaAllocsPerOp * iova.ops).toBeCloseTo(1, 9); // one per umem
    expect(sg.iovaAllocsPerOp).toBeGreaterThan(iova.iovaAllocsPerOp);
    expect(progress.length).toBeGreaterThan(2);
    expect(progress.at(-1)).toBe(2 * 600);
  });

  it('is deterministic for a seed (everything but simulator time)', async () => {
    expect(withoutSimTime(await small.run(workloadCtx('strict', 9)))).toEqual(
      withoutSimTime(await small.run(workloadCtx('strict', 9))),
    );
  });
});
