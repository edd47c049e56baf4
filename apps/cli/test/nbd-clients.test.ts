/**
 * Unmodified real clients against the in-process server: libnbd's `nbdinfo`, QEMU's `qemu-io`
 * and `fio --ioengine=nbd` with crc32c verification, over both DMA paths. A test is skipped when
 * its tool is missing, unless IOVALINK_REQUIRE_NBD_TOOLS=1 (CI), where a missing tool fails it.
 * The tools run asynchronously: the server lives in this process's event loop.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type NbdServerHandle, startNbdServer } from '../src/nbd/nbd-server.js';

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
const REQUIRE = process.env.IOVALINK_REQUIRE_NBD_TOOLS === '1';
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-clients-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}
/** Skip only when the tool is absent and CI does not require it. */
const skip = (tool: string) => !REQUIRE && !have(tool);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, cwd: dir }, (err, stdout, stderr) => {
      if (err !== null && (err as NodeJS.ErrnoException).code === 'ENOENT') {
        reject(new Error(`${cmd} is not installed (IOVALINK_REQUIRE_NBD_TOOLS=1 requires it)`));
        return;
      }
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe.each([
  ['sg', false],
  ['iova', false],
  ['sg', true],
  ['iova', true],
] as const)('real NBD clients, %s path, device thread %s', (path, deviceThread) => {
  let srv: NbdServerHandle;
  let uri: string;
  beforeAll(async () => {
    const socket = join(dir, `${path}-${deviceThread}.sock`);
    srv = await startNbdServer({
      socket,
      path,
      size: SIZE,
      queueDepth: 32,
      shutdownGraceMs: 500,
      deviceThread,
    });
    uri = `nbd+unix:///?socket=${socket}`;
  });
  afterAll(async () => {
    const st = await srv.close();
    expect(st.device.leaks).toEqual([]);
    expect(st.device.internalErrors).toBe(0);
    expect(st.errors.internal).toBeUndefined();
    expect(st.connections.protocolErrors).toBe(0);
    expect(st.device.counters.iovaAllocs).toBeGreaterThan(0);
  });

  it.skipIf(skip('nbdinfo'))('nbdinfo reports the export', async () => {
    const r = await run('nbdinfo', ['--json', uri]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as {
      protocol: string;
      exports: Array<Record<string, unknown>>;
    };
    expect(j.protocol).toMatch(/newstyle-fixed/);
    const e = j.exports[0]!;
    expect(e['export-size']).toBe(SIZE);
    expect(e.can_flush).toBe(true);
    expect(e.can_fua).toBe(true);
    expect(e.can_trim).toBe(true);
    expect(e.can_multi_conn).toBe(true);
    expect(e.block_size_minimum).toBe(512);
    expect(e.block_size_maximum).toBe(32 * MiB);
    const size = await run('nbdinfo', ['--size', uri]);
    expect(size.stdout.trim()).toBe(String(SIZE));
    const list = await run('nbdinfo', ['--list', uri]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/export="iovalink"/);
  });

  it.skipIf(skip('qemu-io'))('qemu-io writes patterns and reads them back with pattern checks', async () => {
    const cmds = [
      'write -P 0xab 0 1M',
      'write -P 0xcd 1M 64k',
      'write -P 0x5a 4M 4k',
      'aio_write -P 0x11 8M 128k',
      'aio_write -P 0x22 9M 512k',
      'aio_flush',
      'write -z 12M 64k',
      'flush',
      'read -P 0xab 0 1M',
      'read -P 0xcd 1M 64k',
      'read -P 0x5a 4M 4k',
      'read -P 0x11 8M 128k',
      'read -P 0x22 9M 512k',
      'read -P 0 12M 64k',
      'discard 4M 4k',
      'read -P 0 4M 4k',
      'read -P 0 32M 1M',
    ];
    const r = await run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(r.stdout.match(/^read /gm)?.length).toBe(8);
    // a second process sees what the first wrote (the data is in the device's backing store)
    const again = await run('qemu-io', [
      '-f',
      'raw',
      '-r',
      uri,
      '-c',
      'read -P 0xab 0 1M',
      '-c',
      'read -P 0x22 9M 512k',
    ]);
    expect(again.code, again.stderr + again.stdout).toBe(0);
    expect(again.stdout).not.toMatch(/Pattern verification failed/);
    // and a wrong pattern is caught: the checks are real
    const wrong = await run('qemu-io', ['-f', 'raw', '-r', uri, '-c', 'read -P 0xac 0 4k']);
    expect(wrong.stdout + wrong.stderr).toMatch(/Pattern verification failed/);
  });

  for (const job of [
    { name: 'random', rw: 'randwrite', bs: '4k', iodepth: 16, size: '16M' },
    { name: 'sequential', rw: 'write', bs: '128k', iodepth: 8, size: '32M' },
  ]) {
    it.skipIf(skip('fio'))(
      `fio --ioengine=nbd ${job.name} ${job.bs} at iodepth ${job.iodepth}: 0 verify errors`,
      async () => {
        const r = await run('fio', [
          `--name=${job.name}`,
          '--ioengine=nbd',
          `--uri=${uri}`,
          `--rw=${job.rw}`,
          `--bs=${job.bs}`,
          `--iodepth=${job.iodepth}`,
          `--size=${job.size}`,
          `--offset=${job.name === 'random' ? '0' : '24M'}`,
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          '--randrepeat=1',
          '--output-format=json',
        ]);
        expect(r.code, r.stderr + r.stdout).toBe(0);
        const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
          jobs: Array<{
            error: number;
            read: { io_bytes: number };
            write: { io_bytes: number; total_ios: number };
          }>;
        };
        const res = j.jobs[0]!;
        expect(res.error).toBe(0);
        const bytes = Number.parseInt(job.size, 10) * MiB;
        expect(res.write.io_bytes).toBe(bytes);
        expect(res.read.io_bytes).toBe(bytes); // the verify pass read everything back
        expect(r.stderr).not.toMatch(/verify|bad magic|crc32c/i);
      },
    );
  }
});
