/**
 * A port of the kernel's DMA map benchmark: map and unmap a buffer of `granule` pages in a loop,
 * timing each call, and report average and standard deviation in the tool's units (100 ns) and
 * output shape. Kernel counterpart: kernel/dma/map_benchmark.c, include/uapi/linux/map_benchmark.h
 * and tools/testing/selftests/dma/dma_map_benchmark.c. Differs on purpose: "threads" run
 * round-robin on the machine's CPUs in one JS thread; the time measured is simulator time (how fast
 * this model runs on the host), never modeled kernel time; `mode: 'link'` (two-step API: try_alloc
 * + link + sync, then destroy) is our extension — the kernel tool only has the single-map mode.
 */
import { type Device, dmaBitMask, dmaSetMask } from './device.js';
import { DMA_BIDIRECTIONAL, DMA_FROM_DEVICE, DMA_TO_DEVICE, type DmaDataDirection } from './dma-direction.js';
import { DmaIovaState, dmaIovaDestroy, dmaIovaLink, dmaIovaSync, dmaIovaTryAlloc } from './dma-iova.js';
import { DmaError } from './errors.js';
import { dmaMapPage, dmaMappingError, dmaUnmapPage } from './mapping.js';

/** Largest thread count (kernel: `DMA_MAP_MAX_THREADS`). */
export const DMA_MAP_MAX_THREADS = 1024;
/** Longest run in seconds (kernel: `DMA_MAP_MAX_SECONDS`). */
export const DMA_MAP_MAX_SECONDS = 300;
/** Longest simulated transfer delay in ns (kernel: `DMA_MAP_MAX_TRANS_DELAY`, 10 ms). */
export const DMA_MAP_MAX_TRANS_DELAY = 10 * 1000 * 1000;

/** Parameters (kernel: the input fields of `struct map_benchmark`; tool flags -t -s -n -b -d -x -g). */
export interface MapBenchmarkParams {
  /** -t: threads, 1..1024 (default 1). */
  threads?: number;
  /** -s: seconds of (simulator) run time, 1..300 (default 20). Use `loops` for a fixed count. */
  seconds?: number;
  /** Fixed iterations per thread instead of a time limit (our extension, for tests). */
  loops?: number;
  /** -n: NUMA node, -1 for any (accepted; the model has one node). */
  node?: number;
  /** -b: DMA mask bits, 20..64 (default 32). */
  dmaBits?: number;
  /** -d: 0 BIDIRECTIONAL, 1 TO_DEVICE, 2 FROM_DEVICE (default 0). */
  dmaDir?: number;
  /** -x: simulated transfer time in ns between map and unmap (advances the virtual clock). */
  dmaTransNs?: number;
  /** -g: pages per map, 1..1024 (default 1). */
  granule?: number;
  /** Mapping path: 'single' (dma_map_page, the kernel's mode) or 'link' (two-step API). */
  mode?: 'single' | 'link';
}

/** Results (kernel: the output fields of `struct map_benchmark`), plus exact figures. */
export interface MapBenchmarkResult {
  avgMap100ns: number;
  mapStddev: number;
  avgUnmap100ns: number;
  unmapStddev: number;
  /** Exact mean map time in ns (simulator time). */
  mapNs: number;
  /** Exact mean unmap time in ns (simulator time). */
  unmapNs: number;
  loops: number;
  params: Required<Omit<MapBenchmarkParams, 'loops'>> & { loops: number | undefined };
}

function checkRange(name: string, v: number, lo: number, hi: number): void {
  if (!(Number.isInteger(v) && v >= lo && v <= hi)) {
    throw new DmaError(`dma_map_benchmark: invalid ${name} ${v}: expected an integer in ${lo}..${hi}`, {
      rule: 'map_benchmark_ioctl: -EINVAL',
      errno: -22,
    });
  }
}

/** The resolved parameters of a run. */
type MapBenchmarkRun = MapBenchmarkResult['params'];

/** Sums over the timed iterations (kernel: the `sum_map_100ns` … `loops` counters of the thread). */
interface MapBenchmarkSums {
  loops: number;
  mapSum: number;
  mapSq: number;
  unmapSum: number;
  unmapSq: number;
  mapNsSum: number;
  unmapNsSum: number;
}

/**
 * Runs the benchmark on `dev` (kernel: the `DMA_MAP_BENCHMARK` ioctl). Invalid parameters throw
 * the ioctl's -EINVAL as a `DmaError`; a failed map ends the run with -ENOMEM as the kernel's
 * thread does. The device's DMA mask is set to `dmaBits` for the run and restored after.
 */
export function dmaMapBenchmark(dev: Device, params: MapBenchmarkParams = {}): MapBenchmarkResult {
  const p = mapBenchmarkCheckParams(params);
  const dir: DmaDataDirection =
    p.dmaDir === 1 ? DMA_TO_DEVICE : p.dmaDir === 2 ? DMA_FROM_DEVICE : DMA_BIDIRECTIONAL;
  const machine = dev.machine;
  const size = p.granule * 4096;
  const order = Math.ceil(Math.log2(p.granule));
  const oldMask = dev.dmaMask;
  if (dmaSetMask(dev, dmaBitMask(p.dmaBits)) !== 0) {
    throw new DmaError('dma_map_benchmark: failed to set the DMA mask', {
      rule: 'map_benchmark_ioctl: -EINVAL',
      errno: -22,
    });
  }
  const bufs: number[] = [];
  try {
    for (let t = 0; t < p.threads; t++) {
      const b = machine.pages.allocPages(order);
      if (b === 0)
        throw new DmaError('dma_map_benchmark: out of memory for the buffer', {
          rule: 'map_benchmark: -ENOMEM',
          errno: -12,
        });
      if (dir !== DMA_FROM_DEVICE) machine.phys.fill(b, size, 0x66);
      bufs.push(b);
    }
    const sums = mapBenchmarkThreads(dev, p, bufs, size, dir);
    machine.setCpu(0);
    return mapBenchmarkResult(sums, p);
  } finally {
    dev.dmaMask = oldMask;
    for (const b of bufs) machine.pages.freePages(b, order);
  }
}

/** The parameters with their defaults, checked as `map_benchmark_ioctl` checks them (-EINVAL). */
function mapBenchmarkCheckParams(params: MapBenchmarkParams): MapBenchmarkRun {
  const p = {
    threads: params.threads ?? 1,
    seconds: params.seconds ?? 20,
    node: params.node ?? -1,
    dmaBits: params.dmaBits ?? 32,
    dmaDir: params.dmaDir ?? 0,
    dmaTransNs: params.dmaTransNs ?? 0,
    granule: params.granule ?? 1,
    mode: params.mode ?? 'single',
    loops: params.loops,
  };
  checkRange('threads', p.threads, 1, DMA_MAP_MAX_THREADS);
  checkRange('seconds', p.seconds, 1, DMA_MAP_MAX_SECONDS);
  checkRange('dma_bits', p.dmaBits, 20, 64);
  checkRange('dma_dir', p.dmaDir, 0, 2);
  checkRange('dma_trans_ns', p.dmaTransNs, 0, DMA_MAP_MAX_TRANS_DELAY);
  checkRange('granule', p.granule, 1, 1024);
  if (p.node !== -1 && p.node !== 0) checkRange('node', p.node, -1, 0);
  return p;
}

/**
 * The loop of `map_benchmark_thread`, the threads taking turns an iteration each on the machine's
 * CPUs: map, wait the transfer delay (virtual clock), unmap, each call timed in simulator time.
 */
function mapBenchmarkThreads(
  dev: Device,
  p: MapBenchmarkRun,
  bufs: readonly number[],
  size: number,
  dir: DmaDataDirection,
): MapBenchmarkSums {
  const machine = dev.machine;
  const sums: MapBenchmarkSums = {
    loops: 0,
    mapSum: 0,
    mapSq: 0,
    unmapSum: 0,
    unmapSq: 0,
    mapNsSum: 0,
    unmapNsSum: 0,
  };
  const state = new DmaIovaState();
  const deadline = performance.now() + p.seconds * 1000;
  const maxLoops = p.loops ?? Number.POSITIVE_INFINITY;
  for (let i = 0; i < maxLoops; i++) {
    if (p.loops === undefined && (i & 63) === 0 && performance.now() > deadline) break;
    const t = i % p.threads;
    machine.setCpu(t % machine.cpus);
    const buf = bufs[t]!;
    const m0 = performance.now();
    const addr = mapBenchmarkMap(dev, p.mode, state, buf, size, dir);
    const m1 = performance.now();
    if (p.dmaTransNs > 0) machine.clock.advance(p.dmaTransNs);
    const u0 = performance.now();
    if (p.mode === 'single') dmaUnmapPage(dev, addr, size, dir, 0);
    else dmaIovaDestroy(dev, state, size, dir, 0);
    const u1 = performance.now();
    const mapNs = (m1 - m0) * 1e6;
    const unmapNs = (u1 - u0) * 1e6;
    const map100 = Math.floor(mapNs / 100);
    const unmap100 = Math.floor(unmapNs / 100);
    sums.mapSum += map100;
    sums.mapSq += map100 * map100;
    sums.unmapSum += unmap100;
    sums.unmapSq += unmap100 * unmap100;
    sums.mapNsSum += mapNs;
    sums.unmapNsSum += unmapNs;
    sums.loops++;
  }
  return sums;
}

/**
 * One timed map: `dma_map_single` in the kernel's mode, try_alloc + link + sync in ours. A failure
 * ends the run as the kernel's thread does (-ENOMEM). Returns the DMA address (0 in link mode: the
 * state holds it).
 */
function mapBenchmarkMap(
  dev: Device,
  mode: 'single' | 'link',
  state: DmaIovaState,
  buf: number,
  size: number,
  dir: DmaDataDirection,
): number {
  if (mode === 'single') {
    const addr = dmaMapPage(dev, buf, 0, size, dir, 0);
    if (dmaMappingError(dev, addr))
      throw new DmaError('dma_map_benchmark: map failed', { rule: 'map_benchmark: -ENOMEM', errno: -12 });
    return addr;
  }
  if (!dmaIovaTryAlloc(dev, state, buf, size)) {
    throw new DmaError('dma_map_benchmark: dma_iova_try_alloc failed (no IOMMU DMA domain?)', {
      rule: 'map_benchmark: -ENOMEM',
      errno: -12,
    });
  }
  if (dmaIovaLink(dev, state, buf, 0, size, dir, 0) !== 0 || dmaIovaSync(dev, state, 0, size) !== 0) {
    throw new DmaError('dma_map_benchmark: link failed', {
      rule: 'map_benchmark: -ENOMEM',
      errno: -12,
    });
  }
  return 0;
}

/** Averages and standard deviations in the tool's 100 ns units, as `do_map_benchmark` reports them. */
function mapBenchmarkResult(sums: MapBenchmarkSums, p: MapBenchmarkRun): MapBenchmarkResult {
  const loops = sums.loops;
  const avgMap = loops > 0 ? Math.floor(sums.mapSum / loops) : 0;
  const avgUnmap = loops > 0 ? Math.floor(sums.unmapSum / loops) : 0;
  const sd = (sq: number, avg: number): number =>
    loops > 0 ? Math.floor(Math.sqrt(Math.max(0, sq / loops - avg * avg))) : 0;
  return {
    avgMap100ns: avgMap,
    mapStddev: sd(sums.mapSq, avgMap),
    avgUnmap100ns: avgUnmap,
    unmapStddev: sd(sums.unmapSq, avgUnmap),
    mapNs: loops > 0 ? sums.mapNsSum / loops : 0,
    unmapNs: loops > 0 ? sums.unmapNsSum / loops : 0,
    loops,
    params: p,
  };
}

/** The tool's three output lines (tools/testing/selftests/dma/dma_map_benchmark.c). */
export function formatMapBenchmark(r: MapBenchmarkResult): string {
  const dirName =
    r.params.dmaDir === 1 ? 'TO_DEVICE' : r.params.dmaDir === 2 ? 'FROM_DEVICE' : 'BIDIRECTIONAL';
  return [
    `dma mapping mode: ${r.params.mode === 'single' ? 'DMA_MAP_SINGLE_MODE' : 'DMA_IOVA_LINK_MODE'}`,
    `dma mapping benchmark: threads:${r.params.threads} seconds:${r.params.seconds} node:${r.params.node} dir:${dirName} granule: ${r.params.granule}`,
    `average map latency(us):${(r.avgMap100ns / 10).toFixed(1)} standard deviation:${(r.mapStddev / 10).toFixed(1)}`,
    `average unmap latency(us):${(r.avgUnmap100ns / 10).toFixed(1)} standard deviation:${(r.unmapStddev / 10).toFixed(1)}`,
  ].join('\n');
}
