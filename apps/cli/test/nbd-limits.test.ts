/**
 * The NBD server's limits against clients that hold resources without using them (issue 15):
 * the handshake time limit and the connection cap (qemu-nbd's fix for CVE-2024-7409), the option
 * length bound, log lines clients cannot forge, and the read-only export. Time limits run on a
 * clock the test advances (`ManualTimers`), never on the wall clock.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../src/nbd/nbd-client.js';
import { printable } from '../src/nbd/nbd-context.js';
import {
  NBD_CMD_TRIM,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ERR_UNKNOWN,
} from '../src/nbd/nbd-proto.js';
import { encodeInfoRequest, encodeOption } from '../src/nbd/nbd-proto-handshake.js';
import { type NbdServerHandle, startNbdServer } from '../src/nbd/nbd-server.js';
import { ManualTimers } from './nbd-manual-timers.js';

const MiB = 2 ** 20;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-limits-'));
let sockN = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

function path(s: NbdServerHandle): { path: string } {
  if (s.address.kind !== 'unix') throw new Error('unix socket expected');
  return { path: s.address.path };
}

/** A socket that connects and then says nothing (it reads and drops the greeting). */
function silent(p: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(p);
    s.on('data', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function closed(s: Socket): Promise<void> {
  return new Promise((resolve) => (s.destroyed ? resolve() : s.once('close', () => resolve())));
}

describe('handshake limit and connection cap', () => {
  it('64 silent sockets lock nobody out beyond the handshake limit', async () => {
    const timers = new ManualTimers();
    const s = await startNbdServer({
      socket: join(dir, `l${++sockN}.sock`),
      size: 16 * MiB,
      maxConnections: 64,
      handshakeLimitMs: 10_000,
      timers,
    });
    const socks = await Promise.all(Array.from({ length: 64 }, () => silent(path(s).path)));
    await until(() => s.stats().connections.open === 64);
    // the cap is reached: the next client is refused at once
    const refused = await NbdClient.connect(path(s));
    await refused.closed;
    expect(s.stats().connections.refused).toBe(1);
    // just before the limit nothing happens; at the limit every silent socket is dropped
    timers.advance(9_999);
    expect(s.stats().connections.open).toBe(64);
    timers.advance(1);
    await Promise.all(socks.map(closed));
    await until(() => s.stats().connections.open === 0);
    expect(s.stats().connections.handshakeTimeouts).toBe(64);
    // a legitimate client gets in and is served; reaching transmission stops its clock
    const { client } = await NbdClient.open(path(s));
    timers.advance(3_600_000);
    expect((await client.read(0, 4096)).error).toBe(0);
    await client.disconnect();
    const st = await s.close();
    expect(st.connections.handshakeTimeouts).toBe(64);
    expect(st.connections.open).toBe(0);
    expect(st.device.leaks).toEqual([]);
  });

  it('rejects limits that are not integers in range', async () => {
    for (const bad of [{ maxConnections: 0 }, { handshakeLimitMs: -1 }, { shutdownGraceMs: 0.5 }]) {
      await expect(startNbdServer({ socket: join(dir, `bad${++sockN}.sock`), ...bad })).rejects.toThrow(
        /must be an integer of at least/,
      );
    }
  });
});

describe('option length, log lines and read-only exports', () => {
  it('disconnects on an option length over 32 MiB instead of reading it', async () => {
    const s = await startNbdServer({ socket: join(dir, `o${++sockN}.sock`), size: 16 * MiB });
    const c = await NbdClient.connect(path(s));
    await c.greeting();
    c.sendClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    const h = Buffer.from(encodeOption(NBD_OPT_LIST));
    h.writeUInt32BE(0xffff_ffff, 12); // the length field
    c.send(h);
    await c.closed; // no data follows: only a disconnect can end this
    expect(s.stats().connections.protocolErrors).toBe(1);
    const st = await s.close();
    expect(st.device.leaks).toEqual([]);
  });

  it('a client-chosen export name cannot forge a log line', async () => {
    const lines: string[] = [];
    const s = await startNbdServer({
      socket: join(dir, `n${++sockN}.sock`),
      size: 16 * MiB,
      log: (l) => lines.push(l),
    });
    const forged = 'x"\nnbd[99]: closed (NBD_CMD_DISC)\r\u001b[31mred\u001b[0m\u0085\u202e';
    const c = await NbdClient.connect(path(s));
    await c.greeting();
    c.sendClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    const r = await c.option(NBD_OPT_GO, encodeInfoRequest(forged));
    expect(r.at(-1)!.type).toBe(NBD_REP_ERR_UNKNOWN);
    // NBD_OPT_EXPORT_NAME has no error reply: the unknown name ends the session (and is logged)
    c.send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(forged)));
    await c.closed;
    await s.close();
    // the GO refusal, the violation, and the close with its reason
    expect(lines.filter((l) => l.includes('unknown export')).length).toBe(3);
    const text = lines.join('\n');
    expect(lines.some((l) => l.includes('unknown export'))).toBe(true);
    // every log line is one line, and none carries a control character from the client
    const controls = (l: string) =>
      [...l].filter((ch) => {
        const c = ch.codePointAt(0)!;
        return c < 0x20 || (c >= 0x7f && c <= 0x9f) || (c >= 0x202a && c <= 0x202e);
      });
    for (const l of lines) expect(controls(l)).toEqual([]);
    expect(text).not.toMatch(/^nbd\[99\]/m);
    expect(printable('a\nb\u001b[0m\\')).toBe('a\\x0ab\\x1b[0m\\\\');
  });

  it('a read-only export says so and refuses WRITE and TRIM with EPERM, keeping the stream in step', async () => {
    const s = await startNbdServer({ socket: join(dir, `r${++sockN}.sock`), size: 16 * MiB, readOnly: true });
    const { client: c, info } = await NbdClient.open(path(s), { structured: true });
    expect(info.flags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    const w = await c.write(0, Buffer.alloc(64 * 1024, 0xee));
    expect(w.error).toBe(NBD_EPERM);
    expect((await c.trim(0, 4096)).error).toBe(NBD_EPERM);
    // the payload was skipped whole: the next request parses, and nothing was written
    const r = await c.read(0, 64 * 1024);
    expect(r.error).toBe(0);
    expect(r.data.equals(Buffer.alloc(64 * 1024))).toBe(true);
    expect((await c.request(NBD_CMD_TRIM, 0, 0, 512)).error).toBe(NBD_EPERM);
    await c.disconnect();
    const st = await s.close();
    expect(st.bytes.written).toBe(0);
    expect(st.errors.EPERM).toBe(3);
    expect(st.device.blockRequests.write ?? 0).toBe(0);
  });
});
