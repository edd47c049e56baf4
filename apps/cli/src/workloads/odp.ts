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
 * covers `ib_reg_user_mr` → the request mix → `ib_dereg_mr` → one flush-queue timeout of virtual
 * time (so lazy domains' deferred IOTLB flushes are counted); simulator time covers the request mix,
 * in rounds interleaved with the other path (median per op), with the harness's reference-copy
 * updates and comparisons timed apart; the final verification is outside. Both paths first run
 * twice untimed at a small size, so the path measured first does not also pay for JIT
 * compilation. `keptMetaBytes` is the live ODP page-list metadata
 * (pfn_list, dma_list, hmm_dma_map lists) while the MR is registered and `pages` the MR's pages, so
 * metaBytesPerPage is 16 (legacy) vs 8 (hmm).
 */
import { type Device, dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { diffCounters, type Machine, PAGE_SIZE, Prng } from '@iovalink/iommu';
import {
  type IbMr,
  ibAllocPd,
  ibDeregMr,
  ibRegUserMr,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  type Mlx5IbDev,
  Mm,
  mlx5IbAdd,
  ODP_ACCESS_RW,
  type OdpMode,
  odpMetaLiveBytes,
  PROT_READ,
  PROT_WRITE,
} from '@iovalink/rdma-odp';
import type { DmaPath } from '../results.js';
import {
  bothPathsWorkload,
  type ChunkTime,
  createPathRig,
  fnv1a,
  type PathRun,
  type PathSession,
  sameBytes,
  seededBytes,
} from './both-paths.js';
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

/** One path's ODP run in progress: the process, its MR, and the reference copy of its memory. */
interface OdpRun {
  path: DmaPath;
  size: OdpWorkloadSize;
  machine: Machine;
  dev: Device;
  ibdev: Mlx5IbDev;
  mm: Mm;
  mr: IbMr;
  base: number;
  len: number;
  /** What the region must hold; anonymous memory starts zeroed. */
  ref: Uint8Array;
  pool: Uint8Array;
  rng: Prng;
  problems: string[];
  nicOps: number;
  nicBytes: number;
  /** Steps of the seeded mix done so far. */
  steps: number;
  /** Simulator ns the harness spent on the reference copy since the last reset. */
  harnessNs: number;
}

/**
 * Builds the process and its ODP MR on a fresh rig (models `ib_reg_user_mr` with
 * IB_ACCESS_ON_DEMAND over an anonymous mmap on an mlx5 device); the MR registration is the
 * caller's, so it can fall inside the counter window.
 */
function odpSetup(path: DmaPath, ctx: WorkloadContext, size: OdpWorkloadSize): Omit<OdpRun, 'mr'> {
  const rig = createPathRig(ctx, path, 1 << 30);
  const dev = rig.device(`mlx5-${path}`);
  const ibdev = mlx5IbAdd(dev, { mode: ODP_MODE_OF_PATH[path] });
  const mm = new Mm(rig.machine, { name: 'odp-app' });
  const len = size.pages * PAGE_SIZE;
  const base = mm.mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (base < 0) throw new Error(`ODP (${path}): mmap failed (${base})`);
  return {
    path,
    size,
    machine: rig.machine,
    dev,
    ibdev,
    mm,
    base,
    len,
    ref: new Uint8Array(len),
    pool: seededBytes(ctx.seed, POOL_BYTES),
    rng: new Prng(ctx.seed ^ 0x0d9_0d9),
    problems: [],
    nicOps: 0,
    nicBytes: 0,
    steps: 0,
    harnessNs: 0,
  };
}

/** A seeded payload of `n` bytes from the pool (a view, no copy). */
function payload(run: OdpRun, n: number): Uint8Array {
  const at = run.rng.int(0, POOL_BYTES - n);
  return run.pool.subarray(at, at + n);
}

/** `f` timed as harness work. */
function harness(run: OdpRun, f: () => void): void {
  const t = performance.now();
  f();
  run.harnessNs += (performance.now() - t) * 1e6;
}

/** A NIC request at the responder: RDMA WRITE (r < 35) or READ, 1 B .. 4 pages anywhere in the MR. */
function odpNicRequest(run: OdpRun, r: number): void {
  const off = run.rng.int(0, run.len - 1);
  const n = Math.min(run.rng.int(1, 4 * PAGE_SIZE), run.len - off);
  const nic = run.ibdev.nic;
  run.nicOps++;
  run.nicBytes += n;
  if (r < 35) {
    const data = payload(run, n);
    const c = nic.rdmaWrite(run.mr.rkey, run.base + off, data);
    if (c.status !== 'IB_WC_SUCCESS' || c.byteLen !== n) {
      run.problems.push(`step ${run.steps}: RDMA WRITE ${off}+${n}: ${c.status} ${c.reason ?? ''}`);
    }
    harness(run, () => run.ref.set(data, off));
    return;
  }
  const c = nic.rdmaRead(run.mr.rkey, run.base + off, n);
  if (c.status !== 'IB_WC_SUCCESS' || c.byteLen !== n) {
    run.problems.push(`step ${run.steps}: RDMA READ ${off}+${n}: ${c.status} ${c.reason ?? ''}`);
    return;
  }
  harness(run, () => {
    if (!sameBytes(c.data!, run.ref.subarray(off, off + n))) {
      run.problems.push(`step ${run.steps}: RDMA READ ${off}+${n} returned wrong bytes`);
    }
  });
}

/** The application writes up to 256 bytes through the CPU (same frames: no invalidation). */
function odpCpuWrite(run: OdpRun): void {
  const off = run.rng.int(0, run.len - 1);
  const n = Math.min(run.rng.int(1, 256), run.len - off);
  const data = payload(run, n);
  run.mm.write(run.base + off, data);
  harness(run, () => run.ref.set(data, off));
}

/**
 * An mm event on 1..8 pages, each running the MR's invalidation callback: migration (r < 87) or
 * reclaim (r < 92) keep the contents; MADV_DONTNEED (r < 96) and munmap + mmap MAP_FIXED zero them.
 */
function odpMmEvent(run: OdpRun, r: number): void {
  const { mm, rng, size } = run;
  const page = rng.int(0, size.pages - 1);
  const count = Math.min(rng.int(1, 8), size.pages - page);
  const va = run.base + page * PAGE_SIZE;
  const bytes = count * PAGE_SIZE;
  let ret: number;
  if (r < 87) {
    ret = mm.migratePages(va, bytes); // contents kept, frames change (MMU_NOTIFY_CLEAR)
  } else if (r < 92) {
    ret = mm.reclaim(va, bytes); // swapped out, contents kept (MMU_NOTIFY_CLEAR)
  } else {
    if (r < 96) {
      ret = mm.madviseDontneed(va, bytes); // private anonymous: zero on next touch
    } else {
      ret = mm.munmap(va, bytes); // MMU_NOTIFY_UNMAP, then new zeroed memory at the same place
      if (ret === 0) {
        const m = mm.mmap(va, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
        ret = m === va ? 0 : m;
      }
    }
    harness(run, () => run.ref.fill(0, page * PAGE_SIZE, page * PAGE_SIZE + bytes));
  }
  if (ret < 0) run.problems.push(`step ${run.steps}: mm event on pages ${page}+${count} failed (${ret})`);
}

/** One step of the seeded mix: 65% NIC requests, 10% CPU writes, 25% mm events. */
function odpStep(run: OdpRun): void {
  const r = run.rng.int(0, 99);
  if (r < 65) odpNicRequest(run, r);
  else if (r < 75) odpCpuWrite(run);
  else odpMmEvent(run, r);
  run.steps++;
}

/** Every page of the region against the reference; returns the FNV-1a digest of the contents. */
function odpVerify(run: OdpRun): string {
  let digest = 2166136261;
  for (let p = 0; p < run.size.pages; p++) {
    const got = run.mm.read(run.base + p * PAGE_SIZE, PAGE_SIZE);
    if (!sameBytes(got, run.ref.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))) {
      run.problems.push(`page ${p}: final contents differ from the reference`);
    }
    digest = fnv1a(got, digest);
  }
  const faults = run.ibdev.nic.stats.iommuFaults;
  if (faults !== 0) run.problems.push(`${faults} IOMMU faults`);
  return digest.toString(16).padStart(8, '0');
}

/**
 * Opens one path of the ODP workload on a fresh rig (models a process with an ODP MR on an mlx5
 * NIC: `ib_reg_user_mr` with `IB_ACCESS_ON_DEMAND`, responder-side RDMA under page faults and mmu
 * notifier invalidations, `ib_dereg_mr`; umem_odp.c + hw/mlx5/odp.c). One unit = one step of the
 * seeded mix; `finish` throws if any NIC request failed or any byte differs from the reference.
 */
export function openOdpPath(
  path: DmaPath,
  ctx: WorkloadContext,
  size: OdpWorkloadSize,
): PathSession<OdpRunStats> {
  const setup = odpSetup(path, ctx, size);
  const pd = ibAllocPd(setup.ibdev, setup.mm);
  const before = setup.machine.counters.snapshot();
  const mr = ibRegUserMr(pd, setup.base, setup.len, setup.base, ODP_ACCESS_RW);
  if (typeof mr === 'number') throw new Error(`ODP (${path}): ib_reg_user_mr failed (${mr})`);
  const run: OdpRun = { ...setup, mr };
  return {
    step(units: number): ChunkTime {
      const ops0 = run.nicOps;
      run.harnessNs = 0;
      const t0 = performance.now();
      for (let i = 0; i < units; i++) odpStep(run);
      const total = (performance.now() - t0) * 1e6;
      return { ops: run.nicOps - ops0, modelNs: total - run.harnessNs, harnessNs: run.harnessNs };
    },
    finish() {
      const keptMetaBytes = odpMetaLiveBytes(run.machine);
      const dereg = ibDeregMr(run.mr);
      if (dereg !== 0) run.problems.push(`ib_dereg_mr failed (${dereg})`);
      run.machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy domains: the flush-queue timer fires
      const counters = diffCounters(before, run.machine.counters.snapshot());
      const digest = odpVerify(run); // outside the counter window
      run.mm.exit();
      dmaDebugDeviceTeardown(run.dev); // a no-op unless dma-debug is on
      if (run.problems.length > 0) {
        throw new Error(
          `ODP (${path}, ${ODP_MODE_OF_PATH[path]} umem, ${ctx.iommu}): ${run.problems.length} problem(s); first: ${run.problems[0]}`,
        );
      }
      const stats: OdpRunStats = {
        nicOps: run.nicOps,
        nicBytes: run.nicBytes,
        pageFaults: run.ibdev.stats.pageFaults,
        invalidations: run.ibdev.stats.invalidations,
        pagesMapped: run.ibdev.stats.pagesMapped,
        iovaAllocs: counters.events.iovaAllocs,
        digest,
      };
      return { ops: run.nicOps, counters, pages: size.pages, keptMetaBytes, verified: true, stats };
    },
  };
}

/**
 * The demo's RDMA ODP workload (models an ODP MR under faults, invalidations and migrations;
 * drivers/infiniband/core/umem_odp.c ≤ v6.15 legacy vs v6.16+ hmm_dma_map): both paths on fresh
 * machines, same seed, same request mix; one op = one NIC request. See the file header.
 */
export function odpWorkload(sizes: { quick: OdpWorkloadSize; full: OdpWorkloadSize } = ODP_SIZES): Workload {
  return bothPathsWorkload('RDMA ODP MR: faults, invalidations, migrations', 'odp', (ctx) => {
    const size = ctx.quick ? sizes.quick : sizes.full;
    return {
      open: openOdpPath,
      sizes: { measured: size, units: size.steps, warmup: ODP_WARMUP, warmupUnits: ODP_WARMUP.steps },
      mismatch: 'ODP: the two paths left different memory',
      bytesPerOp: (sg: PathRun<OdpRunStats>) =>
        sg.stats.nicOps > 0 ? sg.stats.nicBytes / sg.stats.nicOps : 0,
    };
  });
}
