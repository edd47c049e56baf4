/**
 * `iovalink serve`: serves the simulated NVMe device over NBD (a Unix socket or loopback TCP), so
 * unmodified clients — `nbdinfo`, `qemu-io`/`qemu-img`, `fio --ioengine=nbd`, the kernel's
 * `nbd-client` — drive it; every command becomes block requests through the chosen DMA path and
 * the IOMMU. Runs until SIGINT/SIGTERM, then stops accepting, finishes in-flight commands and
 * prints a summary of the counters (stderr), or JSON with `--json-stats` (stdout).
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { NbdServerStats } from '../nbd/nbd-server.js';
import { DEFAULT_HANDSHAKE_LIMIT_MS, DEFAULT_MAX_CONNECTIONS, startNbdServer } from '../nbd/nbd-server.js';
import { intOption, iommuOption, seedOption } from '../options.js';
import type { IommuMode } from '../rig.js';

/** Options of the serve command as commander parses them. */
export interface ServeOptions {
  /** `--socket PATH`: listen on a Unix socket. */
  socket?: string;
  /** `--port N`: listen on loopback TCP. */
  port?: number;
  /** `--host`: loopback address for `--port`. */
  host: string;
  /** `--path`: the DMA mapping path (driver version). */
  path: 'sg' | 'iova';
  /** `--size` in bytes. */
  size: number;
  /** `--iommu`: device translation. */
  iommu: IommuMode;
  /** `--queue-depth`. */
  queueDepth: number;
  /** `--buffers`: layout of the pages holding request data. */
  buffers: 'contiguous' | 'scattered';
  /** `--name`: export name. */
  name: string;
  /** `--seed`: machine seed. */
  seed: number;
  /** `--debug`: dma-debug on every mapping. */
  debug?: boolean;
  /** `-v`: log connections and protocol errors. */
  verbose?: boolean;
  /** `--json-stats`: final counters as JSON on stdout. */
  jsonStats?: boolean;
  /** `--no-zero-copy` makes this false: write payloads are copied from the socket's own chunks. */
  zeroCopy?: boolean;
  /**
   * `--device-thread`: the device model runs on a worker thread of its own. Default (and
   * `--no-device-thread`): one thread, which measured faster at every job of `bench:nbd` on a
   * shared 2-core machine and cheaper in CPU per request (see the README).
   */
  deviceThread?: boolean;
  /** `--max-connections`: clients connected at once at most (more are refused; default 64). */
  maxConnections?: number;
  /** `--handshake-limit`: seconds a client may take to reach the transmission phase (0 = none; default 10). */
  handshakeLimit?: number;
  /** `--read-only`: refuse WRITE and TRIM with EPERM. */
  readOnly?: boolean;
}

/** Where `serve` writes: its summary and diagnostics (stderr) and JSON stats (stdout). */
export interface ServeIo {
  /** Standard output (JSON stats). */
  out: (s: string) => void;
  /** Standard error (banner, diagnostics, summary). */
  err: (s: string) => void;
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
  t: 2 ** 40,
  tb: 2 ** 40,
  tib: 2 ** 40,
};

/**
 * Parses a size like `1G`, `512M`, `64MiB` or `1073741824` (binary units); throws
 * `InvalidArgumentError` unless it is a positive multiple of 512 bytes up to 2^50.
 */
export function parseByteSize(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
  const unit = m === null ? undefined : UNITS[m[2]!.toLowerCase()];
  if (m === null || unit === undefined) {
    throw new InvalidArgumentError(`size must be a number with an optional unit (K, M, G, T), got "${v}"`);
  }
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n) || n <= 0 || n % 512 !== 0 || n > 2 ** 50) {
    throw new InvalidArgumentError(`size must be a positive multiple of 512 bytes up to 1 PiB, got "${v}"`);
  }
  return n;
}

const int = intOption;

function mib(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** A human-readable summary of a server run's counters (one item per line). */
export function formatServeStats(s: NbdServerStats): string {
  const d = s.device;
  const kv = (r: Record<string, number>) =>
    Object.entries(r)
      .filter(([, v]) => v !== 0)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none';
  const c = s.connections;
  return [
    `iovalink serve: ${(s.uptimeMs / 1000).toFixed(1)} s, path ${d.path}, IOMMU ${d.iommu}, export ${mib(d.size)}`,
    `  connections: ${c.accepted} accepted, ${c.refused} refused, ${c.transmissions} in transmission, ` +
      `${c.structuredReplies} with structured replies, ${c.protocolErrors} protocol errors, ` +
      `${c.handshakeTimeouts} over the handshake limit, ${c.aborted} aborted, ` +
      `${c.maxConcurrent} at most at once`,
    `  options: ${kv(s.options)}`,
    `  commands: ${kv(s.commands)}`,
    `  bytes: read ${mib(s.bytes.read)}, written ${mib(s.bytes.written)}, trimmed ${mib(s.bytes.trimmed)}, zeroed ${mib(s.bytes.zeroed)}`,
    `  write zeroes: ${mib(s.zeroes.deallocated)} deallocated, ${mib(s.zeroes.written)} written from the zero page, ` +
      `${s.zeroes.fastRefused} fast-zero requests refused; block status: ${s.blockStatus.replies} replies, ` +
      `${s.blockStatus.descriptors} extents over ${mib(s.blockStatus.bytes)}`,
    `  error replies: ${kv(s.errors)}`,
    `  block requests (≤ ${d.maxRequestBytes / 1024} KiB): ${kv(d.blockRequests)}; errors: ${kv(d.blockErrors)}; ` +
      `${d.bios} bios; ${d.maxInFlight} in flight at most`,
    `  driver: ${kv(d.driver)}`,
    `  DMA/IOMMU: ${kv(d.counters)}`,
    `  virtual time ${(d.virtualNs / 1e6).toFixed(3)} ms; memory waits ${d.memoryWaits}, budget held ${mib(d.memReserved)}; internal errors ${d.internalErrors}`,
    d.leaks.length === 0 ? '  teardown: no leaks' : `  teardown LEAKS: ${d.leaks.join('; ')}`,
  ].join('\n');
}

/**
 * Runs the server until `signal` aborts (the command wires SIGINT/SIGTERM to it), then closes it
 * and reports. Resolves with the final counters; throws if the server cannot start.
 */
export async function serve(o: ServeOptions, signal: AbortSignal, io: ServeIo): Promise<NbdServerStats> {
  if ((o.socket === undefined) === (o.port === undefined)) {
    throw new InvalidArgumentError('give exactly one of --socket PATH and --port N');
  }
  const srv = await startNbdServer({
    ...(o.socket === undefined ? {} : { socket: o.socket }),
    ...(o.port === undefined ? {} : { port: o.port, host: o.host }),
    path: o.path,
    size: o.size,
    iommu: o.iommu,
    queueDepth: o.queueDepth,
    buffers: o.buffers,
    name: o.name,
    seed: o.seed,
    ...(o.debug === undefined ? {} : { debug: o.debug }),
    ...(o.zeroCopy === undefined ? {} : { zeroCopy: o.zeroCopy }),
    ...(o.deviceThread === undefined ? {} : { deviceThread: o.deviceThread }),
    maxConnections: o.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
    handshakeLimitMs: (o.handshakeLimit ?? DEFAULT_HANDSHAKE_LIMIT_MS / 1000) * 1000,
    readOnly: o.readOnly === true,
    ...(o.verbose ? { log: (l: string) => io.err(l) } : {}),
  });
  const e = srv.export;
  const handshakeS = o.handshakeLimit ?? DEFAULT_HANDSHAKE_LIMIT_MS / 1000;
  io.err(
    `iovalink serve: ${srv.uri} export "${e.name}" ${mib(e.size)}, path ${e.path}, IOMMU ${e.iommu}, ` +
      `queue depth ${e.queueDepth}, block requests ≤ ${e.maxPiece / 1024} KiB, ` +
      `${o.maxConnections ?? DEFAULT_MAX_CONNECTIONS} connections at most, handshake limit ${handshakeS === 0 ? 'none' : `${handshakeS} s`}` +
      `${o.readOnly === true ? ', read-only' : ''}` +
      `${o.zeroCopy === false ? ', payloads copied' : ''}${o.deviceThread === true ? ', device on its own thread' : ', device on the socket thread'} (Ctrl-C to stop)`,
  );
  await new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
  io.err('iovalink serve: shutting down (finishing in-flight requests)');
  const stats = await srv.close();
  if (o.jsonStats) io.out(JSON.stringify(stats, null, 2));
  io.err(formatServeStats(stats));
  return stats;
}

/** Adds the `serve` command to `program` (commander 14). */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve the simulated NVMe device over NBD (Unix socket or loopback TCP) until Ctrl-C')
    .option('--socket <path>', 'listen on a Unix socket')
    .addOption(new Option('--port <n>', 'listen on a loopback TCP port').argParser(int('port', 0, 65535)))
    .option('--host <addr>', 'loopback address for --port (127.0.0.0/8 or ::1 only)', '127.0.0.1')
    .addOption(new Option('--path <path>', 'DMA mapping path').choices(['sg', 'iova']).default('iova'))
    .addOption(
      new Option('--size <bytes>', 'device size (K, M, G, T suffixes)')
        .default(2 ** 30, '1G')
        .argParser(parseByteSize),
    )
    .addOption(iommuOption())
    .addOption(
      new Option('--queue-depth <n>', 'device queue depth and NBD requests in flight per connection')
        .default(64)
        .argParser(int('queue depth', 1, 1023)),
    )
    .addOption(
      new Option('--buffers <layout>', 'pages holding request data')
        .choices(['contiguous', 'scattered'])
        .default('contiguous'),
    )
    .option('--name <export>', 'export name (the empty name selects it too)', 'iovalink')
    .option('--read-only', 'export read-only: NBD_FLAG_READ_ONLY, EPERM on writes and trims')
    .addOption(
      new Option('--max-connections <n>', 'clients connected at once at most; more are refused')
        .default(DEFAULT_MAX_CONNECTIONS)
        .argParser(int('max connections', 1, 65535)),
    )
    .addOption(
      new Option(
        '--handshake-limit <seconds>',
        'drop a client that has not finished the handshake after this many seconds (0 = no limit; qemu-nbd default)',
      )
        .default(DEFAULT_HANDSHAKE_LIMIT_MS / 1000)
        .argParser(int('handshake limit', 0, 86_400)),
    )
    .addOption(seedOption('machine seed'))
    .option('--debug', 'check every mapping with dma-debug (slower)')
    .option('-v, --verbose', 'log connections and protocol errors to stderr')
    .option('--json-stats', 'print the final counters as JSON on stdout')
    .option(
      '--no-zero-copy',
      "copy write payloads from the socket's chunks instead of receiving them into the request's pages",
    )
    .option(
      '--device-thread',
      'run the device model (driver, IOMMU, controller) on a worker thread of its own instead of the socket thread',
    )
    .option('--no-device-thread', 'run the device model on the socket thread (the default)')
    .action(async (o: ServeOptions) => {
      const ac = new AbortController();
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals === 1) ac.abort();
        else {
          process.stderr.write(`iovalink serve: ${sig} again, exiting now\n`);
          process.exit(130);
        }
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const stats = await serve(o, ac.signal, {
          out: (s) => process.stdout.write(`${s}\n`),
          err: (s) => process.stderr.write(`${s}\n`),
        });
        if (stats.device.leaks.length > 0 || stats.device.internalErrors > 0) process.exitCode = 1;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
