/**
 * `iovalink serve` against `qemu-nbd` (a raw file) and `nbdkit memory` on this machine, in one run
 * with the same fio jobs over `fio --ioengine=nbd` (libnbd, Unix sockets): 4 KiB random reads and
 * writes at queue depth 1 and 16, 128 KiB sequential reads and writes at depth 8, 1 MiB sequential
 * writes at depth 4. Rounds are interleaved: each round runs every job on every target, the
 * target that goes first rotating from round to round, so a machine whose load changes during
 * the run hurts every target alike; the load average is recorded each round. Every target is
 * filled by one sequential pass first (so reads return data everywhere: qemu-nbd answers a hole
 * without moving data) and warmed up with each job once. Reported per job and target: the median
 * IOPS over the rounds with its spread (min–max), the median of the per-round ratios to each peer,
 * fio's p50/p99 completion latency, and the server's CPU time per request (from /proc). Then
 * `serve`'s model counters (block requests, IOVA allocations, bytes moved by device DMA through
 * the simulated IOMMU) and resident memory, and a memory check: RSS of each server after writing
 * `--mem-written` of random 4 KiB blocks (each block once) to a `--mem-size` export.
 *
 *   pnpm --filter iovalink bench:nbd [--runtime 3] [--rounds 3] [--warmup 1] [--size 1G]
 *     [--targets serve,serve-thread,qemu-nbd,nbdkit] [--jobs randread-4k-qd1,...] [--path iova]
 *     [--mem-size 4G] [--mem-written 1G] [--no-mem] [--json bench-nbd.json] [--node-args "..."]
 *     [--built]
 *
 * `serve` runs from the TypeScript sources under tsx by default; `--built` runs the build
 * (`dist/cli.js`, what `npm i iovalink` installs; build it first with
 * `pnpm --filter iovalink... build`), which the sources under tsx trail by the cost of tsx's
 * name-keeping wrappers on every closure.
 *
 * Targets: `serve` (`iovalink serve` as it starts by default: the device model on the socket
 * thread), `serve-thread` (`--device-thread`: the model on a worker thread of its own),
 * `serve-1t` (`--no-device-thread`, the same as the default today), `qemu-nbd`, `nbdkit` (the
 * `memory` plugin); default: serve, serve-thread, qemu-nbd, nbdkit. A short
 * run for development: `--runtime 2 --rounds 2 --warmup 1 --mem-written 256M`.
 * The iovalink server runs through `registerServe` exactly as `iovalink serve` does.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseByteSize } from '../src/commands/serve.js';
import type { NbdServerStats } from '../src/nbd/nbd-server.js';

/** The fio jobs, in the order a round runs them. */
const JOBS: Record<string, { rw: string; bs: string; qd: number }> = {
  'randread-4k-qd1': { rw: 'randread', bs: '4k', qd: 1 },
  'randread-4k-qd16': { rw: 'randread', bs: '4k', qd: 16 },
  'randwrite-4k-qd1': { rw: 'randwrite', bs: '4k', qd: 1 },
  'randwrite-4k-qd16': { rw: 'randwrite', bs: '4k', qd: 16 },
  'seqread-128k-qd8': { rw: 'read', bs: '128k', qd: 8 },
  'seqwrite-128k-qd8': { rw: 'write', bs: '128k', qd: 8 },
  'seqwrite-1m-qd4': { rw: 'write', bs: '1m', qd: 4 },
};

interface Args {
  runtime: number;
  rounds: number;
  warmup: number;
  size: number;
  path: 'sg' | 'iova';
  targets: string[];
  jobs: string[];
  mem: boolean;
  memSize: number;
  memWritten: number;
  json: string;
  nodeArgs: string[];
  /** Run `serve` from the build (`dist/cli.js`) instead of the TypeScript sources under tsx. */
  built: boolean;
}

const ALL_TARGETS = ['serve', 'serve-thread', 'serve-1t', 'qemu-nbd', 'nbdkit'];

function parseArgs(argv: string[]): Args {
  const a: Args = {
    runtime: 3,
    rounds: 3,
    warmup: 1,
    size: 2 ** 30,
    path: 'iova',
    targets: ['serve', 'serve-thread', 'qemu-nbd', 'nbdkit'],
    jobs: Object.keys(JOBS),
    mem: true,
    memSize: 4 * 2 ** 30,
    memWritten: 2 ** 30,
    json: 'bench-nbd.json',
    nodeArgs: [],
    built: false,
  };
  const list = (v: string | undefined, allowed: string[], what: string) => {
    const l = (v ?? '').split(',').filter((s) => s !== '');
    for (const s of l)
      if (!allowed.includes(s)) throw new Error(`unknown ${what} ${s}: expected ${allowed.join(', ')}`);
    if (l.length === 0) throw new Error(`--${what}s needs at least one of ${allowed.join(', ')}`);
    return l;
  };
  const posInt = (v: string | undefined, what: string, min: number) => {
    const n = Number(v);
    if (!(Number.isInteger(n) && n >= min)) throw new Error(`${what} must be an integer ≥ ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--runtime') a.runtime = posInt(argv[++i], '--runtime', 1);
    else if (k === '--rounds') a.rounds = posInt(argv[++i], '--rounds', 1);
    else if (k === '--warmup') a.warmup = posInt(argv[++i], '--warmup', 0);
    else if (k === '--size') a.size = parseByteSize(argv[++i] ?? '');
    else if (k === '--path') a.path = list(argv[++i], ['sg', 'iova'], 'path')[0] as 'sg' | 'iova';
    else if (k === '--targets') a.targets = list(argv[++i], ALL_TARGETS, 'target');
    else if (k === '--jobs') a.jobs = list(argv[++i], Object.keys(JOBS), 'job');
    else if (k === '--no-mem') a.mem = false;
    else if (k === '--built') a.built = true;
    else if (k === '--mem-size') a.memSize = parseByteSize(argv[++i] ?? '');
    else if (k === '--mem-written') a.memWritten = parseByteSize(argv[++i] ?? '');
    else if (k === '--json') a.json = argv[++i] ?? '';
    else if (k === '--node-args') a.nodeArgs = (argv[++i] ?? '').split(' ').filter((s) => s !== '');
    else throw new Error(`unknown argument ${k}`);
  }
  if (a.memWritten > a.memSize) throw new Error('--mem-written must not exceed --mem-size');
  if (a.built && !existsSync(join(CLI_DIR, 'dist', 'cli.js'))) {
    throw new Error('--built needs the build: pnpm --filter iovalink... build');
  }
  return a;
}

const CLI_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
const BOOT = `
import { Command } from 'commander';
import { registerServe } from './src/commands/serve.ts';
const p = new Command('iovalink');
registerServe(p);
await p.parseAsync(['node', 'iovalink', ...process.argv.slice(1)]);
`;

/** One fio job's figures. */
interface JobRun {
  round: number;
  iops: number;
  mibPerS: number;
  /** fio completion latency percentiles (µs). */
  p50us: number;
  p99us: number;
  /** Server CPU (user + system, all threads) per request (µs). */
  serverCpuUsPerIo: number;
  /** The load average (1 min) when the job started. */
  load1: number;
}

/** A running server. */
interface Server {
  name: string;
  child: ChildProcess;
  uri: string;
  out: () => string;
  err: () => string;
  exited: Promise<void>;
}

function need(tool: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0) return;
  if (tool === 'nbdkit' && process.getuid?.() === 0) {
    process.stderr.write('nbdkit is missing: apt-get install -y nbdkit\n');
    const r = spawnSync('apt-get', ['install', '-y', 'nbdkit'], { stdio: 'inherit' });
    if (r.status === 0) return;
  }
  throw new Error(`${tool} is not installed (Debian: apt-get install ${pkg})`);
}

/** utime + stime of a process (all its threads) in seconds (Linux /proc). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15; USER_HZ is 100 on Linux
}

/** Resident and peak resident memory of a process in bytes. */
function rss(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

function loadAvg(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tryOnce = () => {
      if (child.exitCode !== null) return reject(new Error(`server exited with ${child.exitCode}`));
      if (Date.now() - t0 > 60_000) return reject(new Error(`no socket at ${path}`));
      if (!existsSync(path)) return void setTimeout(tryOnce, 50);
      const c = connect(path);
      c.once('connect', () => {
        c.destroy();
        resolve();
      });
      c.once('error', () => setTimeout(tryOnce, 50));
    };
    tryOnce();
  });
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  clat_ns?: { percentile?: Record<string, number> };
}

function fio(uri: string, args: string[]): Promise<{ side: FioSide }> {
  return new Promise((resolve, reject) => {
    execFile(
      'fio',
      ['--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args],
      { maxBuffer: 64 * 2 ** 20 },
      (err, stdout, stderr) => {
        if (err !== null) return reject(new Error(`fio failed: ${stderr || err.message}`));
        const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
          jobs: Array<{ error: number; read: FioSide; write: FioSide }>;
        };
        const job = j.jobs[0]!;
        if (job.error !== 0) return reject(new Error(`fio job error ${job.error}`));
        resolve({ side: job.read.total_ios > 0 ? job.read : job.write });
      },
    );
  });
}

async function startServer(name: string, a: Args, dir: string, size: number): Promise<Server> {
  const sock = join(dir, `${name}.sock`);
  rmSync(sock, { force: true });
  let child: ChildProcess;
  let out = '';
  let err = '';
  if (name === 'qemu-nbd') {
    const file = join(dir, `${name}-${size}.raw`);
    rmSync(file, { force: true });
    writeFileSync(file, '');
    spawnSync('truncate', ['-s', String(size), file]);
    child = spawn('qemu-nbd', [`--socket=${sock}`, '-f', 'raw', file, '--persistent'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } else if (name === 'nbdkit') {
    child = spawn('nbdkit', ['--foreground', '--unix', sock, 'memory', String(size)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } else {
    const mode =
      name === 'serve-thread' ? ['--device-thread'] : name === 'serve-1t' ? ['--no-device-thread'] : [];
    const entry = a.built
      ? [join(CLI_DIR, 'dist', 'cli.js')]
      : ['--import', 'tsx', '--conditions=@iovalink/source', '--input-type=module', '-e', BOOT];
    child = spawn(
      process.execPath,
      [
        ...a.nodeArgs,
        ...entry,
        'serve',
        '--socket',
        sock,
        '--size',
        String(size),
        '--path',
        a.path,
        '--json-stats',
        ...mode,
      ],
      { cwd: CLI_DIR, stdio: ['ignore', 'pipe', 'pipe'], env: process.env },
    );
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  }
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    await waitForSocket(sock, child);
  } catch (e) {
    process.stderr.write(`${name}: ${err}\n`);
    child.kill('SIGKILL');
    throw e;
  }
  return { name, child, uri: `nbd+unix:///?socket=${sock}`, out: () => out, err: () => err, exited };
}

async function stopServer(s: Server): Promise<NbdServerStats | undefined> {
  s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 60_000);
  await s.exited;
  clearTimeout(timer);
  if (!s.name.startsWith('serve') || s.out().trim() === '') return undefined;
  return JSON.parse(s.out()) as NbdServerStats;
}

async function runJob(s: Server, job: string, seconds: number, a: Args, round: number): Promise<JobRun> {
  const j = JOBS[job]!;
  const load1 = loadAvg()[0]!;
  const c0 = cpuSeconds(s.child.pid!);
  const r = await fio(s.uri, [
    `--name=${job}`,
    `--rw=${j.rw}`,
    `--bs=${j.bs}`,
    `--iodepth=${j.qd}`,
    '--randrepeat=1',
    `--size=${a.size}`,
    '--time_based',
    `--runtime=${seconds}`,
  ]);
  const cpu = cpuSeconds(s.child.pid!) - c0;
  const p = r.side.clat_ns?.percentile ?? {};
  return {
    round,
    iops: r.side.iops,
    mibPerS: r.side.bw_bytes / 2 ** 20,
    p50us: (p['50.000000'] ?? Number.NaN) / 1000,
    p99us: (p['99.000000'] ?? Number.NaN) / 1000,
    serverCpuUsPerIo: r.side.total_ios > 0 ? (cpu * 1e6) / r.side.total_ios : Number.NaN,
    load1,
  };
}

function median(v: number[]): number {
  const s = [...v].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface MemCheck {
  target: string;
  /** RSS with the export open and one pass of nothing written (bytes). */
  idleRss: number;
  /** RSS after the writes, and the peak. */
  rss: number;
  hwm: number;
  written: number;
  /** (rss − idleRss) / written. */
  perByteWritten: number;
}

/** RSS of a fresh server on a `memSize` export before and after `memWritten` of random 4 KiB writes, each block once. */
async function memCheck(name: string, a: Args, dir: string): Promise<MemCheck> {
  const s = await startServer(name, a, dir, a.memSize);
  try {
    // a single 4 KiB write and read first, so the idle figure includes a connection's buffers
    await fio(s.uri, ['--name=touch', '--rw=write', '--bs=4k', '--size=4k', '--iodepth=1']);
    const idle = rss(s.child.pid!).rss;
    process.stderr.write(`${name}: memory check, ${a.memWritten / 2 ** 20} MiB of random 4 KiB writes\n`);
    await fio(s.uri, [
      '--name=memcheck',
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--randrepeat=1',
      `--size=${a.memSize}`,
      `--io_size=${a.memWritten}`,
    ]);
    const after = rss(s.child.pid!);
    return {
      target: name,
      idleRss: idle,
      rss: after.rss,
      hwm: after.hwm,
      written: a.memWritten,
      perByteWritten: (after.rss - idle) / a.memWritten,
    };
  } finally {
    await stopServer(s);
  }
}

const fmt = (v: number, d = 0) => (Number.isFinite(v) ? v.toFixed(d) : '—');

function renderTable(rows: string[][]): string {
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  return lines.join('\n');
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  need('fio', 'fio');
  if (a.targets.includes('qemu-nbd')) need('qemu-nbd', 'qemu-utils');
  if (a.targets.includes('nbdkit')) need('nbdkit', 'nbdkit');
  const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'iovalink-nbd-bench-'));
  const servers: Server[] = [];
  const runs: Record<string, Record<string, JobRun[]>> = {};
  const rssAfterRound: Record<string, number[]> = {};
  const loads: Array<{ round: number; load: number[] }> = [];
  const finalStats: Record<string, NbdServerStats | undefined> = {};
  const mem: MemCheck[] = [];
  try {
    for (const t of a.targets) {
      const s = await startServer(t, a, dir, a.size);
      servers.push(s);
      runs[t] = {};
      rssAfterRound[t] = [];
      process.stderr.write(`${t}: prefill ${a.size / 2 ** 20} MiB\n`);
      await fio(s.uri, ['--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${a.size}`]);
      if (a.warmup > 0) {
        for (const job of a.jobs) await runJob(s, job, a.warmup, a, -1);
      }
    }
    for (let round = 0; round < a.rounds; round++) {
      const load = loadAvg();
      loads.push({ round, load });
      const k = round % servers.length;
      const order = [...servers.slice(k), ...servers.slice(0, k)];
      process.stderr.write(
        `round ${round + 1}/${a.rounds} (load ${load.join(' ')}): ${order.map((s) => s.name).join(' → ')}\n`,
      );
      for (const job of a.jobs) {
        for (const s of order) {
          const r = await runJob(s, job, a.runtime, a, round);
          const byJob = runs[s.name]!;
          byJob[job] = [...(byJob[job] ?? []), r];
        }
      }
      for (const s of servers) rssAfterRound[s.name]!.push(rss(s.child.pid!).rss);
    }
  } finally {
    for (const s of servers) finalStats[s.name] = await stopServer(s).catch(() => undefined);
  }
  try {
    if (a.mem) for (const t of a.targets) mem.push(await memCheck(t, a, dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  // ------------------------------------------------------------------------------------------
  // Report
  // ------------------------------------------------------------------------------------------
  const peers = a.targets.filter((t) => t === 'qemu-nbd' || t === 'nbdkit');
  const summary: Record<string, Record<string, unknown>> = {};
  const rows: string[][] = [
    [
      'job',
      'target',
      'IOPS (median)',
      'min–max',
      'MiB/s',
      'p50 µs',
      'p99 µs',
      'server CPU µs/IO',
      ...peers.map((p) => `vs ${p} (min–max)`),
    ],
  ];
  for (const job of a.jobs) {
    for (const t of a.targets) {
      const r = runs[t]![job]!;
      const iops = r.map((x) => x.iops);
      const ratios: Record<string, { median: number; min: number; max: number }> = {};
      for (const p of peers) {
        const per = r.map((x, i) => x.iops / runs[p]![job]![i]!.iops);
        ratios[p] = { median: median(per), min: Math.min(...per), max: Math.max(...per) };
      }
      const s = {
        iops: median(iops),
        iopsMin: Math.min(...iops),
        iopsMax: Math.max(...iops),
        mibPerS: median(r.map((x) => x.mibPerS)),
        p50us: median(r.map((x) => x.p50us)),
        p99us: median(r.map((x) => x.p99us)),
        serverCpuUsPerIo: median(r.map((x) => x.serverCpuUsPerIo)),
        ratios,
      };
      summary[job] = { ...summary[job], [t]: s };
      rows.push([
        job,
        t,
        fmt(s.iops),
        `${fmt(s.iopsMin)}–${fmt(s.iopsMax)}`,
        fmt(s.mibPerS),
        fmt(s.p50us, 1),
        fmt(s.p99us, 1),
        fmt(s.serverCpuUsPerIo, 1),
        ...peers.map((p) =>
          p === t
            ? '1.00×'
            : `${ratios[p]!.median.toFixed(2)}× (${ratios[p]!.min.toFixed(2)}–${ratios[p]!.max.toFixed(2)})`,
        ),
      ]);
    }
  }
  const out: string[] = [];
  out.push(
    `fio --ioengine=nbd over Unix sockets; ${a.rounds} interleaved rounds of ${a.runtime} s per job (warm-up ${a.warmup} s), ` +
      `${a.size / 2 ** 20} MiB exports after a full prefill, serve --path ${a.path} ${a.built ? '(dist build)' : '(sources under tsx)'}`,
  );
  out.push(
    `load average (1/5/15 min) at the start of each round: ${loads.map((l) => l.load.join(' ')).join(' | ')}`,
  );
  out.push(renderTable(rows));
  out.push('');
  for (const t of a.targets) {
    const st = finalStats[t];
    const r = rssAfterRound[t]!;
    let line = `${t}: RSS after each round ${r.map((v) => `${(v / 2 ** 20).toFixed(0)} MiB`).join(', ')}`;
    if (st !== undefined) {
      const d = st.device;
      const ios = d.blockRequests.read + d.blockRequests.write;
      const dma = (d.counters.dmaReadBytes ?? 0) + (d.counters.dmaWriteBytes ?? 0);
      const bytes = d.blockBytes.read + d.blockBytes.write;
      line +=
        `\n  model: IOMMU ${d.iommu}, path ${d.path}, device thread ${d.deviceThread}; NBD commands ${st.commands.NBD_CMD_READ ?? 0} reads, ` +
        `${st.commands.NBD_CMD_WRITE ?? 0} writes → ${ios} block requests; IOVA allocations ${d.counters.iovaAllocs} ` +
        `(${fmt((d.counters.iovaAllocs ?? 0) / ios, 2)}/request), PTE writes ${d.counters.pteWrites}, ` +
        `ranged IOTLB invalidations ${d.counters.iotlbInvRange}; device DMA through the IOMMU ${fmt(dma / 2 ** 20)} MiB ` +
        `of ${fmt(bytes / 2 ** 20)} MiB moved by block requests; IOMMU faults ${d.counters.iommuFaults}; ` +
        `leaks ${d.leaks.length}, internal errors ${d.internalErrors}`;
    }
    out.push(line);
  }
  if (mem.length > 0) {
    out.push('');
    out.push(
      renderTable([
        [
          'memory check',
          'idle RSS MiB',
          'RSS after MiB',
          'peak MiB',
          'written MiB',
          '(RSS − idle) / written',
        ],
        ...mem.map((m) => [
          m.target,
          fmt(m.idleRss / 2 ** 20),
          fmt(m.rss / 2 ** 20),
          fmt(m.hwm / 2 ** 20),
          fmt(m.written / 2 ** 20),
          `${m.perByteWritten.toFixed(2)}×`,
        ]),
      ]),
    );
    out.push(`(export ${a.memSize / 2 ** 30} GiB; random 4 KiB writes at depth 16, each block written once)`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  writeFileSync(
    a.json,
    `${JSON.stringify({ args: a, loads, summary, runs, rssAfterRound, memory: mem, serveStats: finalStats }, null, 2)}\n`,
  );
  process.stderr.write(`results: ${a.json}\n`);
}

await main();
