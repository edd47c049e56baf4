/**
 * Block status codes and their errno mapping, as in Linux `include/linux/blk_types.h`
 * (`blk_status_t`, v6.17 numbering) and `block/blk-core.c` (`blk_errors[]`,
 * `errno_to_blk_status`, `blk_status_to_errno`). A request or bio completes with one of these.
 * Differs on purpose: errno values the iommu layer's `Errno` table lacks (ETIMEDOUT, ENOLINK, …)
 * are local constants here.
 */
import { Errno } from '@iovalink/iommu';

/** Success. */
export const BLK_STS_OK = 0;
/** Operation not supported by the device. */
export const BLK_STS_NOTSUPP = 1;
/** Command timed out. */
export const BLK_STS_TIMEOUT = 2;
/** Critical space allocation failure. */
export const BLK_STS_NOSPC = 3;
/** Recoverable transport error (a path failure). */
export const BLK_STS_TRANSPORT = 4;
/** Critical target error (e.g. NVMe LBA out of range). */
export const BLK_STS_TARGET = 5;
/** Reservation conflict. */
export const BLK_STS_RESV_CONFLICT = 6;
/** Critical medium error. */
export const BLK_STS_MEDIUM = 7;
/** Protection information check failed. */
export const BLK_STS_PROTECTION = 8;
/** Kernel resource shortage (memory, DMA mappings, IOVA space): the request is requeued. */
export const BLK_STS_RESOURCE = 9;
/** Generic I/O error. */
export const BLK_STS_IOERR = 10;
/** Device-mapper internal requeue (never leaves dm). */
export const BLK_STS_DM_REQUEUE = 11;
/** Non-blocking retry (REQ_NOWAIT would block). */
export const BLK_STS_AGAIN = 12;
/** Device resource shortage: the queue is rerun when an in-flight request completes. */
export const BLK_STS_DEV_RESOURCE = 13;
/** Too many open zones. */
export const BLK_STS_ZONE_OPEN_RESOURCE = 14;
/** Too many active zones. */
export const BLK_STS_ZONE_ACTIVE_RESOURCE = 15;
/** Device offline. */
export const BLK_STS_OFFLINE = 16;
/** Command duration limit exceeded. */
export const BLK_STS_DURATION_LIMIT = 17;
/** Invalid size or alignment. */
export const BLK_STS_INVAL = 19;

/** A block status (kernel: `blk_status_t`, a u8). */
export type BlkStatus = number;

// errno numbers the bottom layer's Errno table does not carry (include/uapi/asm-generic/errno.h)
const ENODATA = 61;
const ETIME = 62;
const ENOLINK = 67;
const EOVERFLOW = 75;
const EREMCHG = 78;
const EBADE = 52;
const EILSEQ = 84;
const ETOOMANYREFS = 109;
const ETIMEDOUT = 110;

/** `blk_errors[]`: status → [errno, name]. */
const BLK_ERRORS: ReadonlyArray<readonly [number, string] | undefined> = (() => {
  const t: Array<readonly [number, string] | undefined> = [];
  t[BLK_STS_OK] = [0, ''];
  t[BLK_STS_NOTSUPP] = [-Errno.EOPNOTSUPP, 'operation not supported'];
  t[BLK_STS_TIMEOUT] = [-ETIMEDOUT, 'timeout'];
  t[BLK_STS_NOSPC] = [-Errno.ENOSPC, 'critical space allocation'];
  t[BLK_STS_TRANSPORT] = [-ENOLINK, 'recoverable transport'];
  t[BLK_STS_TARGET] = [-Errno.EREMOTEIO, 'critical target'];
  t[BLK_STS_RESV_CONFLICT] = [-EBADE, 'reservation conflict'];
  t[BLK_STS_MEDIUM] = [-ENODATA, 'critical medium'];
  t[BLK_STS_PROTECTION] = [-EILSEQ, 'protection'];
  t[BLK_STS_RESOURCE] = [-Errno.ENOMEM, 'kernel resource'];
  t[BLK_STS_DEV_RESOURCE] = [-Errno.EBUSY, 'device resource'];
  t[BLK_STS_AGAIN] = [-Errno.EAGAIN, 'nonblocking retry'];
  t[BLK_STS_OFFLINE] = [-Errno.ENODEV, 'device offline'];
  t[BLK_STS_DM_REQUEUE] = [-EREMCHG, 'dm internal retry'];
  t[BLK_STS_ZONE_OPEN_RESOURCE] = [-ETOOMANYREFS, 'open zones exceeded'];
  t[BLK_STS_ZONE_ACTIVE_RESOURCE] = [-EOVERFLOW, 'active zones exceeded'];
  t[BLK_STS_DURATION_LIMIT] = [-ETIME, 'duration limit exceeded'];
  t[BLK_STS_INVAL] = [-Errno.EINVAL, 'invalid'];
  t[BLK_STS_IOERR] = [-Errno.EIO, 'I/O'];
  return t;
})();

/**
 * The block status for a negative errno (kernel: `errno_to_blk_status`, block/blk-core.c):
 * the first table entry with that errno, else BLK_STS_IOERR.
 */
export function errnoToBlkStatus(errno: number): BlkStatus {
  for (let i = 0; i < BLK_ERRORS.length; i++) {
    const e = BLK_ERRORS[i];
    if (e !== undefined && e[0] === errno) return i;
  }
  return BLK_STS_IOERR;
}

/** The negative errno of a status (kernel: `blk_status_to_errno`); unknown statuses give -EIO. */
export function blkStatusToErrno(status: BlkStatus): number {
  return BLK_ERRORS[status]?.[0] ?? -Errno.EIO;
}

/** The kernel's name of a status, as `print_req_error` prints it (kernel: `blk_status_to_str`). */
export function blkStatusToStr(status: BlkStatus): string {
  if (status === BLK_STS_OK) return 'OK';
  return BLK_ERRORS[status]?.[1] ?? `<null>(${status})`;
}
