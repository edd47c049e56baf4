/**
 * The block layer's core objects: requests, request queues, hardware queue contexts, tag sets,
 * the driver ops table, and the disk, as declared in Linux `include/linux/blk-mq.h` and
 * `include/linux/blkdev.h` (v6.17, with v6.19's per-request `phys_gap_bit`). The functions that
 * act on them live in blk-mq.ts, blk-merge.ts and blk-mq-dma.ts; this file holds the shapes and
 * the small inline helpers of those headers (`blk_rq_pos`, `blk_rq_bytes`, `rq_dma_dir`, …).
 * Differs on purpose: no elevator, no cgroups, no timeouts; per-CPU software queues are folded
 * into the hardware queue a CPU maps to; a driver's per-request data (`cmd_size` bytes after the
 * request) is the `pdu` field, made by the driver's `initRequest`.
 */

import { DMA_FROM_DEVICE, DMA_TO_DEVICE, type DmaDataDirection } from '@iovalink/dma-api';
import type { Machine } from '@iovalink/iommu';
import {
  type Bio,
  opIsWrite,
  REQ_OP_DISCARD,
  REQ_OP_FLUSH,
  REQ_OP_MASK,
  REQ_OP_WRITE,
  SECTOR_SIZE,
} from './bio.js';
import { BLK_MQ_NO_TAG, type BlkMqTags } from './blk-mq-tag.js';
import type { QueueLimits } from './blk-settings.js';
import type { BlkStatus } from './blk-status.js';
import type { BioVec } from './bvec.js';

/** `rq_flags` bit: the driver has started the request (kernel: `RQF_STARTED`, bit 0). */
export const RQF_STARTED = 1 << 0;
/** `rq_flags` bit: bios with different failfast flags were merged (kernel: `RQF_MIXED_MERGE`, bit 2). */
export const RQF_MIXED_MERGE = 1 << 2;
/** `rq_flags` bit: the request's data is `specialVec`, not its bios (kernel: `RQF_SPECIAL_PAYLOAD`, bit 12). */
export const RQF_SPECIAL_PAYLOAD = 1 << 12;

/** Request state: free or being set up (kernel: `MQ_RQ_IDLE`). */
export const MQ_RQ_IDLE = 0;
/** Request state: handed to the driver (kernel: `MQ_RQ_IN_FLIGHT`). */
export const MQ_RQ_IN_FLIGHT = 1;
/** Request state: completed by the driver, not yet freed (kernel: `MQ_RQ_COMPLETE`). */
export const MQ_RQ_COMPLETE = 2;

/** Statistics group of an operation (kernel: `enum stat_group`). */
export const STAT_READ = 0;
/** Writes. */
export const STAT_WRITE = 1;
/** Discards. */
export const STAT_DISCARD = 2;
/** Flushes. */
export const STAT_FLUSH = 3;
/** Number of statistics groups (kernel: `NR_STAT_GROUPS`). */
export const NR_STAT_GROUPS = 4;

/**
 * Per-disk I/O accounting (kernel: `struct disk_stats`, include/linux/part_stat.h), indexed by
 * STAT_* group: completed requests, merged bios, sectors, and nanoseconds of virtual time spent.
 */
export class DiskStats {
  /** Requests completed. */
  readonly ios = [0, 0, 0, 0];
  /** Bios merged into an existing request. */
  readonly merges = [0, 0, 0, 0];
  /** Sectors transferred. */
  readonly sectors = [0, 0, 0, 0];
  /** Virtual nanoseconds from request start to completion, summed. */
  readonly nsecs = [0, 0, 0, 0];
  /** Requests completed with an error status. */
  errors = 0;
  /** Requests now in the driver's hands. */
  inFlight = 0;
}

/** Counters of the request queue itself (no direct kernel counterpart; tracepoints in the kernel). */
export class QueueStats {
  /** Bios split to fit the limits (kernel tracepoint `block_split`). */
  splits = 0;
  /** Bios merged into a plugged request (kernel tracepoints `block_bio_backmerge`/`frontmerge`). */
  merges = 0;
  /** Requests handed to `queueRq` (kernel: `hctx->dispatched`). */
  dispatched = 0;
  /** Requests requeued after BLK_STS_RESOURCE / DEV_RESOURCE. */
  requeued = 0;
  /** Bios that had to wait for a tag. */
  tagWaits = 0;
}

/** What `queueRq` gets (kernel: `struct blk_mq_queue_data`). */
export interface BlkMqQueueData {
  /** The request. */
  rq: Request;
  /** True for the last request of this dispatch batch (doorbell hint). */
  last: boolean;
}

/**
 * A blk-mq driver (kernel: `struct blk_mq_ops`): `queueRq` is required; the others are optional.
 * Return BLK_STS_OK once the request is owned by the hardware, BLK_STS_RESOURCE or
 * BLK_STS_DEV_RESOURCE to have it requeued, or another status to fail it.
 */
export interface BlkMqOps {
  /** Queues a request to the hardware (kernel: `queue_rq`). */
  queueRq(hctx: BlkMqHwCtx, bd: BlkMqQueueData): BlkStatus;
  /** Rings the doorbell for a batch that ended without `last` (kernel: `commit_rqs`). */
  commitRqs?(hctx: BlkMqHwCtx): void;
  /** Completes a request after `blkMqCompleteRequest` (kernel: `complete`, softirq context). */
  complete?(rq: Request): void;
  /** Sets up the driver's per-request data when the tag set is built (kernel: `init_request`); 0 or -errno. */
  initRequest?(set: BlkMqTagSet, rq: Request, hctxIdx: number): number;
  /** Releases the per-request data when the tag set goes (kernel: `exit_request`). */
  exitRequest?(set: BlkMqTagSet, rq: Request, hctxIdx: number): void;
  /** Binds a hardware queue to the driver's queue (kernel: `init_hctx`); 0 or -errno. */
  initHctx?(hctx: BlkMqHwCtx, driverData: unknown, hctxIdx: number): number;
}

/** A tag set shared by the queues of one driver instance (kernel: `struct blk_mq_tag_set`). */
export class BlkMqTagSet {
  readonly machine: Machine;
  /** The driver (kernel: `ops`). */
  readonly ops: BlkMqOps;
  /** Hardware queues (kernel: `nr_hw_queues`). */
  readonly nrHwQueues: number;
  /** Tags per hardware queue (kernel: `queue_depth`). */
  readonly queueDepth: number;
  /** Bytes of driver data per request, for the ledger (kernel: `cmd_size`). */
  readonly cmdSize: number;
  /** Passed to `initHctx` (kernel: `driver_data`). */
  readonly driverData: unknown;
  /** Tags of each hardware queue (kernel: `tags`). */
  tags: BlkMqTags[] = [];
  /** Preallocated requests, per hardware queue, indexed by tag (kernel: `tags->static_rqs`). */
  staticRqs: Request[][] = [];
  /** Bytes counted for the preallocated requests. */
  metaBytes = 0;

  constructor(
    machine: Machine,
    init: { ops: BlkMqOps; nrHwQueues: number; queueDepth: number; cmdSize?: number; driverData?: unknown },
  ) {
    this.machine = machine;
    this.ops = init.ops;
    this.nrHwQueues = init.nrHwQueues;
    this.queueDepth = init.queueDepth;
    this.cmdSize = init.cmdSize ?? 0;
    this.driverData = init.driverData;
  }
}

/** One hardware queue context (kernel: `struct blk_mq_hw_ctx`). */
export class BlkMqHwCtx {
  /** The request queue (kernel: `queue`). */
  readonly queue: RequestQueue;
  /** Index among the queue's hardware queues (kernel: `queue_num`). */
  readonly queueNum: number;
  /** The tags of this queue (kernel: `tags`). */
  readonly tags: BlkMqTags;
  /** The driver's queue object, set by `initHctx` (kernel: `driver_data`). */
  driverData: unknown = undefined;
  /** Requests handed to the driver (kernel: `dispatched`, summed). */
  dispatched = 0;

  constructor(queue: RequestQueue, queueNum: number, tags: BlkMqTags) {
    this.queue = queue;
    this.queueNum = queueNum;
    this.tags = tags;
  }
}

/** One block request (kernel: `struct request`). */
export class Request {
  /** The queue (kernel: `q`); set each time the request is handed out. */
  q: RequestQueue;
  /** The hardware queue (kernel: `mq_hctx`). */
  mqHctx: BlkMqHwCtx | null = null;
  /** Tag, unique within the hardware queue while in flight (kernel: `tag`). */
  tag = BLK_MQ_NO_TAG;
  /** Operation and REQ_* flags (kernel: `cmd_flags`). */
  cmdFlags = 0;
  /** RQF_* flags (kernel: `rq_flags`). */
  rqFlags = 0;
  /** First sector, -1 when unset (kernel: `__sector`). */
  sector = -1;
  /** Bytes (kernel: `__data_len`). */
  dataLen = 0;
  /** First bio (kernel: `bio`). */
  bio: Bio | null = null;
  /** Last bio (kernel: `biotail`). */
  biotail: Bio | null = null;
  /** Upper bound of the physical segments (kernel: `nr_phys_segments`). */
  nrPhysSegments = 0;
  /** 1 + lowest set bit of any gap between segments, 0 for none (kernel v6.19: `phys_gap_bit`). */
  physGapBit = 0;
  /** The payload when RQF_SPECIAL_PAYLOAD is set (kernel: `special_vec`). */
  specialVec: BioVec | null = null;
  /** The driver's per-request data (kernel: `blk_mq_rq_to_pdu(rq)`). */
  pdu: unknown = undefined;
  /** MQ_RQ_* (kernel: `state`). */
  state = MQ_RQ_IDLE;
  /** Virtual time the request was allocated (kernel: `start_time_ns`). */
  startTimeNs = 0;
  /** Virtual time the driver started it (kernel: `io_start_time_ns`). */
  ioStartTimeNs = 0;
  /** Times requeued after a resource shortage. */
  requeues = 0;
  /** Completion callback of a passthrough request (kernel: `end_io`). */
  endIo: ((rq: Request, status: BlkStatus) => void) | null = null;
  /** Caller data for `endIo` (kernel: `end_io_data`). */
  endIoData: unknown = undefined;

  constructor(q: RequestQueue) {
    this.q = q;
  }
}

/** Source of device events on the virtual clock, so callers can run the clock to the next one. */
export interface BlkEventSource {
  /** Virtual time of the device's next pending event (a completion), or undefined when idle. */
  nextEventNs(): number | undefined;
}

/** A block request queue (kernel: `struct request_queue`). */
export class RequestQueue {
  readonly machine: Machine;
  /** The validated limits (kernel: `limits`). */
  readonly limits: QueueLimits;
  /** The tag set (kernel: `tag_set`). */
  readonly tagSet: BlkMqTagSet;
  /** Hardware queues (kernel: `queue_hw_ctx`). */
  readonly hctxs: BlkMqHwCtx[] = [];
  /** Hardware queue of each CPU (kernel: the `HCTX_TYPE_DEFAULT` map, `mq_map`). */
  readonly cpuToHctx: number[] = [];
  /** The driver's data (kernel: `queuedata`). */
  queuedata: unknown = undefined;
  /** The disk on this queue. */
  disk: Gendisk | null = null;
  /** Merging disabled (kernel: QUEUE_FLAG_NOMERGES). */
  nomerges = false;
  /** Volatile write cache present: flushes go to the driver (kernel: BLK_FEAT_WRITE_CACHE). */
  writeCache = false;
  /** Requeues after a resource shortage before the request fails with it (the kernel retries forever). */
  resourceRetries = 3;
  /** Bios that found no free tag, with their segment counts, in arrival order. */
  readonly waiting: Array<{ bio: Bio; nrSegs: number }> = [];
  /** Requests waiting for a requeue run (kernel: `requeue_list`). */
  readonly requeueList: Request[] = [];
  /** Virtual time of the next requeue run, or -1. */
  requeueAtNs = -1;
  /** Set while waiting bios are being issued (stops re-entry from inline completions). */
  runningWaiting = false;
  /** Queue counters. */
  readonly stats = new QueueStats();
  /** Device event source, for callers that run the virtual clock. */
  events: BlkEventSource | null = null;

  constructor(machine: Machine, tagSet: BlkMqTagSet, limits: QueueLimits) {
    this.machine = machine;
    this.tagSet = tagSet;
    this.limits = limits;
  }

  /** The driver (kernel: `mq_ops`). */
  get mqOps(): BlkMqOps {
    return this.tagSet.ops;
  }
}

/** A disk (kernel: `struct gendisk` with its whole-device `block_device`). */
export class Gendisk {
  /** Name, e.g. `nvme0n1` (kernel: `disk_name`). */
  readonly diskName: string;
  /** The request queue (kernel: `queue`). */
  readonly queue: RequestQueue;
  /** Size in 512-byte sectors (kernel: `get_capacity`). */
  capacity = 0;
  /** I/O accounting (kernel: `part0->bd_stats`). */
  readonly stats = new DiskStats();

  constructor(diskName: string, queue: RequestQueue) {
    this.diskName = diskName;
    this.queue = queue;
  }
}

/** Sets a disk's size in sectors (kernel: `set_capacity`). */
export function setCapacity(disk: Gendisk, sectors: number): void {
  disk.capacity = sectors;
}

/** The request's operation (kernel: `req_op`). */
export function reqOp(rq: Request): number {
  return rq.cmdFlags & REQ_OP_MASK;
}

/** First sector (kernel: `blk_rq_pos`). */
export function blkRqPos(rq: Request): number {
  return rq.sector;
}

/** Bytes left (kernel: `blk_rq_bytes`). */
export function blkRqBytes(rq: Request): number {
  return rq.dataLen;
}

/** Sectors left (kernel: `blk_rq_sectors`). */
export function blkRqSectors(rq: Request): number {
  return Math.floor(rq.dataLen / SECTOR_SIZE);
}

/** Bytes of DMA payload: the special vector's, else the data length (kernel: `blk_rq_payload_bytes`). */
export function blkRqPayloadBytes(rq: Request): number {
  if ((rq.rqFlags & RQF_SPECIAL_PAYLOAD) !== 0 && rq.specialVec !== null) return rq.specialVec.len;
  return rq.dataLen;
}

/** Physical segment upper bound (kernel: `blk_rq_nr_phys_segments`): 1 for a special payload. */
export function blkRqNrPhysSegments(rq: Request): number {
  if ((rq.rqFlags & RQF_SPECIAL_PAYLOAD) !== 0) return 1;
  return rq.nrPhysSegments;
}

/** DMA direction of the request's data (kernel: `rq_dma_dir`). */
export function rqDmaDir(rq: Request): DmaDataDirection {
  return opIsWrite(reqOp(rq)) ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
}

/** The driver's per-request data (kernel: `blk_mq_rq_to_pdu`). */
export function blkMqRqToPdu<T>(rq: Request): T {
  return rq.pdu as T;
}

/** The request owning `tag` on a tag set's hardware queue (kernel: `blk_mq_tag_to_rq`). */
export function blkMqTagToRq(set: BlkMqTagSet, hctxIdx: number, tag: number): Request | undefined {
  const rq = set.staticRqs[hctxIdx]?.[tag];
  return rq !== undefined && rq.state !== MQ_RQ_IDLE ? rq : undefined;
}

/** The accounting group of an operation (kernel: `op_stat_group`). */
export function opStatGroup(op: number): number {
  if (op === REQ_OP_DISCARD) return STAT_DISCARD;
  if (op === REQ_OP_FLUSH) return STAT_FLUSH;
  return op === REQ_OP_WRITE || opIsWrite(op) ? STAT_WRITE : STAT_READ;
}
