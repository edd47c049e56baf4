// Live migration of a device with 256 MiB of state, with the mlx5 data buffers mapped the old way
// ('sg': sg_append_table + dma_map_sgtable) and the new way ('iova': dma_iova_try_alloc +
// dma_iova_link per page + dma_iova_sync), both in one run, with pre-copy (3 passes while the
// device runs) and without it (everything in the stop-copy phase). Counts (metadata bytes by
// kind, IOVA allocations, PTE writes, IOTLB invalidations) are what the kernel would spend; times
// are simulator time — how fast this model runs on this host — never modeled kernel time.
//
// Physical memory is fragmented first (every other page held, as on a long-running host) so
// buffer pages do not merge into larger scatterlist entries; an extra row shows the sg table of
// one buffer on unfragmented memory. No guest memory, so IOTLB figures are the buffers' own.
// dma-debug is off.
import { DMA_FROM_DEVICE } from '@iovalink/dma-api';
import { type CounterSnapshot, diffCounters, PAGE_SIZE } from '@iovalink/iommu';
import { type VfioMigrationPhase, vfioMigrate } from '../src/migration.js';
import {
  MLX5_META_BULK_PAGE_LIST,
  MLX5_META_DATA_BUFFER,
  MLX5_META_KINDS,
  MLX5_META_MKEY_IN,
  MLX5_META_PAGE_LIST,
  Mlx5VfMigrationFile,
  type Mlx5vfMapping,
  mlx5vfAllocDataBuffer,
  mlx5vfFreeDataBuffer,
} from '../src/mlx5-cmd.js';
import { MLX5VF_SAVE_FOPS } from '../src/mlx5-main.js';
import { createMigrationRig, teardownMigrationRig } from '../src/testing/index.js';

const STATE_BYTES = 256 << 20;
const KINDS = [...MLX5_META_KINDS, 'scatterlist'];

interface PhaseFigures {
  simulatorMs: number;
  iovaAllocs: number;
  pteWrites: number;
  pteClears: number;
  iotlbInvalidations: number;
  dmaLinks: number;
  dmaMapCalls: number;
  metaAllocs: number;
}

interface ModeFigures {
  mapping: Mlx5vfMapping;
  equal: boolean;
  precopyIterations: number;
  precopyBytes: number;
  stopCopyBytes: number;
  bufferPages: number;
  /** Live metadata when the source's pre-copy buffers are mapped, by kind. */
  liveAfterPrecopySetup: Record<string, number>;
  /** Highest live metadata seen during the whole migration, by kind. */
  peak: Record<string, number>;
  bytesPerPage: { pageTracking: number; mtt: number; all: number };
  phases: Record<string, PhaseFigures>;
  totals: PhaseFigures;
}

function phaseFigures(d: CounterSnapshot, ms: number): PhaseFigures {
  const e = d.events;
  let metaAllocs = 0;
  for (const k of KINDS) metaAllocs += d.meta[k]?.allocs ?? 0;
  return {
    simulatorMs: Math.round(ms * 10) / 10,
    iovaAllocs: e.iovaAllocs,
    pteWrites: e.pteWrites,
    pteClears: e.pteClears,
    iotlbInvalidations: e.iotlbInvRange + e.iotlbInvAll,
    dmaLinks: e.dmaLinks,
    dmaMapCalls: e.dmaMapCalls,
    metaAllocs,
  };
}

function runMode(mapping: Mlx5vfMapping, precopy: boolean): ModeFigures {
  // enough isolated pages for every buffer page of the run (source and target), no more: the
  // model's buddy allocator consumes a long order-0 free list slowly
  const perBuffer = Math.ceil((STATE_BYTES * 1.1) / PAGE_SIZE);
  const fragmentPages = (precopy ? 3 : 2) * perBuffer + 2048;
  const m = createMigrationRig({
    mapping,
    kind: 'strict',
    memorySize: STATE_BYTES,
    guestSize: 0,
    debug: false,
    machine: { memSize: 4 * 2 ** 30, seed: 7 },
    fragmentPages,
  });
  const c = m.machine.counters;
  m.source.run(20_000);
  const marks: Array<{ phase: VfioMigrationPhase; t: number; snap: CounterSnapshot }> = [];
  let liveAfterPrecopySetup: Record<string, number> = {};
  let bufferPages = 0;
  const r = vfioMigrate(m.source, m.target, {
    precopy,
    stepsPerIteration: 5000,
    maxPrecopyIterations: 3,
    onPhase: (phase) => {
      marks.push({ phase, t: performance.now(), snap: c.snapshot() });
      if (phase === (precopy ? 'precopy' : 'resume')) {
        const migf = (precopy ? m.source.savingMigf : m.target.resumingMigf)!;
        for (const b of [...migf.buf, ...migf.bufHeader, ...migf.bufList, ...migf.availList])
          bufferPages += b?.npages ?? 0;
        for (const k of KINDS) liveAfterPrecopySetup[k] = c.meta.get(k)?.liveBytes ?? 0;
      }
    },
  });
  const phases: Record<string, PhaseFigures> = {};
  for (let i = 0; i + 1 < marks.length; i++) {
    const a = marks[i]!;
    const b = marks[i + 1]!;
    phases[a.phase] = phaseFigures(diffCounters(a.snap, b.snap), b.t - a.t);
  }
  const first = marks[0]!;
  const last = marks[marks.length - 1]!;
  const totals = phaseFigures(diffCounters(first.snap, last.snap), last.t - first.t);
  const peak: Record<string, number> = {};
  for (const k of KINDS) peak[k] = c.meta.get(k)?.peakBytes ?? 0;
  const tracking =
    mapping === 'iova' ? liveAfterPrecopySetup[MLX5_META_PAGE_LIST]! : liveAfterPrecopySetup.scatterlist!;
  let all = 0;
  for (const k of KINDS) all += liveAfterPrecopySetup[k]!;
  const figures: ModeFigures = {
    mapping,
    equal: r.equal,
    precopyIterations: r.precopyIterations,
    precopyBytes: r.precopyBytes,
    stopCopyBytes: r.stopCopyBytes,
    bufferPages,
    liveAfterPrecopySetup,
    peak,
    bytesPerPage: {
      pageTracking: round2(tracking / bufferPages),
      mtt: round2(liveAfterPrecopySetup[MLX5_META_MKEY_IN]! / bufferPages),
      all: round2(all / bufferPages),
    },
    phases,
    totals,
  };
  if (r.ret !== 0) throw new Error(`migration failed at ${r.failedAt}: ${r.ret}`);
  teardownMigrationRig(m);
  liveAfterPrecopySetup = {};
  return figures;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

/** The sg table of one stop-copy sized buffer on unfragmented memory (pages merge). */
function sgUnfragmented(): { pages: number; entries: number; scatterlistBytes: number } {
  const m = createMigrationRig({
    mapping: 'sg',
    memorySize: 0,
    guestSize: 0,
    debug: false,
    machine: { memSize: 1 << 30 },
  });
  const migf = new Mlx5VfMigrationFile(m.source, 'r', MLX5VF_SAVE_FOPS);
  const pages = Math.ceil((STATE_BYTES * 1.1) / PAGE_SIZE);
  const buf = mlx5vfAllocDataBuffer(migf, pages, DMA_FROM_DEVICE);
  if (typeof buf === 'number') throw new Error(`alloc ${buf}`);
  const out = {
    pages,
    entries: buf.table.sgt.origNents,
    scatterlistBytes: m.machine.counters.meta.get('scatterlist')?.liveBytes ?? 0,
  };
  mlx5vfFreeDataBuffer(buf);
  teardownMigrationRig(m);
  return out;
}

function fmtBytes(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(2)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

export async function runVfioBench(): Promise<unknown> {
  const t0 = performance.now();
  const modes = [runMode('sg', true), runMode('iova', true)];
  const [sg, iova] = modes as [ModeFigures, ModeFigures];
  const unfrag = sgUnfragmented();
  const noPrecopy = [runMode('sg', false), runMode('iova', false)];
  console.log(
    `device state ${fmtBytes(STATE_BYTES)}, strict IOMMU domain, fragmented memory, no guest memory (IOTLB figures are the buffers' own)`,
  );
  console.log(
    `${'mapping'.padEnd(8)} ${'equal'.padEnd(6)} ${'pre-copy'.padEnd(14)} ${'stop-copy'.padEnd(12)} buffer pages`,
  );
  for (const f of modes) {
    console.log(
      `${f.mapping.padEnd(8)} ${String(f.equal).padEnd(6)} ${`${f.precopyIterations}× ${fmtBytes(f.precopyBytes)}`.padEnd(14)} ${fmtBytes(f.stopCopyBytes).padEnd(12)} ${f.bufferPages}`,
    );
  }
  console.log('\nmetadata live once the source pre-copy buffers are mapped (bytes per buffer page):');
  const row = (label: string, a: number, b: number, pages: [number, number]) =>
    console.log(
      `  ${label.padEnd(28)} sg ${fmtBytes(a).padStart(10)} (${round2(a / pages[0])}/page)   iova ${fmtBytes(b).padStart(10)} (${round2(b / pages[1])}/page)`,
    );
  const pages: [number, number] = [sg.bufferPages, iova.bufferPages];
  for (const kind of ['scatterlist', MLX5_META_PAGE_LIST, MLX5_META_MKEY_IN, MLX5_META_DATA_BUFFER]) {
    row(kind, sg.liveAfterPrecopySetup[kind]!, iova.liveAfterPrecopySetup[kind]!, pages);
  }
  row(
    `${MLX5_META_BULK_PAGE_LIST} (peak)`,
    sg.peak[MLX5_META_BULK_PAGE_LIST]!,
    iova.peak[MLX5_META_BULK_PAGE_LIST]!,
    pages,
  );
  const trackCut = 1 - iova.bytesPerPage.pageTracking / sg.bytesPerPage.pageTracking;
  const allCut = 1 - iova.bytesPerPage.all / sg.bytesPerPage.all;
  console.log(
    `  page tracking (sg entries vs page list): ${sg.bytesPerPage.pageTracking} → ${iova.bytesPerPage.pageTracking} bytes/page, ${(trackCut * 100).toFixed(1)}% cut`,
  );
  console.log(
    `  all live buffer metadata: ${sg.bytesPerPage.all} → ${iova.bytesPerPage.all} bytes/page, ${(allCut * 100).toFixed(1)}% cut`,
  );
  console.log(
    `  sg on unfragmented memory: ${unfrag.entries} entries for ${unfrag.pages} pages, ${fmtBytes(unfrag.scatterlistBytes)} of scatterlist`,
  );
  console.log('\nper phase (simulator ms = time this model took on this host, not kernel time):');
  console.log(
    `  ${'phase'.padEnd(14)} ${'map'.padEnd(5)} ${'sim ms'.padStart(8)} ${'IOVA allocs'.padStart(11)} ${'PTE writes'.padStart(10)} ${'PTE clears'.padStart(10)} ${'IOTLB inv'.padStart(9)} ${'links'.padStart(7)} ${'maps'.padStart(6)}`,
  );
  for (const phase of Object.keys(sg.phases)) {
    for (const f of modes) {
      const p = f.phases[phase];
      if (p === undefined) continue;
      console.log(
        `  ${phase.padEnd(14)} ${f.mapping.padEnd(5)} ${p.simulatorMs.toFixed(1).padStart(8)} ${String(p.iovaAllocs).padStart(11)} ${String(p.pteWrites).padStart(10)} ${String(p.pteClears).padStart(10)} ${String(p.iotlbInvalidations).padStart(9)} ${String(p.dmaLinks).padStart(7)} ${String(p.dmaMapCalls).padStart(6)}`,
      );
    }
  }
  for (const f of modes) {
    const p = f.totals;
    console.log(
      `  ${'total'.padEnd(14)} ${f.mapping.padEnd(5)} ${p.simulatorMs.toFixed(1).padStart(8)} ${String(p.iovaAllocs).padStart(11)} ${String(p.pteWrites).padStart(10)} ${String(p.pteClears).padStart(10)} ${String(p.iotlbInvalidations).padStart(9)} ${String(p.dmaLinks).padStart(7)} ${String(p.dmaMapCalls).padStart(6)}`,
    );
  }
  console.log(
    '\nwithout pre-copy (RUNNING → STOP → STOP_COPY: buffers are allocated, mapped and filled in the downtime):',
  );
  for (const f of noPrecopy) {
    const p = f.phases['stop-copy']!;
    console.log(
      `  ${'stop-copy'.padEnd(14)} ${f.mapping.padEnd(5)} ${p.simulatorMs.toFixed(1).padStart(8)} ${String(p.iovaAllocs).padStart(11)} ${String(p.pteWrites).padStart(10)} ${String(p.pteClears).padStart(10)} ${String(p.iotlbInvalidations).padStart(9)} ${String(p.dmaLinks).padStart(7)} ${String(p.dmaMapCalls).padStart(6)}  metadata allocs ${p.metaAllocs}, equal ${f.equal}`,
    );
  }
  console.log(`\nbench wall time ${((performance.now() - t0) / 1000).toFixed(1)} s (simulator)`);
  return {
    stateBytes: STATE_BYTES,
    modes,
    noPrecopy,
    cut: { pageTracking: round2(trackCut), allBufferMetadata: round2(allCut) },
    sgUnfragmented: unfrag,
  };
}
