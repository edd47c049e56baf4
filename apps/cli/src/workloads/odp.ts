/**
 * RDMA ODP workload for the demo: one on-demand-paging memory region over a process's anonymous
 * memory, driven by a seeded mix of NIC RDMA READs and WRITEs (which page-fault through the mlx5
 * handler), CPU writes, page migrations, reclaim, `madvise(MADV_DONTNEED)` and munmap + mmap
 * (which invalidate through the mmu interval notifier), every byte the NIC reads and every page
 * at the end checked against a reference copy. Kernel counterparts: drivers/infiniband/core/
 * umem_odp.c and hw/mlx5/odp.c as modelled by `@iovalink/rdma-odp`.
 *
 * The two paths map onto the two kernel generations of ODP DMA mapping:
 * - `'sg'` = legacy ODP (umem mode `'legacy'`, ≤ v6.15): one `ib_dma_map_page` per faulted page
 *   (one IOVA allocation each) and a `pfn_list` + `dma_list` of 8 bytes a page each. ODP never used
 *   scatterlists, so this path's scatterlist bytes are 0 too: it is the "legacy mapping" column, not
 *   a scatterlist one.
 * - `'iova'` = hmm_dma_map ODP (umem mode `'hmm'`, v6.16+): one `dma_iova_try_alloc` for the whole
 *   umem at registration, `dma_iova_link` per faulted page, the pfn list alone (8 bytes a page).
 *
 * Measures: one op = one NIC request (an RDMA READ or WRITE arriving at the responder), whether it
 * page-faulted or not; faults, invalidations and registration/deregistration of the MR are costs
 * spread over those ops (both paths run the same ops and take the same faults). The counter window
 * and the simulator time cover `ib_reg_user_mr` → the request mix → `ib_dereg_mr` → one flush-queue
 * timeout of virtual time (so lazy domains' deferred IOTLB flushes are counted); the final
 * verification is outside. Both paths first run twice untimed at a small size, so the path measured
 * first does not also pay for JIT compilation. `keptMetaBytes` is the live ODP page-list metadata
 * (pfn_list, dma_list, hmm_dma_map lists) while the MR is registered and `pages` the MR's pages, so
 * metaBytesPerPage is 16 (legacy) vs 8 (hmm).
 */
import { dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { diffCounters, PAGE_SIZE, Prng } from '@iovalink/iommu';
import {
  ibAllocPd,
  ibDeregMr,
  ibRegUserMr,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  Mm,
  mlx5IbAdd,
  type OdpMode,
  PROT_READ,
  PROT_WRITE,
} from '@iovalink/rdma-odp';
import { ODP_ACCESS_RW, odpMetaLiveBytes } from '@iovalink/rdma-odp/testing';
import { type DmaPath, pathResult, type WorkloadResult } from '../results.js';
import { createRig } from '../rig.js';
import { fnv1a, type PathRun, runBothPaths } from './both-paths.js';
import type { Workload, WorkloadContext } from './types.js';

/** The umem mode each demo path runs (see the file header). */
export const ODP_MODE_OF_PATH: Record<DmaPath, OdpMode> = { sg: 'legacy', iova: 'hmm' };

/** Size of one ODP run (no kernel counterpart). */
export interface OdpWorkloadSize {
  /** Pages of the MR (and of the mmap'd region under it). */
  pages: number;
  /** Steps of the seeded mix (each a NIC request, a CPU write or an mm event). */
  steps: number;
}

/** Sizes of the demo run: quick (~64-page MR) and full (1024-page MR). */
export const ODP_SIZES: { quick: OdpWorkloadSize; full: OdpWorkloadSize } = {
  quick: { pages: 64, steps: 4_000 },
  full: { pages: 1024, steps: 40_000 },
};

/** Size of the untimed warm-up runs of both paths before measuring. */
const ODP_WARMUP: OdpWorkloadSize = { pages: 64, steps: 3_000 };

/** What one path's run did, besides its PathResult (for tests and reports). */
export interface OdpRunStats {
  /** NIC requests (= ops). */
  nicOps: number;
  /** Bytes moved by the NIC (READ + WRITE). */
  nicBytes: number;
  /** Page-fault events the mlx5 handler resolved. */
  pageFaults: number;
  /** Invalidation callbacks that zapped MTT entries. */
  invalidations: number;
  /**
   * Pages the fault handler wrote into the MTT (mlx5 `num_pages`: pages already mapped count
   * again), the same on both paths; on IOMMU domains the legacy path's `iovaAllocs` counts the
   * newly mapped ones.
   */
  pagesMapped: number;
  /** IOVA allocations in the counter window. */
  iovaAllocs: number;
  /** FNV-1a digest of the region's final contents (equal on both paths for a seed). */
  digest: string;
}

/** Bytes of the seeded data pool that writes take their data from (built before timing starts). */
const POOL_BYTES = 1 << 20;

/** A seeded xorshift byte pool, so written data differs per write and is reproducible. */
function dataPool(seed: number): Uint8Array {
  const words = new Uint32Array(POOL_BYTES / 4);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/**
 * Runs one path of the ODP workload on a fresh rig (models a process with an ODP MR on an mlx5
 * NIC: `ib_reg_user_mr` with `IB_ACCESS_ON_DEMAND`, responder-side RDMA under page faults and mmu
 * notifier invalidations, `ib_dereg_mr`; umem_odp.c + hw/mlx5/odp.c). Throws if any NIC request
 * fails or any byte differs from the reference.
 */
export function runOdpPath(
  path: DmaPath,
  ctx: WorkloadContext,
  size: OdpWorkloadSize,
  progress?: (stepsDone: number) => void,
): PathRun<OdpRunStats> {
  const rig = createRig({ iommu: ctx.iommu, seed: ctx.seed, debug: ctx.debug, memSize: 1 << 30 });
  ctx.onMachine?.(rig.machine, path);
  const machine = rig.machine;
  const dev = rig.device(`mlx5-${path}`);
  const ibdev = mlx5IbAdd(dev, { mode: ODP_MODE_OF_PATH[path] });
  const nic = ibdev.nic;
  const mm = new Mm(machine, { name: 'odp-app' });
  const pd = ibAllocPd(ibdev, mm);
  const len = size.pages * PAGE_SIZE;
  const base = mm.mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (base < 0) throw new Error(`ODP (${path}): mmap failed (${base})`);
  const ref = new Uint8Array(len); // what the region must hold; anonymous memory starts zeroed
  const rng = new Prng(ctx.seed ^ 0x0d9_0d9);
  const pool = dataPool(ctx.seed);
  const problems: string[] = [];
  let nicOps = 0;
  let nicBytes = 0;
  const progressEvery = Math.max(1, Math.floor(size.steps / 50));

  const before = machine.counters.snapshot();
  const t0 = performance.now();
  const mr = ibRegUserMr(pd, base, len, base, ODP_ACCESS_RW);
  if (typeof mr === 'number') throw new Error(`ODP (${path}): ib_reg_user_mr failed (${mr})`);
  for (let step = 0; step < size.steps; step++) {
    const r = rng.int(0, 99);
    if (r < 65) {
      // a NIC request: offset anywhere in the MR, 1 B .. 4 pages, clipped to the MR
      const off = rng.int(0, len - 1);
      const n = Math.min(rng.int(1, 4 * PAGE_SIZE), len - off);
      nicOps++;
      nicBytes += n;
      if (r < 35) {
        const at = rng.int(0, POOL_BYTES - n);
        const data = pool.subarray(at, at + n);
        const c = nic.rdmaWrite(mr.rkey, base + off, data);
        if (c.status !== 'IB_WC_SUCCESS' || c.byteLen !== n) {
          problems.push(`step ${step}: RDMA WRITE ${off}+${n}: ${c.status} ${c.reason ?? ''}`);
        }
        ref.set(data, off);
      } else {
        const c = nic.rdmaRead(mr.rkey, base + off, n);
        if (c.status !== 'IB_WC_SUCCESS' || c.byteLen !== n) {
          problems.push(`step ${step}: RDMA READ ${off}+${n}: ${c.status} ${c.reason ?? ''}`);
        } else if (!sameBytes(c.data!, ref.subarray(off, off + n))) {
          problems.push(`step ${step}: RDMA READ ${off}+${n} returned wrong bytes`);
        }
      }
    } else if (r < 75) {
      // the application writes through the CPU (no invalidation: same frames)
      const off = rng.int(0, len - 1);
      const n = Math.min(rng.int(1, 256), len - off);
      const at = rng.int(0, POOL_BYTES - n);
      const data = pool.subarray(at, at + n);
      mm.write(base + off, data);
      ref.set(data, off);
    } else {
      // mm events on 1..8 pages: each runs the MR's invalidation callback
      const page = rng.int(0, size.pages - 1);
      const count = Math.min(rng.int(1, 8), size.pages - page);
      const va = base + page * PAGE_SIZE;
      const bytes = count * PAGE_SIZE;
      let ret: number;
      if (r < 87) {
        ret = mm.migratePages(va, bytes); // contents kept, frames change (MMU_NOTIFY_CLEAR)
      } else if (r < 92) {
        ret = mm.reclaim(va, bytes); // swapped out, contents kept (MMU_NOTIFY_CLEAR)
      } else if (r < 96) {
        ret = mm.madviseDontneed(va, bytes); // private anonymous: zero on next touch
        ref.fill(0, page * PAGE_SIZE, page * PAGE_SIZE + bytes);
      } else {
        ret = mm.munmap(va, bytes); // MMU_NOTIFY_UNMAP, then new zeroed memory at the same place
        if (ret === 0) {
          const m = mm.mmap(va, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
          ret = m === va ? 0 : m;
        }
        ref.fill(0, page * PAGE_SIZE, page * PAGE_SIZE + bytes);
      }
      if (ret < 0) problems.push(`step ${step}: mm event on pages ${page}+${count} failed (${ret})`);
    }
    if (progress !== undefined && (step + 1) % progressEvery === 0) progress(step + 1);
  }
  const keptMetaBytes = odpMetaLiveBytes(machine);
  const dereg = ibDeregMr(mr);
  if (dereg !== 0) problems.push(`ib_dereg_mr failed (${dereg})`);
  machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy domains: the flush-queue timer fires
  const simNs = (performance.now() - t0) * 1e6;
  const d = diffCounters(before, machine.counters.snapshot());

  // outside the measured window: every page of the region against the reference
  let digest = 2166136261;
  for (let p = 0; p < size.pages; p++) {
    const got = mm.read(base + p * PAGE_SIZE, PAGE_SIZE);
    const want = ref.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
    if (!sameBytes(got, want)) problems.push(`page ${p}: final contents differ from the reference`);
    digest = fnv1a(got, digest);
  }
  if (nic.stats.iommuFaults !== 0) problems.push(`${nic.stats.iommuFaults} IOMMU faults`);
  mm.exit();
  dmaDebugDeviceTeardown(dev); // a no-op unless dma-debug is on
  if (problems.length > 0) {
    throw new Error(
      `ODP (${path}, ${ODP_MODE_OF_PATH[path]} umem, ${ctx.iommu}): ${problems.length} problem(s); first: ${problems[0]}`,
    );
  }
  const stats: OdpRunStats = {
    nicOps,
    nicBytes,
    pageFaults: ibdev.stats.pageFaults,
    invalidations: ibdev.stats.invalidations,
    pagesMapped: ibdev.stats.pagesMapped,
    iovaAllocs: d.events.iovaAllocs,
    digest: digest.toString(16).padStart(8, '0'),
  };
  const result = pathResult(path, nicOps, simNs, d, ctx.costModel, {
    pages: size.pages,
    keptMetaBytes,
    verified: true,
  });
  return { result, stats };
}

/**
 * The demo's RDMA ODP workload (models an ODP MR under faults, invalidations and migrations;
 * drivers/infiniband/core/umem_odp.c ≤ v6.15 legacy vs v6.16+ hmm_dma_map): both paths on fresh
 * machines, same seed, same request mix; one op = one NIC request. See the file header.
 */
export function odpWorkload(sizes: { quick: OdpWorkloadSize; full: OdpWorkloadSize } = ODP_SIZES): Workload {
  const name = 'RDMA ODP MR: faults, invalidations, migrations';
  return {
    name,
    subsystem: 'odp',
    run(ctx: WorkloadContext): WorkloadResult {
      const size = ctx.quick ? sizes.quick : sizes.full;
      const { sg, iova } = runBothPaths(
        ctx,
        runOdpPath,
        { measured: size, warmup: ODP_WARMUP, units: size.steps },
        'ODP: the two paths left different memory',
      );
      return {
        name,
        subsystem: 'odp',
        bytesPerOp: sg.stats.nicOps > 0 ? sg.stats.nicBytes / sg.stats.nicOps : 0,
        paths: [sg.result, iova.result],
      };
    },
  };
}
