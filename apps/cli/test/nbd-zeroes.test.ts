/**
 * NBD_CMD_WRITE_ZEROES and NBD_CMD_BLOCK_STATUS (`base:allocation`) at the protocol level, with our
 * own client, on both server modes (device on the server thread, device on its own thread): the
 * metadata context negotiation, every error case, how zeroes reach the device (deallocation or
 * zero-page writes, seen in the counters), and an allocation map that follows what was written,
 * zeroed and trimmed. Expected maps come from the rules: the backing store allocates 64 KiB chunks
 * on first write and drops a chunk only when a deallocation covers it whole.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STORE_CHUNK_SIZE } from '@iovalink/blk-mq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, type NbdClientAddress } from '../src/nbd/nbd-client.js';
import { RemoteNbdDevice } from '../src/nbd/nbd-device-remote.js';
import {
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_META_CONTEXT,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from '../src/nbd/nbd-proto.js';
import { readU32 } from '../src/nbd/nbd-proto-fields.js';
import { decodeMetaContextRequest, encodeMetaContextRequest } from '../src/nbd/nbd-proto-handshake.js';
import { type NbdServerHandle, startNbdServer } from '../src/nbd/nbd-server.js';

const MiB = 2 ** 20;
const SIZE = 16 * MiB;
const C = STORE_CHUNK_SIZE;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-zeroes-'));
let sockN = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function start(
  o: { deviceThread?: boolean; readOnly?: boolean; path?: 'sg' | 'iova'; debug?: boolean } = {},
): Promise<NbdServerHandle> {
  // dma-debug on: the zero page mapped many times over in one request must be a valid mapping
  return startNbdServer({
    socket: join(dir, `z${++sockN}.sock`),
    size: SIZE,
    shutdownGraceMs: 200,
    debug: true,
    ...o,
  });
}

function addr(s: NbdServerHandle): NbdClientAddress {
  if (s.address.kind !== 'unix') throw new Error('unix socket expected');
  return { path: s.address.path };
}

async function closeClean(s: NbdServerHandle) {
  const st = await s.close();
  expect(st.device.leaks).toEqual([]);
  expect(st.device.internalErrors).toBe(0);
  expect(st.errors.internal).toBeUndefined();
  return st;
}

/** Connects and completes the greeting and client flags (fixed newstyle, no zeroes). */
async function handshake(s: NbdServerHandle): Promise<NbdClient> {
  const c = await NbdClient.connect(addr(s));
  await c.greeting();
  c.sendClientFlags(3);
  return c;
}

/**
 * What the allocation map must be: one state per store chunk, 'data' after a write or a NO_HOLE
 * zero write touching it, 'hole' after a deallocation covering it whole; merged into
 * (length, flags) descriptors over [off, off + len).
 */
class ExpectedMap {
  readonly chunks = new Array<'data' | 'hole'>(SIZE / C).fill('hole');
  touch(off: number, len: number): void {
    for (let i = Math.floor(off / C); i * C < off + len; i++) this.chunks[i] = 'data';
  }
  deallocate(off: number, len: number): void {
    for (let i = Math.ceil(off / C); (i + 1) * C <= off + len; i++) this.chunks[i] = 'hole';
  }
  descriptors(off = 0, len = SIZE): number[] {
    const out: number[] = [];
    for (let at = off; at < off + len; ) {
      const i = Math.floor(at / C);
      const n = Math.min((i + 1) * C, off + len) - at;
      const flags = this.chunks[i] === 'data' ? 0 : HOLE;
      if (out.length > 0 && out[out.length - 1] === flags) out[out.length - 2]! += n;
      else out.push(n, flags);
      at += n;
    }
    return out;
  }
}

function fill(len: number, byte: number): Buffer {
  return Buffer.alloc(len, byte);
}

describe('metadata context negotiation', () => {
  let s: NbdServerHandle;
  beforeAll(async () => {
    s = await start();
  });
  afterAll(async () => {
    await closeClean(s);
  });

  it('parses LIST/SET_META_CONTEXT data strictly', () => {
    const good = encodeMetaContextRequest('exp', ['base:allocation', 'x-a:b']);
    expect(decodeMetaContextRequest(good)).toEqual({ name: 'exp', queries: ['base:allocation', 'x-a:b'] });
    expect(decodeMetaContextRequest(encodeMetaContextRequest('', []))).toEqual({ name: '', queries: [] });
    expect(decodeMetaContextRequest(good.subarray(0, good.length - 1))).toBeUndefined(); // a query cut short
    expect(decodeMetaContextRequest(Buffer.concat([good, Buffer.from([0])]))).toBeUndefined(); // trailing byte
    const count = Buffer.from(encodeMetaContextRequest('', ['base:allocation']));
    count.writeUInt32BE(2, 4); // says two queries, carries one
    expect(decodeMetaContextRequest(count)).toBeUndefined();
    const nul = Buffer.from(encodeMetaContextRequest('', ['base:allocation']));
    nul[12] = 0; // a NUL inside the query string
    expect(decodeMetaContextRequest(nul)).toBeUndefined();
    expect(decodeMetaContextRequest(new Uint8Array(7))).toBeUndefined();
  });

  it('lists base:allocation for no query and for base:, nothing for other namespaces', async () => {
    const c = await handshake(s);
    // LIST is answered without structured replies (the protocol lets a server refuse it; qemu-nbd answers)
    const all = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('', []));
    expect(all.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    expect(readU32(all[0]!.data, 0)).toBe(0); // the id in LIST replies is reserved: zero
    expect(Buffer.from(all[0]!.data.subarray(4)).toString()).toBe('base:allocation');
    const ns = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('iovalink', ['base:']));
    expect(ns.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    const other = await c.option(
      NBD_OPT_LIST_META_CONTEXT,
      encodeMetaContextRequest('', ['x-foo:bar', 'qemu:']),
    );
    expect(other.map((r) => r.type)).toEqual([NBD_REP_ACK]);
    const unknown = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('nope', []));
    expect(unknown.map((r) => r.type)).toEqual([NBD_REP_ERR_UNKNOWN]);
    await c.go();
    await c.disconnect();
  });

  it('SET needs structured replies, a known export and well-formed data; it replaces the selection even when it fails', async () => {
    const c = await handshake(s);
    const q = encodeMetaContextRequest('', ['base:allocation']);
    expect((await c.option(NBD_OPT_SET_META_CONTEXT, q)).map((r) => r.type)).toEqual([NBD_REP_ERR_INVALID]);
    expect((await c.option(NBD_OPT_STRUCTURED_REPLY)).map((r) => r.type)).toEqual([NBD_REP_ACK]);
    c.setStructured(true);
    // a query list naming it twice selects it once, with a non-zero id
    const set = await c.setMetaContext('', ['base:allocation', 'x-a:b', 'base:allocation']);
    expect(set).toEqual([{ id: 1, name: 'base:allocation' }]);
    const malformed = await c.option(
      NBD_OPT_SET_META_CONTEXT,
      new Uint8Array([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9]),
    );
    expect(malformed.map((r) => r.type)).toEqual([NBD_REP_ERR_INVALID]);
    expect((await c.setMetaContext('', ['base:allocation'])).length).toBe(1);
    const unknown = await c.option(
      NBD_OPT_SET_META_CONTEXT,
      encodeMetaContextRequest('nope', ['base:allocation']),
    );
    expect(unknown.map((r) => r.type)).toEqual([NBD_REP_ERR_UNKNOWN]);
    // 64 KiB + 1 of data is read and dropped: NBD_REP_ERR_TOO_BIG, and negotiation goes on
    const big = Buffer.alloc(64 * 1024 + 1);
    expect((await c.option(NBD_OPT_SET_META_CONTEXT, big)).map((r) => r.type)).toEqual([NBD_REP_ERR_TOO_BIG]);
    await c.go();
    // the failed SETs left nothing selected
    const r = await c.blockStatus(0, 4096);
    expect(r.error).toBe(NBD_EINVAL);
    expect(r.message).toMatch(/SET_META_CONTEXT/);
    await c.disconnect();
  });

  it('a SET that selects nothing is not an error, but BLOCK_STATUS then is', async () => {
    const { client: c, contexts } = await NbdClient.open(addr(s), { structured: true, meta: ['x-foo:bar'] });
    expect(contexts).toEqual([]);
    expect((await c.blockStatus(0, 4096)).error).toBe(NBD_EINVAL);
    await c.disconnect();
    // without structured replies at all: a simple EINVAL reply
    const { client: d } = await NbdClient.open(addr(s));
    expect((await d.blockStatus(0, 4096)).error).toBe(NBD_EINVAL);
    await d.disconnect();
  });
});

describe.each([
  ['iova', false],
  ['sg', true],
] as const)('WRITE_ZEROES and BLOCK_STATUS, %s path, device thread %s', (path, deviceThread) => {
  let s: NbdServerHandle;
  let c: NbdClient;
  const map = new ExpectedMap();
  beforeAll(async () => {
    s = await start({ deviceThread, path });
    const o = await NbdClient.open(addr(s), { structured: true, meta: ['base:allocation'] });
    c = o.client;
    expect(o.contexts).toEqual([{ id: 1, name: 'base:allocation' }]);
    const f = o.info.flags;
    expect(f & (NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO)).toBe(
      NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO,
    );
  });
  afterAll(async () => {
    await c.disconnect();
    await closeClean(s);
  });

  it('a fresh export is one hole that reads as zeroes', async () => {
    const r = await c.blockStatus(0, SIZE);
    expect(r.error).toBe(0);
    expect(r.status).toEqual([{ id: 1, desc: [SIZE, HOLE] }]);
  });

  it('maps written, NO_HOLE-zeroed, deallocated and trimmed ranges, and the data reads back', async () => {
    const before = s.stats();
    const pieces = (len: number) => Math.ceil(len / before.device.maxRequestBytes);
    // data in chunks 2..5 and 10..12, an unaligned write inside chunk 20
    expect((await c.write(2 * C, fill(4 * C, 0xa1))).error).toBe(0);
    map.touch(2 * C, 4 * C);
    expect((await c.write(10 * C, fill(3 * C, 0xb2))).error).toBe(0);
    map.touch(10 * C, 3 * C);
    expect((await c.write(20 * C + 4096, fill(4096, 0xc3))).error).toBe(0);
    map.touch(20 * C + 4096, 4096);
    // NO_HOLE zeroes over written data (chunk 3) and over a hole (chunks 30..31): allocated, zero
    expect((await c.writeZeroes(3 * C, C, NBD_CMD_FLAG_NO_HOLE)).error).toBe(0);
    map.touch(3 * C, C);
    expect((await c.writeZeroes(30 * C, 2 * C, NBD_CMD_FLAG_NO_HOLE)).error).toBe(0);
    map.touch(30 * C, 2 * C);
    // zeroes that may punch a hole: chunk 11 becomes a hole; half of chunk 4 stays allocated
    expect((await c.writeZeroes(11 * C, C)).error).toBe(0);
    map.deallocate(11 * C, C);
    expect((await c.writeZeroes(4 * C, C / 2)).error).toBe(0);
    map.deallocate(4 * C, C / 2);
    // a trim of chunk 12
    expect((await c.trim(12 * C, C)).error).toBe(0);
    map.deallocate(12 * C, C);

    const r = await c.blockStatus(0, SIZE);
    expect(r.error).toBe(0);
    expect(r.status).toEqual([{ id: 1, desc: map.descriptors() }]);
    // every descriptor is a multiple of the 512-byte minimum block size, and they sum to the request
    const desc = r.status![0]!.desc;
    let sum = 0;
    for (let i = 0; i < desc.length; i += 2) {
      expect(desc[i]! % 512).toBe(0);
      sum += desc[i]!;
    }
    expect(sum).toBe(SIZE);

    const want = Buffer.alloc(32 * C);
    want.fill(0xa1, 2 * C, 6 * C);
    want.fill(0, 3 * C, 4 * C);
    want.fill(0, 4 * C, 4 * C + C / 2);
    want.fill(0xb2, 10 * C, 11 * C);
    want.fill(0xc3, 20 * C + 4096, 20 * C + 8192);
    const back = await c.read(0, 32 * C);
    expect(back.error).toBe(0);
    expect(back.data.equals(want)).toBe(true);

    // the counters say how each zero write was done
    const st = s.stats();
    expect(st.zeroes.written - before.zeroes.written).toBe(3 * C);
    expect(st.zeroes.deallocated - before.zeroes.deallocated).toBe(C + C / 2);
    expect(st.bytes.zeroed - before.bytes.zeroed).toBe(4 * C + C / 2);
    // NO_HOLE zeroes are device writes whose data the device read by DMA from host memory;
    // deallocations are discards (two zero writes and one trim)
    const d = st.device;
    const b = before.device;
    const writes = pieces(4 * C) + pieces(3 * C) + pieces(4096) + pieces(C) + pieces(2 * C);
    expect(d.blockRequests.write - b.blockRequests.write).toBe(writes);
    expect(d.blockRequests.discard - b.blockRequests.discard).toBe(3);
    expect(d.blockBytes.write - b.blockBytes.write).toBe(4 * C + 3 * C + 4096 + 3 * C);
    expect(d.counters.dmaReadBytes! - b.counters.dmaReadBytes!).toBeGreaterThanOrEqual(10 * C + 4096);
  });

  it('answers a sub-range, clips descriptors to it, and gives one descriptor with REQ_ONE', async () => {
    const off = 2 * C + 4096;
    const len = 10 * C;
    const r = await c.blockStatus(off, len);
    expect(r.status).toEqual([{ id: 1, desc: map.descriptors(off, len) }]);
    const one = await c.blockStatus(off, len, NBD_CMD_FLAG_REQ_ONE);
    const first = map.descriptors(off, len).slice(0, 2);
    expect(one.status).toEqual([{ id: 1, desc: first }]);
    // REQ_ONE inside a long run: the descriptor stops at the request's end
    const inHole = await c.blockStatus(40 * C, 512, NBD_CMD_FLAG_REQ_ONE);
    expect(inHole.status).toEqual([{ id: 1, desc: [512, HOLE] }]);
    // FUA is accepted on every command
    expect((await c.blockStatus(0, C, NBD_CMD_FLAG_FUA)).error).toBe(0);
  });

  it('FAST_ZERO: refused at once with ENOTSUP when NO_HOLE makes it a write (nothing changes), done when it may deallocate', async () => {
    const before = s.stats();
    expect((await c.write(50 * C, fill(C, 0x77))).error).toBe(0);
    map.touch(50 * C, C);
    const refused = await c.writeZeroes(50 * C, C, NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE);
    expect(refused.error).toBe(NBD_ENOTSUP);
    expect(refused.message).toMatch(/not fast/);
    expect((await c.read(50 * C, C)).data.equals(fill(C, 0x77))).toBe(true);
    const fast = await c.writeZeroes(50 * C, C, NBD_CMD_FLAG_FAST_ZERO);
    expect(fast.error).toBe(0);
    map.deallocate(50 * C, C);
    expect((await c.read(50 * C, C)).data.equals(Buffer.alloc(C))).toBe(true);
    expect((await c.blockStatus(50 * C, C)).status).toEqual([{ id: 1, desc: [C, HOLE] }]);
    const st = s.stats();
    expect(st.zeroes.fastRefused - before.zeroes.fastRefused).toBe(1);
    expect(st.errors.ENOTSUP).toBe(1);
    // the refused request reached no device: the data write and one discard only
    const pieces = Math.ceil(C / before.device.maxRequestBytes);
    expect(st.device.blockRequests.write - before.device.blockRequests.write).toBe(pieces);
    expect(st.device.blockRequests.discard - before.device.blockRequests.discard).toBe(1);
  });

  it('FUA zero writes flush; a NO_HOLE zero write longer than a block request is split into pieces', async () => {
    const before = s.stats();
    const piece = before.device.maxRequestBytes;
    const len = 2 * piece + piece / 2; // three pieces
    expect((await c.writeZeroes(64 * C, len, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA)).error).toBe(0);
    map.touch(64 * C, len);
    expect((await c.writeZeroes(2 * C, C, NBD_CMD_FLAG_FUA)).error).toBe(0);
    map.deallocate(2 * C, C);
    const st = s.stats();
    expect(st.device.blockRequests.write - before.device.blockRequests.write).toBe(3);
    expect(st.device.blockBytes.write - before.device.blockBytes.write).toBe(len);
    expect(st.device.blockRequests.flush - before.device.blockRequests.flush).toBe(2);
    expect((await c.blockStatus(0, SIZE)).status).toEqual([{ id: 1, desc: map.descriptors() }]);
    expect((await c.read(64 * C, len)).data.equals(Buffer.alloc(len))).toBe(true);
  });

  it('answers bad WRITE_ZEROES and BLOCK_STATUS requests with the protocol errors and changes nothing', async () => {
    const before = s.stats();
    // WRITE_ZEROES: beyond the end → ENOSPC; misaligned or unknown flags → EINVAL
    expect((await c.writeZeroes(SIZE - C, 2 * C)).error).toBe(NBD_ENOSPC);
    expect((await c.writeZeroes(2 ** 52, 512, NBD_CMD_FLAG_NO_HOLE)).error).toBe(NBD_ENOSPC);
    expect((await c.writeZeroes(100, 512)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, 100)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, 512, NBD_CMD_FLAG_DF)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, 512, NBD_CMD_FLAG_REQ_ONE)).error).toBe(NBD_EINVAL);
    // over the 32 MiB maximum block size: EINVAL, unless FAST_ZERO (then the maximum does not apply)
    expect((await c.writeZeroes(0, 32 * MiB + 512)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, 32 * MiB + 512, NBD_CMD_FLAG_NO_HOLE)).error).toBe(NBD_EINVAL);
    // length 0 is a successful no-op
    expect((await c.writeZeroes(0, 0, NBD_CMD_FLAG_NO_HOLE)).error).toBe(0);
    // BLOCK_STATUS: beyond the end, length 0, misaligned, flags of other commands → EINVAL
    expect((await c.blockStatus(SIZE - 512, 1024)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(SIZE, 512)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(2 ** 52, 512)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(0, 0)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(100, 512)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(0, 4096, NBD_CMD_FLAG_NO_HOLE)).error).toBe(NBD_EINVAL);
    expect((await c.blockStatus(0, 4096, NBD_CMD_FLAG_FAST_ZERO)).error).toBe(NBD_EINVAL);
    const st = s.stats();
    expect(st.errors.ENOSPC).toBe(2);
    expect(st.device.blockRequests.write).toBe(before.device.blockRequests.write);
    expect(st.device.blockRequests.discard).toBe(before.device.blockRequests.discard);
    expect(st.bytes.zeroed).toBe(before.bytes.zeroed);
    // and the connection still serves: the map is unchanged
    expect((await c.blockStatus(0, SIZE)).status).toEqual([{ id: 1, desc: map.descriptors() }]);
  });
});

describe('the maximum block size and zero writes', () => {
  it('applies to WRITE_ZEROES without FAST_ZERO only: a fast zero of any length deallocates', async () => {
    const big = 64 * MiB;
    const s = await startNbdServer({
      socket: join(dir, `z${++sockN}.sock`),
      size: big,
      shutdownGraceMs: 200,
    });
    const { client: c } = await NbdClient.open(addr(s), { structured: true, meta: ['base:allocation'] });
    expect((await c.write(0, fill(C, 1))).error).toBe(0);
    expect((await c.write(big - C, fill(C, 2))).error).toBe(0);
    const len = 48 * MiB; // over the 32 MiB maximum
    expect((await c.writeZeroes(0, len)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, len, NBD_CMD_FLAG_NO_HOLE)).error).toBe(NBD_EINVAL);
    expect((await c.writeZeroes(0, len, NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE)).error).toBe(
      NBD_ENOTSUP,
    );
    expect((await c.blockStatus(0, big)).status).toEqual([{ id: 1, desc: [C, 0, big - 2 * C, HOLE, C, 0] }]);
    expect((await c.writeZeroes(0, big, NBD_CMD_FLAG_FAST_ZERO)).error).toBe(0);
    expect((await c.blockStatus(0, big)).status).toEqual([{ id: 1, desc: [big, HOLE] }]);
    expect((await c.read(big - C, C)).data.equals(Buffer.alloc(C))).toBe(true);
    await c.disconnect();
    const st = await closeClean(s);
    expect(st.zeroes.deallocated).toBe(big);
    expect(st.zeroes.written).toBe(0);
  });
});

describe('a device thread that drops off', () => {
  it('fails block status queries and zero writes with EIO, queries in flight included', async () => {
    const s = await start({ deviceThread: true, debug: false });
    const { client: c } = await NbdClient.open(addr(s), { structured: true, meta: ['base:allocation'] });
    expect((await c.blockStatus(0, SIZE)).error).toBe(0);
    expect(s.export.device).toBeInstanceOf(RemoteNbdDevice);
    const inFlight = c.blockStatus(0, SIZE); // sent before the device goes
    await new Promise((r) => setImmediate(r));
    (s.export.device as RemoteNbdDevice).surpriseRemove();
    const [q, later, zw, zd] = await Promise.all([
      inFlight,
      c.blockStatus(0, C),
      c.writeZeroes(0, C, NBD_CMD_FLAG_NO_HOLE),
      c.writeZeroes(0, C),
    ]);
    // the query sent before may have been answered already; everything after fails with EIO
    expect([0, NBD_EIO]).toContain(q.error);
    expect([later.error, zw.error, zd.error]).toEqual([NBD_EIO, NBD_EIO, NBD_EIO]);
    await c.disconnect();
    const st = await s.close();
    expect(st.device.internalErrors).toBe(0);
  });
});

describe('read-only export', () => {
  it('does not advertise TRIM or WRITE_ZEROES, refuses WRITE_ZEROES with EPERM whatever the flags, and answers BLOCK_STATUS', async () => {
    const s = await start({ readOnly: true });
    const { client: c, info } = await NbdClient.open(addr(s), {
      structured: true,
      meta: ['base:allocation'],
    });
    expect(info.flags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    expect(info.flags & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO)).toBe(0);
    for (const flags of [
      0,
      NBD_CMD_FLAG_NO_HOLE,
      NBD_CMD_FLAG_FAST_ZERO,
      NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE,
      NBD_CMD_FLAG_FUA,
    ]) {
      const r = await c.writeZeroes(0, C, flags);
      expect(r.error).toBe(NBD_EPERM);
      expect(r.message).toMatch(/read-only/);
    }
    expect((await c.blockStatus(0, SIZE)).status).toEqual([{ id: 1, desc: [SIZE, HOLE] }]);
    await c.disconnect();
    const st = await closeClean(s);
    expect(st.errors.EPERM).toBe(5);
    expect(st.zeroes).toEqual({ deallocated: 0, written: 0, fastRefused: 0 });
    expect(st.device.blockRequests.write).toBe(0);
    expect(st.device.blockRequests.discard).toBe(0);
  });
});
