import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NbdClient, type NbdClientAddress, parseInfoReplies } from '../src/nbd/nbd-client.js';
import { RemoteNbdDevice } from '../src/nbd/nbd-device-remote.js';
import {
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  U64_TOO_BIG,
} from '../src/nbd/nbd-proto.js';
import { readU16, readU32, readU64, writeU32 } from '../src/nbd/nbd-proto-fields.js';
import { decodeInfoRequest, encodeInfoRequest } from '../src/nbd/nbd-proto-handshake.js';
import { decodeRequest, encodeRequest } from '../src/nbd/nbd-proto-transmission.js';
import {
  isLoopbackAddress,
  type NbdServerHandle,
  type NbdServerOptions,
  startNbdServer,
} from '../src/nbd/nbd-server.js';
import { ManualTimers } from './nbd-manual-timers.js';

const MiB = 2 ** 20;
const SIZE = 64 * MiB;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-'));
let sockN = 0;
const sockPath = () => join(dir, `s${++sockN}.sock`);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Deterministic bytes: a pattern that differs per 32-bit word, block and seed. */
function pattern(len: number, seed: number): Buffer {
  const words = new Uint32Array(Math.ceil(len / 4));
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return Buffer.from(words.buffer, 0, len);
}

async function start(o: Partial<NbdServerOptions> = {}): Promise<NbdServerHandle> {
  return startNbdServer({ socket: sockPath(), size: SIZE, debug: true, shutdownGraceMs: 200, ...o });
}

function addr(s: NbdServerHandle): NbdClientAddress {
  return s.address.kind === 'unix'
    ? { path: s.address.path }
    : { host: s.address.host, port: s.address.port };
}

/** Closes the server and checks what every run must end with: no leaks, no internal errors. */
async function closeClean(s: NbdServerHandle) {
  const st = await s.close();
  expect(st.device.leaks).toEqual([]);
  expect(st.device.internalErrors).toBe(0);
  expect(st.errors.internal).toBeUndefined();
  return st;
}

/** Connects and completes the greeting and client flags. */
async function handshake(s: NbdServerHandle, flags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) {
  const c = await NbdClient.connect(addr(s));
  const hs = await c.greeting();
  c.sendClientFlags(flags);
  return { c, hs };
}

describe('nbd-proto', () => {
  it('reads 64-bit fields without BigInt and rejects values of 2^53 and more', () => {
    const r = decodeRequest(encodeRequest(NBD_CMD_READ, 0, 1, 2, 2 ** 53 - 1, 4096))!;
    expect(r.offset).toBe(2 ** 53 - 1);
    const raw = encodeRequest(NBD_CMD_READ, 0, 1, 2, 0, 4096);
    writeU32(raw, 16, 0x0020_0000); // 2^53
    expect(decodeRequest(raw)!.offset).toBe(U64_TOO_BIG);
    writeU32(raw, 16, 0xffff_ffff);
    expect(readU64(raw, 16)).toBe(U64_TOO_BIG);
    expect(decodeRequest(new Uint8Array(28))).toBeUndefined();
  });

  it('parses NBD_OPT_INFO/GO data strictly', () => {
    expect(decodeInfoRequest(encodeInfoRequest('disk', [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE]))).toEqual({
      name: 'disk',
      requests: [NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE],
    });
    const good = encodeInfoRequest('x', [1]);
    expect(decodeInfoRequest(good.subarray(0, good.length - 1))).toBeUndefined(); // count says 1, no room
    expect(decodeInfoRequest(new Uint8Array(5))).toBeUndefined();
    const longName = encodeInfoRequest('abc');
    writeU32(longName, 0, 100); // name length beyond the data
    expect(decodeInfoRequest(longName)).toBeUndefined();
    const nul = encodeInfoRequest('a\0b');
    expect(decodeInfoRequest(nul)).toBeUndefined();
  });

  it('knows loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1'])
      expect(isLoopbackAddress(a)).toBe(true);
    for (const a of ['0.0.0.0', '10.0.0.1', '::', '192.168.1.1', '::ffff:10.0.0.1']) {
      expect(isLoopbackAddress(a)).toBe(false);
    }
  });
});

describe('handshake', () => {
  let s: NbdServerHandle;
  beforeAll(async () => {
    s = await start();
  });
  afterAll(async () => {
    await closeClean(s);
  });

  it('sends the fixed newstyle greeting', async () => {
    const { c, hs } = await handshake(s);
    expect(hs).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    c.destroy();
  });

  it('answers NBD_OPT_INFO with the export, block sizes, name and description, then NBD_OPT_GO', async () => {
    const { c } = await handshake(s);
    const info = await c.option(NBD_OPT_INFO, encodeInfoRequest('', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION]));
    expect(info.at(-1)!.type).toBe(NBD_REP_ACK);
    expect(info.every((r) => r.option === NBD_OPT_INFO)).toBe(true);
    const parsed = parseInfoReplies(info);
    expect(parsed.size).toBe(SIZE);
    const want =
      NBD_FLAG_HAS_FLAGS |
      NBD_FLAG_SEND_FLUSH |
      NBD_FLAG_SEND_FUA |
      NBD_FLAG_SEND_TRIM |
      NBD_FLAG_SEND_WRITE_ZEROES |
      NBD_FLAG_SEND_FAST_ZERO;
    expect(parsed.flags & want).toBe(want);
    expect(parsed.flags & NBD_FLAG_CAN_MULTI_CONN).toBe(NBD_FLAG_CAN_MULTI_CONN);
    expect(parsed.flags & NBD_FLAG_SEND_DF).toBe(0); // no structured replies negotiated
    expect(parsed.blockSize).toEqual({ min: 512, preferred: 4096, max: 32 * MiB });
    const types = info.filter((r) => r.type === NBD_REP_INFO).map((r) => readU16(r.data, 0));
    expect(types).toEqual(
      expect.arrayContaining([0, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]),
    );
    const name = info.find((r) => r.type === NBD_REP_INFO && readU16(r.data, 0) === NBD_INFO_NAME)!;
    expect(Buffer.from(name.data.subarray(2)).toString()).toBe('iovalink');
    // INFO does not end negotiation: GO with the canonical name does
    const go = await c.go('iovalink');
    expect(go.size).toBe(SIZE);
    expect(go.flags).toBe(parsed.flags);
    const w = await c.write(0, pattern(4096, 1));
    expect(w.error).toBe(0);
    await c.disconnect();
  });

  it('lists the export and rejects NBD_OPT_LIST with data', async () => {
    const { c } = await handshake(s);
    const list = await c.option(NBD_OPT_LIST);
    expect(list.map((r) => r.type)).toEqual([NBD_REP_SERVER, NBD_REP_ACK]);
    const nameLen = readU32(list[0]!.data, 0);
    expect(Buffer.from(list[0]!.data.subarray(4, 4 + nameLen)).toString()).toBe('iovalink');
    const bad = await c.option(NBD_OPT_LIST, new Uint8Array(3));
    expect(bad.map((r) => r.type)).toEqual([NBD_REP_ERR_INVALID]);
    c.destroy();
  });

  it('acknowledges NBD_OPT_ABORT and closes', async () => {
    const { c } = await handshake(s);
    const r = await c.option(NBD_OPT_ABORT);
    expect(r[0]!.type).toBe(NBD_REP_ACK);
    await c.closed;
  });

  it('answers unknown and unsupported options NBD_REP_ERR_UNSUP and keeps negotiating', async () => {
    const { c } = await handshake(s);
    for (const opt of [NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS, 4242, 0x7fffffff]) {
      const r = await c.option(opt, pattern(37, opt));
      expect(r.map((x) => x.type)).toEqual([NBD_REP_ERR_UNSUP]);
      expect(r[0]!.option).toBe(opt);
    }
    // a 1 MiB option body is skipped, not buffered
    expect((await c.option(999, new Uint8Array(MiB)))[0]!.type).toBe(NBD_REP_ERR_UNSUP);
    expect((await c.go()).size).toBe(SIZE);
    await c.disconnect();
  });

  it('rejects malformed INFO/GO (NBD_REP_ERR_INVALID) and unknown exports (NBD_REP_ERR_UNKNOWN)', async () => {
    const { c } = await handshake(s);
    expect((await c.option(NBD_OPT_GO, new Uint8Array(3)))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const trailing = Buffer.concat([encodeInfoRequest(''), Buffer.from([1])]);
    expect((await c.option(NBD_OPT_INFO, trailing))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const huge = new Uint8Array(200_000); // larger than any valid INFO: skipped, then rejected
    expect((await c.option(NBD_OPT_GO, huge))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    const unk = await c.option(NBD_OPT_GO, encodeInfoRequest('nope'));
    expect(unk.map((r) => r.type)).toEqual([NBD_REP_ERR_UNKNOWN]);
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY, new Uint8Array(1)))[0]!.type).toBe(NBD_REP_ERR_INVALID);
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type).toBe(NBD_REP_ACK);
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY))[0]!.type).toBe(NBD_REP_ERR_INVALID); // twice
    c.setStructured(true);
    const info = await c.go();
    expect(info.flags & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    await c.disconnect();
  });

  it('supports NBD_OPT_EXPORT_NAME with and without the 124 zero bytes', async () => {
    for (const noZeroes of [true, false]) {
      const { c } = await handshake(s, NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
      c.send(
        Buffer.concat([
          Buffer.from('IHAVEOPT'),
          Buffer.from([0, 0, 0, NBD_OPT_EXPORT_NAME, 0, 0, 0, 8]),
          Buffer.from('iovalink'),
        ]),
      );
      const r = await c.readExactly(10 + (noZeroes ? 0 : 124));
      expect(readU64(r, 0)).toBe(SIZE);
      expect(readU16(r, 8) & NBD_FLAG_HAS_FLAGS).toBe(1);
      if (!noZeroes) expect(r.subarray(10).every((x) => x === 0)).toBe(true);
      c.enterTransmission(false);
      expect((await c.read(0, 4096)).error).toBe(0);
      await c.disconnect();
    }
  });

  it('drops the connection on an unknown export with NBD_OPT_EXPORT_NAME, bad client flags or a bad magic', async () => {
    {
      const { c } = await handshake(s);
      c.send(
        Buffer.concat([Buffer.from('IHAVEOPT'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 3]), Buffer.from('bad')]),
      );
      await c.closed;
    }
    {
      const { c } = await handshake(s, 0x80);
      await c.closed;
    }
    {
      const { c } = await handshake(s);
      c.send(Buffer.from('IHAVEOPX\0\0\0\x07\0\0\0\0'));
      await c.closed;
    }
    {
      const { c } = await handshake(s); // a client that leaves in the middle of an option
      c.send(Buffer.from('IHAVEOPT\0\0\0\x07\0\0\0\x40abc'));
      c.socket.end();
      await c.closed;
    }
    // the server still serves
    const { client } = await NbdClient.open(addr(s));
    expect((await client.read(0, 512)).error).toBe(0);
    await client.disconnect();
  });

  it('accepts a client without the fixed-newstyle flag (honoured anyway)', async () => {
    const { c } = await handshake(s, 0);
    expect((await c.go()).size).toBe(SIZE);
    await c.disconnect();
  });
});

describe.each([
  ['sg', true, false],
  ['iova', true, false],
  ['iova', false, false],
  ['sg', true, true],
  ['iova', true, true],
] as const)(
  'transmission, %s path, zero-copy receive %s, device thread %s',
  (path, zeroCopy, deviceThread) => {
    let s: NbdServerHandle;
    beforeAll(async () => {
      s = await start({ path, zeroCopy, deviceThread });
    });
    afterAll(async () => {
      const st = await closeClean(s);
      expect(st.device.path).toBe(path);
      expect(st.device.deviceThread).toBe(deviceThread);
      expect(st.device.blockRequests.read).toBeGreaterThan(0);
      if (path === 'iova') expect(st.device.driver.iovaCoalesced).toBeGreaterThan(0);
      else expect(st.device.driver.sgMapped).toBeGreaterThan(0);
      expect(st.device.counters.iovaAllocs).toBeGreaterThan(0); // every I/O went through the IOMMU
    });

    for (const structured of [false, true]) {
      it(`writes then reads back equal data (${structured ? 'structured' : 'simple'} replies)`, async () => {
        const { client: c, info } = await NbdClient.open(addr(s), { structured });
        expect(info.size).toBe(SIZE);
        let off = structured ? 32 * MiB : 0;
        for (const [len, seed] of [
          [512, 1],
          [4096, 2],
          [12_288, 3],
          [128 * 1024, 4],
          [1536 * 1024, 5],
          [3 * MiB, 6],
        ] as const) {
          const data = pattern(len, seed + (structured ? 100 : 0));
          expect((await c.write(off, data)).error).toBe(0);
          const r = await c.read(off, len);
          expect(r.error).toBe(0);
          expect(r.data.equals(data)).toBe(true);
          if (structured) expect(r.chunks).toBe(1);
          off += len;
        }
        await c.disconnect();
      });
    }

    it('reads and writes the maximum block size (32 MiB) in one command, split into block requests', async () => {
      const { client: c } = await NbdClient.open(addr(s));
      const before = s.stats().device.blockRequests;
      const data = pattern(32 * MiB, 77);
      expect((await c.write(0, data)).error).toBe(0);
      expect(s.stats().device.blockRequests.write - before.write).toBe((32 * MiB) / s.export.maxPiece);
      const r = await c.read(0, 32 * MiB);
      expect(r.data.equals(data)).toBe(true);
      expect(s.stats().device.blockRequests.read - before.read).toBe((32 * MiB) / s.export.maxPiece);
      await c.disconnect();
    });

    it('FUA writes, flushes and trims (trimmed blocks read as zeros)', async () => {
      const { client: c } = await NbdClient.open(addr(s));
      const flushes = s.stats().device.blockRequests.flush;
      const data = pattern(64 * 1024, 9);
      expect((await c.write(MiB, data, true)).error).toBe(0);
      expect(s.stats().device.blockRequests.flush).toBe(flushes + 1);
      expect((await c.flush()).error).toBe(0);
      expect((await c.trim(MiB + 4096, 8192)).error).toBe(0);
      const r = await c.read(MiB, 64 * 1024);
      const want = Buffer.from(data);
      want.fill(0, 4096, 4096 + 8192);
      expect(r.data.equals(want)).toBe(true);
      // an unaligned trim discards only the whole blocks inside it
      expect((await c.trim(MiB + 20_000, 10_000)).error).toBe(0);
      const r2 = await c.read(MiB, 64 * 1024);
      want.fill(0, 20_480, 29_696);
      expect(r2.data.equals(want)).toBe(true);
      expect((await c.trim(0, 0)).error).toBe(0);
      await c.disconnect();
    });

    it('receives write payloads whole however the stream is cut (requests glued together, odd chunks)', async () => {
      const { client: c } = await NbdClient.open(addr(s));
      const sent: Uint8Array[] = [];
      const send = c.send.bind(c);
      c.send = (b: Uint8Array) => void sent.push(b);
      const base = 20 * MiB;
      const lens = [128 * 1024, 392 * 512, 64 * 1024, 4096, 16 * 1024, 300 * 1024];
      const offs = lens.map((_, i) => base + i * 512 * 1024);
      const writes = lens.map((n, i) => c.write(offs[i]!, pattern(n, 300 + i)));
      const read = c.read(offs[0]!, lens[0]!); // glued right after the last payload
      c.send = send;
      const all = Buffer.concat(sent);
      const cuts = [1, 27, 5000, 65_539, 28, 131_071, 3, 70_000];
      for (let at = 0, k = 0; at < all.length; k++) {
        const n = Math.min(cuts[k % cuts.length]!, all.length - at);
        send(all.subarray(at, at + n));
        at += n;
        await new Promise((r) => setImmediate(r));
      }
      expect((await Promise.all(writes)).map((w) => w.error)).toEqual(lens.map(() => 0));
      expect((await read).data.equals(pattern(lens[0]!, 300))).toBe(true);
      for (const [i, n] of lens.entries()) {
        expect((await c.read(offs[i]!, n)).data.equals(pattern(n, 300 + i))).toBe(true);
      }
      await c.disconnect();
    });

    it('pipelines requests and answers each one by handle', async () => {
      const { client: c } = await NbdClient.open(addr(s));
      const n = 200;
      const base = 40 * MiB;
      const writes = Array.from({ length: n }, (_, i) => c.write(base + i * 8192, pattern(8192, 1000 + i)));
      expect(c.pending).toBe(n);
      expect((await Promise.all(writes)).every((r) => r.error === 0)).toBe(true);
      const reads = Array.from({ length: n }, (_, i) => c.read(base + i * 8192, 8192));
      const got = await Promise.all(reads);
      for (const [i, r] of got.entries()) expect(r.data.equals(pattern(8192, 1000 + i))).toBe(true);
      expect(s.stats().maxInFlight).toBeGreaterThan(8);
      await c.disconnect();
    });

    it('serves two concurrent clients on one export without mixing their data', async () => {
      const a = (await NbdClient.open(addr(s))).client;
      const b = (await NbdClient.open(addr(s), { structured: true })).client;
      const ops: Promise<unknown>[] = [];
      for (let i = 0; i < 64; i++) {
        ops.push(a.write(48 * MiB + i * 16384, pattern(16384, 5000 + i)));
        ops.push(b.write(56 * MiB + i * 16384, pattern(16384, 6000 + i)));
      }
      await Promise.all(ops);
      // each reads the other's region: flush/FUA effects are shared (NBD_FLAG_CAN_MULTI_CONN)
      const ra = await Promise.all(Array.from({ length: 64 }, (_, i) => a.read(56 * MiB + i * 16384, 16384)));
      const rb = await Promise.all(Array.from({ length: 64 }, (_, i) => b.read(48 * MiB + i * 16384, 16384)));
      for (const [i, r] of ra.entries()) expect(r.data.equals(pattern(16384, 6000 + i))).toBe(true);
      for (const [i, r] of rb.entries()) expect(r.data.equals(pattern(16384, 5000 + i))).toBe(true);
      expect(s.stats().connections.maxConcurrent).toBeGreaterThanOrEqual(2);
      await Promise.all([a.disconnect(), b.disconnect()]);
    });
  },
);

describe.each([false, true])('bad input in transmission, device thread %s', (deviceThread) => {
  let s: NbdServerHandle;
  beforeAll(async () => {
    s = await start({ path: 'iova', deviceThread });
  });
  afterAll(async () => {
    await closeClean(s);
  });

  it('answers unknown commands and flags with EINVAL, ranges with EINVAL/ENOSPC, and keeps serving', async () => {
    for (const structured of [false, true]) {
      const { client: c } = await NbdClient.open(addr(s), { structured });
      const good = pattern(4096, 42);
      expect((await c.write(0, good)).error).toBe(0);
      expect((await c.request(99, 0, 0, 0)).error).toBe(NBD_EINVAL); // unknown command
      expect((await c.request(NBD_CMD_CACHE, 0, 0, 4096)).error).toBe(NBD_EINVAL); // not advertised
      expect((await c.request(NBD_CMD_READ, 0x8000, 0, 4096)).error).toBe(NBD_EINVAL); // unknown flag
      expect((await c.request(NBD_CMD_READ, NBD_CMD_FLAG_NO_HOLE, 0, 4096)).error).toBe(NBD_EINVAL);
      const df = await c.read(0, 4096, NBD_CMD_FLAG_DF); // DF only with structured replies
      expect(df.error).toBe(structured ? 0 : NBD_EINVAL);
      if (structured) expect(df.chunks).toBe(1);
      expect((await c.read(0, 4096, NBD_CMD_FLAG_FUA)).error).toBe(0); // FUA is valid on every command
      const oor = await c.read(SIZE - 512, 1024);
      expect(oor.error).toBe(NBD_EINVAL);
      if (structured) expect(oor.message).toMatch(/beyond the end/);
      expect((await c.read(SIZE, 0)).error).toBe(0);
      expect((await c.read(2 ** 52, 512)).error).toBe(NBD_EINVAL);
      expect((await c.write(SIZE - 512, pattern(1024, 1))).error).toBe(NBD_ENOSPC); // payload consumed
      expect((await c.write(2 ** 52, pattern(512, 1), true)).error).toBe(NBD_ENOSPC);
      expect((await c.trim(SIZE - 4096, 8192)).error).toBe(NBD_EINVAL);
      expect((await c.read(100, 512)).error).toBe(NBD_EINVAL); // misaligned
      expect((await c.write(512, pattern(100, 1))).error).toBe(NBD_EINVAL);
      expect((await c.read(0, 32 * MiB + 512)).error).toBe(NBD_EINVAL); // over the maximum block size
      expect((await c.request(3, 0, 512, 0)).error).toBe(NBD_EINVAL); // flush with an offset
      expect((await c.write(4096, new Uint8Array(0))).error).toBe(0);
      expect((await c.read(0, 0)).data.length).toBe(0);
      const back = await c.read(0, 4096);
      expect(back.data.equals(good)).toBe(true);
      await c.disconnect();
    }
    const st = s.stats();
    expect(st.errors.EINVAL).toBeGreaterThan(10);
    expect(st.errors.ENOSPC).toBe(4);
  });

  it('reads 2^64 - 1 as an offset beyond the end, echoing the handle', async () => {
    const { c } = await handshake(s);
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest(''))).at(-1)!.type).toBe(NBD_REP_ACK);
    const raw = encodeRequest(NBD_CMD_READ, 0, 7, 8, 0, 512);
    raw.fill(0xff, 16, 24);
    c.send(raw);
    const reply = await c.readExactly(16);
    expect(readU32(reply, 4)).toBe(NBD_EINVAL);
    expect([readU32(reply, 8), readU32(reply, 12)]).toEqual([7, 8]);
    c.destroy();
  });

  it('disconnects a client sending a write payload over 32 MiB, keeping what was acknowledged', async () => {
    const { client: c } = await NbdClient.open(addr(s));
    const keep = pattern(65536, 7);
    expect((await c.write(8 * MiB, keep)).error).toBe(0);
    const errs = s.stats().connections.protocolErrors;
    c.send(encodeRequest(NBD_CMD_WRITE, 0, 1, 999, 0, 32 * MiB + 512));
    await c.closed;
    expect(s.stats().connections.protocolErrors).toBe(errs + 1);
    const { client: d } = await NbdClient.open(addr(s));
    expect((await d.read(8 * MiB, 65536)).data.equals(keep)).toBe(true);
    await d.disconnect();
  });

  it('disconnects on a bad request magic after answering what came before', async () => {
    const { client: c } = await NbdClient.open(addr(s));
    const w = c.write(9 * MiB, pattern(4096, 3));
    c.send(Buffer.alloc(28, 0xee));
    expect((await w).error).toBe(0);
    await c.closed;
  });

  it('survives a truncated header and a client leaving mid-payload; nothing acknowledged is lost', async () => {
    const { client: a } = await NbdClient.open(addr(s));
    const acked = pattern(256 * 1024, 11);
    expect((await a.write(10 * MiB, acked)).error).toBe(0);
    // half a header, then gone
    a.send(encodeRequest(NBD_CMD_READ, 0, 1, 2, 0, 4096).subarray(0, 13));
    a.socket.end();
    await a.closed;
    // a write header and part of its payload over the same blocks, then gone
    const { client: b } = await NbdClient.open(addr(s));
    b.send(
      Buffer.concat([encodeRequest(NBD_CMD_WRITE, 0, 1, 2, 10 * MiB, 256 * 1024), pattern(200 * 1024, 12)]),
    );
    await new Promise((r) => setTimeout(r, 30));
    b.destroy();
    await b.closed;
    // an abrupt reset with requests in flight
    const { client: d } = await NbdClient.open(addr(s));
    const inflight = Array.from({ length: 32 }, (_, i) => d.read(i * 65536, 65536).catch(() => undefined));
    d.destroy();
    await Promise.all(inflight);
    const { client: e } = await NbdClient.open(addr(s));
    const r = await e.read(10 * MiB, 256 * 1024);
    // the unacknowledged write may have landed in whole 128 KiB pieces, never torn within a piece
    const piece = s.export.maxPiece;
    const torn = pattern(200 * 1024, 12);
    for (let off = 0; off < 256 * 1024; off += piece) {
      const got = r.data.subarray(off, off + piece);
      const old = acked.subarray(off, off + piece);
      const nw = torn.subarray(off, off + piece);
      expect(got.equals(old) || (nw.length === piece && got.equals(nw))).toBe(true);
    }
    await e.disconnect();
    await new Promise((r) => setTimeout(r, 20));
    expect(s.stats().connections.aborted).toBeGreaterThanOrEqual(2);
  });
});

describe('flow control, shutdown and addresses', () => {
  it.each([false, true])(
    'honours a small queue depth and waits for buffer memory under a small budget (device thread %s)',
    async (deviceThread) => {
      const s = await start({ queueDepth: 2, memBudget: 32 * MiB, debug: false, deviceThread });
      const { client: a } = await NbdClient.open(addr(s));
      const { client: b } = await NbdClient.open(addr(s));
      const small = Array.from({ length: 40 }, (_, i) => a.write(i * 4096, pattern(4096, i)));
      // b's 24 MiB write holds its reservation until its payload is complete: send half of it, so
      // that a's 20 MiB write (or b's, if a's came first) must wait for memory until the rest comes
      const held: Uint8Array[] = [];
      const sendB = b.send.bind(b);
      b.send = (x: Uint8Array) => void held.push(x);
      const bigB = b.write(16 * MiB, pattern(24 * MiB, 1));
      b.send = sendB;
      const bBytes = Buffer.concat(held);
      sendB(bBytes.subarray(0, 12 * MiB));
      const bigA = a.write(40 * MiB, pattern(20 * MiB, 2));
      await vi.waitFor(() => expect(s.stats().device.memoryWaits).toBeGreaterThan(0), { timeout: 5000 });
      sendB(bBytes.subarray(12 * MiB));
      const res = await Promise.all([...small, bigB, bigA]);
      expect(res.every((r) => r.error === 0)).toBe(true);
      expect(s.stats().maxInFlight).toBeLessThanOrEqual(2);
      expect(s.stats().device.maxInFlight).toBeLessThanOrEqual(2);
      expect((await b.read(16 * MiB, 24 * MiB)).data.equals(pattern(24 * MiB, 1))).toBe(true);
      await Promise.all([a.disconnect(), b.disconnect()]);
      await closeClean(s);
    },
  );

  it('on close waits for in-flight commands whatever the time, refuses options and requests with SHUTDOWN errors', async () => {
    const timers = new ManualTimers();
    const s = await start({ debug: false, timers, shutdownGraceMs: 2000 });
    const { client: c } = await NbdClient.open(addr(s));
    const { c: h } = await handshake(s); // still negotiating
    const big = pattern(32 * MiB, 5);
    const w = c.write(0, big);
    // wait until the server has parsed the header and is receiving the payload
    while ((s.stats().commands.NBD_CMD_WRITE ?? 0) === 0) await new Promise((r) => setImmediate(r));
    const closing = s.close();
    const opt = await h.option(NBD_OPT_LIST);
    expect(opt.map((o) => o.type)).toEqual([NBD_REP_ERR_SHUTDOWN]);
    // far past every time limit: the idle negotiating client is dropped, the write goes on
    timers.advance(3_600_000);
    await h.closed;
    expect((await w).error).toBe(0); // the in-flight write finished and was answered
    // § "Terminating the transmission phase": later requests get NBD_ESHUTDOWN, then the client disconnects
    expect((await c.read(0, 4096)).error).toBe(NBD_ESHUTDOWN);
    await c.disconnect();
    const st = await closing;
    expect(st.device.leaks).toEqual([]);
    expect(st.device.internalErrors).toBe(0);
    expect(st.bytes.written).toBe(32 * MiB);
    expect(st.errors.ESHUTDOWN).toBe(1);
    expect(st.errors.NBD_REP_ERR_SHUTDOWN).toBe(1);
    await expect(NbdClient.connect(addr(s))).rejects.toThrow();
  });

  it('with the device on its own thread: a device that drops off fails I/O with EIO, the server goes on', async () => {
    const s = await start({ deviceThread: true, debug: false });
    const { client: c } = await NbdClient.open(addr(s));
    expect((await c.write(0, pattern(65_536, 5))).error).toBe(0);
    expect(s.export.device).toBeInstanceOf(RemoteNbdDevice);
    (s.export.device as RemoteNbdDevice).surpriseRemove();
    const [w, r] = await Promise.all([c.write(65_536, pattern(8192, 6)), c.read(0, 4096)]);
    expect([w.error, r.error]).toEqual([NBD_EIO, NBD_EIO]);
    // new clients still connect and get answers
    const { client: d } = await NbdClient.open(addr(s));
    expect((await d.flush()).error).toBe(NBD_EIO);
    await Promise.all([c.disconnect(), d.disconnect()]);
    const st = await s.close();
    expect(st.device.leaks.join('\n')).toMatch(/counters lost \(device removed/);
    expect(st.device.internalErrors).toBe(0);
    expect(st.device.blockErrors).toEqual({});
  });

  it('stops its device thread when it cannot listen', async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as { port: number }).port;
    await expect(startNbdServer({ port, size: SIZE, deviceThread: true })).rejects.toThrow(/EADDRINUSE/);
    await new Promise((r) => blocker.close(r));
  });

  it('listens on loopback TCP only', async () => {
    const s = await startNbdServer({ port: 0, size: SIZE, debug: true, shutdownGraceMs: 200 });
    expect(s.address.kind).toBe('tcp');
    expect(s.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/);
    const { client: c } = await NbdClient.open(addr(s));
    expect((await c.write(0, pattern(4096, 1))).error).toBe(0);
    // a large payload is received in place over TCP too
    const big = pattern(768 * 1024, 2);
    expect((await c.write(MiB, big)).error).toBe(0);
    expect((await c.read(MiB, big.length)).data.equals(big)).toBe(true);
    await c.disconnect();
    await closeClean(s);
    for (const host of ['0.0.0.0', '10.1.2.3', '::', 'example.com']) {
      await expect(startNbdServer({ port: 0, host })).rejects.toThrow(/only loopback/);
    }
    await expect(startNbdServer({ size: SIZE } as NbdServerOptions)).rejects.toThrow(/exactly one/);
  });

  it('replaces a stale socket file but refuses a live one or a non-socket', async () => {
    const p = sockPath();
    const stale = createServer();
    await new Promise<void>((r) => stale.listen(p, r));
    await expect(startNbdServer({ socket: p, size: SIZE })).rejects.toThrow(/in use/);
    // simulate a crashed server: the file stays, nobody listens
    (stale as unknown as { _handle: { close(): void } | null })._handle?.close();
    await new Promise((r) => setTimeout(r, 20));
    const plain = join(dir, 'plain-file');
    writeFileSync(plain, 'x');
    await expect(startNbdServer({ socket: plain, size: SIZE })).rejects.toThrow(/not a socket/);
    const s = await startNbdServer({ socket: p, size: SIZE });
    await closeClean(s);
  });
});
