/**
 * `iovalink bench block`: sweeps request size × queue depth through the NVMe-style device for
 * both mapping paths, with IOPS in simulator time, modeled kernel time per I/O, and the counts per
 * I/O side by side. Every byte is verified.
 */
import { loadCostModel } from '../cost-model.js';
import { type Row, renderCsv, renderTable } from '../format.js';
import type { DmaPath } from '../results.js';
import type { IommuMode } from '../rig.js';
import { type BlockCase, runBlockPath } from '../workloads/block.js';

/** Options of `bench block`. */
export interface BenchBlockOptions {
  sizes: number[];
  depths: number[];
  ios: number;
  pattern: 'random' | 'sequential';
  buffers: 'contiguous' | 'scattered';
  path: DmaPath | 'both';
  iommu: IommuMode;
  costModel: string;
  seed: number;
  json?: boolean;
  csv?: boolean;
}

/** Parses "4k,128k,1m" into bytes. */
export function parseSizes(v: string): number[] {
  return v.split(',').map((t) => {
    const m = /^(\d+)([kmKM]?)$/.exec(t.trim());
    if (m === null) throw new Error(`size "${t}" is not a number with an optional k or m suffix`);
    const n = Number(m[1]) * (m[2] === '' ? 1 : m[2]!.toLowerCase() === 'k' ? 1024 : 1024 * 1024);
    if (n < 512 || n % 512 !== 0) throw new Error(`size "${t}" must be a multiple of 512 bytes`);
    return n;
  });
}

/** Runs the sweep. */
export function benchBlock(o: BenchBlockOptions): string {
  const model = loadCostModel(o.costModel);
  const paths: DmaPath[] = o.path === 'both' ? ['sg', 'iova'] : [o.path];
  const rows: Row[] = [];
  for (const size of o.sizes) {
    for (const qd of o.depths) {
      const c: BlockCase = {
        name: `${size / 1024} KiB qd${qd}`,
        blockSize: size,
        pattern: o.pattern,
        readMix: 0.5,
        buffers: o.buffers,
        ios: o.ios,
        quickIos: o.ios,
      };
      for (const path of paths) {
        const r = runBlockPath(
          c,
          path,
          { iommu: o.iommu, seed: o.seed, quick: false, debug: false, costModel: model },
          0,
          1,
          qd,
        );
        rows.push({
          size: `${size / 1024} KiB`,
          qd,
          path,
          'IOPS (sim)': Math.round(1e9 / r.simNsPerOp),
          'modeled ns/io': +r.modeledNsPerOp.toFixed(0),
          'sg B/io': +r.sgBytesPerOp.toFixed(0),
          'meta B/io': +r.metaBytesPerOp.toFixed(0),
          'allocs/io': +r.allocsPerOp.toFixed(2),
          'IOVA allocs/io': +r.iovaAllocsPerOp.toFixed(2),
          'PTE writes/io': +r.pteWritesPerOp.toFixed(1),
          'IOTLB inval/io': +r.iotlbInvalidationsPerOp.toFixed(3),
        });
      }
    }
  }
  if (o.json)
    return JSON.stringify(
      { timeKinds: { 'IOPS (sim)': 'simulator', 'modeled ns/io': 'modeled kernel' }, rows },
      null,
      2,
    );
  if (o.csv) return renderCsv(rows);
  return `${renderTable(rows)}\nIOPS (sim) is simulator throughput of the whole I/O path incl. device data movement; modeled ns/io is counts × cost model ${model.name}.`;
}
