/**
 * `iovalink bench map`: the dma_map_benchmark port with the kernel tool's flags
 * (tools/testing/selftests/dma/dma_map_benchmark.c: -t -s -n -b -d -x -g) and its output, plus
 * `-m link` for the two-step API (our extension). Times are simulator time.
 */
import { dmaMapBenchmark, formatMapBenchmark, type MapBenchmarkResult } from '@iovalink/dma-api';
import { type Row, renderCsv, renderTable } from '../format.js';
import { createRig, type IommuMode } from '../rig.js';

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
  loops?: number;
  json?: boolean;
  csv?: boolean;
}

/** Runs the benchmark and returns what to print. */
export function benchMap(o: BenchMapOptions): string {
  const modes: Array<'single' | 'link'> = o.mode === 'both' ? ['single', 'link'] : [o.mode];
  const results: MapBenchmarkResult[] = [];
  for (const mode of modes) {
    const rig = createRig({ iommu: o.iommu });
    const dev = rig.device('dma_map_benchmark');
    results.push(
      dmaMapBenchmark(dev, {
        threads: o.threads,
        seconds: o.seconds,
        node: o.node,
        dmaBits: o.bits,
        dmaDir: o.dir,
        dmaTransNs: o.delay,
        granule: o.granule,
        mode,
        ...(o.loops !== undefined ? { loops: o.loops } : {}),
      }),
    );
  }
  if (o.json) return JSON.stringify({ timeKind: 'simulator', results }, null, 2);
  const rows: Row[] = results.map((r) => ({
    mode: r.params.mode,
    loops: r.loops,
    'map ns (sim)': +r.mapNs.toFixed(1),
    'unmap ns (sim)': +r.unmapNs.toFixed(1),
    avg_map_100ns: r.avgMap100ns,
    map_stddev: r.mapStddev,
    avg_unmap_100ns: r.avgUnmap100ns,
    unmap_stddev: r.unmapStddev,
  }));
  if (o.csv) return renderCsv(rows);
  const kernelShape = results.map(formatMapBenchmark).join('\n\n');
  return `${kernelShape}\n\n${renderTable(rows)}\n(simulator time: how fast this model runs here, not kernel time)`;
}
