/**
 * Allocation maps with unmodified real clients, on both server modes (device on the server thread
 * and on its own thread): `qemu-io` writes, zeroes (with and without unmap) and discards; then
 * libnbd's `nbdinfo --map` and `qemu-img map` must show holes and data where the rules put them
 * (the backing store allocates 64 KiB chunks on first write and drops a chunk only when a
 * deallocation covers it whole); and a `qemu-img convert` round trip of a sparse qcow2 image
 * through the export keeps both its bytes and its holes. A test is skipped when its tool is
 * missing, unless IOVALINK_REQUIRE_NBD_TOOLS=1 (CI), where a missing tool fails it.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STORE_CHUNK_SIZE } from '@iovalink/blk-mq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type NbdServerHandle, startNbdServer } from '../src/nbd/nbd-server.js';

const KiB = 1024;
const MiB = 2 ** 20;
const SIZE = 16 * MiB;
const C = STORE_CHUNK_SIZE;
const REQUIRE = process.env.IOVALINK_REQUIRE_NBD_TOOLS === '1';
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-map-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}
/** Skip only when a tool is absent and CI does not require it. */
const skip = (...tools: string[]) => !REQUIRE && !tools.every(have);

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

/** A run of the map: `data` false means a hole that reads as zeroes. */
interface MapRun {
  offset: number;
  length: number;
  data: boolean;
}

/** Adjacent runs of one kind merged (tools may split a run where their requests ended). */
function merged(runs: MapRun[]): MapRun[] {
  const out: MapRun[] = [];
  for (const r of runs) {
    const last = out.at(-1);
    if (last !== undefined && last.data === r.data && last.offset + last.length === r.offset)
      last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

/** The expected map: the data ranges given (chunk-aligned), holes everywhere else. */
function expectedMap(data: Array<[number, number]>): MapRun[] {
  const chunks = new Array<boolean>(SIZE / C).fill(false);
  for (const [off, len] of data) for (let i = Math.floor(off / C); i * C < off + len; i++) chunks[i] = true;
  return merged(chunks.map((d, i) => ({ offset: i * C, length: C, data: d })));
}

async function nbdinfoMap(uri: string): Promise<MapRun[]> {
  const r = await run('nbdinfo', ['--map', '--json', uri]);
  expect(r.code, r.stderr).toBe(0);
  const j = JSON.parse(r.stdout) as Array<{ offset: number; length: number; type: number }>;
  // base:allocation: type 0 is data, 3 is hole+zero; nothing else is ever reported
  for (const e of j) expect([0, 3]).toContain(e.type);
  return merged(j.map((e) => ({ offset: e.offset, length: e.length, data: e.type === 0 })));
}

async function qemuImgMap(args: string[]): Promise<MapRun[]> {
  const r = await run('qemu-img', ['map', '--output=json', ...args]);
  expect(r.code, r.stderr).toBe(0);
  const j = JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  for (const e of j) expect(e.zero).toBe(!e.data); // data is never reported as zero, holes always
  return merged(j.map((e) => ({ offset: e.start, length: e.length, data: e.data })));
}

describe.each([false, true])('allocation maps with real clients, device thread %s', (deviceThread) => {
  let srv: NbdServerHandle;
  let uri: string;
  beforeAll(async () => {
    const socket = join(dir, `map-${deviceThread}.sock`);
    srv = await startNbdServer({ socket, size: SIZE, shutdownGraceMs: 500, deviceThread });
    uri = `nbd+unix:///?socket=${socket}`;
  });
  afterAll(async () => {
    const st = await srv.close();
    expect(st.device.leaks).toEqual([]);
    expect(st.device.internalErrors).toBe(0);
    expect(st.errors.internal).toBeUndefined();
    expect(st.connections.protocolErrors).toBe(0);
  });

  it.skipIf(skip('qemu-io', 'nbdinfo', 'qemu-img'))(
    'nbdinfo --map and qemu-img map show what qemu-io wrote, zeroed and discarded',
    async () => {
      const before = srv.stats();
      const info = await run('nbdinfo', ['--json', uri]);
      const e = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
      expect(e.can_zero).toBe(true);
      expect(e.can_fast_zero).toBe(true);
      expect(e.contexts).toContain('base:allocation');
      expect(await nbdinfoMap(uri)).toEqual(expectedMap([]));

      const cmds = [
        'write -P 0xa1 128k 256k', // chunks 2..5
        'write -P 0xb2 640k 192k', // chunks 10..12
        'write -z 192k 64k', // zeroes without unmap (NBD_CMD_FLAG_NO_HOLE): chunk 3 stays data
        'write -z -u 704k 64k', // zeroes that may unmap: chunk 11 becomes a hole
        'discard 768k 64k', // chunk 12 becomes a hole
        'write -z 1920k 128k', // NO_HOLE zeroes over a hole: chunks 30..31 become data
        'read -P 0 192k 64k',
        'read -P 0 704k 128k',
        'read -P 0 1920k 128k',
        'read -P 0xa1 256k 64k',
      ];
      const w = await run('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])]);
      expect(w.code, w.stderr + w.stdout).toBe(0);
      expect(w.stdout).not.toMatch(/Pattern verification failed|error|failed/i);

      const want = expectedMap([
        [128 * KiB, 256 * KiB],
        [640 * KiB, 64 * KiB],
        [1920 * KiB, 128 * KiB],
      ]);
      expect(await nbdinfoMap(uri)).toEqual(want);
      expect(await qemuImgMap(['-f', 'raw', uri])).toEqual(want);

      // the counters tell which zero writes deallocated and which wrote the zero page
      const st = srv.stats();
      expect(st.zeroes.written - before.zeroes.written).toBe(64 * KiB + 128 * KiB);
      expect(st.zeroes.deallocated - before.zeroes.deallocated).toBe(64 * KiB);
      expect(st.commands.NBD_CMD_BLOCK_STATUS! - (before.commands.NBD_CMD_BLOCK_STATUS ?? 0)).toBeGreaterThan(
        0,
      );
      expect(st.blockStatus.replies).toBe(st.commands.NBD_CMD_BLOCK_STATUS);
    },
  );

  it.skipIf(skip('qemu-io', 'nbdinfo', 'qemu-img'))(
    'qemu-img convert of a sparse qcow2 image into the export and back keeps its bytes and its holes',
    async () => {
      const src = `src-${deviceThread}.qcow2`;
      const back = `back-${deviceThread}.raw`;
      expect((await run('qemu-img', ['create', '-f', 'qcow2', src, String(SIZE)])).code).toBe(0);
      const mk = await run('qemu-io', [
        '-f',
        'qcow2',
        src,
        '-c',
        'write -P 0x11 0 64k',
        '-c',
        'write -P 0x22 1M 192k',
        '-c',
        'write -P 0x33 5M 64k',
        '-c',
        'write -z 8M 64k', // a zero cluster: reads as zeroes, no data
      ]);
      expect(mk.code, mk.stderr).toBe(0);
      const dataRanges: Array<[number, number]> = [
        [0, 64 * KiB],
        [MiB, 192 * KiB],
        [5 * MiB, 64 * KiB],
      ];
      // dirty every byte of the export first: the holes of the image must be made, not inherited
      const dirty = await run('qemu-io', ['-f', 'raw', uri, '-c', `write -P 0xee 0 ${SIZE}`]);
      expect(dirty.code, dirty.stderr).toBe(0);
      expect(await nbdinfoMap(uri)).toEqual(expectedMap([[0, SIZE]]));
      const before = srv.stats();

      const into = await run('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', src, uri]);
      expect(into.code, into.stderr).toBe(0);
      expect(await nbdinfoMap(uri)).toEqual(expectedMap(dataRanges));
      // the holes were made by deallocating zero writes, none refused
      const st = srv.stats();
      const holes = SIZE - dataRanges.reduce((t, [, l]) => t + l, 0);
      expect(st.zeroes.deallocated - before.zeroes.deallocated).toBe(holes);
      expect(st.zeroes.fastRefused).toBe(0);

      const out = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, back]);
      expect(out.code, out.stderr).toBe(0);
      const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', src, back]);
      expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
      expect(cmp.stdout).toMatch(/Images are identical/);
      // convert skipped what the export reported as holes: the copy is as sparse as the source
      expect(await qemuImgMap(['-f', 'raw', back])).toEqual(expectedMap(dataRanges));
    },
  );
});

describe('read-only export with real clients', () => {
  it.skipIf(skip('nbdinfo'))('nbdinfo sees no zero or trim support, and the map still works', async () => {
    const socket = join(dir, 'ro.sock');
    const srv = await startNbdServer({ socket, size: SIZE, shutdownGraceMs: 500, readOnly: true });
    const uri = `nbd+unix:///?socket=${socket}`;
    const info = await run('nbdinfo', ['--json', uri]);
    expect(info.code, info.stderr).toBe(0);
    const e = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0]!;
    expect(e.is_read_only).toBe(true);
    expect(e.can_zero).toBe(false);
    expect(e.can_fast_zero).toBe(false);
    expect(e.can_trim).toBe(false);
    expect(await nbdinfoMap(uri)).toEqual(expectedMap([]));
    const st = await srv.close();
    expect(st.device.leaks).toEqual([]);
  });
});
