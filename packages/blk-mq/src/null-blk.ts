/**
 * A null_blk-style block device, as in Linux `drivers/block/null_blk/main.c` (v6.17): a blk-mq
 * driver with no hardware behind it, for load without descriptor building. Requests complete
 * inline in `queueRq` (`irqmode: 'none'`), on the next clock tick (`'softirq'`), or
 * `completionNsec` of virtual time later (`'timer'`). Without `memoryBacked` data is not moved
 * (reads leave the buffer as it was); with it, each segment is copied by the CPU to or from a
 * sparse store, as `null_transfer` does.
 * Differs on purpose: no zoned mode, bandwidth throttling, bad-block or fault-injection module
 * parameters, no configfs; the store is the sparse chunk store, not a page radix tree.
 */
import type { Machine } from '@iovalink/iommu';
import { SparseStore } from './backing-store.js';
import {
  opIsWrite,
  REQ_OP_DISCARD,
  REQ_OP_FLUSH,
  REQ_OP_READ,
  REQ_OP_WRITE,
  SECTOR_SIZE,
  UINT_MAX,
} from './bio.js';
import {
  blkMqAllocDisk,
  blkMqAllocTagSet,
  blkMqEndRequest,
  blkMqFreeTagSet,
  blkMqInFlight,
  blkMqStartRequest,
} from './blk-mq.js';
import { QueueLimits } from './blk-settings.js';
import { BLK_STS_IOERR, BLK_STS_OK, type BlkStatus } from './blk-status.js';
import {
  type BlkMqHwCtx,
  type BlkMqQueueData,
  BlkMqTagSet,
  blkRqBytes,
  blkRqPos,
  type Gendisk,
  type Request,
  reqOp,
  setCapacity,
} from './blkdev.js';
import { BioVec, bvecIterAdvance, mpBvecIterBvec } from './bvec.js';
import { BlkError } from './errors.js';

/** Completion modes (kernel: `enum { NULL_IRQ_NONE, NULL_IRQ_SOFTIRQ, NULL_IRQ_TIMER }`). */
export type NullIrqMode = 'none' | 'softirq' | 'timer';

/** Module parameters of a null_blk device (kernel: `struct nullb_device` / module params). */
export interface NullBlkOptions {
  /** Size in GiB (kernel `gb`, default 250). */
  gb?: number;
  /** Logical block size (kernel `bs`, default 512). */
  bs?: number;
  /** Completion mode (kernel `irqmode`, default `'softirq'`). */
  irqmode?: NullIrqMode;
  /** Timer-mode completion delay in ns (kernel `completion_nsec`, default 10 000). */
  completionNsec?: number;
  /** Tags per hardware queue (kernel `hw_queue_depth`, default 64). */
  hwQueueDepth?: number;
  /** Hardware queues (kernel `submit_queues`; default one per CPU). */
  submitQueues?: number;
  /** Keep data in memory (kernel `memory_backed`, default false). */
  memoryBacked?: boolean;
  /** Support discard (kernel `discard`, default false). */
  discard?: boolean;
  /** Largest request in sectors (kernel `max_sectors`; default 0 = the block layer default). */
  maxSectors?: number;
  /** Disk name (default `nullb0`). */
  name?: string;
}

interface PendingEnd {
  atNs: number;
  rq: Request;
  status: BlkStatus;
}

/** A null_blk device (kernel: `struct nullb`). */
export class NullBlk {
  readonly machine: Machine;
  readonly irqmode: NullIrqMode;
  readonly completionNsec: number;
  readonly memoryBacked: boolean;
  /** The data of a memory-backed device. */
  readonly store = new SparseStore();
  readonly tagSet: BlkMqTagSet;
  disk!: Gendisk;
  readonly #pending: PendingEnd[] = [];
  #armed = false;
  removed = false;

  constructor(machine: Machine, o: NullBlkOptions) {
    this.machine = machine;
    this.irqmode = o.irqmode ?? 'softirq';
    this.completionNsec = o.completionNsec ?? 10_000;
    this.memoryBacked = o.memoryBacked ?? false;
    this.tagSet = new BlkMqTagSet(machine, {
      ops: {
        queueRq: (hctx, bd) => nullQueueRq(this, hctx, bd),
      },
      nrHwQueues: o.submitQueues ?? machine.cpus,
      queueDepth: o.hwQueueDepth ?? 64,
      cmdSize: 0,
      driverData: this,
    });
  }

  /** The request queue. */
  get queue() {
    return this.disk.queue;
  }

  /** Virtual time of the next completion, or undefined. */
  nextEventNs(): number | undefined {
    return this.#pending[0]?.atNs;
  }

  /** Ends `rq` with `status` at `atNs` (kernel: `null_cmd_end_timer` / the softirq completion). */
  deferEnd(rq: Request, status: BlkStatus, delayNs: number): void {
    const clock = this.machine.clock;
    this.#pending.push({ atNs: clock.nowNs + delayNs, rq, status });
    this.#pending.sort((a, b) => a.atNs - b.atNs);
    if (!this.#armed) this.#arm();
  }

  #arm(): void {
    const head = this.#pending[0];
    if (head === undefined) return;
    const clock = this.machine.clock;
    this.#armed = true;
    clock.setTimer(Math.max(0, head.atNs - clock.nowNs), () => {
      this.#armed = false;
      const now = this.machine.clock.nowNs;
      while (this.#pending.length > 0 && this.#pending[0]!.atNs <= now) {
        const p = this.#pending.shift()!;
        blkMqEndRequest(p.rq, p.status);
      }
      if (!this.#armed) this.#arm();
    });
  }
}

/**
 * Creates a null_blk device with its disk (kernel: `null_add_dev`): limits from the module
 * parameters (logical block `bs`, `max_sectors`, discard of UINT_MAX >> 9 sectors when enabled),
 * a tag set of `submitQueues` × `hwQueueDepth`. Throws `BlkError` when the tag set cannot be built.
 */
export function nullAddDev(machine: Machine, options: NullBlkOptions = {}): NullBlk {
  const nullb = new NullBlk(machine, options);
  const ret = blkMqAllocTagSet(nullb.tagSet);
  if (ret !== 0)
    throw new BlkError(`null_blk: tag set allocation failed (${ret})`, {
      rule: 'null_init_tag_set',
      errno: ret,
    });
  const bs = options.bs ?? 512;
  const lim = QueueLimits.of({
    logicalBlockSize: bs,
    physicalBlockSize: bs,
    maxHwSectors: options.maxSectors ?? 0,
    maxHwDiscardSectors: (options.discard ?? false) ? Math.floor(UINT_MAX / 512) : 0,
  });
  nullb.disk = blkMqAllocDisk(nullb.tagSet, lim, nullb, options.name ?? 'nullb0');
  setCapacity(nullb.disk, Math.floor(((options.gb ?? 250) * 2 ** 30) / SECTOR_SIZE));
  nullb.disk.queue.events = nullb;
  return nullb;
}

/** Removes the device (kernel: `null_del_dev`); throws while requests are in flight. */
export function nullDelDev(nullb: NullBlk): void {
  if (nullb.removed) return;
  if (blkMqInFlight(nullb.queue) > 0) {
    throw new BlkError('null_del_dev: requests still in flight', { rule: 'null_del_dev: busy' });
  }
  blkMqFreeTagSet(nullb.tagSet);
  nullb.removed = true;
}

/**
 * Copies one segment between a request's page and the store (kernel: `null_transfer`): the CPU
 * copies, no DMA.
 */
function nullTransfer(nullb: NullBlk, bv: BioVec, isWrite: boolean, sector: number): void {
  const phys = bv.page + bv.offset;
  const off = sector * SECTOR_SIZE;
  if (isWrite) nullb.store.write(off, nullb.machine.phys.read(phys, bv.len));
  else {
    const buf = new Uint8Array(bv.len);
    nullb.store.read(off, buf);
    nullb.machine.phys.write(phys, buf);
  }
}

/** Moves a request's data (kernel: `null_handle_rq` → `rq_for_each_segment` + `null_transfer`). */
function nullHandleRq(nullb: NullBlk, rq: Request): BlkStatus {
  const isWrite = opIsWrite(reqOp(rq));
  let sector = blkRqPos(rq);
  const bv = new BioVec(0, 0, 0);
  for (let bio = rq.bio; bio !== null; bio = bio.biNext) {
    const iter = bio.biIter.clone();
    while (iter.biSize > 0) {
      mpBvecIterBvec(bio.biIoVec, iter, bv);
      nullTransfer(nullb, bv, isWrite, sector);
      sector += bv.len / SECTOR_SIZE;
      bvecIterAdvance(bio.biIoVec, iter, bv.len);
    }
  }
  return BLK_STS_OK;
}

/**
 * Handles a request (kernel: `null_queue_rq` → `null_handle_cmd` → `nullb_complete_cmd`): starts
 * it, moves the data when memory-backed (discards zero the range), and completes it per
 * `irqmode`.
 */
export function nullQueueRq(nullb: NullBlk, _hctx: BlkMqHwCtx, bd: BlkMqQueueData): BlkStatus {
  if (nullb.removed) return BLK_STS_IOERR;
  const rq = bd.rq;
  blkMqStartRequest(rq);
  let status: BlkStatus = BLK_STS_OK;
  const op = reqOp(rq);
  if (nullb.memoryBacked) {
    if (op === REQ_OP_READ || op === REQ_OP_WRITE) status = nullHandleRq(nullb, rq);
    else if (op === REQ_OP_DISCARD) nullb.store.zero(blkRqPos(rq) * SECTOR_SIZE, blkRqBytes(rq));
    else if (op !== REQ_OP_FLUSH) status = BLK_STS_IOERR;
  }
  switch (nullb.irqmode) {
    case 'none':
      blkMqEndRequest(rq, status);
      break;
    case 'softirq':
      nullb.deferEnd(rq, status, 0);
      break;
    case 'timer':
      nullb.deferEnd(rq, status, nullb.completionNsec);
      break;
  }
  return BLK_STS_OK;
}
