#!/usr/bin/env node
/**
 * The `iovalink` command line. Every command runs in-process on a simulated machine; see
 * `iovalink <command> --help`.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import { benchMap } from './commands/bench-map.js';
import { IOMMU_MODES, type IommuMode } from './rig.js';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

function int(name: string, lo: number, hi: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) {
      throw new InvalidArgumentError(`${name} must be an integer in ${lo}..${hi}, got "${v}"`);
    }
    return n;
  };
}

export function buildProgram(out: (s: string) => void = (s) => process.stdout.write(`${s}\n`)): Command {
  const program = new Command('iovalink')
    .description('The Linux DMA-mapping stack as an executable model: scatterlist path vs two-step IOVA API')
    .version(pkg.version);

  const bench = program
    .command('bench')
    .description('benchmarks: the dma_map_benchmark port and block sweeps');
  bench
    .command('map')
    .description('map and unmap a buffer in a loop, like the kernel dma_map_benchmark tool (simulator time)')
    .addOption(
      new Option('-t, --threads <n>', 'threads, run round-robin on the CPUs')
        .default(1)
        .argParser(int('threads', 1, 1024)),
    )
    .addOption(
      new Option('-s, --seconds <n>', 'run time in seconds').default(20).argParser(int('seconds', 1, 300)),
    )
    .addOption(
      new Option('-n, --node <n>', 'NUMA node (-1 = any; the model has one)')
        .default(-1)
        .argParser(int('node', -1, 0)),
    )
    .addOption(new Option('-b, --bits <n>', 'DMA mask bits').default(32).argParser(int('bits', 20, 64)))
    .addOption(
      new Option('-d, --dir <n>', 'direction: 0 BIDIRECTIONAL, 1 TO_DEVICE, 2 FROM_DEVICE')
        .default(0)
        .argParser(int('dir', 0, 2)),
    )
    .addOption(
      new Option('-x, --delay <ns>', 'simulated transfer time between map and unmap')
        .default(0)
        .argParser(int('delay', 0, 10_000_000)),
    )
    .addOption(
      new Option('-g, --granule <pages>', 'pages per mapping').default(1).argParser(int('granule', 1, 1024)),
    )
    .addOption(
      new Option('-m, --mode <mode>', 'single (dma_map_page), link (dma_iova_*), or both')
        .choices(['single', 'link', 'both'])
        .default('both'),
    )
    .addOption(new Option('--iommu <mode>', 'device translation').choices([...IOMMU_MODES]).default('strict'))
    .addOption(
      new Option('--loops <n>', 'fixed iterations instead of --seconds').argParser(int('loops', 1, 1e9)),
    )
    .option('--json', 'machine-readable output')
    .option('--csv', 'CSV output')
    .action((o: Parameters<typeof benchMap>[0] & { iommu: IommuMode }) => out(benchMap(o)));

  return program;
}

/** True when this file is the program being run (also through npm's bin symlink). */
function isMain(): boolean {
  const arg = process.argv[1];
  if (arg === undefined) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}
if (isMain()) {
  try {
    await buildProgram().parseAsync(process.argv);
  } catch (e) {
    process.stderr.write(`iovalink: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
