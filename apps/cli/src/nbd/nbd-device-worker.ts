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
import { LocalNbdDevice } from './nbd-device.js';
import { type DeviceReady, type DeviceWorkerData, RING_OPS } from './nbd-device-ring.js';
import { WordRing } from './word-ring.js';

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
    // complete each request as soon as it is done: the server thread replies while this thread
    // goes on with the next one (a batch completed together would hold the first reply back)
    dev.run();
    cq.publish();
  };
  let closed = false;
  const pump = (): void => {
    if (closed) return;
    while (sq.consume(onRecord) > 0) {}
    sq.sleep(pump);
  };

  d.port.on('message', (m: { t: 'stats' | 'close' }) => {
    let reply: unknown;
    try {
      if (m.t === 'close') {
        pump();
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
