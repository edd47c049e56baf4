/**
 * `iovalink bench map`: the dma_map_benchmark port with the kernel tool's flags
 * (tools/testing/selftests/dma/dma_map_benchmark.c: -t -s -n -b -d -x -g) and its output shape,
 * plus `-m link` for the two-step API (our extension), `--hw` and `--cost-model`. Two kinds of
 * figures, never mixed: MODELED kernel µs per map and unmap (counted events of the kernel's
 * map → unmap loop on the chosen hardware × the cost model: deterministic for a seed) and
 * SIMULATOR time (how fast this model runs here) as median and percentiles. Simulator time is
 * taken over batches of maps then unmaps when one operation is too short for the clock (a clock
 * read costs ~100 ns here), so the percentiles describe batches divided by their size.
 * Differs from the kernel tool on purpose: it reports mean ± stddev in 100 ns units; a mean here
 * is dominated by JIT and GC pauses, so we print percentiles instead.
 */
import {
  type Device,
  DMA_BIDIRECTIONAL,
  DMA_FROM_DEVICE,
  DMA_TO_DEVICE,
  type DmaDataDirection,
  DmaIovaState,
  dmaBitMask,
  dmaIovaDestroy,
  dmaIovaLink,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaMapPage,
  dmaMappingError,
  dmaSetMask,
  dmaUnmapPage,
} from '@iovalink/dma-api';
import { type CounterSnapshot, diffCounters, type Machine } from '@iovalink/iommu';
import {
  COST_CATEGORIES,
  type CostCategory,
  type CostModel,
  modeledBreakdown,
  resolveCostModel,
} from '../cost-model.js';
import { type Row, renderCsv, renderTable } from '../format.js';
import { createRig, type IommuMode, loadIommuHw } from '../rig.js';

/** Parsed options of `bench map`. */
export interface BenchMapOptions {
  threads: number;
  seconds: number;
  node: number;
  bits: number;
  dir: number;
  delay: number;
  granule: number;
  mode: 'single' | 'link' | 'both';
  iommu: IommuMode;
  /** IOMMU hardware preset or JSON file (default smmuv3-norange). */
  hw?: string;
  /** Cost model preset or file (default: the hardware's). */
  costModel?: string;
  loops?: number;
  json?: boolean;
  csv?: boolean;
}

/** Simulator-time distribution of one operation, in ns per operation. */
export interface SimStats {
  p50: number;
  p90: number;
  p99: number;
  min: number;
  max: number;
  /** Operations per timed sample (1 = each operation timed alone). */
  batch: number;
  /** Timed samples. */
  samples: number;
}

/** Modeled kernel time of one operation, with where it goes. */
export interface ModeledOp {
  us: number;
  byCategoryNs: Record<CostCategory, number>;
}

/** One mode's result. */
export interface BenchMapResult {
  mode: 'single' | 'link';
  granule: number;
  bytes: number;
  loops: number;
  /** MODELED kernel time per operation (counts × cost model). */
  modeled: { map: ModeledOp; unmap: ModeledOp };
  /** SIMULATOR time per operation (how fast this model runs here). */
  sim: { map: SimStats; unmap: SimStats };
}

/** Modeled ops: warm-up pairs (fill the rcache, build the page tables), then measured pairs. */
const MODEL_WARMUP = 16;
const MODEL_PAIRS = 64;
/** A timed sample should last this many clock reads at least. */
const MIN_SAMPLE_CLOCK_READS = 50;
const MAX_BATCH = 256;

interface Op {
  map(i: number): void;
  unmap(i: number): void;
}

function direction(d: number): DmaDataDirection {
  return d === 1 ? DMA_TO_DEVICE : d === 2 ? DMA_FROM_DEVICE : DMA_BIDIRECTIONAL;
}

/** Map/unmap of slot `i` (several slots live at once when batching). */
function makeOps(dev: Device, mode: 'single' | 'link', buf: number, size: number, dir: DmaDataDirection): Op {
  if (mode === 'single') {
    const addrs = new Float64Array(MAX_BATCH);
    return {
      map(i) {
        const a = dmaMapPage(dev, buf, 0, size, dir, 0);
        if (dmaMappingError(dev, a)) throw new Error('dma_map_benchmark: map failed (-ENOMEM)');
        addrs[i] = a;
      },
      unmap(i) {
        dmaUnmapPage(dev, addrs[i]!, size, dir, 0);
      },
    };
  }
  const states = Array.from({ length: MAX_BATCH }, () => new DmaIovaState());
  return {
    map(i) {
      const s = states[i]!;
      if (!dmaIovaTryAlloc(dev, s, buf, size)) {
        throw new Error('dma_map_benchmark: dma_iova_try_alloc failed (link mode needs an IOMMU DMA domain)');
      }
      if (dmaIovaLink(dev, s, buf, 0, size, dir, 0) !== 0 || dmaIovaSync(dev, s, 0, size) !== 0) {
        throw new Error('dma_map_benchmark: link failed (-ENOMEM)');
      }
    },
    unmap(i) {
      dmaIovaDestroy(dev, states[i]!, size, dir, 0);
    },
  };
}

function addTo(acc: CounterSnapshot | undefined, d: CounterSnapshot): CounterSnapshot {
  if (acc === undefined) return d;
  for (const k of Object.keys(d.events) as Array<keyof CounterSnapshot['events']>)
    acc.events[k] += d.events[k];
  for (const [k, s] of Object.entries(d.meta)) {
    const a = acc.meta[k];
    if (a === undefined) acc.meta[k] = { ...s };
    else {
      a.allocs += s.allocs;
      a.frees += s.frees;
      a.bytes += s.bytes;
    }
  }
  return acc;
}

function perOp(model: CostModel, counts: CounterSnapshot, n: number): ModeledOp {
  const b = modeledBreakdown(model, counts);
  const byCategoryNs = {} as Record<CostCategory, number>;
  for (const c of COST_CATEGORIES) byCategoryNs[c] = b.byCategory[c] / n;
  return { us: b.totalNs / n / 1000, byCategoryNs };
}

/** Value at quantile `q` of sorted `xs` (nearest rank). */
function quantile(xs: Float64Array, q: number): number {
  const i = Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1));
  return xs[i]!;
}

function stats(samples: number[], batch: number): SimStats {
  const xs = Float64Array.from(samples).sort();
  return {
    p50: quantile(xs, 0.5),
    p90: quantile(xs, 0.9),
    p99: quantile(xs, 0.99),
    min: xs[0] ?? 0,
    max: xs[xs.length - 1] ?? 0,
    batch,
    samples: xs.length,
  };
}

/** Cost of one `performance.now()` here, in ns (median of a few hundred back-to-back reads). */
function clockReadNs(): number {
  const d: number[] = [];
  for (let i = 0; i < 256; i++) {
    const a = performance.now();
    const b = performance.now();
    d.push((b - a) * 1e6);
  }
  d.sort((x, y) => x - y);
  return Math.max(d[128]!, 1);
}

function runMode(o: BenchMapOptions, mode: 'single' | 'link', model: CostModel): BenchMapResult {
  const rig = createRig({ iommu: o.iommu, ...(o.hw !== undefined ? { hw: o.hw } : {}) });
  const dev = rig.device('dma_map_benchmark');
  const { machine } = rig;
  if (dmaSetMask(dev, dmaBitMask(o.bits)) !== 0)
    throw new Error('dma_map_benchmark: failed to set the DMA mask');
  const size = o.granule * 4096;
  const order = Math.ceil(Math.log2(o.granule));
  const dir = direction(o.dir);
  const buf = machine.pages.allocPages(order);
  if (buf === 0) throw new Error('dma_map_benchmark: out of memory for the buffer');
  if (dir !== DMA_FROM_DEVICE) machine.phys.fill(buf, size, 0x66);
  const ops = makeOps(dev, mode, buf, size, dir);
  const cpuOf = (i: number) => (i % o.threads) % machine.cpus;

  const { mapCounts, unmapCounts } = countModeledPairs(machine, ops, cpuOf, o.delay);
  const batch = sampleBatch(ops);
  const { mapSamples, unmapSamples, loops } = timeSamples(machine, ops, cpuOf, o, batch);
  machine.setCpu(0);
  machine.pages.freePages(buf, order);
  return {
    mode,
    granule: o.granule,
    bytes: size,
    loops,
    modeled: { map: perOp(model, mapCounts, MODEL_PAIRS), unmap: perOp(model, unmapCounts, MODEL_PAIRS) },
    sim: { map: stats(mapSamples, batch), unmap: stats(unmapSamples, batch) },
  };
}

/**
 * Modeled: the kernel tool's loop (map, transfer delay, unmap), counted event by event; the
 * counts of `MODEL_PAIRS` pairs after `MODEL_WARMUP` unrecorded ones.
 */
function countModeledPairs(
  machine: Machine,
  ops: Op,
  cpuOf: (i: number) => number,
  delay: number,
): { mapCounts: CounterSnapshot; unmapCounts: CounterSnapshot } {
  let mapCounts: CounterSnapshot | undefined;
  let unmapCounts: CounterSnapshot | undefined;
  for (let i = 0; i < MODEL_WARMUP + MODEL_PAIRS; i++) {
    machine.setCpu(cpuOf(i));
    const s0 = machine.counters.snapshot();
    ops.map(0);
    const s1 = machine.counters.snapshot();
    if (delay > 0) machine.clock.advance(delay);
    ops.unmap(0);
    const s2 = machine.counters.snapshot();
    if (i >= MODEL_WARMUP) {
      mapCounts = addTo(mapCounts, diffCounters(s0, s1));
      unmapCounts = addTo(unmapCounts, diffCounters(s1, s2));
    }
  }
  return { mapCounts: mapCounts!, unmapCounts: unmapCounts! };
}

/**
 * Ops per simulator-time sample: one if a map + unmap pair is long enough for the clock to
 * resolve, else a batch long enough (`MIN_SAMPLE_CLOCK_READS` clock reads), at most `MAX_BATCH`.
 */
function sampleBatch(ops: Op): number {
  const clock = clockReadNs();
  const probe: number[] = [];
  for (let i = 0; i < 32; i++) {
    const t0 = performance.now();
    ops.map(0);
    ops.unmap(0);
    probe.push((performance.now() - t0) * 1e6);
  }
  probe.sort((x, y) => x - y);
  const pairNs = probe[16]!;
  return Math.min(
    MAX_BATCH,
    Math.max(1, Math.ceil((MIN_SAMPLE_CLOCK_READS * clock) / Math.max(pairNs / 2, 1))),
  );
}

/** Simulator time: per-op map and unmap samples, `batch` ops a sample, for `o.loops` ops or `o.seconds`. */
function timeSamples(
  machine: Machine,
  ops: Op,
  cpuOf: (i: number) => number,
  o: BenchMapOptions,
  batch: number,
): { mapSamples: number[]; unmapSamples: number[]; loops: number } {
  const mapSamples: number[] = [];
  const unmapSamples: number[] = [];
  const deadline = performance.now() + o.seconds * 1000;
  const maxLoops = o.loops ?? Number.POSITIVE_INFINITY;
  let loops = 0;
  while (loops < maxLoops && (o.loops !== undefined || performance.now() < deadline)) {
    const n = Math.min(batch, maxLoops - loops);
    const m0 = performance.now();
    for (let i = 0; i < n; i++) {
      machine.setCpu(cpuOf(loops + i));
      ops.map(i);
    }
    const m1 = performance.now();
    if (o.delay > 0) machine.clock.advance(o.delay * n);
    const u0 = performance.now();
    for (let i = 0; i < n; i++) {
      machine.setCpu(cpuOf(loops + i));
      ops.unmap(i);
    }
    const u1 = performance.now();
    mapSamples.push(((m1 - m0) * 1e6) / n);
    unmapSamples.push(((u1 - u0) * 1e6) / n);
    loops += n;
  }
  return { mapSamples, unmapSamples, loops };
}

const us = (ns: number): string => (ns / 1000).toFixed(2);

/** The kernel tool's lines, with percentiles where it prints mean and stddev, then the modeled figures. */
function kernelShape(o: BenchMapOptions, r: BenchMapResult, hwName: string, modelName: string): string {
  const dirName = o.dir === 1 ? 'TO_DEVICE' : o.dir === 2 ? 'FROM_DEVICE' : 'BIDIRECTIONAL';
  const line = (what: string, s: SimStats): string =>
    `${what} latency(us) [simulator]: p50:${us(s.p50)} p90:${us(s.p90)} p99:${us(s.p99)} min:${us(s.min)} max:${us(s.max)}`;
  return [
    `dma mapping mode: ${r.mode === 'single' ? 'DMA_MAP_SINGLE_MODE' : 'DMA_IOVA_LINK_MODE'}`,
    `dma mapping benchmark: threads:${o.threads} seconds:${o.seconds} node:${o.node} dir:${dirName} granule: ${o.granule}`,
    line('map', r.sim.map),
    line('unmap', r.sim.unmap),
    `map latency(us) [MODELED ${hwName} / ${modelName}]: ${r.modeled.map.us.toFixed(3)}`,
    `unmap latency(us) [MODELED ${hwName} / ${modelName}]: ${r.modeled.unmap.us.toFixed(3)}`,
  ].join('\n');
}

/** Runs the benchmark and returns what to print. */
export function benchMap(o: BenchMapOptions): string {
  const hw = loadIommuHw(o.hw ?? 'smmuv3-norange');
  const model = resolveCostModel(o.costModel, hw);
  const modes: Array<'single' | 'link'> = o.mode === 'both' ? ['single', 'link'] : [o.mode];
  const results = modes.map((m) => runMode({ ...o, hw: o.hw ?? hw.name }, m, model));
  if (o.json) {
    return JSON.stringify(
      {
        hw: hw.name,
        costModel: model.name,
        iommu: o.iommu,
        timeKinds: {
          modeled: 'modeled kernel (counts × cost model)',
          sim: 'simulator (ns per op, this machine)',
        },
        results,
      },
      null,
      2,
    );
  }
  const rows: Row[] = results.map((r) => ({
    mode: r.mode,
    granule: r.granule,
    loops: r.loops,
    'MODELED map µs': +r.modeled.map.us.toFixed(3),
    'MODELED unmap µs': +r.modeled.unmap.us.toFixed(3),
    'sim map p50 ns': +r.sim.map.p50.toFixed(0),
    'sim map p99 ns': +r.sim.map.p99.toFixed(0),
    'sim unmap p50 ns': +r.sim.unmap.p50.toFixed(0),
    'sim unmap p99 ns': +r.sim.unmap.p99.toFixed(0),
    'sim batch': r.sim.map.batch,
  }));
  if (o.csv) return renderCsv(rows);
  const text = results.map((r) => kernelShape(o, r, hw.name, model.name)).join('\n\n');
  return `${text}\n\n${renderTable(rows)}\n(MODELED: counted kernel events × the cost model on ${hw.name}; simulator: how fast this model runs here — never compare the two)`;
}
