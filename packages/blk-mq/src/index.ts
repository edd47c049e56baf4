/**
 * @iovalink/blk-mq — the Linux block layer's DMA paths as a model: bvecs and bios, requests built
 * under queue limits, tag sets and hardware queues, `blk_rq_map_sg` (legacy) and
 * `blk_rq_dma_map_iter_*` (two-step), an NVMe-PCI driver building PRPs/SGLs from either, a
 * controller model that moves data by DMA through the IOMMU, a null_blk device, a block-device
 * face and a seeded workload generator.
 */

export { STORE_CHUNK_SIZE } from './backing-store.js';
export {
  BdevStats,
  type BlkIoOp,
  type BlkIoResult,
  BlockDevice,
  type BlockDeviceOptions,
  IoBuffer,
  type IoSegment,
} from './bdev.js';
export {
  BIO_MAX_VECS,
  Bio,
  type BioEndIo,
  bioAddFolio,
  bioAddPage,
  bioAlloc,
  bioEndio,
  bioEndSector,
  bioPut,
  bioSectors,
  opIsWrite,
  REQ_FUA,
  REQ_NOWAIT,
  REQ_OP_DISCARD,
  REQ_OP_FLUSH,
  REQ_OP_READ,
  REQ_OP_WRITE,
  REQ_OP_WRITE_ZEROES,
  REQ_PREFLUSH,
  REQ_SYNC,
  SECTOR_SHIFT,
  SECTOR_SIZE,
} from './bio.js';
export {
  BlkPlug,
  blkExecuteRqNowait,
  blkFinishPlug,
  blkMqAllocDisk,
  blkMqAllocRequest,
  blkMqAllocTagSet,
  blkMqFreeRequest,
  blkMqFreeTagSet,
  blkRqAppendBio,
  blkStartPlug,
  submitBio,
} from './blk-mq.js';
export {
  BlkDmaIter,
  blkCanDmaMapIova,
  blkRqDmaMapCoalesce,
  blkRqDmaMapIterNext,
  blkRqDmaMapIterStart,
  blkRqDmaUnmap,
  blkRqMapSg,
  PhysVec,
} from './blk-mq-dma.js';
export {
  BLK_MAX_SEGMENT_SIZE,
  BLK_MAX_SEGMENTS,
  BLK_SEG_BOUNDARY_MASK,
  blkValidateLimits,
  QueueLimits,
} from './blk-settings.js';
export {
  BLK_STS_AGAIN,
  BLK_STS_DEV_RESOURCE,
  BLK_STS_DM_REQUEUE,
  BLK_STS_DURATION_LIMIT,
  BLK_STS_INVAL,
  BLK_STS_IOERR,
  BLK_STS_MEDIUM,
  BLK_STS_NOSPC,
  BLK_STS_NOTSUPP,
  BLK_STS_OFFLINE,
  BLK_STS_OK,
  BLK_STS_PROTECTION,
  BLK_STS_RESOURCE,
  BLK_STS_RESV_CONFLICT,
  BLK_STS_TARGET,
  BLK_STS_TIMEOUT,
  BLK_STS_TRANSPORT,
  BLK_STS_ZONE_ACTIVE_RESOURCE,
  BLK_STS_ZONE_OPEN_RESOURCE,
  type BlkStatus,
  blkStatusToErrno,
  blkStatusToStr,
  errnoToBlkStatus,
} from './blk-status.js';
export {
  BlkMqHwCtx,
  type BlkMqOps,
  type BlkMqQueueData,
  BlkMqTagSet,
  blkMqRqToPdu,
  blkRqBytes,
  blkRqNrPhysSegments,
  blkRqPos,
  blkRqSectors,
  DiskStats,
  Gendisk,
  QueueStats,
  Request,
  RequestQueue,
} from './blkdev.js';
export { BioVec, BvecIter } from './bvec.js';
export { BlkError } from './errors.js';
export { NullBlk, type NullBlkOptions, type NullIrqMode, nullAddDev, nullDelDev } from './null-blk.js';
export { NvmeHw, type NvmeHwOptions, NvmeHwStats } from './nvme-hw.js';
export { NvmeDev, NvmeDriverStats, type NvmeOptions, NvmeQueue, nvmeProbe, nvmeRemove } from './nvme-pci.js';
export {
  type AllocatedBuffer,
  allocIoBuffer,
  assertNoBlkLeaks,
  BLK_IO_META_KINDS,
  blkLeakReport,
  createNullBlkSystem,
  createNvmeSystem,
  type NullBlkSystem,
  type NullBlkSystemOptions,
  type NvmeSystem,
  type NvmeSystemOptions,
} from './nvme-system.js';
export { runWorkload, type WorkloadOptions, type WorkloadResult } from './workload.js';
