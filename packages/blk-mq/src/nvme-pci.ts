/**
 * An NVMe-over-PCIe driver in the shape of Linux `drivers/nvme/host/pci.c`, in two versions
 * selected per device by `mapping`:
 * - `'iova'` — v6.17 and later: a single-segment fast path (`dma_map_bvec`), otherwise the
 *   two-step block DMA iterator (`blkRqDmaMapIterStart`/`Next`), PRPs or SGL descriptors built
 *   from its segments, no scatterlist; per request only the embedded `DmaIovaState`, the
 *   descriptor pages, and — only for direct mappings that must be unmapped — an array of
 *   `{addr,len}` from a mempool (with the later fixes b8b7570a7ec8 and 071be3b0b657: vectors saved
 *   lazily, and only outside IOVA mode). `NVME_MAX_SEGS` 256, up to 8 MiB.
 * - `'sg'` — v6.3…v6.16: the same fast path, otherwise a 128-entry scatterlist from a mempool
 *   (`legacySgAlloc: 'mempool'`, as pci.c did) or from `sg_alloc_table_chained` with a 2-entry
 *   inline chunk (`'chained'`, as nvme-rdma/nvme-fc and SCSI do), `blkRqMapSg`,
 *   `dmaMapSgtable`, then PRPs or SGLs from the DMA segments. `NVME_MAX_SEGS` 128.
 * PRP lists and SGL descriptor lists come from two dma_pools (256-byte and 4 KiB blocks); a PRP
 * list page holds 511 data entries and a pointer to the next when more follow. SGLs are used on
 * SGL-capable controllers when the average segment is at least `sglThreshold` (32 KiB). Behind
 * an IOMMU DMA domain `max_hw_sectors` is capped at `dma_opt_mapping_size` (128 KiB).
 * Differs on purpose: no admin queue, namespaces scan, interrupts vectors, timeouts, retries,
 * metadata, CMB or P2P; discards carry one range; commands reach the `NvmeHw` model as objects.
 * Where v6.17 returns BLK_STS_RESOURCE after mapping the first direct segment without unmapping
 * it (a failed dma_vecs mempool or SGL pool allocation), the model unmaps it (see README).
 *
 * Size: about 1,300 lines in one file because it mirrors one kernel file, drivers/nvme/host/pci.c
 * (more than 3,000 lines in v6.x), of which it models the I/O data path (setup, PRP/SGL building,
 * unmap, completion) in both the v6.17 and the v6.16 shape. The parts are connected through the
 * `nvme_iod` and the two descriptor pools, as in the kernel file.
 */
import {
  type Device,
  DMA_ATTR_NO_WARN,
  DmaIovaState,
  dmaIovaSize,
  dmaMapPhys,
  dmaMappingError,
  dmaMapSgAttrs,
  dmaMapSgtable,
  dmaNeedUnmap,
  dmaOptMappingSize,
  dmaSetMaxSegSize,
  dmaUnmapPhys,
  dmaUnmapSgAttrs,
  dmaUnmapSgtable,
  dmaUseIova,
  type Scatterlist,
  SgTable,
  sgAllocTableChained,
  sgArray,
  sgFreeTableChained,
  sgInitTable,
  sgNext,
} from '@iovalink/dma-api';
import { Errno, type Machine } from '@iovalink/iommu';
import { getLe64, putLe64 } from '@iovalink/iommu/internal';
import { REQ_OP_DISCARD, REQ_OP_FLUSH, REQ_OP_READ, REQ_OP_WRITE, SECTOR_SHIFT, UINT_MAX } from './bio.js';
import { reqPhysGapMask } from './blk-merge.js';
import {
  blkMqAllocDisk,
  blkMqAllocTagSet,
  blkMqCompleteRequest,
  blkMqEndRequest,
  blkMqFreeTagSet,
  blkMqInFlight,
  blkMqStartRequest,
} from './blk-mq.js';
import {
  BlkDmaIter,
  blkRqDmaMapCoalesce,
  blkRqDmaMapIterNext,
  blkRqDmaMapIterStart,
  blkRqDmaUnmap,
  blkRqMapSg,
} from './blk-mq-dma.js';
import { BLK_MQ_MAX_DEPTH } from './blk-mq-tag.js';
import { QueueLimits } from './blk-settings.js';
import {
  BLK_STS_AGAIN,
  BLK_STS_IOERR,
  BLK_STS_OK,
  BLK_STS_RESOURCE,
  BLK_STS_TARGET,
  type BlkStatus,
} from './blk-status.js';
import {
  type BlkMqHwCtx,
  type BlkMqQueueData,
  BlkMqTagSet,
  blkMqRqToPdu,
  blkMqTagToRq,
  blkRqBytes,
  blkRqNrPhysSegments,
  blkRqPayloadBytes,
  blkRqPos,
  type Gendisk,
  type Request,
  RQF_SPECIAL_PAYLOAD,
  reqOp,
  rqDmaDir,
  setCapacity,
} from './blkdev.js';
import { BioVec, bvecPhys, mpBvecIterBvec } from './bvec.js';
import {
  type DmaPool,
  type DmaPoolBlock,
  dmaPoolAlloc,
  dmaPoolCreate,
  dmaPoolDestroy,
  dmaPoolFree,
} from './dmapool.js';
import { BlkError } from './errors.js';
import {
  NVME_CMD_DSM,
  NVME_CMD_FLUSH,
  NVME_CMD_READ,
  NVME_CMD_SGL_METABUF,
  NVME_CMD_WRITE,
  NVME_CTRL_PAGE_SIZE,
  NVME_DSM_RANGE_SIZE,
  NVME_DSMGMT_AD,
  NVME_SGL_DESC_SIZE,
  NVME_SGL_FMT_DATA_DESC,
  NVME_SGL_FMT_LAST_SEG_DESC,
  NvmeCommand,
  type NvmeCompletion,
  nvmeErrorStatus,
  nvmePciCmdUseSgl,
} from './nvme.js';
import { NvmeHw } from './nvme-hw.js';

/** Largest transfer the driver builds (kernel: `NVME_MAX_BYTES`, 8 MiB). */
export const NVME_MAX_BYTES = 8 * 1024 * 1024;
/** Largest transfer before v6.17, in KiB (kernel: `NVME_MAX_KB_SZ`). */
export const NVME_MAX_KB_SZ = 8192;
/** Block size of the small descriptor pool: 32 PRPs or 16 SGL descriptors (kernel: `NVME_SMALL_POOL_SIZE`). */
export const NVME_SMALL_POOL_SIZE = 256;
/** Most descriptor pages one request may chain (kernel: `NVME_MAX_NR_DESCRIPTORS`). */
export const NVME_MAX_NR_DESCRIPTORS = 5;
/** Segments a request may have from v6.17: one page of SGL descriptors (kernel: `NVME_MAX_SEGS`). */
export const NVME_MAX_SEGS = NVME_CTRL_PAGE_SIZE / NVME_SGL_DESC_SIZE;
/** `POW2[n]` is `2 ** n` for 0 ≤ n ≤ 52: a shift of a number beyond 32 bits without a libm call. */
const POW2: readonly number[] = Array.from({ length: 53 }, (_, n) => 2 ** n);
/** Segments a request could have before v6.17, sized so the sg array is one page (kernel ≤ v6.16: `NVME_MAX_SEGS`). */
export const NVME_MAX_SEGS_LEGACY = 128;
/** Inline scatterlist entries in the per-request data of fabrics drivers (kernel: `NVME_INLINE_SG_CNT`). */
export const NVME_INLINE_SG_CNT = 2;
/** Data PRPs per full list page; the last slot chains (kernel: `PRPS_PER_PAGE`). */
export const PRPS_PER_PAGE = NVME_CTRL_PAGE_SIZE / 8 - 1;
/** Default of the `sgl_threshold` module parameter, 32 KiB (0 disables SGLs). */
export const SGL_THRESHOLD_DEFAULT = 32 * 1024;
/** Bytes of one saved direct mapping (kernel: `sizeof(struct nvme_dma_vec)`). */
export const NVME_DMA_VEC_SIZE = 16;
/** Approximate `sizeof(struct nvme_iod)` (v6.17: nvme_request, 64-byte command, dma_iova_state, descriptors, dma_vecs). */
export const NVME_IOD_SIZE = 248;

/** The cursor's view while no PRP list is being filled. */
const NO_VIEW = new DataView(new ArrayBuffer(0));

/** `iod.flags`: aborted by the timeout handler (kernel: `IOD_ABORTED`). */
export const IOD_ABORTED = 1 << 0;
/** `iod.flags`: descriptors come from the small pool (kernel: `IOD_SMALL_DESCRIPTOR`). */
export const IOD_SMALL_DESCRIPTOR = 1 << 1;
/** `iod.flags`: mapped by the single-segment fast path (kernel: `IOD_SINGLE_SEGMENT`). */
export const IOD_SINGLE_SEGMENT = 1 << 2;

/** SGLs not usable for this request (kernel: `SGL_UNSUPPORTED`). */
export const SGL_UNSUPPORTED = 0;
/** SGLs usable; the threshold decides (kernel: `SGL_SUPPORTED`). */
export const SGL_SUPPORTED = 1;
/** SGLs required (kernel: `SGL_FORCED`). */
export const SGL_FORCED = 2;

/** Metadata kind of the per-request driver data, counted once per tag. */
export const NVME_IOD_META_KIND = 'nvme_iod';
/** Metadata kind of PRP list blocks taken from the descriptor pools. */
export const PRP_LIST_META_KIND = 'prp_list';
/** Metadata kind of SGL descriptor list blocks. */
export const SGL_LIST_META_KIND = 'sgl_desc';
/** Metadata kind of the dma_vecs mempool element (v6.17 direct mappings that need unmapping). */
export const DMA_VECS_META_KIND = 'dma_addr_array';
/** Metadata kind of the ≤ v6.16 scatterlist mempool element (it is scatterlist memory). */
export const NVME_SG_MEMPOOL_META_KIND = 'scatterlist';
/** Metadata kind of a discard's range buffer. */
export const NVME_DSM_META_KIND = 'nvme_dsm_range';
/** Fault point: a GFP_ATOMIC `mempool_alloc` of the driver (dma_vecs or the legacy sg array) fails. */
export const NVME_MEMPOOL_FAULT = 'nvme_mempool';

/** Options of an NVMe device and its driver. */
export interface NvmeOptions {
  /** Driver version: `'iova'` (v6.17+, two-step) or `'sg'` (≤ v6.16, scatterlist). Default `'iova'`. */
  mapping?: 'sg' | 'iova';
  /** How the `'sg'` driver gets its scatterlist: pci.c's mempool (default) or `sg_alloc_table_chained`. */
  legacySgAlloc?: 'mempool' | 'chained';
  /** The controller supports SGLs for I/O (default false). */
  sglSupported?: boolean;
  /** The `sgl_threshold` module parameter in bytes (default 32 KiB; 0 disables SGLs). */
  sglThreshold?: number;
  /**
   * Set the 4 KiB virt boundary (default true). False models v6.19's "remove virtual boundary for
   * SGL capable devices": only allowed with `sglSupported`; requests whose gaps PRPs cannot
   * describe then use SGLs.
   */
  virtBoundary?: boolean;
  /** Try the single-segment fast path (kernel behaviour, default true). */
  simpleFastPath?: boolean;
  /** I/O queue entries (kernel `io_queue_depth`, default 1024 there; 64 here); tags = entries - 1. */
  queueDepth?: number;
  /** I/O queues (default: one per CPU). */
  nrIoQueues?: number;
  /** Cap `max_hw_sectors` at `dma_opt_mapping_size` (kernel behaviour since v6.4, default true). */
  clampToOptMappingSize?: boolean;
  /** Namespace size in logical blocks (default 2^21). */
  nsze?: number;
  /** log2 of the logical block size (default 9). */
  lbaShift?: number;
  /** Controller completion latency in virtual ns (default 10 µs). */
  latencyNs?: number;
  /** Requeues after BLK_STS_RESOURCE before failing (default 3). */
  resourceRetries?: number;
  /** Disk name (default `nvme0n1`). */
  name?: string;
}

/** Counters of the driver (what took which path). */
export class NvmeDriverStats {
  /** Requests mapped by the single-segment fast path. */
  simple = 0;
  /** Requests mapped as one IOVA range by the two-step iterator. */
  iovaCoalesced = 0;
  /** Requests mapped segment by segment by the two-step iterator. */
  iterDirect = 0;
  /** Requests mapped through a scatterlist (≤ v6.16). */
  sgMapped = 0;
  /** Commands with PRPs. */
  prp = 0;
  /** Commands with SGLs. */
  sgl = 0;
  /** PRP list blocks allocated. */
  prpLists = 0;
  /** SGL descriptor list blocks allocated. */
  sglLists = 0;
  /** Requests the kernel would WARN on as "Incorrectly formed request". */
  badSgl = 0;
  /** Completions whose command id matched no request. */
  invalidCid = 0;
}

/** One I/O queue pair (kernel: `struct nvme_queue`). */
export class NvmeQueue {
  /** Queue id; I/O queues start at 1 (kernel: `qid`). */
  readonly qid: number;
  /** The device. */
  readonly dev: NvmeDev;

  constructor(dev: NvmeDev, qid: number) {
    this.dev = dev;
    this.qid = qid;
  }
}

/** The driver's per-request data (kernel: `struct nvme_iod`, with the ≤ v6.16 fields beside). */
export class NvmeIod {
  /** The command being built (kernel: `cmd`). */
  readonly cmd = new NvmeCommand();
  /** IOD_* (kernel: `flags`). */
  flags = 0;
  /** Descriptor blocks in use (kernel: `nr_descriptors`). */
  nrDescriptors = 0;
  /** Bytes described, the unmap length (kernel: `total_len`). */
  totalLen = 0;
  /** The IOVA state of the two-step path (kernel: `dma_state`). */
  readonly dmaState = new DmaIovaState();
  /** Descriptor blocks (kernel: `descriptors[]`). */
  readonly descriptors: Array<DmaPoolBlock | null> = new Array(NVME_MAX_NR_DESCRIPTORS).fill(null);
  /** Saved direct mappings as [addr, len] pairs while the mempool element is held (kernel: `dma_vecs`). */
  dmaVecs: Float64Array | null = null;
  /** Saved mappings (kernel: `nr_dma_vecs`). */
  nrDmaVecs = 0;
  /** NVMe status of the completion (kernel: `nvme_req(req)->status`). */
  status = 0;
  /** The DMA iterator (on the kernel's stack; kept here to avoid garbage). */
  readonly iter = new BlkDmaIter();
  /** Scratch copy of the request's bvec for the fast path (on the kernel's stack). */
  readonly bv = new BioVec(0, 0, 0);
  /** PRP2 and the malformed-request flag of a PRP build (locals of the kernel's `nvme_pci_setup_data_prp`). */
  readonly prpRest: PrpRest = { prp2: 0, bad: false };
  /** Where a PRP list fill stands (on the kernel's stack; kept here to avoid garbage). */
  readonly prpCursor: PrpCursor = { view: NO_VIEW, i: 0, addr: 0, seg: 0, length: 0, total: 0 };
  /** JS backing reused for the dma_vecs element (the element itself is counted per use). */
  dmaVecBuf: Float64Array | null = null;
  // ---- ≤ v6.16 ----
  /** The request's scatterlist table (kernel ≤ v6.16: `sgt`). */
  readonly sgt = new SgTable();
  /** JS backing reused for the mempool scatterlist element. */
  sgBuf: Scatterlist[] | null = null;
  /** Inline first chunk for `'chained'` (kernel fabrics drivers: `first_sgl`). */
  inlineSg: Scatterlist[] | null = null;
  /** Entries mapped with `'chained'` (kernel: `data_sgl.nents`). */
  sgNents = 0;
  /** Length of the fast-path mapping, 0 when none (kernel ≤ v6.16: `dma_len`). */
  dmaLen = 0;
  /** Fast-path bus address (kernel ≤ v6.16: `first_dma`). */
  firstDma = 0;
  /** Physical page holding a discard's range (kernel: the kmalloc'd range array). */
  dsmPage = 0;
}

/** An NVMe controller bound to the driver (kernel: `struct nvme_dev` with its one namespace). */
export class NvmeDev {
  readonly machine: Machine;
  /** The PCI function (DMA side). */
  readonly dev: Device;
  /** The controller model. */
  readonly hw: NvmeHw;
  /** Driver version. */
  readonly mapping: 'sg' | 'iova';
  readonly legacySgAlloc: 'mempool' | 'chained';
  readonly sglSupported: boolean;
  sglThreshold: number;
  readonly virtBoundary: boolean;
  simpleFastPath: boolean;
  /** I/O queues (index = qid - 1). */
  readonly queues: NvmeQueue[] = [];
  /** Small descriptor pool, 256-byte blocks (kernel: `descriptor_pools.small`). */
  readonly smallPool: DmaPool;
  /** Large descriptor pool, 4 KiB blocks (kernel: `descriptor_pools.large`). */
  readonly largePool: DmaPool;
  readonly tagSet: BlkMqTagSet;
  /** The namespace's disk. */
  disk!: Gendisk;
  readonly stats = new NvmeDriverStats();
  removed = false;

  constructor(
    dev: Device,
    hw: NvmeHw,
    o: Required<Pick<NvmeOptions, 'mapping' | 'legacySgAlloc'>> & NvmeOptions,
  ) {
    this.machine = dev.machine;
    this.dev = dev;
    this.hw = hw;
    this.mapping = o.mapping;
    this.legacySgAlloc = o.legacySgAlloc;
    this.sglSupported = o.sglSupported ?? false;
    this.sglThreshold = o.sglThreshold ?? SGL_THRESHOLD_DEFAULT;
    this.virtBoundary = o.virtBoundary ?? true;
    this.simpleFastPath = o.simpleFastPath ?? true;
    const large = dmaPoolCreate('nvme descriptor page', dev, NVME_CTRL_PAGE_SIZE, NVME_CTRL_PAGE_SIZE);
    const small = dmaPoolCreate('nvme descriptor small', dev, NVME_SMALL_POOL_SIZE, NVME_SMALL_POOL_SIZE);
    if (large === null || small === null)
      throw new BlkError('nvme: descriptor pools', { rule: 'nvme_setup_descriptor_pools' });
    this.largePool = large;
    this.smallPool = small;
    const nrIo = o.nrIoQueues ?? dev.machine.cpus;
    for (let q = 1; q <= nrIo; q++) this.queues.push(new NvmeQueue(this, q));
    const depth = Math.min(o.queueDepth ?? 64, BLK_MQ_MAX_DEPTH) - 1;
    this.tagSet = new BlkMqTagSet(dev.machine, {
      ops: nvmeMqOps,
      nrHwQueues: nrIo,
      queueDepth: depth,
      cmdSize: NVME_IOD_SIZE,
      driverData: this,
    });
  }

  /** The namespace's request queue. */
  get queue() {
    return this.disk.queue;
  }
}

/** The driver's `blk_mq_ops` (kernel: `nvme_mq_ops`). */
const nvmeMqOps = {
  queueRq: (hctx: BlkMqHwCtx, bd: BlkMqQueueData) => nvmeQueueRq(hctx, bd),
  complete: (rq: Request) => nvmePciCompleteRq(rq),
  initRequest: (set: BlkMqTagSet, rq: Request) => nvmePciInitRequest(set, rq),
  exitRequest: (set: BlkMqTagSet) => set.machine.counters.kfree(NVME_IOD_META_KIND, NVME_IOD_SIZE),
  initHctx: (hctx: BlkMqHwCtx, data: unknown, idx: number) => nvmeInitHctx(hctx, data, idx),
};

/** Sets up a request's iod (kernel: `nvme_pci_init_request`); counted once per tag as `"nvme_iod"`. */
function nvmePciInitRequest(set: BlkMqTagSet, rq: Request): number {
  rq.pdu = new NvmeIod();
  set.machine.counters.kmalloc(NVME_IOD_META_KIND, NVME_IOD_SIZE);
  return 0;
}

/** Binds hardware queue `idx` to I/O queue `idx + 1` (kernel: `nvme_init_hctx`). */
function nvmeInitHctx(hctx: BlkMqHwCtx, data: unknown, idx: number): number {
  const dev = data as NvmeDev;
  hctx.driverData = dev.queues[idx];
  return 0;
}

function queueOf(req: Request): NvmeQueue {
  return req.mqHctx!.driverData as NvmeQueue;
}

/**
 * Probes a controller (kernel: `nvme_probe` → `nvme_pci_alloc_dev`, `nvme_setup_io_queues`,
 * `nvme_alloc_ns`): sets the device's DMA parameters (4 KiB min-align mask, 4 GiB - 1 segments),
 * creates the descriptor pools, the tag set (one hardware queue per I/O queue), and the namespace
 * disk with the NVMe queue limits: `max_hw_sectors` = min(8 MiB, `dma_opt_mapping_size`),
 * `max_segments` = min(max_hw_sectors/8 + 1, NVME_MAX_SEGS), 4 KiB virt boundary, UINT_MAX
 * segments, 4-byte DMA alignment, discard, volatile write cache. Throws `BlkError` when setup fails.
 */
export function nvmeProbe(dev: Device, options: NvmeOptions = {}): NvmeDev {
  const mapping = options.mapping ?? 'iova';
  const sglSupported = options.sglSupported ?? false;
  if (options.virtBoundary === false && !sglSupported) {
    throw new BlkError('nvme: PRPs need the 4 KiB virt boundary; only SGL-capable controllers may drop it', {
      rule: 'nvme: virt boundary without SGL',
    });
  }
  dev.dmaParms.minAlignMask = NVME_CTRL_PAGE_SIZE - 1;
  dmaSetMaxSegSize(dev, 0xffff_ffff);
  const lbaShift = options.lbaShift ?? 9;
  const hwOpts: ConstructorParameters<typeof NvmeHw>[1] = { lbaShift, sglSupported };
  if (options.nsze !== undefined) hwOpts.nsze = options.nsze;
  if (options.latencyNs !== undefined) hwOpts.latencyNs = options.latencyNs;
  const hw = new NvmeHw(dev, hwOpts);
  const nvme = new NvmeDev(dev, hw, {
    ...options,
    mapping,
    legacySgAlloc: options.legacySgAlloc ?? 'mempool',
  });
  const ret = blkMqAllocTagSet(nvme.tagSet);
  if (ret !== 0)
    throw new BlkError(`nvme: tag set allocation failed (${ret})`, {
      rule: 'nvme_alloc_io_tag_set',
      errno: ret,
    });

  const maxBytes = mapping === 'iova' ? NVME_MAX_BYTES : NVME_MAX_KB_SZ * 1024;
  let maxHwSectors = maxBytes >> SECTOR_SHIFT;
  if (options.clampToOptMappingSize ?? true)
    maxHwSectors = Math.min(maxHwSectors, Math.floor(dmaOptMappingSize(dev) / 512));
  const maxSegs = mapping === 'iova' ? NVME_MAX_SEGS : NVME_MAX_SEGS_LEGACY;
  const lim = QueueLimits.of({
    logicalBlockSize: 1 << lbaShift,
    physicalBlockSize: 1 << lbaShift,
    maxHwSectors,
    maxSegments: Math.min(Math.floor(maxHwSectors / (NVME_CTRL_PAGE_SIZE >> SECTOR_SHIFT)) + 1, maxSegs),
    virtBoundaryMask: (options.virtBoundary ?? true) ? NVME_CTRL_PAGE_SIZE - 1 : 0,
    maxSegmentSize: UINT_MAX,
    dmaAlignment: 3,
    maxHwDiscardSectors: UINT_MAX,
    maxDiscardSegments: 1,
  });
  nvme.disk = blkMqAllocDisk(nvme.tagSet, lim, nvme, options.name ?? 'nvme0n1');
  setCapacity(nvme.disk, hw.nsze * 2 ** (lbaShift - SECTOR_SHIFT));
  const q = nvme.disk.queue;
  q.writeCache = true;
  q.events = hw;
  q.resourceRetries = options.resourceRetries ?? 3;
  hw.irq = (cqe) => nvmeHandleCqe(nvme, cqe);
  return nvme;
}

/**
 * Removes the controller (kernel: `nvme_remove`): frees the tag set and destroys the descriptor
 * pools (unmapping their pages). Throws `BlkError` while requests are in flight.
 */
export function nvmeRemove(nvme: NvmeDev): void {
  if (nvme.removed) return;
  const inflight = blkMqInFlight(nvme.queue);
  if (inflight > 0 || nvme.hw.pendingCompletions > 0) {
    throw new BlkError(`nvme_remove: ${inflight} request(s) still in flight`, { rule: 'nvme_remove: busy' });
  }
  blkMqFreeTagSet(nvme.tagSet);
  dmaPoolDestroy(nvme.smallPool);
  dmaPoolDestroy(nvme.largePool);
  nvme.removed = true;
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/**
 * Fills the command for a request (kernel: `nvme_setup_cmd`, drivers/nvme/host/core.c): read,
 * write, flush, or a one-range deallocating Dataset Management for a discard (the range written
 * to a buffer that becomes the request's special payload). Returns BLK_STS_OK, BLK_STS_RESOURCE
 * (no memory for the range), or BLK_STS_IOERR for an operation the driver does not know.
 */
export function nvmeSetupCmd(req: Request): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const cmd = iod.cmd;
  cmd.reset();
  cmd.commandId = req.tag;
  switch (reqOp(req)) {
    case REQ_OP_READ:
    case REQ_OP_WRITE:
      cmd.opcode = reqOp(req) === REQ_OP_WRITE ? NVME_CMD_WRITE : NVME_CMD_READ;
      // shifts as powers of two from a table: `2 ** shift` on a variable is a libm call per request
      cmd.slba = Math.floor(blkRqPos(req) / POW2[nvme.hw.lbaShift - SECTOR_SHIFT]!);
      cmd.length = blkRqBytes(req) / POW2[nvme.hw.lbaShift]! - 1;
      return BLK_STS_OK;
    case REQ_OP_FLUSH:
      cmd.opcode = NVME_CMD_FLUSH;
      return BLK_STS_OK;
    case REQ_OP_DISCARD:
      return nvmeSetupDiscard(nvme, req, iod);
    default:
      return BLK_STS_IOERR;
  }
}

/** Builds a one-range deallocate command (kernel: `nvme_setup_discard`). */
function nvmeSetupDiscard(nvme: NvmeDev, req: Request, iod: NvmeIod): BlkStatus {
  const machine = nvme.machine;
  const page = machine.pages.allocPages(0);
  if (page === 0) return BLK_STS_RESOURCE;
  machine.counters.kmalloc(NVME_DSM_META_KIND, NVME_DSM_RANGE_SIZE);
  const shift = nvme.hw.lbaShift - SECTOR_SHIFT;
  const range = new Uint8Array(NVME_DSM_RANGE_SIZE);
  const v = new DataView(range.buffer);
  v.setUint32(0, 0, true);
  v.setUint32(4, blkRqBytes(req) / 2 ** nvme.hw.lbaShift, true);
  putLe64(v, 8, Math.floor(blkRqPos(req) / 2 ** shift));
  machine.phys.write(page, range);
  iod.dsmPage = page;
  req.specialVec = new BioVec(page, NVME_DSM_RANGE_SIZE, 0);
  req.rqFlags |= RQF_SPECIAL_PAYLOAD;
  iod.cmd.opcode = NVME_CMD_DSM;
  iod.cmd.dsmNr = 0;
  iod.cmd.dsmAttributes = NVME_DSMGMT_AD;
  return BLK_STS_OK;
}

/** Releases what `nvmeSetupCmd` allocated (kernel: `nvme_cleanup_cmd`). */
export function nvmeCleanupCmd(req: Request): void {
  const iod = blkMqRqToPdu<NvmeIod>(req);
  if ((req.rqFlags & RQF_SPECIAL_PAYLOAD) !== 0 && iod.dsmPage !== 0) {
    const machine = queueOf(req).dev.machine;
    machine.pages.freePages(iod.dsmPage, 0);
    machine.counters.kfree(NVME_DSM_META_KIND, NVME_DSM_RANGE_SIZE);
    iod.dsmPage = 0;
    req.specialVec = null;
    req.rqFlags &= ~RQF_SPECIAL_PAYLOAD;
  }
}

// ---------------------------------------------------------------------------------------------
// Mapping, v6.17+ (two-step)
// ---------------------------------------------------------------------------------------------

/**
 * Whether this request may or must use SGLs (kernel: `nvme_pci_use_sgls`): SGL_SUPPORTED on an
 * SGL-capable controller's I/O queues, else SGL_UNSUPPORTED. Without a virt boundary (v6.19
 * model) a request with a gap PRPs cannot express is SGL_FORCED.
 */
export function nvmePciUseSgls(nvme: NvmeDev, req: Request): number {
  if (!nvme.sglSupported) return SGL_UNSUPPORTED;
  if (!nvme.virtBoundary && reqPhysGapMask(req) % NVME_CTRL_PAGE_SIZE !== 0) return SGL_FORCED;
  return SGL_SUPPORTED;
}

/** Average bytes per segment: one segment when IOVA-coalesced (kernel: `nvme_pci_avg_seg_size`). */
export function nvmePciAvgSegSize(req: Request): number {
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const nseg = blkRqDmaMapCoalesce(iod.dmaState) ? 1 : blkRqNrPhysSegments(req);
  return Math.ceil(blkRqPayloadBytes(req) / nseg);
}

/** The request's only bvec (kernel: `req_bvec`), into `out`. */
function reqBvec(req: Request, out: BioVec): BioVec {
  if ((req.rqFlags & RQF_SPECIAL_PAYLOAD) !== 0 && req.specialVec !== null) return req.specialVec;
  return mpBvecIterBvec(req.bio!.biIoVec, req.bio!.biIter, out);
}

/**
 * The single-segment fast path (kernel: `nvme_pci_setup_data_simple`): a request of one bvec that
 * PRP1+PRP2 can describe (≤ 2 controller pages with its offset), or any one bvec when SGLs may be
 * used, is mapped with one `dma_map_bvec`. Returns BLK_STS_AGAIN to fall back to the iterator.
 */
export function nvmePciSetupDataSimple(req: Request, useSgl: number): BlkStatus {
  return setupDataSimple(queueOf(req).dev, blkMqRqToPdu<NvmeIod>(req), req, useSgl);
}

function setupDataSimple(nvme: NvmeDev, iod: NvmeIod, req: Request, useSgl: number): BlkStatus {
  const bv = reqBvec(req, iod.bv);
  const prpPossible = prpSimpleFits(bv);
  if (useSgl === SGL_UNSUPPORTED && !prpPossible) return BLK_STS_AGAIN;
  const dmaAddr = dmaMapPhys(nvme.dev, bvecPhys(bv), bv.len, rqDmaDir(req), 0);
  if (dmaMappingError(nvme.dev, dmaAddr)) return BLK_STS_RESOURCE;
  iod.totalLen = bv.len;
  iod.flags |= IOD_SINGLE_SEGMENT;
  nvmeSetupCmdSimple(nvme, iod.cmd, dmaAddr, bv, prpPossible && useSgl !== SGL_FORCED);
  return BLK_STS_OK;
}

/** True when PRP1 + PRP2 can describe the bvec: it ends within its second controller page. */
function prpSimpleFits(bv: BioVec): boolean {
  return (bv.offset % NVME_CTRL_PAGE_SIZE) + bv.len <= NVME_CTRL_PAGE_SIZE * 2;
}

/**
 * Points the command at one mapped bvec, both driver versions (kernel: the tail of
 * `nvme_pci_setup_data_simple`; ≤ v6.16 `nvme_setup_prp_simple` / `nvme_setup_sgl_simple`):
 * PRP1, plus PRP2 when the bvec runs into a second controller page, or one SGL data descriptor.
 */
function nvmeSetupCmdSimple(
  nvme: NvmeDev,
  cmd: NvmeCommand,
  dmaAddr: number,
  bv: BioVec,
  usePrp: boolean,
): void {
  nvme.stats.simple++;
  if (usePrp) {
    const firstPrpLen = NVME_CTRL_PAGE_SIZE - (bv.offset % NVME_CTRL_PAGE_SIZE);
    cmd.prp1 = dmaAddr;
    cmd.prp2 = bv.len > firstPrpLen ? dmaAddr + firstPrpLen : 0;
    nvme.stats.prp++;
  } else {
    cmd.flags = NVME_CMD_SGL_METABUF;
    nvmeCmdSglSetData(cmd, dmaAddr, bv.len);
    nvme.stats.sgl++;
  }
}

/**
 * Records a direct mapping for unmap, taking the dma_vecs mempool element on the first (kernel:
 * `nvme_pci_prp_save_mapping`, after 071be3b0b657). Nothing to record in IOVA mode or when the
 * device needs no unmap.
 */
function nvmePciPrpSaveMapping(req: Request, nvme: NvmeDev, iter: BlkDmaIter): boolean {
  const iod = blkMqRqToPdu<NvmeIod>(req);
  if (dmaUseIova(iod.dmaState) || !dmaNeedUnmap(nvme.dev)) return true;
  if (iod.nrDmaVecs === 0) {
    if (nvme.machine.faults.shouldFail(NVME_MEMPOOL_FAULT)) {
      iter.status = BLK_STS_RESOURCE;
      return false;
    }
    iod.dmaVecBuf ??= new Float64Array(2 * NVME_MAX_SEGS);
    iod.dmaVecs = iod.dmaVecBuf;
    nvme.machine.counters.kmalloc(DMA_VECS_META_KIND, NVME_DMA_VEC_SIZE * NVME_MAX_SEGS);
  }
  if (iod.nrDmaVecs >= NVME_MAX_SEGS) {
    throw new BlkError(`nvme: more than ${NVME_MAX_SEGS} direct segments overflow dma_vecs`, {
      rule: 'nvme_pci_prp_save_mapping: dma_vecs overflow',
    });
  }
  const v = iod.dmaVecs!;
  v[2 * iod.nrDmaVecs] = iter.addr;
  v[2 * iod.nrDmaVecs + 1] = iter.len;
  iod.nrDmaVecs++;
  return true;
}

/** The next PRP chunk's segment: the current one until used up, then the iterator's next (kernel: `nvme_pci_prp_iter_next`). */
function nvmePciPrpIterNext(req: Request, nvme: NvmeDev, iter: BlkDmaIter): boolean {
  if (iter.len > 0) return true;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  if (!blkRqDmaMapIterNext(req, nvme.dev, iod.dmaState, iter)) return false;
  return nvmePciPrpSaveMapping(req, nvme, iter);
}

function poolOf(nvme: NvmeDev, iod: NvmeIod): DmaPool {
  return (iod.flags & IOD_SMALL_DESCRIPTOR) !== 0 ? nvme.smallPool : nvme.largePool;
}

function takeDescriptor(nvme: NvmeDev, iod: NvmeIod, pool: DmaPool, kind: string): DmaPoolBlock | null {
  if (iod.nrDescriptors >= NVME_MAX_NR_DESCRIPTORS) {
    throw new BlkError(`nvme: more than ${NVME_MAX_NR_DESCRIPTORS} descriptor pages`, {
      rule: 'nvme: NVME_MAX_NR_DESCRIPTORS',
    });
  }
  const b = dmaPoolAlloc(pool);
  if (b === null) return null;
  nvme.machine.counters.kmalloc(kind, pool.size);
  if (kind === PRP_LIST_META_KIND) nvme.stats.prpLists++;
  else nvme.stats.sglLists++;
  iod.descriptors[iod.nrDescriptors++] = b;
  return b;
}

/**
 * The first PRP list block for the `length` bytes after PRP1: from the small pool when 32 entries
 * are enough, else a 4 KiB page (kernel: the list setup of `nvme_pci_setup_data_prp`). Null when
 * the pool is empty.
 */
function prpListAlloc(nvme: NvmeDev, iod: NvmeIod, length: number): DmaPoolBlock | null {
  if (Math.ceil(length / NVME_CTRL_PAGE_SIZE) <= NVME_SMALL_POOL_SIZE / 8) iod.flags |= IOD_SMALL_DESCRIPTOR;
  return takeDescriptor(nvme, iod, poolOf(nvme, iod), PRP_LIST_META_KIND);
}

/**
 * Chains a full PRP list page to a new one: its last entry moves to the new page's first slot and
 * is replaced by the new page's address (kernel: the `i == NVME_CTRL_PAGE_SIZE >> 3` step of the
 * PRP loops). Returns the new page, or null when the pool is empty.
 */
function prpListChain(nvme: NvmeDev, iod: NvmeIod, full: DataView): DmaPoolBlock | null {
  const next = takeDescriptor(nvme, iod, nvme.largePool, PRP_LIST_META_KIND);
  if (next === null) return null;
  const last = NVME_CTRL_PAGE_SIZE - 8;
  putLe64(next.view, 0, getLe64(full, last));
  putLe64(full, last, next.dma);
  return next;
}

/**
 * The part of `nvme_pci_setup_data_prp` after PRP1: PRP2 as a data pointer, or a PRP list with
 * chained pages. Sets `out.prp2`; `out.bad` for a segment that ends inside a PRP chunk.
 */
function nvmePrpFillRest(
  req: Request,
  nvme: NvmeDev,
  iod: NvmeIod,
  iter: BlkDmaIter,
  length: number,
  out: PrpRest,
): void {
  if (!nvmePciPrpIterNext(req, nvme, iter)) {
    if (iter.status === BLK_STS_OK) out.bad = true;
    return;
  }
  if (length <= NVME_CTRL_PAGE_SIZE) {
    out.prp2 = iter.addr;
    iod.totalLen += length;
    return;
  }
  const list = prpListAlloc(nvme, iod, length);
  if (list === null) {
    iter.status = BLK_STS_RESOURCE;
    return;
  }
  out.prp2 = list.dma;
  const c = iod.prpCursor;
  c.view = list.view;
  c.i = 0;
  c.addr = iter.addr;
  c.seg = iter.len;
  c.length = length;
  c.total = iod.totalLen;
  const bad = prpListFill(req, nvme, iod, iter, c);
  c.view = NO_VIEW;
  if (bad) out.bad = true;
  iter.addr = c.addr;
  iter.len = c.seg;
  iod.totalLen = c.total;
}

/** What the PRP build after PRP1 leaves for the command: PRP2, and whether the request was malformed. */
interface PrpRest {
  prp2: number;
  bad: boolean;
}

/**
 * Where a PRP list fill stands: the list block being written and its next slot, the current DMA
 * segment's address and bytes left in it, the transfer bytes still to describe, and the bytes
 * described so far. One per request, kept in its iod (not per page).
 */
interface PrpCursor {
  view: DataView;
  i: number;
  addr: number;
  seg: number;
  length: number;
  total: number;
}

/**
 * Writes PRP entries until the transfer is described (kernel: the entry loop of
 * `nvme_pci_setup_data_prp`): whole pages, the last chunk of each segment, the next segment,
 * a chained list page when one fills. Returns true for a malformed request (a segment that ends
 * inside a PRP chunk, or the iterator running dry while bytes remain); a failure with a status
 * (no list page, a mapping error) is left in `iter.status` and returns false.
 */
function prpListFill(req: Request, nvme: NvmeDev, iod: NvmeIod, iter: BlkDmaIter, c: PrpCursor): boolean {
  for (;;) {
    prpPutWholePages(c);
    if (!prpPutChunk(c)) return true;
    if (c.length === 0) return false;
    if (c.seg === 0 && !prpNextSegment(req, nvme, iter, c)) return iter.status === BLK_STS_OK;
    if (c.i === NVME_CTRL_PAGE_SIZE / 8 && !prpChainCursor(nvme, iod, iter, c)) return false;
  }
}

/**
 * The common case, kept tight in locals: whole controller pages well inside the segment, while
 * no chaining is due.
 */
function prpPutWholePages(c: PrpCursor): void {
  const ps = NVME_CTRL_PAGE_SIZE;
  const view = c.view;
  let { i, addr, seg, length, total } = c;
  while (seg > ps && length > ps && i < PRPS_PER_PAGE) {
    putLe64(view, i * 8, addr);
    i++;
    addr += ps;
    seg -= ps;
    length -= ps;
    total += ps;
  }
  c.i = i;
  c.addr = addr;
  c.seg = seg;
  c.length = length;
  c.total = total;
}

/**
 * One entry for the next chunk (a whole page or the transfer's tail). False when the segment
 * ends before the chunk does ("Incorrectly formed request").
 */
function prpPutChunk(c: PrpCursor): boolean {
  putLe64(c.view, c.i * 8, c.addr);
  c.i++;
  const prpLen = Math.min(c.length, NVME_CTRL_PAGE_SIZE);
  if (c.seg < prpLen) return false;
  c.total += prpLen;
  c.addr += prpLen;
  c.seg -= prpLen;
  c.length -= prpLen;
  return true;
}

/** Moves the cursor to the next DMA segment of the iterator; false when there is none. */
function prpNextSegment(req: Request, nvme: NvmeDev, iter: BlkDmaIter, c: PrpCursor): boolean {
  iter.addr = c.addr;
  iter.len = 0;
  if (!nvmePciPrpIterNext(req, nvme, iter)) return false;
  c.addr = iter.addr;
  c.seg = iter.len;
  return true;
}

/** Chains a full list page to a new one and continues in its second slot; false (status set) when none. */
function prpChainCursor(nvme: NvmeDev, iod: NvmeIod, iter: BlkDmaIter, c: PrpCursor): boolean {
  const next = prpListChain(nvme, iod, c.view);
  if (next === null) {
    iter.status = BLK_STS_RESOURCE;
    return false;
  }
  c.view = next.view;
  c.i = 1;
  return true;
}

/**
 * Builds PRPs from the two-step iterator (kernel: `nvme_pci_setup_data_prp`): PRP1 = the first
 * address (it may carry an offset) covering to the end of its controller page; if one more page
 * finishes the transfer PRP2 points at it, else at a PRP list (small pool up to 32 entries, else
 * 4 KiB pages of 511 entries + a chain pointer). Each entry must lie within the current DMA
 * segment ("Incorrectly formed request" → BLK_STS_IOERR). On failure everything mapped is undone
 * (`nvmeUnmapData`) and the status returned.
 */
export function nvmePciSetupDataPrp(req: Request, iter: BlkDmaIter): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const ps = NVME_CTRL_PAGE_SIZE;
  let length = blkRqPayloadBytes(req);
  if (!nvmePciPrpSaveMapping(req, nvme, iter)) {
    // v6.17 returns here with the first direct segment still mapped; we unmap it
    dmaUnmapPhys(nvme.dev, iter.addr, iter.len, rqDmaDir(req));
    return iter.status;
  }
  nvme.stats.prp++;
  const prp1 = iter.addr;
  const prpLen = Math.min(length, ps - (iter.addr % ps));
  iod.totalLen += prpLen;
  iter.addr += prpLen;
  iter.len -= prpLen;
  length -= prpLen;
  const out = iod.prpRest;
  out.prp2 = 0;
  out.bad = false;
  if (length > 0) nvmePrpFillRest(req, nvme, iod, iter, length, out);
  iod.cmd.prp1 = prp1;
  iod.cmd.prp2 = out.prp2;
  const bad = out.bad;
  if (bad) {
    // kernel: dev_err_once("Incorrectly formed request") and BLK_STS_IOERR; we also undo the mappings
    nvme.stats.badSgl++;
    nvmeUnmapData(req);
    return BLK_STS_IOERR;
  }
  if (iter.status !== BLK_STS_OK) nvmeUnmapData(req);
  return iter.status;
}

/** Writes a data block descriptor into a descriptor list (kernel: `nvme_pci_sgl_set_data`). */
function sglSetData(view: DataView, off: number, addr: number, len: number): void {
  putLe64(view, off, addr);
  view.setUint32(off + 8, len, true);
  view.setUint8(off + 15, NVME_SGL_FMT_DATA_DESC << 4);
}

/** The command's data pointer as one data block descriptor (kernel: `nvme_pci_sgl_set_data` on `dptr.sgl`). */
function nvmeCmdSglSetData(cmd: NvmeCommand, addr: number, len: number): void {
  cmd.prp1 = addr;
  cmd.sglLength = len;
  cmd.sglType = NVME_SGL_FMT_DATA_DESC << 4;
}

/** The command's data pointer as a last-segment descriptor naming `entries` descriptors (kernel: `nvme_pci_sgl_set_seg`). */
function nvmeCmdSglSetSeg(cmd: NvmeCommand, dma: number, entries: number): void {
  cmd.prp1 = dma;
  cmd.sglLength = entries * NVME_SGL_DESC_SIZE;
  cmd.sglType = NVME_SGL_FMT_LAST_SEG_DESC << 4;
}

/**
 * Builds SGL descriptors from the two-step iterator (kernel: `nvme_pci_setup_data_sgl`): one data
 * descriptor in the command when the request is one segment or IOVA-coalesced, else a list of
 * data descriptors (small pool up to 16) named by a last-segment descriptor in the command.
 */
export function nvmePciSetupDataSgl(req: Request, iter: BlkDmaIter): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const entries = blkRqNrPhysSegments(req);
  const cmd = iod.cmd;
  cmd.flags = NVME_CMD_SGL_METABUF;
  nvme.stats.sgl++;
  if (entries === 1 || blkRqDmaMapCoalesce(iod.dmaState)) {
    nvmeCmdSglSetData(cmd, iter.addr, iter.len);
    iod.totalLen += iter.len;
    return BLK_STS_OK;
  }
  if (entries <= NVME_SMALL_POOL_SIZE / NVME_SGL_DESC_SIZE) iod.flags |= IOD_SMALL_DESCRIPTOR;
  const list = takeDescriptor(nvme, iod, poolOf(nvme, iod), SGL_LIST_META_KIND);
  if (list === null) {
    // v6.17 returns here with the first direct segment still mapped; we unmap it
    dmaUnmapPhys(nvme.dev, iter.addr, iter.len, rqDmaDir(req));
    return BLK_STS_RESOURCE;
  }
  let mapped = 0;
  do {
    if (mapped === entries) {
      // kernel: WARN_ON_ONCE, BLK_STS_IOERR; the extra segment is unmapped here as well
      dmaUnmapPhys(nvme.dev, iter.addr, iter.len, rqDmaDir(req));
      nvme.stats.badSgl++;
      iter.status = BLK_STS_IOERR;
      break;
    }
    sglSetData(list.view, mapped * NVME_SGL_DESC_SIZE, iter.addr, iter.len);
    mapped++;
    iod.totalLen += iter.len;
  } while (blkRqDmaMapIterNext(req, nvme.dev, iod.dmaState, iter));
  nvmeCmdSglSetSeg(cmd, list.dma, mapped);
  if (iter.status !== BLK_STS_OK) nvmeUnmapData(req);
  return iter.status;
}

/**
 * Maps a request's data and builds the command's data pointer (kernel: `nvme_map_data`): the
 * fast path for one segment, else the two-step iterator with SGLs when forced or when the average
 * segment reaches `sgl_threshold`, PRPs otherwise. For `mapping: 'sg'` devices this is the
 * v6.16 function (`nvmeMapDataLegacy`).
 */
export function nvmeMapData(req: Request): BlkStatus {
  const nvme = queueOf(req).dev;
  if (nvme.mapping === 'sg') return nvmeMapDataLegacy(req);
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const useSgl = nvmePciUseSgls(nvme, req);
  if (nvme.simpleFastPath && blkRqNrPhysSegments(req) === 1) {
    const ret = setupDataSimple(nvme, iod, req, useSgl);
    if (ret !== BLK_STS_AGAIN) return ret;
  }
  const iter = iod.iter;
  if (!blkRqDmaMapIterStart(req, nvme.dev, iod.dmaState, iter)) return iter.status;
  if (blkRqDmaMapCoalesce(iod.dmaState)) nvme.stats.iovaCoalesced++;
  else nvme.stats.iterDirect++;
  if (
    useSgl === SGL_FORCED ||
    (useSgl === SGL_SUPPORTED && nvme.sglThreshold !== 0 && nvmePciAvgSegSize(req) >= nvme.sglThreshold)
  ) {
    return nvmePciSetupDataSgl(req, iter);
  }
  return nvmePciSetupDataPrp(req, iter);
}

/** Unmaps each saved direct PRP mapping and returns the mempool element (kernel: `nvme_free_prps`). */
function nvmeFreePrps(req: Request, nvme: NvmeDev, iod: NvmeIod): void {
  const dir = rqDmaDir(req);
  const v = iod.dmaVecs;
  for (let i = 0; i < iod.nrDmaVecs; i++) dmaUnmapPhys(nvme.dev, v![2 * i]!, v![2 * i + 1]!, dir);
  if (v !== null) nvme.machine.counters.kfree(DMA_VECS_META_KIND, NVME_DMA_VEC_SIZE * NVME_MAX_SEGS);
  iod.dmaVecs = null;
  iod.nrDmaVecs = 0;
}

/** Unmaps each segment named by the SGL (kernel: `nvme_free_sgls`). */
function nvmeFreeSgls(req: Request, nvme: NvmeDev, iod: NvmeIod): void {
  const dir = rqDmaDir(req);
  const cmd = iod.cmd;
  if (iod.nrDescriptors > 0) {
    const list = iod.descriptors[0]!.view;
    const n = cmd.sglLength / NVME_SGL_DESC_SIZE;
    for (let i = 0; i < n; i++) {
      const o = i * NVME_SGL_DESC_SIZE;
      dmaUnmapPhys(nvme.dev, getLe64(list, o), list.getUint32(o + 8, true), dir);
    }
  } else {
    dmaUnmapPhys(nvme.dev, cmd.prp1, cmd.sglLength, dir);
  }
}

/** Returns the descriptor blocks to their pools (kernel: `nvme_free_descriptors`). */
function nvmeFreeDescriptors(nvme: NvmeDev, iod: NvmeIod, kind: string): void {
  if (iod.nrDescriptors === 1) {
    const pool = poolOf(nvme, iod);
    dmaPoolFree(pool, iod.descriptors[0]!);
    nvme.machine.counters.kfree(kind, pool.size);
  } else {
    for (let i = 0; i < iod.nrDescriptors; i++) {
      dmaPoolFree(nvme.largePool, iod.descriptors[i]!);
      nvme.machine.counters.kfree(kind, nvme.largePool.size);
    }
  }
  for (let i = 0; i < iod.nrDescriptors; i++) iod.descriptors[i] = null;
  iod.nrDescriptors = 0;
}

/**
 * Undoes `nvmeMapData` (kernel: `nvme_unmap_data`): the fast-path mapping; or the IOVA range in
 * one `blkRqDmaUnmap`, or — when that says so — each direct segment (from dma_vecs for PRPs, from
 * the descriptors for SGLs); then the descriptor pages. `'sg'` devices use `nvmeUnmapDataLegacy`.
 */
export function nvmeUnmapData(req: Request): void {
  const nvme = queueOf(req).dev;
  if (nvme.mapping === 'sg') {
    nvmeUnmapDataLegacy(req);
    return;
  }
  const iod = blkMqRqToPdu<NvmeIod>(req);
  if ((iod.flags & IOD_SINGLE_SEGMENT) !== 0) {
    dmaUnmapPhys(nvme.dev, iod.cmd.prp1, iod.totalLen, rqDmaDir(req));
    iod.flags &= ~IOD_SINGLE_SEGMENT;
    return;
  }
  const useSgl = nvmePciCmdUseSgl(iod.cmd);
  // v6.17 passes total_len, which falls short of what was linked when building the PRPs/SGL
  // failed half way in IOVA mode; the rest would stay mapped, so we destroy the whole range
  const mappedLen = dmaUseIova(iod.dmaState) ? dmaIovaSize(iod.dmaState) : iod.totalLen;
  if (!blkRqDmaUnmap(req, nvme.dev, iod.dmaState, mappedLen)) {
    if (useSgl) nvmeFreeSgls(req, nvme, iod);
    else nvmeFreePrps(req, nvme, iod);
  } else if (iod.dmaVecs !== null) {
    nvmeFreePrps(req, nvme, iod);
  }
  iod.dmaState.size = 0;
  if (iod.nrDescriptors > 0) nvmeFreeDescriptors(nvme, iod, useSgl ? SGL_LIST_META_KIND : PRP_LIST_META_KIND);
}

// ---------------------------------------------------------------------------------------------
// Mapping, ≤ v6.16 (scatterlist)
// ---------------------------------------------------------------------------------------------

/** Average bytes per DMA segment after `dma_map_sgtable` (kernel ≤ v6.16: `nvme_pci_use_sgls(dev, req, nseg)`). */
function nvmePciUseSglsLegacy(nvme: NvmeDev, req: Request, nseg: number): boolean {
  const avg = Math.ceil(blkRqPayloadBytes(req) / nseg);
  if (!nvme.sglSupported) return false;
  return nvme.sglThreshold !== 0 && avg >= nvme.sglThreshold;
}

/**
 * Builds PRPs from a mapped scatterlist (kernel ≤ v6.16: `nvme_pci_setup_prps`): same layout as
 * the iterator version, walking DMA segments with `sg_next`.
 */
export function nvmePciSetupPrpsLegacy(req: Request): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const ps = NVME_CTRL_PAGE_SIZE;
  let length = blkRqPayloadBytes(req);
  let sg: Scatterlist | null = iod.sgt.sgl!;
  let dmaLen = sg.dmaLength;
  let dmaAddr = sg.dmaAddress;
  const offset = dmaAddr % ps;
  const cmd = iod.cmd;
  cmd.prp1 = dmaAddr;
  cmd.prp2 = 0;
  nvme.stats.prp++;
  length -= ps - offset;
  if (length <= 0) return BLK_STS_OK;
  dmaLen -= ps - offset;
  if (dmaLen > 0) dmaAddr += ps - offset;
  else {
    sg = sgNext(sg);
    dmaAddr = sg!.dmaAddress;
    dmaLen = sg!.dmaLength;
  }
  if (length <= ps) {
    cmd.prp2 = dmaAddr;
    return BLK_STS_OK;
  }
  let list = prpListAlloc(nvme, iod, length);
  if (list === null) return BLK_STS_RESOURCE;
  cmd.prp2 = list.dma;
  let i = 0;
  for (;;) {
    if (i === ps / 8) {
      list = prpListChain(nvme, iod, list.view);
      if (list === null) return BLK_STS_RESOURCE;
      i = 1;
    }
    // whole pages well inside the segment, with no chaining due: the common case, kept tight
    const view = list.view;
    while (dmaLen > ps && length > ps && i < PRPS_PER_PAGE) {
      putLe64(view, i * 8, dmaAddr);
      i++;
      dmaLen -= ps;
      dmaAddr += ps;
      length -= ps;
    }
    putLe64(view, i * 8, dmaAddr);
    i++;
    dmaLen -= ps;
    dmaAddr += ps;
    length -= ps;
    if (length <= 0) break;
    if (dmaLen > 0) continue;
    if (dmaLen < 0) {
      nvme.stats.badSgl++;
      return BLK_STS_IOERR;
    }
    sg = sgNext(sg!);
    dmaAddr = sg!.dmaAddress;
    dmaLen = sg!.dmaLength;
  }
  return BLK_STS_OK;
}

/** Builds SGLs from a mapped scatterlist (kernel ≤ v6.16: `nvme_pci_setup_sgls`). */
export function nvmePciSetupSglsLegacy(req: Request, entries: number): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const cmd = iod.cmd;
  cmd.flags = NVME_CMD_SGL_METABUF;
  nvme.stats.sgl++;
  let sg: Scatterlist | null = iod.sgt.sgl!;
  if (entries === 1) {
    nvmeCmdSglSetData(cmd, sg.dmaAddress, sg.dmaLength);
    return BLK_STS_OK;
  }
  if (entries <= NVME_SMALL_POOL_SIZE / NVME_SGL_DESC_SIZE) iod.flags |= IOD_SMALL_DESCRIPTOR;
  const list = takeDescriptor(nvme, iod, poolOf(nvme, iod), SGL_LIST_META_KIND);
  if (list === null) return BLK_STS_RESOURCE;
  nvmeCmdSglSetSeg(cmd, list.dma, entries);
  for (let i = 0; i < entries; i++) {
    sglSetData(list.view, i * NVME_SGL_DESC_SIZE, sg!.dmaAddress, sg!.dmaLength);
    sg = sgNext(sg!);
  }
  return BLK_STS_OK;
}

/** Releases the request's scatterlist (the mempool element, or the chained table). */
function nvmeFreeSgLegacy(nvme: NvmeDev, iod: NvmeIod): void {
  if (nvme.legacySgAlloc === 'chained') {
    sgFreeTableChained(nvme.machine, iod.sgt, NVME_INLINE_SG_CNT);
  } else {
    nvme.machine.counters.kfree(NVME_SG_MEMPOOL_META_KIND, 32 * NVME_MAX_SEGS_LEGACY);
  }
  iod.sgt.sgl = null;
  iod.sgt.nents = 0;
  iod.sgt.origNents = 0;
  iod.sgNents = 0;
}

/**
 * Maps a request through a scatterlist (kernel ≤ v6.16: `nvme_map_data`): the single-segment fast
 * path (PRP when it fits two controller pages, else one SGL descriptor on SGL queues), otherwise
 * a 128-entry scatterlist from the mempool (`sg_init_table`, `blk_rq_map_sg`,
 * `dma_map_sgtable(DMA_ATTR_NO_WARN)`: -EREMOTEIO → BLK_STS_TARGET, other errors →
 * BLK_STS_RESOURCE), then SGLs when the average DMA segment reaches the threshold, else PRPs.
 */
export function nvmeMapDataLegacy(req: Request): BlkStatus {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  const dev = nvme.dev;
  const dir = rqDmaDir(req);
  const nphys = blkRqNrPhysSegments(req);
  iod.dmaLen = 0;
  if (nphys === 1 && nvme.simpleFastPath) {
    const bv = reqBvec(req, iod.bv);
    const usePrp = prpSimpleFits(bv);
    if (usePrp || (nvme.sglThreshold !== 0 && nvme.sglSupported)) {
      iod.firstDma = dmaMapPhys(dev, bvecPhys(bv), bv.len, dir, 0);
      if (dmaMappingError(dev, iod.firstDma)) return BLK_STS_RESOURCE;
      iod.dmaLen = bv.len;
      nvmeSetupCmdSimple(nvme, iod.cmd, iod.firstDma, bv, usePrp);
      return BLK_STS_OK;
    }
  }
  const machine = nvme.machine;
  let nents: number;
  if (nvme.legacySgAlloc === 'chained') {
    iod.inlineSg ??= sgArray(NVME_INLINE_SG_CNT);
    if (sgAllocTableChained(machine, iod.sgt, nphys, iod.inlineSg, NVME_INLINE_SG_CNT) !== 0)
      return BLK_STS_RESOURCE;
    nents = blkRqMapSg(req, iod.sgt.sgl!);
    iod.sgNents = nents;
    const mapped = dmaMapSgAttrs(dev, iod.sgt.sgl!, nents, dir, DMA_ATTR_NO_WARN);
    if (mapped === 0) {
      sgFreeTableChained(machine, iod.sgt, NVME_INLINE_SG_CNT);
      return BLK_STS_RESOURCE;
    }
    iod.sgt.nents = mapped;
  } else {
    if (nphys > NVME_MAX_SEGS_LEGACY) {
      throw new BlkError(
        `nvme: ${nphys} segments exceed the ${NVME_MAX_SEGS_LEGACY}-entry sg mempool element`,
        {
          rule: 'nvme_map_data: NVME_MAX_SEGS',
        },
      );
    }
    if (machine.faults.shouldFail(NVME_MEMPOOL_FAULT)) return BLK_STS_RESOURCE;
    iod.sgBuf ??= sgArray(NVME_MAX_SEGS_LEGACY);
    machine.counters.kmalloc(NVME_SG_MEMPOOL_META_KIND, 32 * NVME_MAX_SEGS_LEGACY);
    const sgl = iod.sgBuf[0]!;
    sgInitTable(sgl, nphys);
    iod.sgt.sgl = sgl;
    iod.sgt.origNents = blkRqMapSg(req, sgl);
    if (iod.sgt.origNents === 0) {
      nvmeFreeSgLegacy(nvme, iod);
      return BLK_STS_RESOURCE;
    }
    const rc = dmaMapSgtable(dev, iod.sgt, dir, DMA_ATTR_NO_WARN);
    if (rc !== 0) {
      nvmeFreeSgLegacy(nvme, iod);
      return rc === -Errno.EREMOTEIO ? BLK_STS_TARGET : BLK_STS_RESOURCE;
    }
  }
  nvme.stats.sgMapped++;
  const ret = nvmePciUseSglsLegacy(nvme, req, iod.sgt.nents)
    ? nvmePciSetupSglsLegacy(req, iod.sgt.nents)
    : nvmePciSetupPrpsLegacy(req);
  if (ret !== BLK_STS_OK) {
    if (iod.nrDescriptors > 0)
      nvmeFreeDescriptors(nvme, iod, nvmePciCmdUseSgl(iod.cmd) ? SGL_LIST_META_KIND : PRP_LIST_META_KIND);
    nvmeUnmapSgLegacy(nvme, req, iod);
    nvmeFreeSgLegacy(nvme, iod);
  }
  return ret;
}

function nvmeUnmapSgLegacy(nvme: NvmeDev, req: Request, iod: NvmeIod): void {
  if (nvme.legacySgAlloc === 'chained') dmaUnmapSgAttrs(nvme.dev, iod.sgt.sgl!, iod.sgNents, rqDmaDir(req));
  else dmaUnmapSgtable(nvme.dev, iod.sgt, rqDmaDir(req));
}

/** Undoes `nvmeMapDataLegacy` (kernel ≤ v6.16: `nvme_unmap_data`). */
export function nvmeUnmapDataLegacy(req: Request): void {
  const nvme = queueOf(req).dev;
  const iod = blkMqRqToPdu<NvmeIod>(req);
  if (iod.dmaLen !== 0) {
    dmaUnmapPhys(nvme.dev, iod.firstDma, iod.dmaLen, rqDmaDir(req));
    iod.dmaLen = 0;
    return;
  }
  if (iod.sgt.sgl === null) {
    throw new BlkError('nvme_unmap_data: the request has no mapped scatterlist', {
      rule: 'nvme_unmap_data: no sgt',
    });
  }
  nvmeUnmapSgLegacy(nvme, req, iod);
  if (iod.nrDescriptors > 0)
    nvmeFreeDescriptors(nvme, iod, nvmePciCmdUseSgl(iod.cmd) ? SGL_LIST_META_KIND : PRP_LIST_META_KIND);
  nvmeFreeSgLegacy(nvme, iod);
}

// ---------------------------------------------------------------------------------------------
// Submission and completion
// ---------------------------------------------------------------------------------------------

/**
 * Prepares a request (kernel: `nvme_prep_rq`): resets the iod, builds the command, maps the data
 * when there is any, and starts the request. Returns BLK_STS_OK or the failure status, with
 * nothing left mapped or allocated.
 */
export function nvmePrepRq(req: Request): BlkStatus {
  const iod = blkMqRqToPdu<NvmeIod>(req);
  iod.flags = 0;
  iod.nrDescriptors = 0;
  iod.totalLen = 0;
  iod.nrDmaVecs = 0;
  iod.dmaVecs = null;
  iod.status = 0;
  let ret = nvmeSetupCmd(req);
  if (ret !== BLK_STS_OK) return ret;
  if (blkRqNrPhysSegments(req) > 0) {
    ret = nvmeMapData(req);
    if (ret !== BLK_STS_OK) {
      nvmeCleanupCmd(req);
      return ret;
    }
  }
  blkMqStartRequest(req);
  return BLK_STS_OK;
}

/**
 * Queues a request to the controller (kernel: `nvme_queue_rq`): prepares it, copies the command to
 * the submission queue and rings the doorbell (the model executes it there). BLK_STS_IOERR once
 * the controller is removed.
 */
export function nvmeQueueRq(hctx: BlkMqHwCtx, bd: BlkMqQueueData): BlkStatus {
  const nvmeq = hctx.driverData as NvmeQueue;
  if (nvmeq.dev.removed) return BLK_STS_IOERR;
  const req = bd.rq;
  const ret = nvmePrepRq(req);
  if (ret !== BLK_STS_OK) return ret;
  nvmeq.dev.hw.submit(nvmeq.qid, blkMqRqToPdu<NvmeIod>(req).cmd);
  return BLK_STS_OK;
}

/** Unmaps a completed request (kernel: `nvme_pci_unmap_rq`). */
export function nvmePciUnmapRq(req: Request): void {
  if (blkRqNrPhysSegments(req) > 0) nvmeUnmapData(req);
}

/** Completes a request: unmap, clean up, end with the NVMe status (kernel: `nvme_pci_complete_rq` → `nvme_complete_rq`). */
export function nvmePciCompleteRq(req: Request): void {
  nvmePciUnmapRq(req);
  const status = nvmeErrorStatus(blkMqRqToPdu<NvmeIod>(req).status);
  nvmeCleanupCmd(req);
  blkMqEndRequest(req, status);
}

/** Handles one completion entry (kernel: `nvme_handle_cqe`): finds the request by command id and completes it. */
export function nvmeHandleCqe(nvme: NvmeDev, cqe: NvmeCompletion): void {
  const req = blkMqTagToRq(nvme.tagSet, cqe.sqId - 1, cqe.commandId);
  if (req === undefined) {
    nvme.stats.invalidCid++;
    return;
  }
  blkMqRqToPdu<NvmeIod>(req).status = cqe.status;
  blkMqCompleteRequest(req);
}
