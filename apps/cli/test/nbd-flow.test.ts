/**
 * Flow control against clients that stop reading: the buffer budget and the connection slots come
 * back whatever a client does before it goes away (issue 15, item 1). A client that pipelines
 * large READs without reading a reply makes the server stall on output while later requests wait
 * for buffer memory; a grant arriving in that state must still be returned when the client leaves.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { formatServeStats } from '../src/commands/serve.js';
import { NbdClient, type NbdClientAddress } from '../src/nbd/nbd-client.js';
import { LocalNbdDevice, type NbdBlockDevice } from '../src/nbd/nbd-device.js';
import { NbdExport } from '../src/nbd/nbd-export.js';
import type { NbdReadData } from '../src/nbd/nbd-export-data.js';
import { deviceOptions } from '../src/nbd/nbd-export-options.js';
import { OUTPUT_LIMIT } from '../src/nbd/nbd-flow-control.js';
import { NBD_CMD_READ, NBD_EIO, NBD_ENOMEM } from '../src/nbd/nbd-proto.js';
import { encodeRequest } from '../src/nbd/nbd-proto-transmission.js';
import { PIN_LIMIT } from '../src/nbd/nbd-replies.js';
import { type NbdServerHandle, startNbdServer } from '../src/nbd/nbd-server.js';

const MiB = 2 ** 20;
const dir = mkdtempSync(join(tmpdir(), 'iovalink-nbd-flow-'));
let sockN = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Waits for a condition the server reaches by itself (no wall-clock bound on correct code). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

function path(s: NbdServerHandle): NbdClientAddress {
  return s.address.kind === 'unix'
    ? { path: s.address.path }
    : { host: s.address.host, port: s.address.port };
}

/**
 * A client that negotiates, stops reading, pipelines `count` READs of `len` bytes at offset 0,
 * waits until the server has answered at least three of them (into the socket nobody reads) and
 * has nothing left to do, then goes away without a goodbye. Returns the reply bytes the server
 * produced for it.
 */
async function abandonPipelinedReads(s: NbdServerHandle, len: number, count: number): Promise<number> {
  const { client } = await NbdClient.open(path(s));
  client.socket.pause(); // never reads a reply
  const before = s.stats().bytes.read;
  const reqs = Array.from({ length: count }, (_, i) => encodeRequest(NBD_CMD_READ, 0, 0, 1000 + i, 0, len));
  client.send(Buffer.concat(reqs));
  await until(() => s.stats().bytes.read - before >= 3 * len);
  // the device is idle and nobody waits for memory: the connection is stalled on its output
  await until(() => s.export.pending === 0 && s.stats().device.memWaiting === 0);
  const produced = s.stats().bytes.read - before;
  client.socket.destroy();
  return produced;
}

describe.each([false, true])('flow control, device thread %s', (deviceThread) => {
  it('returns every buffer grant of clients that pipeline READs, never read a reply and vanish', async () => {
    // 32 MiB budget, 16 MiB READs: two in flight at most, a third waits for memory; the client
    // reads nothing, so the connection stalls on its output while requests wait for memory, and
    // a grant can arrive in that state.
    const s = await startNbdServer({
      socket: join(dir, `f${++sockN}.sock`),
      size: 64 * MiB,
      memBudget: 32 * MiB,
      deviceThread,
      shutdownGraceMs: 60_000,
    });
    const len = 16 * MiB;
    for (let i = 0; i < 3; i++) {
      const produced = await abandonPipelinedReads(s, len, 100);
      await until(() => s.stats().connections.open === 0);
      // nothing is in flight and nobody is connected: the whole budget is back
      expect(s.stats().device.memReserved).toBe(0);
      // per-connection bound: replies the client has not read never exceed OUTPUT_LIMIT
      expect(produced).toBeLessThanOrEqual(OUTPUT_LIMIT);
    }
    expect(s.stats().device.memoryWaits).toBeGreaterThan(0);
    // a fresh client is served: a READ and a WRITE complete, and the data reads back
    const { client: c } = await NbdClient.open(path(s));
    const data = Buffer.alloc(4096, 0x5a);
    expect((await c.write(8192, data)).error).toBe(0);
    const r = await c.read(8192, 4096);
    expect(r.error).toBe(0);
    expect(r.data.equals(data)).toBe(true);
    await c.disconnect();
    const st = await s.close();
    expect(st.device.memReserved).toBe(0);
    expect(st.device.leaks).toEqual([]);
    expect(st.device.internalErrors).toBe(0);
    expect(st.connections.open).toBe(0);
  });
});

describe.each([false, true])('waiting connections, device thread %s', (deviceThread) => {
  it('notices a client resetting its connection while its request waits for buffer memory', async () => {
    // loopback TCP: a client can reset its connection (RST) there
    const s = await startNbdServer({
      port: 0,
      size: 64 * MiB,
      memBudget: 32 * MiB,
      deviceThread,
      shutdownGraceMs: 60_000,
    });
    // a holds the whole budget: a 32 MiB write whose payload has only half arrived
    const { client: a } = await NbdClient.open(path(s));
    const payload = Buffer.alloc(32 * MiB, 0x3c);
    const held: Uint8Array[] = [];
    const send = a.send.bind(a);
    a.send = (x: Uint8Array) => void held.push(x);
    const w = a.write(0, payload);
    a.send = send;
    const bytes = Buffer.concat(held);
    send(bytes.subarray(0, 16 * MiB));
    await until(() => s.stats().device.memReserved === 32 * MiB);
    // b's READ must wait for memory; then b resets its connection
    const { client: b } = await NbdClient.open(path(s));
    const waitsBefore = s.stats().device.memoryWaits;
    const r = b.read(0, 4096).catch((e: Error) => e);
    await until(() => s.stats().device.memoryWaits > waitsBefore);
    b.socket.resetAndDestroy();
    expect(await r).toBeInstanceOf(Error);
    // the server sees b go while a still holds the budget, and b's queued wait is withdrawn
    await until(() => s.stats().connections.open === 1);
    expect(s.stats().device.memWaiting).toBe(0);
    expect(s.stats().device.memReserved).toBe(32 * MiB);
    send(bytes.subarray(16 * MiB));
    expect((await w).error).toBe(0);
    expect((await a.read(32 * MiB - 4096, 4096)).data.equals(payload.subarray(0, 4096))).toBe(true);
    await a.disconnect();
    const st = await s.close();
    expect(st.device.memReserved).toBe(0);
    expect(st.device.leaks).toEqual([]);
  });
});

describe('the teardown report', () => {
  it('names buffer budget still reserved at close as a leak, and the serve summary shows it', async () => {
    const exp = new NbdExport({ size: 16 * MiB });
    expect(exp.tryReserve(3 * 4096)).toBe(true);
    const st = exp.close();
    expect(st.memReserved).toBe(3 * 4096);
    expect(st.leaks).toContain('nbd buffer budget: 12288 bytes still reserved');
    const s = await startNbdServer({ socket: join(dir, `t${++sockN}.sock`), size: 16 * MiB });
    const summary = formatServeStats(await s.close());
    expect(summary).toMatch(/budget held 0\.0 MiB/);
    expect(summary).toMatch(/teardown: no leaks/);
    expect(formatServeStats({ ...(await s.close()), device: st })).toMatch(
      /teardown LEAKS: .*nbd buffer budget: 12288 bytes still reserved/,
    );
  });
});

describe('NbdExport.read', () => {
  it('hands over views of the request pages holding the data; the pages stay allocated until released', async () => {
    const exp = new NbdExport({ size: 16 * MiB });
    // 3 pieces of maxPiece bytes and a short one, written with a pattern that differs per byte
    const len = 3 * exp.maxPiece + 8192;
    const off = 5 * 4096;
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = (i * 7 + (i >> 12)) & 0xff;
    await new Promise<void>((resolve, reject) => {
      const sink = exp.write(off, len, false, (e) => (e === 0 ? resolve() : reject(new Error(`write ${e}`))));
      sink.push(data);
    });
    const got = await new Promise<NbdReadData>((resolve, reject) =>
      exp.read(off, len, (e, d) => (e === 0 ? resolve(d!) : reject(new Error(`read ${e}`)))),
    );
    expect(Buffer.concat(got.parts).equals(Buffer.from(data))).toBe(true);
    // the views are of the machine's pages: still allocated until release
    expect(exp.stats().leaks).toEqual(['nbd buffers: 4 still allocated']);
    got.release();
    got.release(); // idempotent
    expect(exp.stats().leaks).toEqual([]);
    expect(exp.close().leaks).toEqual([]);
  });
});

describe('NbdExport request state reused across requests', () => {
  /** Reads `len` bytes at `off`; the data stays held until released. */
  const read = (exp: NbdExport, off: number, len: number) =>
    new Promise<NbdReadData>((resolve, reject) =>
      exp.read(off, len, (e, d) => (e === 0 ? resolve(d!) : reject(new Error(`read ${e}`)))),
    );
  const write = (exp: NbdExport, off: number, data: Uint8Array, fua = false) =>
    new Promise<void>((resolve, reject) => {
      const sink = exp.write(off, data.length, fua, (e) =>
        e === 0 ? resolve() : reject(new Error(`write ${e}`)),
      );
      sink.push(data);
    });

  /** An export whose machine hands out request pages `blocks` more times, then none. */
  function starved(blocks: number): NbdExport {
    const inner = new LocalNbdDevice(deviceOptions({ size: 16 * MiB }));
    let left = blocks;
    const dev: NbdBlockDevice = {
      info: inner.info,
      phys: inner.phys,
      pages: {
        allocPages: (order) => (left-- > 0 ? inner.pages.allocPages(order) : 0),
        freePages: (phys, order) => inner.pages.freePages(phys, order),
      },
      submit: (op, offset, length, segs, done) => inner.submit(op, offset, length, segs, done),
      allocation: (offset, length, maxRuns, done) => inner.allocation(offset, length, maxRuns, done),
      run: () => inner.run(),
      set onReady(fn: () => void) {
        inner.onReady = fn;
      },
      get onReady() {
        return inner.onReady;
      },
      set onInternalError(fn: (e: unknown) => void) {
        inner.onInternalError = fn;
      },
      get onInternalError() {
        return inner.onInternalError;
      },
      get pending() {
        return inner.pending;
      },
      stats: () => inner.stats(),
      close: () => inner.close(),
    };
    return new NbdExport({ size: 16 * MiB }, dev);
  }

  it('without machine memory a write swallows the rest of its payload and fails with ENOMEM; a read fails at once', async () => {
    const exp = starved(1);
    const len = 2 * exp.maxPiece;
    const data = new Uint8Array(len).fill(9);
    // the first piece gets the one block and is written; the second finds none
    const err = await new Promise<number>((resolve) => {
      const sink = exp.write(0, len, false, resolve);
      sink.push(data.subarray(0, exp.maxPiece + 4096));
      expect(sink.span(len)).toBeUndefined(); // swallowing: no pages to receive into
      sink.advance(len - exp.maxPiece - 8192);
      sink.push(data.subarray(0, 4096));
    });
    expect(err).toBe(NBD_ENOMEM);
    const got = await new Promise<[number, NbdReadData | null]>((resolve) =>
      exp.read(0, 4096, (e, d) => resolve([e, d])),
    );
    expect(got).toEqual([NBD_ENOMEM, null]);
    const s = exp.close();
    expect(s.leaks).toEqual([]);
    expect(s.blockRequests.write).toBe(1);
    expect(s.blockRequests.read).toBe(0);
  });

  it('an aborted write completes with EIO once its submitted pieces have; the next write of the kept pages is whole', async () => {
    const exp = new NbdExport({ size: 16 * MiB });
    const len = 2 * exp.maxPiece;
    const calls: number[] = [];
    const first = new Promise<void>((resolve) => {
      const sink = exp.write(0, len, false, (e) => {
        calls.push(e);
        resolve();
      });
      sink.push(new Uint8Array(exp.maxPiece + 4096).fill(5)); // the first piece is submitted
      sink.abort();
      sink.abort(); // nothing more
      sink.push(new Uint8Array(4096)); // ignored
      expect(sink.span(4096)).toBeUndefined();
      expect(calls).toEqual([]); // the first piece is still in flight
    });
    await first;
    expect(calls).toEqual([NBD_EIO]);
    expect(exp.stats().leaks).toEqual([]);
    // FUA: the pages of the aborted write serve the next one, which is flushed after its pieces
    const flushes = exp.stats().blockRequests.flush;
    const data = new Uint8Array(len);
    for (let i = 0; i < len; i++) data[i] = (i * 13) & 0xff;
    await write(exp, 0, data, true);
    expect(exp.stats().blockRequests.flush).toBe(flushes + 1);
    const got = await read(exp, 0, len);
    expect(Buffer.concat(got.parts).equals(Buffer.from(data))).toBe(true);
    got.release();
    expect(exp.close().leaks).toEqual([]);
  });

  it('a released read whose pages went to the next read frees nothing of it when released again', async () => {
    const exp = new NbdExport({ size: 16 * MiB });
    const one = new Uint8Array(4096).fill(1);
    const two = new Uint8Array(4096).fill(2);
    await write(exp, 0, one);
    await write(exp, 4096, two);
    const a = await read(exp, 0, 4096);
    expect(Buffer.from(a.parts[0]!).equals(Buffer.from(one))).toBe(true);
    a.release();
    const b = await read(exp, 4096, 4096); // the pages a had
    a.release(); // idempotent: b keeps its pages
    expect(exp.stats().leaks).toEqual(['nbd buffers: 1 still allocated']);
    await write(exp, 0, new Uint8Array(4096).fill(3)); // must not land in b's pages
    expect(Buffer.concat(b.parts).equals(Buffer.from(two))).toBe(true);
    b.release();
    expect(exp.close().leaks).toEqual([]);
  });

  it('functions queued after a run by one that runs after it wait for the next run', async () => {
    const exp = new NbdExport({ size: 16 * MiB });
    const order: string[] = [];
    await new Promise<void>((resolve) => {
      exp.afterRun(() => {
        order.push('a');
        setImmediate(() => order.push('turn')); // the next event-loop turn, before the next run
        exp.afterRun(() => {
          order.push('c');
          resolve();
        });
      });
      exp.afterRun(() => order.push('b'));
    });
    expect(order).toEqual(['a', 'b', 'turn', 'c']);
    expect(exp.close().internalErrors).toBe(0);
  });
});

describe('read replies sent from the request pages', () => {
  it('a client not reading its replies pins at most PIN_LIMIT bytes of pages, plus one reply', async () => {
    const s = await startNbdServer({ socket: join(dir, `f${++sockN}.sock`), size: 64 * MiB });
    const { client } = await NbdClient.open(path(s));
    client.socket.pause(); // never reads a reply
    const len = MiB;
    const count = 24; // 24 MiB of replies, far more than the socket's kernel buffer takes
    const before = s.stats().bytes.read;
    client.send(
      Buffer.concat(
        Array.from({ length: count }, (_, i) => encodeRequest(NBD_CMD_READ, 0, 0, 7000 + i, 0, len)),
      ),
    );
    await until(() => s.stats().bytes.read - before === count * len && s.export.pending === 0);
    // pages still held are those of replies queued from pages: "nbd buffers: N still allocated"
    const held = s.stats().device.leaks.map((l) => /nbd buffers: (\d+) still allocated/.exec(l)?.[1]);
    const pieces = Number(held.find((h) => h !== undefined) ?? 0);
    expect(pieces * s.export.maxPiece).toBeLessThanOrEqual(PIN_LIMIT + len);
    client.socket.destroy();
    await until(() => s.stats().connections.open === 0);
    const st = await s.close();
    expect(st.device.leaks).toEqual([]);
    expect(st.device.memReserved).toBe(0);
  });
});
