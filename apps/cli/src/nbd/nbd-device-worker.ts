/**
 * The device thread of an export with `deviceThread` (started by `RemoteNbdDevice.start`): builds
 * the device and its machine, sets aside the buffer pool (contiguous top-order blocks of the
 * machine's RAM, shared with the server thread), then takes block requests from the submission
 * ring, runs the device and the virtual clock, and returns completions on the completion ring.
 * Counters and teardown are answered on a message port (`stats`, `close`), allocation queries on
 * the worker's own port (`extents`). Kernel counterpart:
 * the NVMe controller working through its submission queue while the host thread goes on.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BLK_STS_IOERR, type IoSegment } from '@iovalink/blk-mq';
import { MAX_PAGE_ORDER, PAGE_SIZE } from '@iovalink/iommu';
import { createDevicePump } from './device-pump.js';
import { LocalNbdDevice } from './nbd-device.js';
import { type DeviceReady, type DeviceWorkerData, RING_OPS } from './nbd-device-ring.js';
import { WordRing } from './word-ring.js';

/** Polls of the submission ring before the device thread blocks. */
const SPINS = 200;
/** Longest block in `Atomics.wait` (ms) before the loop looks around again. */
const WAIT_MS = 1;
/** The device thread's event loop gets a turn at least this often while busy (ms). */
const SLICE_MS = 5;
/** With no submission for this long (ms) the device thread sleeps on its event loop. */
const IDLE_MS = 50;

function main(d: DeviceWorkerData): void {
  const post = (m: unknown) => parentPort!.postMessage(m);
  const dev = new LocalNbdDevice(d.options);
  dev.onInternalError = (e) => post({ t: 'internal', message: (e as Error).stack ?? String(e) });

  // The buffer pool: top-order blocks, which a fresh allocator hands out in address order.
  const block = PAGE_SIZE << MAX_PAGE_ORDER;
  const nBlocks = Math.ceil(d.poolBytes / block);
  let poolBase = 0;
  for (let i = 0; i < nBlocks; i++) {
    const pa = dev.rig.machine.pages.allocPages(MAX_PAGE_ORDER);
    if (i === 0) poolBase = pa;
    if (pa === 0 || pa !== poolBase + i * block) {
      throw new Error(`device thread: buffer pool block ${i} at ${pa} is not contiguous with ${poolBase}`);
    }
  }
  const pool = dev.phys.share(poolBase, nBlocks * block);

  const sq = new WordRing(d.sq);
  const cq = new WordRing(d.cq);
  const complete = (id: number, status: number) => {
    // the server thread never has more requests outstanding than the ring holds completions
    const i = cq.reserve(2);
    if (i < 0) throw new Error('device thread: completion ring full');
    cq.set(i, id);
    cq.set(i + 1, status);
  };
  const onRecord = (w: Float64Array, f: number) => {
    const op = RING_OPS[w[f]!]!;
    const id = w[f + 1]!;
    const nsegs = w[f + 4]!;
    let segs: IoSegment[] | null = null;
    if (op === 'read' || op === 'write') {
      segs = new Array(nsegs);
      for (let k = 0; k < nsegs; k++) segs[k] = { phys: w[f + 5 + 2 * k]!, len: w[f + 6 + 2 * k]! };
    }
    try {
      dev.submit(op, w[f + 2]!, w[f + 3]!, segs, (status) => complete(id, status));
    } catch (e) {
      dev.onInternalError(e);
      complete(id, BLK_STS_IOERR);
    }
  };
  let closed = false;
  /**
   * Runs each submitted request and publishes its completion at once, so the server thread can
   * reply while this thread goes on (a batch completed together would hold the first reply
   * back); a publish wakes the server thread at most once a sleep.
   */
  const onSubmission = (w: Float64Array, f: number) => {
    onRecord(w, f);
    dev.run();
    cq.publish();
  };
  const drain = (): void => {
    while (sq.consume(onSubmission) > 0) {}
  };
  /** The device loop (`device-pump.ts`): drain, poll, block briefly, sleep when idle. */
  const pump = createDevicePump(
    {
      drain,
      waitSync: () => sq.waitSync(SPINS, WAIT_MS),
      sleep: (wake) => sq.sleep(wake),
      yieldTurn: (fn) => setImmediate(fn),
      now: () => performance.now(),
      closed: () => closed,
    },
    { sliceMs: SLICE_MS, idleMs: IDLE_MS },
  );

  d.port.on('message', (m: { t: 'stats' | 'close' }) => {
    let reply: unknown;
    try {
      if (m.t === 'close') {
        drain();
        closed = true;
        reply = { ok: true, stats: dev.close() };
      } else {
        reply = { ok: true, stats: dev.stats() };
      }
    } catch (e) {
      reply = { ok: false, message: (e as Error).stack ?? String(e) };
    }
    d.port.postMessage(reply);
    const flag = new Int32Array(d.rpc);
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    if (closed) d.port.close();
  });

  // Allocation queries (`RemoteNbdDevice.allocation`), answered in kind beside the rings.
  parentPort!.on(
    'message',
    (m: { t: string; id: number; offset: number; length: number; maxRuns: number }) => {
      if (m.t !== 'extents') return;
      let runs: number[] | null = null;
      try {
        dev.allocation(m.offset, m.length, m.maxRuns, (r) => {
          runs = r;
        });
      } catch (e) {
        dev.onInternalError(e);
      }
      post({ t: 'extents', id: m.id, runs });
    },
  );

  const ready: DeviceReady = { t: 'ready', info: dev.info, poolBase, pool, memSize: d.options.memSize };
  post(ready);
  pump();
}

main(workerData as DeviceWorkerData);
