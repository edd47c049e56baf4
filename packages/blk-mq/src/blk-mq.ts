/**
 * blk-mq: tag sets, request queues and hardware queues, turning bios into requests and handing
 * them to a driver's `queueRq`, then completing them; as in Linux `block/blk-mq.c`,
 * `block/blk-core.c` (`submit_bio_noacct`, `bio_check_eod`) and the plug of `block/blk-core.c`
 * (v6.17). A bio is checked (end of device, logical-block alignment), split to the queue limits
 * (the remainder resubmitted after the front, as `current->bio_list` does), merged into the
 * plug's last request when adjacent, or given a tag and a request; requests are dispatched when
 * the plug finishes (or at once without a plug). Completion ends every bio, accounts the I/O and
 * frees the tag; bios that found no tag wait in arrival order and go when one frees.
 * Differs on purpose: no I/O schedulers, no per-CPU software queues, no timeouts, no polling
 * queues; flushes of a cache-less queue complete at once and data writes with PREFLUSH/FUA are
 * not sequenced; a request requeued for BLK_STS_RESOURCE is retried after
 * BLK_MQ_RESOURCE_DELAY_NS of virtual time at most `q.resourceRetries` times, then fails with
 * that status (the kernel retries without bound).
 *
 * Size: about 590 lines, the bio-to-request path of block/blk-mq.c (about 5,000 lines in v6.x) with
 * the bio checks of block/blk-core.c; the schedulers, software queues, timeouts and polling of
 * blk-mq.c are not modelled.
 */
import { Errno } from '@iovalink/iommu';
import {
  type Bio,
  bioAdvance,
  bioChain,
  bioEndio,
  bioOp,
  bioSectors,
  bioSplit,
  REQ_NOMERGE,
  REQ_NOWAIT,
  REQ_OP_DISCARD,
  REQ_OP_FLUSH,
  REQ_OP_MASK,
  REQ_OP_WRITE,
  REQ_PREFLUSH,
  SECTOR_SIZE,
  UINT_MAX,
} from './bio.js';
import {
  BIO_MERGE_OK,
  bioAttemptBackMerge,
  bioSplitRwAt,
  bioSplitToLimitsAt,
  blkAttemptBioMerge,
  type SegCount,
} from './blk-merge.js';
import { BLK_MQ_NO_TAG, BlkMqTags } from './blk-mq-tag.js';
import { blkValidateLimits, QueueLimits } from './blk-settings.js';
import {
  BLK_STS_AGAIN,
  BLK_STS_DEV_RESOURCE,
  BLK_STS_IOERR,
  BLK_STS_NOTSUPP,
  BLK_STS_OK,
  BLK_STS_RESOURCE,
  type BlkStatus,
  errnoToBlkStatus,
} from './blk-status.js';
import {
  BlkMqHwCtx,
  type BlkMqQueueData,
  type BlkMqTagSet,
  blkRqBytes,
  Gendisk,
  MQ_RQ_COMPLETE,
  MQ_RQ_IDLE,
  MQ_RQ_IN_FLIGHT,
  opStatGroup,
  Request,
  RequestQueue,
  RQF_STARTED,
  reqOp,
} from './blkdev.js';
import { BlkError } from './errors.js';

/** Requests a plug holds before it flushes itself (kernel: `BLK_MAX_REQUEST_COUNT`). */
export const BLK_MAX_REQUEST_COUNT = 32;
/** A plugged request this large flushes the plug (kernel: `BLK_PLUG_FLUSH_SIZE`, 128 KiB). */
export const BLK_PLUG_FLUSH_SIZE = 128 * 1024;
/** Delay before a queue reruns after BLK_STS_RESOURCE (kernel: `BLK_MQ_RESOURCE_DELAY`, 3 ms). */
export const BLK_MQ_RESOURCE_DELAY_NS = 3_000_000;
/** Approximate `sizeof(struct request)` on x86-64 v6.17, for the ledger. */
export const REQUEST_STRUCT_SIZE = 304;
/** Metadata kind of the preallocated requests of a tag set. */
export const BLK_MQ_RQS_META_KIND = 'blk_mq_rqs';

/** A per-submitter batch of requests dispatched together (kernel: `struct blk_plug`). */
export class BlkPlug {
  /** Plugged requests, oldest first (kernel: `mq_list`). */
  readonly mqList: Request[] = [];
  /** Requests span more than one queue (kernel: `multiple_queues`). */
  multipleQueues = false;
}

/** Starts plugging (kernel: `blk_start_plug`): bios submitted with the plug gather before dispatch. */
export function blkStartPlug(): BlkPlug {
  return new BlkPlug();
}

/**
 * Starts plugging on a plug the caller keeps (kernel: `blk_start_plug` on the submitter's
 * on-stack plug). Throws when the plug still holds requests (it was not finished).
 */
export function blkStartPlugOn(plug: BlkPlug): BlkPlug {
  if (plug.mqList.length !== 0) {
    throw new BlkError(`blk_start_plug: the plug still holds ${plug.mqList.length} request(s)`, {
      rule: 'blk_start_plug: plug not finished',
    });
  }
  plug.multipleQueues = false;
  return plug;
}

/** Dispatches everything plugged (kernel: `blk_finish_plug` → `blk_mq_flush_plug_list`). */
export function blkFinishPlug(plug: BlkPlug): void {
  blkMqFlushPlugList(plug);
}

/**
 * Builds a tag set's tags and preallocated requests (kernel: `blk_mq_alloc_tag_set`): one
 * `BlkMqTags` of `queueDepth` per hardware queue, each request's driver data made by the
 * driver's `initRequest`. Counted as metadata kind `"blk_mq_rqs"` (request + `cmdSize` bytes
 * each). Returns 0 or the driver's -errno (with everything undone); -EINVAL for a bad geometry.
 */
export function blkMqAllocTagSet(set: BlkMqTagSet): number {
  if (!(Number.isInteger(set.nrHwQueues) && set.nrHwQueues >= 1) || !(set.queueDepth >= 1))
    return -Errno.EINVAL;
  const placeholder = new RequestQueue(set.machine, set, new QueueLimits());
  set.tags = [];
  set.staticRqs = [];
  for (let h = 0; h < set.nrHwQueues; h++) {
    set.tags.push(new BlkMqTags(set.queueDepth));
    const rqs: Request[] = [];
    for (let t = 0; t < set.queueDepth; t++) {
      const rq = new Request(placeholder);
      rq.tag = t;
      rqs.push(rq);
      const ret = set.ops.initRequest?.(set, rq, h) ?? 0;
      if (ret !== 0) {
        set.staticRqs.push(rqs);
        freeStaticRqs(set);
        return ret;
      }
    }
    set.staticRqs.push(rqs);
  }
  set.metaBytes = set.nrHwQueues * set.queueDepth * (REQUEST_STRUCT_SIZE + set.cmdSize);
  set.machine.counters.kmalloc(BLK_MQ_RQS_META_KIND, set.metaBytes);
  return 0;
}

function freeStaticRqs(set: BlkMqTagSet): void {
  set.staticRqs.forEach((rqs, h) => {
    for (const rq of rqs) set.ops.exitRequest?.(set, rq, h);
  });
  set.staticRqs = [];
  set.tags = [];
}

/**
 * Releases a tag set (kernel: `blk_mq_free_tag_set`). Throws `BlkError` while any tag is in use
 * (the kernel would free memory the hardware may still write).
 */
export function blkMqFreeTagSet(set: BlkMqTagSet): void {
  set.tags.forEach((t, h) => {
    if (t.busy > 0) {
      throw new BlkError(
        `blk_mq_free_tag_set: hardware queue ${h} still has ${t.busy} request(s) in flight`,
        {
          rule: 'blk_mq_free_tag_set: requests in flight',
        },
      );
    }
  });
  freeStaticRqs(set);
  if (set.metaBytes > 0) set.machine.counters.kfree(BLK_MQ_RQS_META_KIND, set.metaBytes);
  set.metaBytes = 0;
}

/**
 * Creates a request queue on a tag set with validated limits (kernel: `blk_mq_alloc_queue`): one
 * hardware queue context per tag-set queue, bound by the driver's `initHctx`, and each CPU
 * mapped to a hardware queue (`cpu % nrHwQueues`, kernel: `blk_mq_map_queues`). Throws
 * `BlkError` (errno -EINVAL) for limits `blkValidateLimits` rejects.
 */
export function blkMqAllocQueue(set: BlkMqTagSet, lim: QueueLimits, queuedata?: unknown): RequestQueue {
  const ret = blkValidateLimits(lim);
  if (ret !== 0) {
    throw new BlkError(`blk_mq_alloc_queue: invalid queue limits (${ret})`, {
      rule: 'blk_mq_alloc_queue: limits',
      errno: ret,
    });
  }
  if (set.tags.length !== set.nrHwQueues) {
    throw new BlkError('blk_mq_alloc_queue: the tag set was not allocated (call blkMqAllocTagSet)', {
      rule: 'blk_mq_alloc_queue: tag set',
    });
  }
  const q = new RequestQueue(set.machine, set, lim);
  q.queuedata = queuedata;
  for (let h = 0; h < set.nrHwQueues; h++) {
    const hctx = new BlkMqHwCtx(q, h, set.tags[h]!);
    const r = set.ops.initHctx?.(hctx, set.driverData, h) ?? 0;
    if (r !== 0)
      throw new BlkError(`blk_mq_alloc_queue: init_hctx ${h} failed (${r})`, { rule: 'init_hctx', errno: r });
    q.hctxs.push(hctx);
  }
  for (let cpu = 0; cpu < set.machine.cpus; cpu++) q.cpuToHctx.push(cpu % set.nrHwQueues);
  for (const rqs of set.staticRqs) for (const rq of rqs) rq.q = q;
  return q;
}

/** Creates a disk with its queue (kernel: `blk_mq_alloc_disk`). */
export function blkMqAllocDisk(
  set: BlkMqTagSet,
  lim: QueueLimits,
  queuedata: unknown,
  name: string,
): Gendisk {
  const q = blkMqAllocQueue(set, lim, queuedata);
  const disk = new Gendisk(name, q);
  q.disk = disk;
  return disk;
}

/** The hardware queue the current CPU maps to (kernel: `blk_mq_map_queue`). */
export function blkMqMapQueue(q: RequestQueue): BlkMqHwCtx {
  return q.hctxs[q.cpuToHctx[q.machine.currentCpu] ?? 0]!;
}

/** Resets a preallocated request for a new owner (kernel: `blk_mq_rq_ctx_init`). */
function blkMqRqCtxInit(q: RequestQueue, hctx: BlkMqHwCtx, rq: Request, opf: number): void {
  rq.q = q;
  rq.mqHctx = hctx;
  rq.cmdFlags = opf;
  rq.rqFlags = 0;
  rq.sector = -1;
  rq.dataLen = 0;
  rq.bio = null;
  rq.biotail = null;
  rq.nrPhysSegments = 0;
  rq.physGapBit = 0;
  rq.specialVec = null;
  rq.state = MQ_RQ_IDLE;
  rq.startTimeNs = q.machine.clock.nowNs;
  rq.ioStartTimeNs = 0;
  rq.requeues = 0;
  rq.endIo = null;
  rq.endIoData = undefined;
}

/** Takes a tag on the current CPU's hardware queue and returns its request, or null (kernel: `__blk_mq_alloc_requests`). */
function blkMqGetRequest(q: RequestQueue, opf: number): Request | null {
  const hctx = blkMqMapQueue(q);
  const tag = hctx.tags.get();
  if (tag === BLK_MQ_NO_TAG) return null;
  const rq = q.tagSet.staticRqs[hctx.queueNum]![tag]!;
  blkMqRqCtxInit(q, hctx, rq, opf);
  return rq;
}

/**
 * A request for a caller-built command, or null when no tag is free (kernel: `blk_mq_alloc_request`
 * with BLK_MQ_REQ_NOWAIT). Fill it with `blkRqAppendBio` and send it with `blkExecuteRqNowait`;
 * unlike the kernel's passthrough requests it may carry REQ_OP_READ/WRITE, and its sector is
 * taken from the first bio appended.
 */
export function blkMqAllocRequest(q: RequestQueue, opf: number): Request | null {
  return blkMqGetRequest(q, opf);
}

/**
 * Adds a bio to a caller-built request (kernel: `blk_rq_append_bio`, block/blk-map.c): the bio's
 * layout must fit the hardware limits without a split (-EREMOTEIO otherwise; -EINVAL for a
 * misaligned buffer), and a second bio must back-merge (`bioAttemptBackMerge`, which also folds
 * the seam into the request's gap bit; -EINVAL when refused). Returns 0 or -errno.
 */
export function blkRqAppendBio(rq: Request, bio: Bio): number {
  const lim = rq.q.limits;
  const segs: SegCount = { nsegs: 0, bytes: 0 };
  const ret = bioSplitRwAt(bio, lim, segs, Math.min(lim.maxHwSectors * SECTOR_SIZE, UINT_MAX));
  if (ret !== 0) return ret > 0 ? -Errno.EREMOTEIO : ret;
  if (rq.bio !== null) return bioAttemptBackMerge(rq, bio, segs.nsegs) === BIO_MERGE_OK ? 0 : -Errno.EINVAL;
  rq.nrPhysSegments = segs.nsegs;
  rq.bio = bio;
  rq.biotail = bio;
  rq.dataLen = bio.biIter.biSize;
  rq.physGapBit = bio.biBvecGapBit;
  if (rq.sector < 0) rq.sector = bio.biIter.biSector;
  return 0;
}

/** Points a fresh request at its first bio (kernel: `blk_mq_bio_to_request`). */
function blkMqBioToRequest(rq: Request, bio: Bio, nrSegs: number): void {
  rq.sector = bio.biIter.biSector;
  rq.nrPhysSegments = nrSegs;
  rq.dataLen = bio.biIter.biSize;
  rq.bio = bio;
  rq.biotail = bio;
  rq.physGapBit = bio.biBvecGapBit;
}

/** Marks a request as handed to the hardware (kernel: `blk_mq_start_request`). Drivers call it from `queueRq`. */
export function blkMqStartRequest(rq: Request): void {
  if (rq.state !== MQ_RQ_IDLE) {
    throw new BlkError(`blk_mq_start_request: request tag ${rq.tag} is already started`, {
      rule: 'blk_mq_start_request: not idle',
    });
  }
  rq.state = MQ_RQ_IN_FLIGHT;
  rq.rqFlags |= RQF_STARTED;
  rq.ioStartTimeNs = rq.q.machine.clock.nowNs;
  if (rq.q.disk !== null) rq.q.disk.stats.inFlight++;
}

/**
 * The `queueRq` argument of each dispatch level (kernel: the `struct blk_mq_queue_data` on the
 * dispatcher's stack): valid only during the call; a driver that completes inline and so
 * dispatches again from inside `queueRq` gets the next level's.
 */
const queueData: BlkMqQueueData[] = [];
let queueDataDepth = 0;

/** Hands one request to the driver and acts on its answer (kernel: `blk_mq_dispatch_rq_list` for one request). */
function blkMqIssue(rq: Request, last: boolean): void {
  const q = rq.q;
  const hctx = rq.mqHctx!;
  q.stats.dispatched++;
  hctx.dispatched++;
  const depth = queueDataDepth;
  let bd = queueData[depth];
  if (bd === undefined) {
    bd = { rq, last };
    queueData.push(bd);
  } else {
    bd.rq = rq;
    bd.last = last;
  }
  queueDataDepth = depth + 1;
  let ret: BlkStatus;
  try {
    ret = q.mqOps.queueRq(hctx, bd);
  } finally {
    queueDataDepth = depth;
  }
  if (ret === BLK_STS_OK) return;
  if (ret === BLK_STS_RESOURCE || ret === BLK_STS_DEV_RESOURCE) {
    if (rq.requeues < q.resourceRetries) {
      blkMqRequeueRequest(rq, true);
      return;
    }
  }
  blkMqEndRequest(rq, ret);
}

/**
 * Sends a caller-built request to the driver (kernel: `blk_execute_rq_nowait`). Its `endIo`, when
 * set, is called at completion and must free it with `blkMqFreeRequest`.
 */
export function blkExecuteRqNowait(rq: Request): void {
  blkMqIssue(rq, true);
}

/**
 * The requests each flush level dispatches (kernel: the on-stack list `blk_mq_flush_plug_list`
 * splices the plug into), reused: a plug flushed from inside a dispatch (an inline completion
 * that submits again) takes the next level's.
 */
const flushBatches: Request[][] = [];
let flushDepth = 0;

/** Moves every entry of `from` to the empty `to`, in order, keeping both arrays' storage. */
function moveAll(from: Request[], to: Request[]): void {
  const n = from.length;
  for (let i = 0; i < n; i++) to.push(from[i]!);
  while (from.length > 0) from.pop();
}

/** Dispatches every plugged request in order (kernel: `blk_mq_flush_plug_list`). */
export function blkMqFlushPlugList(plug: BlkPlug): void {
  while (plug.mqList.length > 0) {
    const depth = flushDepth;
    let list = flushBatches[depth];
    if (list === undefined) {
      list = [];
      flushBatches.push(list);
    }
    // requests plugged while this batch dispatches wait for the next round, as with a splice
    moveAll(plug.mqList, list);
    plug.multipleQueues = false;
    flushDepth = depth + 1;
    try {
      for (let i = 0; i < list.length; i++) {
        const rq = list[i]!;
        const next = list[i + 1];
        blkMqIssue(rq, next === undefined || next.mqHctx !== rq.mqHctx);
      }
    } finally {
      flushDepth = depth;
      while (list.length > 0) list.pop();
    }
  }
}

/** Adds a request to a plug, flushing first when it is full (kernel: `blk_add_rq_to_plug`). */
function blkAddRqToPlug(plug: BlkPlug, rq: Request): void {
  // an empty list has no last entry: index -1 would be a (slow) named-property lookup
  const n = plug.mqList.length;
  const last = n === 0 ? undefined : plug.mqList[n - 1];
  const max = plug.multipleQueues ? 2 * BLK_MAX_REQUEST_COUNT : BLK_MAX_REQUEST_COUNT;
  if (
    last !== undefined &&
    (plug.mqList.length >= max || (!rq.q.nomerges && blkRqBytes(last) >= BLK_PLUG_FLUSH_SIZE))
  ) {
    blkMqFlushPlugList(plug);
  } else if (last !== undefined && last.q !== rq.q) {
    plug.multipleQueues = true;
  }
  plug.mqList.push(rq);
}

/** Tries to merge a bio into the plug's last request of the same queue (kernel: `blk_attempt_plug_merge`). */
function blkAttemptPlugMerge(q: RequestQueue, bio: Bio, nrSegs: number, plug: BlkPlug | undefined): boolean {
  if (plug === undefined || q.nomerges || plug.mqList.length === 0) return false;
  const rq = plug.mqList[plug.mqList.length - 1];
  if (rq === undefined || rq.q !== q) return false;
  if (blkAttemptBioMerge(rq, bio, nrSegs) !== BIO_MERGE_OK) return false;
  q.stats.merges++;
  if (q.disk !== null) q.disk.stats.merges[opStatGroup(bioOp(bio))]!++;
  return true;
}

/** Ends a bio with `status` (kernel: `bio->bi_status = …; bio_endio(bio)`). */
function bioEndWith(bio: Bio, status: BlkStatus): void {
  bio.biStatus = status;
  bioEndio(bio);
}

/** True when the bio runs past the disk (kernel: `bio_check_eod`). */
function bioBeyondEod(disk: Gendisk, bio: Bio): boolean {
  const nr = bioSectors(bio);
  return nr > 0 && (nr > disk.capacity || bio.biIter.biSector > disk.capacity - nr);
}

/** True for a bio whose size or start is not a whole logical block (kernel: `bio_unaligned`). */
function bioUnaligned(bio: Bio, q: RequestQueue): boolean {
  const bs = q.limits.logicalBlockSize;
  return bio.biIter.biSize % bs !== 0 || (bio.biIter.biSector * SECTOR_SIZE) % bs !== 0;
}

/**
 * The segment count `bioSplitToLimitsAt` leaves for `submitBio` (kernel: a local of
 * `blk_mq_submit_bio`), read before anything can submit again.
 */
const submitSegs: SegCount = { nsegs: 0, bytes: 0 };

/**
 * Submits a bio to a disk (kernel: `submit_bio` → `submit_bio_noacct` → `blk_mq_submit_bio`):
 * checks it, splits it to the queue limits (each split front processed before the remainder),
 * merges it into the plug's last request or gives it a request, and dispatches (now, or when the
 * plug finishes). Failures complete the bio with a status: BLK_STS_IOERR beyond the end of the
 * device or for a size/start that is not a logical block multiple, BLK_STS_NOTSUPP for a discard
 * the queue cannot do, BLK_STS_INVAL for a buffer that breaks `dma_alignment`, BLK_STS_AGAIN
 * when a REQ_NOWAIT bio would need a split or a tag. Differs: the kernel finds the disk in
 * `bio->bi_bdev`; here it is a parameter.
 */
export function submitBio(disk: Gendisk, bio: Bio, plug?: BlkPlug): void {
  const q = disk.queue;
  const segs = submitSegs;
  // the bio to process next: the remainder of a split goes after its front (current->bio_list)
  let work: Bio | null = bio;
  while (work !== null) {
    const b: Bio = work;
    work = null;
    if (bioBeyondEod(disk, b)) {
      bioEndWith(b, BLK_STS_IOERR);
      continue;
    }
    const op = bioOp(b);
    // a flush: REQ_OP_FLUSH, or an empty write carrying PREFLUSH
    if (
      op === REQ_OP_FLUSH ||
      (op === REQ_OP_WRITE && (b.biOpf & REQ_PREFLUSH) !== 0 && b.biIter.biSize === 0)
    ) {
      submitFlush(q, b, plug);
      continue;
    }
    if (op === REQ_OP_DISCARD && q.limits.maxDiscardSectors === 0) {
      bioEndWith(b, BLK_STS_NOTSUPP);
      continue;
    }
    if (bioUnaligned(b, q)) {
      bioEndWith(b, BLK_STS_IOERR);
      continue;
    }
    const split = bioSplitToLimitsAt(b, q.limits, segs);
    if (split < 0) {
      bioEndWith(b, errnoToBlkStatus(split));
      continue;
    }
    if (split > 0) {
      const front = bioSplit(q.machine, b, split);
      front.biOpf |= REQ_NOMERGE;
      bioChain(front, b);
      q.stats.splits++;
      work = b;
      blkMqSubmitSplitBio(q, front, segs.nsegs, plug);
      continue;
    }
    blkMqSubmitSplitBio(q, b, segs.nsegs, plug);
  }
}

/** Flushes: at once on a queue without a volatile cache, else a data-less REQ_OP_FLUSH request (kernel: `blk_insert_flush`). */
function submitFlush(q: RequestQueue, bio: Bio, plug: BlkPlug | undefined): void {
  if (!q.writeCache) {
    bioEndWith(bio, BLK_STS_OK);
    return;
  }
  bio.biOpf = (bio.biOpf & ~REQ_OP_MASK) | REQ_OP_FLUSH;
  blkMqSubmitSplitBio(q, bio, 0, plug);
}

/** The tail of `blk_mq_submit_bio` once the bio fits the limits: merge, or allocate and queue a request. */
function blkMqSubmitSplitBio(q: RequestQueue, bio: Bio, nrSegs: number, plug: BlkPlug | undefined): void {
  if (blkAttemptPlugMerge(q, bio, nrSegs, plug)) return;
  let rq = q.waiting.length === 0 ? blkMqGetRequest(q, bio.biOpf) : null;
  if (rq === null && plug !== undefined && plug.mqList.length > 0 && q.waiting.length === 0) {
    blkMqFlushPlugList(plug);
    rq = blkMqGetRequest(q, bio.biOpf);
  }
  if (rq === null) {
    if ((bio.biOpf & REQ_NOWAIT) !== 0) {
      bioEndWith(bio, BLK_STS_AGAIN);
      return;
    }
    q.stats.tagWaits++;
    q.waiting.push({ bio, nrSegs });
    return;
  }
  blkMqBioToRequest(rq, bio, nrSegs);
  if (plug !== undefined) blkAddRqToPlug(plug, rq);
  else blkMqIssue(rq, true);
}

/** Issues bios that waited for a tag, oldest first, while tags are free. */
function blkMqRunWaiting(q: RequestQueue): void {
  if (q.runningWaiting) return;
  q.runningWaiting = true;
  try {
    while (q.waiting.length > 0) {
      const head = q.waiting[0]!;
      const rq = blkMqGetRequest(q, head.bio.biOpf);
      if (rq === null) return;
      q.waiting.shift();
      blkMqBioToRequest(rq, head.bio, head.nrSegs);
      blkMqIssue(rq, q.waiting.length === 0);
    }
  } finally {
    q.runningWaiting = false;
  }
}

/**
 * Completes a request the hardware finished (kernel: `blk_mq_complete_request`): calls the
 * driver's `complete`, which unmaps and ends it. Throws if the driver has no `complete` op.
 */
export function blkMqCompleteRequest(rq: Request): void {
  const complete = rq.q.mqOps.complete;
  if (complete === undefined) {
    throw new BlkError('blk_mq_complete_request: the driver has no complete op; call blkMqEndRequest', {
      rule: 'blk_mq_complete_request: no complete op',
    });
  }
  rq.state = MQ_RQ_COMPLETE;
  complete(rq);
}

/**
 * Ends a request (kernel: `blk_mq_end_request` = `blk_update_request` + `__blk_mq_end_request`):
 * every bio gets `status` and completes, the disk accounts the I/O, and the request is freed (or
 * handed to its `endIo`).
 */
export function blkMqEndRequest(rq: Request, status: BlkStatus): void {
  if (rq.tag === BLK_MQ_NO_TAG || !rq.mqHctx!.tags.isBusy(rq.tag)) {
    throw new BlkError(`blk_mq_end_request: request tag ${rq.tag} is not allocated (ended twice?)`, {
      rule: 'blk_mq_end_request: not allocated',
    });
  }
  const q = rq.q;
  const disk = q.disk;
  const op = reqOp(rq);
  if (disk !== null) {
    const g = opStatGroup(op);
    disk.stats.ios[g]!++;
    disk.stats.sectors[g]! += Math.floor(rq.dataLen / SECTOR_SIZE);
    disk.stats.nsecs[g]! += q.machine.clock.nowNs - rq.startTimeNs;
    if (status !== BLK_STS_OK) disk.stats.errors++;
    if ((rq.rqFlags & RQF_STARTED) !== 0) disk.stats.inFlight--;
  }
  let bio = rq.bio;
  rq.bio = null;
  rq.biotail = null;
  while (bio !== null) {
    const next = bio.biNext;
    bio.biNext = null;
    if (status !== BLK_STS_OK) bio.biStatus = status;
    if (bio.biIter.biSize > 0) bioAdvance(bio, bio.biIter.biSize);
    bioEndio(bio);
    bio = next;
  }
  rq.state = MQ_RQ_COMPLETE;
  if (rq.endIo !== null) {
    const endIo = rq.endIo;
    rq.endIo = null;
    endIo(rq, status);
    return;
  }
  blkMqFreeRequest(rq);
}

/** Returns a request's tag and issues waiting bios (kernel: `blk_mq_free_request`). */
export function blkMqFreeRequest(rq: Request): void {
  const hctx = rq.mqHctx!;
  hctx.tags.put(rq.tag);
  rq.state = MQ_RQ_IDLE;
  rq.rqFlags = 0;
  blkMqRunWaiting(rq.q);
}

/**
 * Puts a request back for a later dispatch (kernel: `blk_mq_requeue_request`), keeping its tag;
 * with `kick` the queue reruns after BLK_MQ_RESOURCE_DELAY_NS of virtual time.
 */
export function blkMqRequeueRequest(rq: Request, kick: boolean): void {
  const q = rq.q;
  if (rq.state === MQ_RQ_IN_FLIGHT && q.disk !== null) q.disk.stats.inFlight--;
  rq.state = MQ_RQ_IDLE;
  rq.rqFlags &= ~RQF_STARTED;
  rq.requeues++;
  q.stats.requeued++;
  q.requeueList.push(rq);
  if (kick && q.requeueAtNs < 0) {
    q.requeueAtNs = q.machine.clock.nowNs + BLK_MQ_RESOURCE_DELAY_NS;
    q.machine.clock.setTimer(BLK_MQ_RESOURCE_DELAY_NS, () => blkMqRunRequeueList(q));
  }
}

/** Dispatches the requeued requests (kernel: `blk_mq_requeue_work`). */
export function blkMqRunRequeueList(q: RequestQueue): void {
  q.requeueAtNs = -1;
  const list = q.requeueList.splice(0);
  for (let i = 0; i < list.length; i++) blkMqIssue(list[i]!, i === list.length - 1);
}

/** Virtual time of the queue's next event: a requeue run or a device completion; undefined when idle (no kernel counterpart: the model's clock). */
export function blkQueueNextEventNs(q: RequestQueue): number | undefined {
  const dev = q.events?.nextEventNs();
  if (q.requeueAtNs < 0) return dev;
  return dev === undefined ? q.requeueAtNs : Math.min(dev, q.requeueAtNs);
}

/** Requests the queue's hardware queues hold: tags in use (kernel: what `blk_mq_queue_inflight` counts). */
export function blkMqInFlight(q: RequestQueue): number {
  let n = 0;
  for (const h of q.hctxs) n += h.tags.busy;
  return n;
}
