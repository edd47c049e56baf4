/**
 * The `iovalink serve` command: option parsing, the in-process run with an abort signal, and the
 * real thing in a child process (SIGTERM/SIGINT → finish in-flight, summary on stderr, JSON stats
 * on stdout).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import {
  formatServeStats,
  parseByteSize,
  registerServe,
  type ServeOptions,
  serve,
} from '../src/commands/serve.js';
import { NbdClient } from '../src/nbd/nbd-client.js';
import type { NbdServerStats } from '../src/nbd/nbd-server.js';

const MiB = 2 ** 20;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-serve-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cliDir = join(dirname(fileURLToPath(import.meta.url)), '..');

const BOOT = `
import { Command } from 'commander';
import { registerServe } from './src/commands/serve.ts';
const p = new Command('iovalink');
registerServe(p);
try {
  await p.parseAsync(process.argv.slice(0, 1).concat(['iovalink', ...process.argv.slice(1)]));
} catch (e) {
  process.stderr.write('iovalink: ' + e.message + '\\n');
  process.exitCode = 1;
}
`;

/** Runs `iovalink <args>` through registerServe in a child process. */
function spawnServe(args: string[]): {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
} {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--conditions=@iovalink/source', '--input-type=module', '-e', BOOT, ...args],
    { cwd: cliDir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exit };
}

async function waitFor(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('serve options', () => {
  it('parses sizes with binary units', () => {
    expect(parseByteSize('1G')).toBe(2 ** 30);
    expect(parseByteSize('512M')).toBe(512 * MiB);
    expect(parseByteSize('64MiB')).toBe(64 * MiB);
    expect(parseByteSize('4k')).toBe(4096);
    expect(parseByteSize('1048576')).toBe(MiB);
    expect(parseByteSize('1.5G')).toBe(1.5 * 2 ** 30);
    for (const bad of ['', 'x', '1X', '0', '100', '-1G', '2P'])
      expect(() => parseByteSize(bad)).toThrow(/size must/);
  });

  it('registers a serve command with the documented options', () => {
    const p = new Command('iovalink');
    registerServe(p);
    const cmd = p.commands.find((c) => c.name() === 'serve')!;
    const flags = cmd.options.map((o) => o.long);
    for (const f of [
      '--socket',
      '--port',
      '--host',
      '--path',
      '--size',
      '--iommu',
      '--queue-depth',
      '--json-stats',
      '--no-zero-copy',
      '--device-thread',
      '--no-device-thread',
      '--read-only',
      '--max-connections',
      '--handshake-limit',
    ]) {
      expect(flags).toContain(f);
    }
  });
});

describe('serve in process', () => {
  it('serves until aborted, then reports counters', async () => {
    const socket = join(dir, 'inproc.sock');
    const ac = new AbortController();
    let out = '';
    let err = '';
    const o: ServeOptions = {
      socket,
      host: '127.0.0.1',
      path: 'sg',
      size: 32 * MiB,
      iommu: 'lazy',
      queueDepth: 16,
      buffers: 'scattered',
      name: 'disk0',
      seed: 3,
      debug: true,
      jsonStats: true,
    };
    const run = serve(o, ac.signal, { out: (s) => (out += `${s}\n`), err: (s) => (err += `${s}\n`) });
    await waitFor(() => existsSync(socket), 'the socket');
    const { client, info } = await NbdClient.open({ path: socket }, { name: 'disk0' });
    expect(info.size).toBe(32 * MiB);
    // scattered pages: every 4 KiB of the payload is received into a page of its own
    const data = Buffer.from(Uint8Array.from({ length: 256 * 1024 }, (_, i) => (i * 31 + (i >> 12)) & 0xff));
    expect((await client.write(MiB, data)).error).toBe(0);
    expect((await client.read(MiB, data.length)).data.equals(data)).toBe(true);
    await client.disconnect();
    ac.abort();
    const stats = await run;
    expect(err).toMatch(
      /nbd\+unix:\/\/\/\?socket=.*inproc\.sock export "disk0" 32\.0 MiB, path sg, IOMMU lazy/,
    );
    expect(err).toMatch(/teardown: no leaks/);
    const j = JSON.parse(out) as NbdServerStats;
    expect(j.bytes.written).toBe(256 * 1024);
    expect(j.device.path).toBe('sg');
    expect(j.device.iommu).toBe('lazy');
    expect(stats.device.driver.sgMapped).toBeGreaterThan(0);
    expect(existsSync(socket)).toBe(false);
    expect(formatServeStats(stats)).toMatch(/commands: .*NBD_CMD_WRITE 1/);
  });

  it('needs exactly one of --socket and --port', async () => {
    const o = { host: '127.0.0.1', path: 'iova', size: MiB, iommu: 'strict', queueDepth: 4 } as ServeOptions;
    await expect(serve(o, new AbortController().signal, { out: () => {}, err: () => {} })).rejects.toThrow(
      /exactly one/,
    );
  });
});

describe('iovalink serve as a process', () => {
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`stops cleanly on ${sig} with a summary and JSON counters`, async () => {
      const socket = join(dir, `${sig}.sock`);
      const p = spawnServe([
        'serve',
        '--socket',
        socket,
        '--size',
        '16M',
        '--path',
        'iova',
        '--json-stats',
        '-v',
        ...(sig === 'SIGINT' ? ['--no-zero-copy', '--no-device-thread'] : ['--device-thread']),
      ]);
      try {
        await waitFor(
          () => p.err().includes('Ctrl-C to stop') || p.child.exitCode !== null,
          'the server to listen',
        );
        expect(p.err()).toMatch(/path iova, IOMMU strict/);
        expect(p.err().includes('payloads copied')).toBe(sig === 'SIGINT');
        expect(p.err()).toMatch(
          sig === 'SIGINT' ? /device on the socket thread/ : /device on its own thread/,
        );
        const { client } = await NbdClient.open({ path: socket });
        const data = Buffer.alloc(64 * 1024, 0x77);
        expect((await client.write(0, data, true)).error).toBe(0);
        // leave the connection open: shutdown must close it after in-flight commands
        p.child.kill(sig);
        expect(await p.exit).toBe(0);
        await client.closed;
        const j = JSON.parse(p.out()) as NbdServerStats;
        expect(j.commands.NBD_CMD_WRITE).toBe(1);
        expect(j.device.blockRequests.flush).toBe(1);
        expect(j.device.leaks).toEqual([]);
        expect(j.device.deviceThread).toBe(sig === 'SIGTERM');
        expect(p.err()).toMatch(/shutting down/);
        expect(p.err()).toMatch(/connections: 1 accepted/);
        expect(p.err()).toMatch(/nbd\[1\]: connected/);
        expect(existsSync(socket)).toBe(false);
      } finally {
        p.child.kill('SIGKILL');
      }
    }, 40_000);
  }

  it('refuses a non-loopback host', async () => {
    const p = spawnServe(['serve', '--port', '0', '--host', '0.0.0.0']);
    expect(await p.exit).toBe(1);
    expect(p.err()).toMatch(/only loopback/);
  }, 30_000);
});
