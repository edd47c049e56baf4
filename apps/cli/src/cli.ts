#!/usr/bin/env node
/**
 * The `iovalink` command line. Every command runs in-process on a simulated machine; see
 * `iovalink <command> --help`.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import { type BenchBlockOptions, benchBlock, parseSizes } from './commands/bench-block.js';
import { benchMap } from './commands/bench-map.js';
import { type DemoOptions, demo } from './commands/demo.js';
import { registerKernelDiff } from './commands/kernel-diff.js';
import { registerServe } from './commands/serve.js';
import { TRACE_CLOCKS, type TraceOptions, trace } from './commands/trace.js';
import { costModelOption, hwOption, intOption, iommuOption, seedOption } from './options.js';
import type { IommuMode } from './rig.js';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

const int = intOption;

/** Output sink of the commands: one string a call, printed as a line. */
type Out = (s: string) => void;

export function buildProgram(out: Out = (s) => process.stdout.write(`${s}\n`)): Command {
  const program = new Command('iovalink')
    .description('The Linux DMA-mapping stack as an executable model: scatterlist path vs two-step IOVA API')
    .version(pkg.version);
  registerDemo(program, out);
  registerTrace(program, out);
  const bench = program
    .command('bench')
    .description('benchmarks: the dma_map_benchmark port and block sweeps');
  registerBenchMap(bench, out);
  registerBenchBlock(bench, out);
  registerServe(program);
  registerKernelDiff(program, out);
  return program;
}

/** `iovalink demo`: the three workloads through both paths. */
function registerDemo(program: Command, out: Out): void {
  program
    .command('demo')
    .description(
      'block I/O, RDMA ODP and VFIO migration through the scatterlist path and the two-step IOVA path, side by side',
    )
    .option('--quick', 'small sizes: the whole run in well under ten seconds')
    .option('--json', 'machine-readable results')
    .option('--report <file.html>', 'also write a self-contained HTML report with charts')
    .addOption(hwOption())
    .addOption(costModelOption())
    .addOption(iommuOption())
    .addOption(seedOption('seed for the machine and workloads'))
    .addOption(new Option('--only <subsystem...>', 'run only these').choices(['block', 'odp', 'vfio']))
    .option('--debug', 'check every mapping with dma-debug (slower)')
    .option('--no-progress', 'no progress bars')
    .action(async (o: DemoOptions) => out(await demo(o)));
}

/** `iovalink trace`: a short workload's DMA/IOMMU events as Chrome trace-event JSON. */
function registerTrace(program: Command, out: Out): void {
  program
    .command('trace')
    .description(
      'record the DMA/IOMMU events of a short workload as Chrome trace-event JSON (Perfetto opens it)',
    )
    .requiredOption('--out <trace.json>', 'where to write the trace')
    .addOption(
      new Option('--workload <subsystem>', 'which workload')
        .choices(['block', 'odp', 'vfio'])
        .default('block'),
    )
    .addOption(
      new Option('--clock <clock>', 'timestamps: modeled kernel time, or wall-clock simulator time')
        .choices([...TRACE_CLOCKS])
        .default('modeled'),
    )
    .addOption(hwOption())
    .addOption(costModelOption())
    .addOption(iommuOption())
    .addOption(seedOption())
    .action(async (o: TraceOptions) => out(await trace(o)));
}

/** `iovalink bench map`: the dma_map_benchmark port. */
function registerBenchMap(bench: Command, out: Out): void {
  bench
    .command('map')
    .description(
      'map and unmap a buffer in a loop, like the kernel dma_map_benchmark tool: MODELED kernel µs on --hw, and simulator-time percentiles',
    )
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
    .addOption(iommuOption())
    .addOption(hwOption())
    .addOption(costModelOption())
    .addOption(
      new Option('--loops <n>', 'fixed iterations instead of --seconds').argParser(int('loops', 1, 1e9)),
    )
    .option('--json', 'machine-readable output')
    .option('--csv', 'CSV output')
    .action((o: Parameters<typeof benchMap>[0] & { iommu: IommuMode }) => out(benchMap(o)));
}

/** `iovalink bench block`: request size × queue depth sweeps through the NVMe-style device. */
function registerBenchBlock(bench: Command, out: Out): void {
  bench
    .command('block')
    .description('sweep request size × queue depth through the NVMe-style device, both mapping paths')
    .option(
      '--sizes <list>',
      'request sizes, e.g. 4k,128k,1m',
      (v: string) => {
        try {
          return parseSizes(v);
        } catch (e) {
          throw new InvalidArgumentError((e as Error).message);
        }
      },
      [4096, 131072, 1048576],
    )
    .option(
      '--depths <list>',
      'queue depths, e.g. 1,16',
      (v: string) => v.split(',').map(int('depth', 1, 1023)),
      [1, 16],
    )
    .addOption(new Option('--ios <n>', 'I/Os per point').default(500).argParser(int('ios', 1, 1e7)))
    .addOption(new Option('--pattern <p>', 'offsets').choices(['random', 'sequential']).default('random'))
    .addOption(
      new Option('--buffers <layout>', 'buffer pages')
        .choices(['contiguous', 'scattered'])
        .default('contiguous'),
    )
    .addOption(new Option('--path <path>', 'mapping path').choices(['sg', 'iova', 'both']).default('both'))
    .addOption(iommuOption())
    .addOption(hwOption())
    .addOption(costModelOption())
    .addOption(seedOption())
    .option('--json', 'machine-readable output')
    .option('--csv', 'CSV output')
    .action(async (o: BenchBlockOptions) => out(await benchBlock(o)));
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
/**
 * Runs the command line on `argv` (node's layout: executable, script, arguments) and reports a
 * failure as `iovalink: <message>` on stderr with exit code 1. The installed `iovalink` command
 * (`bin/iovalink.js`) calls this; no kernel counterpart.
 */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (e) {
    process.stderr.write(`iovalink: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}

if (isMain()) await main();
