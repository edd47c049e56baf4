/**
 * Protocol fuzzing: a seeded, count-bounded campaign (fast-check, `numRuns`) of sessions of random,
 * truncated and malformed NBD messages — handshake and transmission mutations (zero writes, block
 * status and metadata contexts included), disconnects at a random byte offset — against both
 * server modes (device on the socket thread, device on its own thread) while a well-behaved
 * client uses the server. The server must never crash, must answer a fresh client afterwards, must
 * never corrupt the well-behaved client's data (every acknowledged write reads back), and must end
 * with the buffer budget and the connection count back at zero and no leaks.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../src/nbd/nbd-client.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
} from '../src/nbd/nbd-proto.js';
import { writeU32 } from '../src/nbd/nbd-proto-fields.js';
import { encodeInfoRequest, encodeMetaContextRequest, encodeOption } from '../src/nbd/nbd-proto-handshake.js';
import { encodeRequest } from '../src/nbd/nbd-proto-transmission.js';
import { startNbdServer } from '../src/nbd/nbd-server.js';

const MiB = 2 ** 20;
const SIZE = 16 * MiB;
/** The fuzzer may write only below this; the well-behaved client owns [FUZZ_END, SIZE). */
const FUZZ_END = 8 * MiB;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len + 3);
  for (let i = 0; i < len; i += 4)
    b.writeUInt32LE((Math.imul(seed, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0, i);
  return b.subarray(0, len);
}

/** A fuzz request: in range it stays below FUZZ_END; out of range it lies wholly beyond the export. */
const request = fc
  .record({
    magicOk: fc.integer({ min: 0, max: 19 }).map((x) => x !== 0),
    type: fc.oneof(
      {
        weight: 8,
        arbitrary: fc.constantFrom(
          NBD_CMD_READ,
          NBD_CMD_WRITE,
          NBD_CMD_FLUSH,
          NBD_CMD_TRIM,
          NBD_CMD_WRITE_ZEROES,
          NBD_CMD_BLOCK_STATUS,
        ),
      },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    flags: fc.oneof(
      { weight: 6, arbitrary: fc.constant(0) },
      {
        weight: 2,
        arbitrary: fc.constantFrom(
          NBD_CMD_FLAG_FUA,
          NBD_CMD_FLAG_DF,
          NBD_CMD_FLAG_NO_HOLE,
          NBD_CMD_FLAG_FAST_ZERO,
          NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
          NBD_CMD_FLAG_REQ_ONE,
        ),
      },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
    ),
    where: fc.oneof(
      { weight: 8, arbitrary: fc.constant('in' as const) },
      { weight: 2, arbitrary: fc.constant('beyond' as const) },
    ),
    offset: fc.integer({ min: 0, max: FUZZ_END - 1 }),
    align: fc.boolean(),
    length: fc.oneof(
      { weight: 12, arbitrary: fc.constantFrom(0, 512, 4096, 65536, 131072) },
      { weight: 12, arbitrary: fc.integer({ min: 0, max: 300_000 }) },
      { weight: 1, arbitrary: fc.constantFrom(32 * MiB + 512, 0xffff_fe00, 0xffff_ffff) },
    ),
    payload: fc.constantFrom('full', 'short', 'none', 'extra'),
    handle: fc.integer({ min: 0, max: 0xffff_ffff }),
  })
  .map((r) => {
    let length = r.length;
    let offset = r.offset;
    if (r.align) {
      offset -= offset % 512;
      length -= length % 512;
    }
    const isWrite = r.type === NBD_CMD_WRITE;
    if (r.where === 'in' && length <= FUZZ_END) offset = Math.min(offset, FUZZ_END - length);
    else offset = SIZE + offset; // wholly beyond the end: rejected, whatever the length
    const hdr = encodeRequest(r.type, r.flags, 0xf00d, r.handle, offset, length);
    if (!r.magicOk) writeU32(hdr, 0, 0xdeadbeef);
    const parts: Uint8Array[] = [hdr];
    if (isWrite && length <= 2 * MiB) {
      if (r.payload === 'full') parts.push(pattern(length, r.handle));
      else if (r.payload === 'short') parts.push(pattern(Math.floor(length / 2), r.handle));
      else if (r.payload === 'extra') parts.push(pattern(length + 13, r.handle));
    } else if (r.payload === 'extra') {
      parts.push(pattern(7, r.handle));
    }
    return Buffer.concat(parts);
  });

/** An option: valid ones, malformed ones, unknown ones. */
const option = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom(
      encodeOption(NBD_OPT_LIST),
      encodeOption(NBD_OPT_LIST, new Uint8Array(5)),
      encodeOption(NBD_OPT_INFO, encodeInfoRequest('', [0, 1, 2, 3])),
      encodeOption(NBD_OPT_INFO, encodeInfoRequest('nope')),
      encodeOption(NBD_OPT_STRUCTURED_REPLY),
      encodeOption(NBD_OPT_STRUCTURED_REPLY, new Uint8Array(1)),
      encodeOption(NBD_OPT_GO, new Uint8Array(2)),
      encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('wrong')),
      encodeOption(NBD_OPT_ABORT),
      encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('', ['base:allocation'])),
      encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('nope', ['base:allocation'])),
      encodeOption(NBD_OPT_SET_META_CONTEXT, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 3])),
      encodeOption(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('', [])),
    ),
  },
  {
    weight: 3,
    arbitrary: fc
      .record({ opt: fc.integer({ min: 0, max: 0xffff_ffff }), data: fc.uint8Array({ maxLength: 300 }) })
      .map(({ opt, data }) => encodeOption(opt, data)),
  },
  {
    // an option header announcing more data than any option may have (the server disconnects)
    weight: 1,
    arbitrary: fc
      .record({
        opt: fc.constantFrom(NBD_OPT_GO, NBD_OPT_LIST, 99),
        len: fc.integer({ min: 32 * MiB + 1, max: 0xffff_ffff }),
      })
      .map(({ opt, len }) => {
        const h = Buffer.from(encodeOption(opt));
        h.writeUInt32BE(len, 12);
        return h;
      }),
  },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 40 }).map((b) => Buffer.from(b)) }, // garbage
);

const enter = fc.constantFrom(
  encodeOption(NBD_OPT_GO, encodeInfoRequest('')),
  encodeOption(NBD_OPT_GO, encodeInfoRequest('iovalink', [3])),
  encodeOption(NBD_OPT_EXPORT_NAME),
);

/** A whole session: client flags, options, maybe entering transmission, requests, and how it ends. */
const session = fc.record({
  clientFlags: fc.oneof(
    { weight: 12, arbitrary: fc.constantFrom(1, 3) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) },
  ),
  structured: fc.boolean(),
  options: fc.array(option, { maxLength: 3 }),
  enter: fc.option(enter, { freq: 8 }),
  requests: fc.array(request, { maxLength: 12 }),
  end: fc.constantFrom('disc', 'destroy', 'half-close', 'linger'),
  chunk: fc.integer({ min: 1, max: 70_000 }),
  /** Send only this fraction of the session's bytes, then reset (a disconnect at a random offset). */
  cutAt: fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }) },
  ),
});

type Session = typeof session extends fc.Arbitrary<infer T> ? T : never;

/** Plays a session over a raw socket, reading (and ignoring) whatever comes back. */
function play(path: string, s: Session) {
  return new Promise<void>((resolve) => {
    const sock = connect(path);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      sock.destroy();
      resolve();
    };
    sock.on('data', () => {});
    sock.on('error', finish);
    sock.on('close', finish);
    sock.once('connect', () => {
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(s.clientFlags >>> 0);
      const msgs: Uint8Array[] = [flags];
      if (s.structured) msgs.push(encodeOption(NBD_OPT_STRUCTURED_REPLY));
      msgs.push(...s.options);
      if (s.enter !== null) msgs.push(s.enter, ...s.requests);
      if (s.end === 'disc') msgs.push(encodeRequest(NBD_CMD_DISC, 0, 0, 0, 0, 0));
      const whole = Buffer.concat(msgs);
      const all = s.cutAt === null ? whole : whole.subarray(0, Math.floor(s.cutAt * whole.length));
      for (let i = 0; i < all.length; i += s.chunk) sock.write(all.subarray(i, i + s.chunk));
      if (s.cutAt !== null) {
        sock.end(finish); // cut: everything up to the offset, then gone
        return;
      }
      if (s.end === 'half-close' || s.end === 'disc') sock.end();
      setTimeout(finish, s.end === 'destroy' ? 2 : 40);
    });
  });
}

describe('protocol fuzz', () => {
  it.each([false, true])(
    'malformed sessions never crash the server nor corrupt a concurrent well-behaved client (device thread %s)',
    async (deviceThread) => {
      const path = join(dir, `fuzz-${deviceThread}.sock`);
      const srv = await startNbdServer({
        socket: path,
        deviceThread,
        size: SIZE,
        debug: true,
        shutdownGraceMs: 100,
        queueDepth: 8,
        log: (l) => {
          if (l.includes('internal')) console.error(l);
        },
      });
      const { client: good } = await NbdClient.open({ path }, { structured: true });
      const blocks = (SIZE - FUZZ_END) / 65536;
      const acked = new Map<number, number>();
      let stop = false;
      let goodOps = 0;
      const goodLoop = (async () => {
        let i = 0;
        while (!stop) {
          i++;
          const blk = (i * 7919) % blocks;
          const w = await good.write(FUZZ_END + blk * 65536, pattern(65536, i), i % 5 === 0);
          expect(w.error).toBe(0);
          acked.set(blk, i);
          const rb = (i * 104729) % blocks;
          const r = await good.read(FUZZ_END + rb * 65536, 65536);
          expect(r.error).toBe(0);
          const seed = acked.get(rb);
          expect(r.data.equals(seed === undefined ? Buffer.alloc(65536) : pattern(65536, seed))).toBe(true);
          goodOps += 2;
        }
      })();

      await fc.assert(
        fc.asyncProperty(session, async (s) => {
          await play(path, s);
        }),
        { numRuns: 300, seed: 20261125 },
      );
      // the server still negotiates and serves new clients
      const { client: fresh } = await NbdClient.open({ path });
      expect((await fresh.read(0, 4096)).error).toBe(0);
      await fresh.disconnect();

      stop = true;
      await goodLoop;
      expect(goodOps).toBeGreaterThan(20);
      for (const [blk, seed] of acked) {
        const r = await good.read(FUZZ_END + blk * 65536, 65536);
        expect(r.data.equals(pattern(65536, seed))).toBe(true);
      }
      // every fuzz connection is gone and nothing of theirs holds buffer memory
      while (srv.stats().connections.open > 1) await new Promise((r) => setTimeout(r, 5));
      expect(srv.stats().device.memReserved).toBe(0);
      await good.disconnect();
      const st = await srv.close();
      expect(st.connections.open).toBe(0);
      expect(st.device.memReserved).toBe(0);
      expect(st.device.memWaiting).toBe(0);
      expect(st.device.leaks).toEqual([]);
      expect(st.device.internalErrors).toBe(0);
      expect(st.errors.internal).toBeUndefined();
      expect(st.connections.accepted).toBeGreaterThan(20);
      expect(st.connections.protocolErrors).toBeGreaterThan(0);
      expect(st.connections.transmissions).toBeGreaterThan(st.connections.accepted / 4); // deep sessions, not just garbage
      expect((st.commands.NBD_CMD_WRITE ?? 0) + (st.commands.NBD_CMD_READ ?? 0)).toBeGreaterThan(500);
      expect(st.commands.NBD_CMD_WRITE_ZEROES).toBeGreaterThan(0);
      expect(st.commands.NBD_CMD_BLOCK_STATUS).toBeGreaterThan(0);
      expect(st.blockStatus.replies).toBeGreaterThan(0); // some sessions selected base:allocation
    },
    120_000,
  );
});
