/**
 * Page-table map/unmap cost, measured on the simulator itself (CPU time of the model, not modeled
 * kernel time). Cases: a single 4 KiB map+unmap, a 256-page run, and one 2 MiB region mapped as
 * one block vs as 512 pages (which also allocates a level-0 table and frees it through the gather
 * freelist, as iommu_unmap + iommu_iotlb_sync would), and the 256-page map and unmap timed
 * apart (the other half runs untimed in beforeEach/afterEach). A neighbouring page stays mapped so the
 * upper tables do not collapse between iterations, as in a live DMA domain. Each task runs a batch
 * of operations per sample so the timer's own cost is amortised.
 *
 * Run: `npx tsx packages/iommu/bench/io-pgtable.bench.ts`
 */
import { Bench } from 'tinybench';
import { freeTablePage, IoPgtable } from '../src/io-pgtable.js';
import { type IommuIotlbGather, iommuIotlbGatherInit } from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';

const SZ_4K = 0x1000;
const SZ_2M = 0x200000;
const SZ_1G = 0x40000000;
const RW = IOMMU_READ | IOMMU_WRITE;
/** Operations per tinybench sample. */
const BATCH = 256;

/** One benchmark row. */
export interface PgtableBenchRow {
  name: string;
  /** Wall time of one operation (one map+unmap pair), nanoseconds: the median sample of BATCH operations, divided. */
  nsPerOp: number;
  /** 4 KiB pages covered by one operation. */
  pages: number;
  /** `nsPerOp / pages`. */
  nsPerPage: number;
  /** PTE writes per operation (machine counters). */
  pteWritesPerOp: number;
  /** Page-table pages allocated per operation. */
  pgtablePagesPerOp: number;
}

/**
 * tinybench 5 calls each task function once inside `bench.add`, untimed and without the task's
 * hooks, to see whether it returns a promise. For a map-only task that call would leave its ranges
 * mapped (and the next task's probe happened to unmap them): this makes that first call a no-op,
 * so every timed sample starts from the state its own beforeEach/afterEach leave.
 */
function skipProbe(fn: () => void): () => void {
  let probed = false;
  return () => {
    if (!probed) {
      probed = true;
      return;
    }
    fn();
  };
}

function resetGather(g: IommuIotlbGather): void {
  g.start = Number.MAX_SAFE_INTEGER;
  g.end = 0;
  g.pgsize = 0;
}

function check(ret: number, what: string): void {
  if (ret !== 0) throw new Error(`${what} failed: ${ret}`);
}

/**
 * Runs the page-table benchmark group in one process (tasks interleaved by tinybench) and prints
 * a table with same-run ratios. Returns one row per task.
 */
export async function runPgtableBench(
  options: { timeMs?: number; quiet?: boolean } = {},
): Promise<PgtableBenchRow[]> {
  const m = new Machine({ memSize: 256 << 20 });
  const pt = IoPgtable.create(m, { pgsizeBitmap: SZ_4K | SZ_2M | SZ_1G, ias: 48, oas: 48 });
  if (pt === undefined) throw new Error('IoPgtable.create failed');
  const out = { mapped: 0 };
  const g = iommuIotlbGatherInit();
  // Keep-alive pages: the 4 KiB cases share a level-0 table with one; the 2 MiB cases share a
  // level-1 table with another, so only the 512 × 4K case allocates (and frees) a table page.
  const base4k = 3 * SZ_1G;
  check(pt.mapPages(base4k + 300 * SZ_4K, 0x9000_0000, SZ_4K, 1, RW, out), 'keep-alive');
  const base2m = 5 * SZ_1G + 8 * SZ_2M;
  check(pt.mapPages(5 * SZ_1G, 0x9000_1000, SZ_4K, 1, RW, out), 'keep-alive');
  const pages = new Map<string, number>();
  const c = m.counters;

  // Map-only and unmap-only cases: BATCH distinct 2 MiB slots, each with a keep-alive page, so
  // the untimed half (in beforeEach/afterEach) leaves the tables in place.
  const slots = 7 * SZ_1G;
  for (let b = 0; b < BATCH; b++) {
    check(pt.mapPages(slots + b * SZ_2M + 511 * SZ_4K, 0x9000_2000, SZ_4K, 1, RW, out), 'keep-alive');
  }
  const mapSlots = (): void => {
    for (let b = 0; b < BATCH; b++) check(pt.mapPages(slots + b * SZ_2M, SZ_1G, SZ_4K, 256, RW, out), 'map');
  };
  const unmapSlots = (): void => {
    for (let b = 0; b < BATCH; b++) pt.unmapPages(slots + b * SZ_2M, SZ_4K, 256, g);
    resetGather(g);
  };

  interface Case {
    name: string;
    pages: number;
    fn: () => void;
    before?: () => void;
    after?: () => void;
  }
  const cases: Case[] = [
    {
      name: 'mapPages+unmapPages 1×4K',
      pages: 1,
      fn: () => {
        for (let i = 0; i < BATCH; i++) {
          const iova = base4k + (i & 255) * SZ_4K;
          check(pt.mapPages(iova, 0x1_0000_0000 + iova, SZ_4K, 1, RW, out), 'map');
          pt.unmapPages(iova, SZ_4K, 1, g);
          resetGather(g);
        }
      },
    },
    {
      name: 'mapPages 256×4K + unmapPages',
      pages: 256,
      fn: () => {
        for (let i = 0; i < BATCH; i++) {
          check(pt.mapPages(base4k, 0x1_0000_0000, SZ_4K, 256, RW, out), 'map');
          pt.unmapPages(base4k, SZ_4K, 256, g);
          resetGather(g);
        }
      },
    },
    { name: 'mapPages 256×4K (map only)', pages: 256, fn: mapSlots, after: unmapSlots },
    { name: 'unmapPages 256×4K (unmap only)', pages: 256, fn: unmapSlots, before: mapSlots },
    {
      name: '2 MiB as one leaf (map+unmap)',
      pages: 512,
      fn: () => {
        for (let i = 0; i < BATCH; i++) {
          check(pt.mapPages(base2m, SZ_1G, SZ_2M, 1, RW, out), 'map');
          pt.unmapPages(base2m, SZ_2M, 1, g);
          resetGather(g);
        }
      },
    },
    {
      name: '2 MiB as 512×4K (map+unmap)',
      pages: 512,
      fn: () => {
        for (let i = 0; i < BATCH; i++) {
          check(pt.mapPages(base2m, SZ_1G, SZ_4K, 512, RW, out), 'map');
          pt.unmapPages(base2m, SZ_4K, 512, g);
          for (const pa of g.freelist) freeTablePage(m, pa);
          g.freelist.length = 0;
          resetGather(g);
        }
      },
    },
  ];

  // Counters per operation, from one untimed batch of each case.
  const perOp = new Map<string, { pte: number; pgt: number }>();
  for (const k of cases) {
    pages.set(k.name, k.pages);
    k.before?.();
    const w0 = c.pteWrites;
    const p0 = c.pgtablePagesAllocated;
    k.fn();
    perOp.set(k.name, { pte: (c.pteWrites - w0) / BATCH, pgt: (c.pgtablePagesAllocated - p0) / BATCH });
    k.after?.();
  }

  const bench = new Bench({ time: options.timeMs ?? 500, warmupTime: 100 });
  for (const k of cases) {
    const hooks: { beforeEach?: () => void; afterEach?: () => void } = {};
    if (k.before !== undefined) hooks.beforeEach = k.before;
    if (k.after !== undefined) hooks.afterEach = k.after;
    bench.add(k.name, skipProbe(k.fn), hooks);
  }
  await bench.run();

  const rows: PgtableBenchRow[] = bench.tasks.map((t) => {
    const medianMs = t.result?.latency.p50 ?? Number.NaN;
    const nsPerOp = (medianMs * 1e6) / BATCH;
    const n = pages.get(t.name) ?? 1;
    const k = perOp.get(t.name);
    return {
      name: t.name,
      nsPerOp,
      pages: n,
      nsPerPage: nsPerOp / n,
      pteWritesPerOp: k?.pte ?? 0,
      pgtablePagesPerOp: k?.pgt ?? 0,
    };
  });
  if (g.freelist.length !== 0 || pt.leafCount !== 2 + BATCH || pt.tablePages !== 7 + BATCH) {
    throw new Error('benchmark left the page table in an unexpected state');
  }
  pt.destroy();

  if (!options.quiet) {
    console.table(
      rows.map((r) => ({
        task: r.name,
        'ns/op': r.nsPerOp.toFixed(1),
        pages: r.pages,
        'ns/page': r.nsPerPage.toFixed(2),
        'pteWrites/op': r.pteWritesPerOp,
        'pgtable pages/op': r.pgtablePagesPerOp,
      })),
    );
    const by = new Map(rows.map((r) => [r.name, r]));
    const one = by.get('mapPages+unmapPages 1×4K')!;
    const mapOnly = by.get('mapPages 256×4K (map only)')!;
    const run = by.get('mapPages 256×4K + unmapPages')!;
    const leaf = by.get('2 MiB as one leaf (map+unmap)')!;
    const small = by.get('2 MiB as 512×4K (map+unmap)')!;
    console.log(`same-run ratios (simulator CPU time, not modeled kernel time):`);
    console.log(`  per page, 1×4K calls / 256×4K run: ${(one.nsPerPage / run.nsPerPage).toFixed(1)}×`);
    console.log(`  mapPages 256×4K alone: ${mapOnly.nsPerPage.toFixed(2)} ns/page (target ≤ 4)`);
    console.log(`  2 MiB as 512×4K / as one 2 MiB leaf: ${(small.nsPerOp / leaf.nsPerOp).toFixed(1)}×`);
  }
  return rows;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runPgtableBench();
}
