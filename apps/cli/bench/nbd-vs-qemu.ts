/**
 * The same fio jobs against `iovalink serve` (scatterlist and two-step paths) and against
 * `qemu-nbd` on a raw file, on this machine in one run: 4 KiB random reads and 128 KiB sequential
 * writes at iodepth 16 over `fio --ioengine=nbd` (libnbd), each for `--runtime` seconds. Every
 * target is first filled by one sequential fio pass, so that reads return data on all of them
 * (qemu-nbd answers reads of a sparse file's holes with hole chunks and moves no data).
 * Prints IOPS, the ratios to qemu-nbd, and the server's CPU time per job (from /proc).
 *
 *   cd apps/cli && npx tsx --conditions=@iovalink/source bench/nbd-vs-qemu.ts [--runtime 10]
 *     [--size 1G] [--single-thread] [--copy-receive] [--json results.json]
 *
 * `serve` runs its device model on a thread of its own by default; `--single-thread` adds rows
 * for `--no-device-thread` (socket I/O and the model on one thread). `--copy-receive` adds a row
 * for `serve --path iova --no-device-thread --no-zero-copy`: write payloads copied from the
 * socket's chunks instead of received into the request's pages.
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

interface Args {
  runtime: number;
  size: number;
  json: string | undefined;
  copyReceive: boolean;
  singleThread: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { runtime: 10, size: 2 ** 30, json: undefined, copyReceive: false, singleThread: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--runtime') a.runtime = Number(argv[++i]);
    else if (k === '--size') a.size = parseByteSize(argv[++i] ?? '');
    else if (k === '--json') a.json = argv[++i];
    else if (k === '--copy-receive') a.copyReceive = true;
    else if (k === '--single-thread') a.singleThread = true;
    else throw new Error(`unknown argument ${k}`);
  }
  if (!(Number.isInteger(a.runtime) && a.runtime >= 1))
    throw new Error('--runtime must be a positive integer');
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

interface Target {
  name: string;
  kind: 'iovalink' | 'qemu';
  path?: 'sg' | 'iova';
  /** Extra `serve` arguments. */
  args?: string[];
}

interface JobResult {
  iops: number;
  mibPerS: number;
  /** Server CPU seconds (user + system) during the job. */
  serverCpuS: number;
  /** fio's own CPU (user + system, % of one CPU). */
  fioCpuPct: number;
}

interface TargetResult {
  target: string;
  randread4k: JobResult;
  seqwrite128k: JobResult;
  stats?: NbdServerStats;
}

function need(tool: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) {
    throw new Error(`${tool} is not installed (Debian: apt-get install fio libnbd-bin qemu-utils)`);
  }
}

/** utime + stime of a process in seconds (Linux /proc). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15; USER_HZ is 100 on Linux
}

function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tryOnce = () => {
      if (child.exitCode !== null) return reject(new Error(`server exited with ${child.exitCode}`));
      if (Date.now() - t0 > 30_000) return reject(new Error(`no socket at ${path}`));
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

function fio(uri: string, args: string[]): Promise<{ iops: number; bw: number; cpu: number }> {
  return new Promise((resolve, reject) => {
    execFile(
      'fio',
      ['--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args],
      { maxBuffer: 64 * 2 ** 20 },
      (err, stdout, stderr) => {
        if (err !== null) return reject(new Error(`fio failed: ${stderr || err.message}`));
        const j = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
          jobs: Array<{
            error: number;
            read: { iops: number; bw_bytes: number };
            write: { iops: number; bw_bytes: number };
            usr_cpu: number;
            sys_cpu: number;
          }>;
        };
        const job = j.jobs[0]!;
        if (job.error !== 0) return reject(new Error(`fio job error ${job.error}`));
        const side = job.read.iops > 0 ? job.read : job.write;
        resolve({ iops: side.iops, bw: side.bw_bytes, cpu: job.usr_cpu + job.sys_cpu });
      },
    );
  });
}

async function runTarget(t: Target, a: Args, dir: string): Promise<TargetResult> {
  const sock = join(dir, `${t.name.replace(/\W+/g, '-')}.sock`);
  let child: ChildProcess;
  let out = '';
  let err = '';
  if (t.kind === 'qemu') {
    const file = join(dir, 'disk.raw');
    rmSync(file, { force: true });
    writeFileSync(file, '');
    spawnSync('truncate', ['-s', String(a.size), file]);
    child = spawn('qemu-nbd', [`--socket=${sock}`, '-f', 'raw', file, '--persistent'], { stdio: 'ignore' });
  } else {
    child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--conditions=@iovalink/source',
        '--input-type=module',
        '-e',
        BOOT,
        'serve',
        '--socket',
        sock,
        '--size',
        String(a.size),
        '--path',
        t.path!,
        '--queue-depth',
        '64',
        '--json-stats',
        ...(t.args ?? []),
      ],
      { cwd: CLI_DIR, stdio: ['ignore', 'pipe', 'pipe'], env: process.env },
    );
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  }
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    await waitForSocket(sock, child);
    const uri = `nbd+unix:///?socket=${sock}`;
    process.stderr.write(`${t.name}: prefill ${a.size / 2 ** 20} MiB\n`);
    await fio(uri, ['--name=prefill', '--rw=write', '--bs=1M', '--iodepth=8', `--size=${a.size}`]);
    const job = async (name: string, args: string[]): Promise<JobResult> => {
      process.stderr.write(`${t.name}: ${name} ${a.runtime} s\n`);
      const c0 = cpuSeconds(child.pid!);
      const r = await fio(uri, [
        `--name=${name}`,
        ...args,
        '--iodepth=16',
        `--size=${a.size}`,
        '--time_based',
        `--runtime=${a.runtime}`,
      ]);
      return {
        iops: r.iops,
        mibPerS: r.bw / 2 ** 20,
        serverCpuS: cpuSeconds(child.pid!) - c0,
        fioCpuPct: r.cpu,
      };
    };
    const randread4k = await job('randread-4k', ['--rw=randread', '--bs=4k', '--randrepeat=1']);
    const seqwrite128k = await job('seqwrite-128k', ['--rw=write', '--bs=128k']);
    child.kill('SIGTERM');
    await exited;
    const res: TargetResult = { target: t.name, randread4k, seqwrite128k };
    if (t.kind === 'iovalink' && out.trim() !== '') res.stats = JSON.parse(out) as NbdServerStats;
    return res;
  } catch (e) {
    if (err !== '') process.stderr.write(`${t.name} server output:\n${err}\n`);
    throw e;
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

function table(results: TargetResult[], a: Args): string {
  const q = results.find((r) => r.target === 'qemu-nbd');
  const ratio = (v: number, b: number | undefined) =>
    b === undefined || b === 0 ? '—' : `${(v / b).toFixed(2)}×`;
  const rows = [
    [
      'target',
      '4k randread IOPS',
      'vs qemu',
      'server CPU s',
      '128k seqwrite IOPS',
      'MiB/s',
      'vs qemu',
      'server CPU s',
    ],
  ];
  for (const r of results) {
    rows.push([
      r.target,
      r.randread4k.iops.toFixed(0),
      ratio(r.randread4k.iops, q?.randread4k.iops),
      r.randread4k.serverCpuS.toFixed(1),
      r.seqwrite128k.iops.toFixed(0),
      r.seqwrite128k.mibPerS.toFixed(0),
      ratio(r.seqwrite128k.iops, q?.seqwrite128k.iops),
      r.seqwrite128k.serverCpuS.toFixed(1),
    ]);
  }
  const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  return [
    `fio --ioengine=nbd, iodepth 16, ${a.runtime} s per job, ${a.size / 2 ** 20} MiB export, after a full prefill; Unix sockets`,
    ...lines,
  ].join('\n');
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  need('fio');
  need('qemu-nbd');
  const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-bench-'));
  const targets: Target[] = [
    { name: 'iovalink serve --path sg', kind: 'iovalink', path: 'sg' },
    { name: 'iovalink serve --path iova', kind: 'iovalink', path: 'iova' },
  ];
  if (a.singleThread) {
    for (const path of ['sg', 'iova'] as const) {
      targets.push({
        name: `iovalink serve --path ${path} --no-device-thread`,
        kind: 'iovalink',
        path,
        args: ['--no-device-thread'],
      });
    }
  }
  if (a.copyReceive) {
    targets.push({
      name: 'iovalink serve --path iova --no-device-thread --no-zero-copy',
      kind: 'iovalink',
      path: 'iova',
      args: ['--no-device-thread', '--no-zero-copy'],
    });
  }
  targets.push({ name: 'qemu-nbd', kind: 'qemu' });
  const results: TargetResult[] = [];
  try {
    for (const t of targets) results.push(await runTarget(t, a, dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(`${table(results, a)}\n`);
  for (const r of results) {
    const d = r.stats?.device;
    if (d === undefined) continue;
    const ios = d.blockRequests.read + d.blockRequests.write;
    process.stdout.write(
      `${r.target}: ${ios} block requests, IOVA allocs/request ${(d.counters.iovaAllocs! / ios).toFixed(2)}, ` +
        `PTE writes/request ${(d.counters.pteWrites! / ios).toFixed(1)}, IOTLB range invalidations/request ` +
        `${(d.counters.iotlbInvRange! / ios).toFixed(2)}, leaks ${d.leaks.length}\n`,
    );
  }
  if (a.json !== undefined) {
    writeFileSync(
      a.json,
      `${JSON.stringify({ args: a, results: results.map(({ stats, ...r }) => r) }, null, 2)}\n`,
    );
  }
}

await main();
