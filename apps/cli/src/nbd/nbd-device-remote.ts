/**
 * The device of an export on a worker thread of its own (`nbd-device-worker.ts`), seen from the
 * server thread. Request buffers come from a pool of the device machine's RAM that both threads
 * share: the server thread allocates from it with a buddy allocator of its own and receives write
 * payloads into it, hands block requests to the device thread through a shared submission ring,
 * and gets their completions back on a completion ring, so socket I/O and the device model run
 * at once. Kernel counterpart: a host thread and an NVMe controller talking through a submission
 * and a completion queue in shared memory (`drivers/nvme/host/pci.c`).
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { BLK_STS_IOERR, type BlkIoOp, type IoSegment } from '@iovalink/blk-mq';
import { Counters, FaultInjector, PAGE_SIZE, PageAllocator, PhysMem, Prng } from '@iovalink/iommu';
import type {
  BufferPages,
  NbdAllocationDone,
  NbdBlockDevice,
  NbdBlockDone,
  NbdDeviceInfo,
  NbdDeviceOptions,
  NbdDeviceStats,
} from './nbd-device.js';
import { type DeviceReady, type DeviceWorkerData, RING_OPS } from './nbd-device-ring.js';
import { NbdError } from './nbd-proto.js';
import { WordRing } from './word-ring.js';

/** Requests outstanding at most (more wait on this thread); sizes the completion ring. */
const MAX_OUTSTANDING = 1 << 16;
/** Submission ring words: room for thousands of requests of one page run each. */
const SQ_WORDS = 1 << 18;
/** How long a counters request may take before the device thread is declared hung (ms). */
const RPC_TIMEOUT_MS = 30_000;

/** A submission waiting for an id or for ring space. */
interface Waiting {
  op: number;
  offset: number;
  length: number;
  segs: readonly IoSegment[] | null;
  done: NbdBlockDone;
}

/** The worker, started from TypeScript sources (tests, `tsx`) or from the build. */
function spawnDeviceWorker(data: DeviceWorkerData): Worker {
  const here = import.meta.url;
  const transferList = [data.port];
  if (here.endsWith('.ts')) {
    const entry = new URL('./nbd-device-worker.ts', here).href;
    // tsx's ESM API registers its loader in the worker (its CommonJS build does not, under tsx)
    const tsx = pathToFileURL(
      createRequire(here)
        .resolve('tsx/esm/api')
        .replace(/\.cjs$/, '.mjs'),
    ).href;
    const boot = `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(entry)}); });`;
    return new Worker(boot, {
      eval: true,
      // profiling flags reach the device thread too (`node --cpu-prof` writes one profile a thread)
      execArgv: [
        ...process.execArgv.filter((a) => a.startsWith('--cpu-prof')),
        '--conditions=@iovalink/source',
      ],
      workerData: data,
      transferList,
    });
  }
  return new Worker(new URL('./nbd-device-worker.js', here), { workerData: data, transferList });
}

/** The device on its own thread. */
export class RemoteNbdDevice implements NbdBlockDevice {
  readonly info: NbdDeviceInfo;
  readonly pages: BufferPages;
  readonly phys: PhysMem;
  onReady: () => void = () => {};
  onInternalError: (e: unknown) => void = () => {};
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #rpc: Int32Array;
  readonly #sq: WordRing;
  readonly #cq: WordRing;
  readonly #done: Array<NbdBlockDone | undefined> = [];
  readonly #freeIds: number[] = [];
  readonly #waiting: Waiting[] = [];
  #pending = 0;
  #dead: string | undefined;
  /** The final counters, set by `close`. */
  #final: NbdDeviceStats | undefined;
  #lostErrors = 0;
  /** Allocation queries sent to the device thread and not answered yet, by id. */
  readonly #queries = new Map<number, NbdAllocationDone>();
  #nextQuery = 0;

  private constructor(worker: Worker, data: DeviceWorkerData, port: MessagePort, ready: DeviceReady) {
    this.#worker = worker;
    this.#port = port;
    this.#rpc = new Int32Array(data.rpc);
    this.#sq = new WordRing(data.sq);
    this.#cq = new WordRing(data.cq);
    this.info = ready.info;
    this.phys = new PhysMem(ready.memSize);
    this.phys.attachShared(ready.poolBase, ready.pool);
    this.pages = new PageAllocator(
      (ready.poolBase + ready.pool.byteLength) / PAGE_SIZE,
      new Counters(),
      new FaultInjector(new Prng(1)),
      { firstPfn: ready.poolBase / PAGE_SIZE },
    );
    for (let id = MAX_OUTSTANDING - 1; id >= 0; id--) this.#freeIds.push(id);
    worker.on('message', (m: { t: string; message?: string; id?: number; runs?: number[] | null }) => {
      if (m.t === 'internal') this.onInternalError(new Error(`device thread: ${m.message}`));
      else if (m.t === 'extents') this.#answer(m.id!, m.runs ?? null);
    });
    worker.on('error', (e) => this.#fail(`device thread failed: ${e.stack ?? e.message}`));
    worker.on('exit', (code) => {
      if (!this.#closed) this.#fail(`device thread exited (code ${code})`);
    });
    worker.unref();
    this.#sleep();
  }

  /** Starts the device thread and waits until its device and buffer pool are ready. */
  static async start(options: NbdDeviceOptions, poolBytes: number): Promise<RemoteNbdDevice> {
    const { port1, port2 } = new MessageChannel();
    const data: DeviceWorkerData = {
      options,
      poolBytes,
      sq: WordRing.create(SQ_WORDS),
      cq: WordRing.create(3 * MAX_OUTSTANDING + 64),
      rpc: new SharedArrayBuffer(4),
      port: port2,
    };
    const worker = spawnDeviceWorker(data);
    const ready = await new Promise<DeviceReady>((resolve, reject) => {
      const onMessage = (m: { t: string }) => {
        if (m.t !== 'ready') return;
        worker.off('error', onError);
        worker.off('message', onMessage);
        resolve(m as DeviceReady);
      };
      const onError = (e: Error) => {
        worker.off('message', onMessage);
        reject(
          new NbdError(`the device thread did not start: ${e.message}`, {
            rule: 'nbd export: device thread',
          }),
        );
      };
      worker.on('message', onMessage);
      worker.once('error', onError);
    });
    return new RemoteNbdDevice(worker, data, port1, ready);
  }

  submit(
    op: BlkIoOp,
    offset: number,
    length: number,
    segs: readonly IoSegment[] | null,
    done: NbdBlockDone,
  ): void {
    this.#pending++;
    const code = RING_OPS.indexOf(op);
    if (this.#dead !== undefined) {
      this.#waiting.push({ op: code, offset, length, segs, done });
      queueMicrotask(() => this.onReady());
      return;
    }
    if (this.#waiting.length > 0 || !this.#send(code, offset, length, segs, done)) {
      this.#waiting.push({ op: code, offset, length, segs, done });
    }
  }

  /**
   * Sends the query to the device thread as a message beside the rings (`{ t: 'extents' }`, answered
   * in kind): the thread has executed every request whose completion this thread has seen.
   */
  allocation(offset: number, length: number, maxRuns: number, done: NbdAllocationDone): void {
    if (this.#dead !== undefined || this.#closed) {
      queueMicrotask(() => done(null));
      return;
    }
    const id = this.#nextQuery++;
    this.#queries.set(id, done);
    this.#worker.postMessage({ t: 'extents', id, offset, length, maxRuns });
  }

  #answer(id: number, runs: number[] | null): void {
    const done = this.#queries.get(id);
    if (done === undefined) return;
    this.#queries.delete(id);
    done(runs);
  }

  /** Fails every unanswered allocation query (the device thread is gone). */
  #failQueries(): void {
    const ids = [...this.#queries.keys()];
    for (const id of ids) this.#answer(id, null);
  }

  /** Writes a submission record; false when no id or no ring space is free. */
  #send(
    op: number,
    offset: number,
    length: number,
    segs: readonly IoSegment[] | null,
    done: NbdBlockDone,
  ): boolean {
    if (this.#freeIds.length === 0) return false;
    const nsegs = segs === null ? 0 : segs.length;
    const sq = this.#sq;
    const i = sq.reserve(5 + 2 * nsegs);
    if (i < 0) return false;
    const id = this.#freeIds.pop()!;
    this.#done[id] = done;
    sq.set(i, op);
    sq.set(i + 1, id);
    sq.set(i + 2, offset);
    sq.set(i + 3, length);
    sq.set(i + 4, nsegs);
    for (let k = 0; k < nsegs; k++) {
      const s = segs![k]!;
      sq.set(i + 5 + 2 * k, s.phys);
      sq.set(i + 6 + 2 * k, s.len);
    }
    sq.publish();
    return true;
  }

  readonly #onCompletion = (w: Float64Array, f: number): void => {
    const id = w[f]!;
    const done = this.#done[id]!;
    this.#done[id] = undefined;
    this.#freeIds.push(id);
    this.#pending--;
    done(w[f + 1]!);
  };

  run(): void {
    if (this.#dead !== undefined) {
      // nothing will complete: fail what is outstanding so no caller waits forever
      const lost = this.#done.splice(0);
      const waiting = this.#waiting.splice(0);
      this.#pending = 0;
      for (const d of lost) d?.(BLK_STS_IOERR);
      for (const w of waiting) w.done(BLK_STS_IOERR);
      this.#failQueries();
      return;
    }
    this.#cq.consume(this.#onCompletion);
    while (this.#waiting.length > 0) {
      const w = this.#waiting[0]!;
      if (!this.#send(w.op, w.offset, w.length, w.segs, w.done)) break;
      this.#waiting.shift();
    }
  }

  #sleep(): void {
    if (this.#closed || this.#dead !== undefined) return;
    this.#cq.sleep(() => {
      if (this.#closed) return;
      this.onReady();
      this.#sleep();
    });
  }

  #fail(why: string, internal = true): void {
    if (this.#dead !== undefined || this.#closed) return;
    this.#dead = why;
    if (internal) {
      this.#lostErrors++;
      this.onInternalError(new Error(why));
    }
    queueMicrotask(() => this.onReady());
  }

  /**
   * Stops the device thread at once, as a controller that drops off the bus: every outstanding
   * and later request completes with `BLK_STS_IOERR` (kernel: `nvme_dev_disable` cancelling the
   * requests of a dead controller, then `nvme_remove`). For fault injection.
   */
  surpriseRemove(): void {
    this.#fail('device removed (surprise removal)', false);
    void this.#worker.terminate();
  }

  get #closed(): boolean {
    return this.#final !== undefined;
  }

  get pending(): number {
    return this.#pending;
  }

  /** Asks the device thread for its counters (or its final counters on `close`), synchronously. */
  #call(t: 'stats' | 'close'): NbdDeviceStats {
    if (this.#dead !== undefined) throw new Error(this.#dead);
    Atomics.store(this.#rpc, 0, 0);
    this.#port.postMessage({ t });
    if (Atomics.wait(this.#rpc, 0, 0, RPC_TIMEOUT_MS) === 'timed-out') {
      this.#fail(`device thread did not answer '${t}' within ${RPC_TIMEOUT_MS} ms`);
      throw new Error(this.#dead);
    }
    const m = receiveMessageOnPort(this.#port)?.message as
      | { ok: true; stats: NbdDeviceStats }
      | { ok: false; message: string }
      | undefined;
    if (m === undefined) throw new Error(`device thread sent no answer to '${t}'`);
    if (!m.ok) throw new Error(`device thread: ${m.message}`);
    return m.stats;
  }

  stats(): NbdDeviceStats {
    if (this.#final !== undefined) return this.#final;
    try {
      return this.#call('stats');
    } catch (e) {
      return this.#lostStats(e);
    }
  }

  close(): NbdDeviceStats {
    if (this.#final === undefined) {
      try {
        this.run(); // completions already returned
        this.#final = this.#call('close');
      } catch (e) {
        this.#final = this.#lostStats(e);
      }
      this.#port.close();
      void this.#worker.terminate();
      this.#failQueries();
    }
    return this.#final;
  }

  /** Counters when the device thread cannot give them: empty, with the reason as a leak finding. */
  #lostStats(e: unknown): NbdDeviceStats {
    const zero = { read: 0, write: 0, flush: 0, discard: 0 };
    return {
      blockRequests: { ...zero },
      blockBytes: { ...zero },
      blockErrors: {},
      bios: 0,
      maxInFlight: 0,
      virtualNs: 0,
      driver: {},
      counters: {},
      leaks: [`device thread: counters lost (${(e as Error).message})`],
      internalErrors: this.#lostErrors,
    };
  }
}
