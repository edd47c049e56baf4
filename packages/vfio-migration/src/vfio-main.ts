/**
 * The VFIO core's migration side: the device as the core sees it (migration flags, the
 * driver's migration and logging ops), the migration v2 state machine
 * (`vfio_mig_get_next_state`), and the `VFIO_DEVICE_FEATURE` ioctl with its migration, device
 * state, DMA logging and data size features. Kernel counterpart: drivers/vfio/vfio_main.c and
 * include/linux/vfio.h (v6.17).
 *
 * Differs on purpose:
 * - The skip loop of `vfio_mig_get_next_state` stops on the ERROR sentinel. As written in v6.17
 *   it never terminates for STOP_COPY → PRE_COPY / PRE_COPY_P2P on a PRE_COPY device (ERROR's
 *   required flags are all ones and ERROR's row is all ERROR); the fix posted to stable in June
 *   2026 ("vfio: terminate the FSM skip loop on ERROR") adds exactly this stop, and the result is
 *   the -EINVAL the uAPI documents for these blocked arcs.
 * - Where the kernel WARNs (the driver's own current state is invalid or unsupported) the model
 *   returns the same -EINVAL and counts the warning in `device.warnCount`, so exhaustive tests
 *   can compare return values with the kernel's.
 * - No file descriptors: a data fd is the `VfioDataFile` object the driver returns; user
 *   pointers are plain objects; `argsz` defaults to the C struct size.
 */
import { Errno } from '@iovalink/iommu';
import { isAligned, isPowerOf2 } from '@iovalink/iommu/internal';
import { VfioError } from './errors.js';
import { type IovaBitmap, iovaBitmapAlloc, iovaBitmapForEach } from './iova-bitmap.js';
import {
  isVfioDeviceMigState,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_CONTROL_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_RANGE_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT_SIZE,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIG_STATE_SIZE,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_MIGRATION_SIZE,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  type VfioDeviceFeatureDmaLoggingControl,
  type VfioDeviceFeatureDmaLoggingReport,
  type VfioDeviceFeatureMigDataSize,
  type VfioDeviceFeatureMigration,
  type VfioDeviceFeatureMigState,
  type VfioDeviceMigState,
  type VfioPrecopyInfo,
} from './vfio-uapi.js';

/**
 * A migration data transfer fd (kernel: the `struct file` a migration arc returns, with the
 * driver's `file_operations`). Saving fds are read-only streams, resuming fds write-only.
 */
export interface VfioDataFile {
  /** read(2) at the stream position: bytes read, 0 at end of stream, or -errno. */
  read(buf: Uint8Array): number;
  /** pread(2): -ESPIPE (stream files have no position). */
  pread(buf: Uint8Array, pos: number): number;
  /** write(2) at the stream position: bytes written or -errno. */
  write(buf: Uint8Array): number;
  /** pwrite(2): -ESPIPE. */
  pwrite(buf: Uint8Array, pos: number): number;
  /** ioctl(2): `VFIO_MIG_GET_PRECOPY_INFO` on a saving fd; -ENOTTY otherwise. */
  ioctl(cmd: number, arg: VfioPrecopyInfo): number;
  /** close(2) of the last reference. */
  release(): void;
}

/** One IOVA interval of a logging request (kernel: `struct interval_tree_node`, inclusive `last`). */
export interface VfioIovaRangeNode {
  start: number;
  last: number;
}

/** A driver's migration callbacks (kernel: `struct vfio_migration_ops`, include/linux/vfio.h). */
export interface VfioMigrationOps {
  /** Drives the device to `newState`: a data fd, null, or -errno (kernel: `migration_set_state`). */
  migrationSetState(device: VfioDevice, newState: number): VfioDataFile | null | number;
  /** Reads the current state into `out.state`; 0 or -errno (kernel: `migration_get_state`). */
  migrationGetState(device: VfioDevice, out: { state: VfioDeviceMigState }): number;
  /**
   * Estimates the stop-copy length into `out.stopCopyLength`; 0 or -errno (kernel:
   * `migration_get_data_size`).
   */
  migrationGetDataSize(device: VfioDevice, out: { stopCopyLength: number }): number;
}

/** A driver's DMA logging callbacks (kernel: `struct vfio_log_ops`, include/linux/vfio.h). */
export interface VfioLogOps {
  /** Starts logging over `ranges`; may change `pageSize.value` (kernel: `log_start`). */
  logStart(
    device: VfioDevice,
    ranges: VfioIovaRangeNode[],
    nnodes: number,
    pageSize: { value: number },
  ): number;
  /** Stops logging (kernel: `log_stop`). */
  logStop(device: VfioDevice): number;
  /** Reports and clears the log of `[iova, iova + length)` into `dirty` (kernel: `log_read_and_clear`). */
  logReadAndClear(device: VfioDevice, iova: number, length: number, dirty: IovaBitmap): number;
}

/** A device as the VFIO core sees it for migration (kernel: the migration fields of `struct vfio_device`). */
export interface VfioDevice {
  readonly name: string;
  /** `VFIO_MIGRATION_*` bits (kernel: `migration_flags`). */
  migrationFlags: number;
  /** Migration callbacks, or undefined for a device without migration (kernel: `mig_ops`). */
  migOps: VfioMigrationOps | undefined;
  /** DMA logging callbacks, or undefined (kernel: `log_ops`). */
  logOps: VfioLogOps | undefined;
  /** Times the kernel would have WARNed on this device (model only). */
  warnCount: number;
}

/** Arcs touching unsupported states are skipped using these required flags (kernel: `state_flags_table`). */
const STATE_FLAGS: readonly number[] = [
  /* ERROR */ 0xffffffff,
  /* STOP */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING */ VFIO_MIGRATION_STOP_COPY,
  /* STOP_COPY */ VFIO_MIGRATION_STOP_COPY,
  /* RESUMING */ VFIO_MIGRATION_STOP_COPY,
  /* RUNNING_P2P */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
  /* PRE_COPY */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
  /* PRE_COPY_P2P */ VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
];

const E = VFIO_DEVICE_STATE_ERROR;
const S = VFIO_DEVICE_STATE_STOP;
const R = VFIO_DEVICE_STATE_RUNNING;
const SC = VFIO_DEVICE_STATE_STOP_COPY;
const RS = VFIO_DEVICE_STATE_RESUMING;
const RP = VFIO_DEVICE_STATE_RUNNING_P2P;
const PC = VFIO_DEVICE_STATE_PRE_COPY;
const PP = VFIO_DEVICE_STATE_PRE_COPY_P2P;

/**
 * The next step from `cur` (row) towards `new` (column), before skipping unsupported states
 * (kernel: `vfio_from_fsm_table`). Rows and columns in uAPI order: ERROR, STOP, RUNNING,
 * STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
 */
export const VFIO_FROM_FSM_TABLE: readonly (readonly VfioDeviceMigState[])[] = [
  /* ERROR */ [E, E, E, E, E, E, E, E],
  /* STOP */ [E, S, RP, SC, RS, RP, RP, RP],
  /* RUNNING */ [E, RP, R, RP, RP, RP, PC, RP],
  /* STOP_COPY */ [E, S, S, SC, S, S, E, E],
  /* RESUMING */ [E, S, S, S, RS, S, S, S],
  /* RUNNING_P2P */ [E, S, R, S, S, RP, R, PP],
  /* PRE_COPY */ [E, R, R, PP, R, R, PC, PP],
  /* PRE_COPY_P2P */ [E, RP, RP, SC, RP, RP, PC, PP],
];

/** True if every flag `state` needs is among `flags`. */
function stateSupported(state: number, flags: number): boolean {
  const need = STATE_FLAGS[state] as number;
  return (need & flags) >>> 0 === need;
}

/** True if the device's migration flags support `state` (kernel: the `state_flags_table` test). */
export function vfioMigStateSupported(device: Pick<VfioDevice, 'migrationFlags'>, state: number): boolean {
  return isVfioDeviceMigState(state) && stateSupported(state, device.migrationFlags);
}

/**
 * The next single arc to take from `cur` towards `newState` (kernel: `vfio_mig_get_next_state`,
 * drivers/vfio/vfio_main.c): a state number, or -EINVAL when `cur` is invalid or unsupported
 * (the kernel also WARNs: counted in `device.warnCount`), when `newState` is out of range or not
 * supported by `device.migrationFlags` (ERROR is never supported), or when the transition is
 * blocked (STOP_COPY → PRE_COPY / PRE_COPY_P2P). States the flags do not support are skipped by
 * re-reading the table from them, as the kernel does. Differs: the skip loop stops on ERROR
 * (the kernel's loop spins there; fixed upstream in 2026).
 */
export function vfioMigGetNextState(device: VfioDevice, cur: number, newState: number): number {
  if (!vfioMigStateSupported(device, cur)) {
    device.warnCount++;
    return -Errno.EINVAL;
  }
  if (!vfioMigStateSupported(device, newState)) return -Errno.EINVAL;
  const flags = device.migrationFlags;
  let next = (VFIO_FROM_FSM_TABLE[cur] as readonly number[])[newState] as number;
  while (next !== VFIO_DEVICE_STATE_ERROR && !stateSupported(next, flags)) {
    next = (VFIO_FROM_FSM_TABLE[next] as readonly number[])[newState] as number;
  }
  return next !== VFIO_DEVICE_STATE_ERROR ? next : -Errno.EINVAL;
}

/**
 * Validates a driver feature request (kernel: `vfio_check_feature`, include/linux/vfio.h):
 * 1 to execute, 0 for a successful PROBE, -EINVAL for an unsupported GET/SET, neither GET nor
 * SET, or `argsz < minsz`.
 */
export function vfioCheckFeature(flags: number, argsz: number, supportedOps: number, minsz: number): number {
  if ((flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET) & ~supportedOps) !== 0)
    return -Errno.EINVAL;
  if ((flags & VFIO_DEVICE_FEATURE_PROBE) !== 0) return 0;
  if ((flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) === 0) return -Errno.EINVAL;
  if (argsz < minsz) return -Errno.EINVAL;
  return 1;
}

/**
 * GET the device's migration flags (kernel: `vfio_ioctl_device_feature_migration`). Returns 0,
 * -ENOTTY without migration ops, or `vfioCheckFeature`'s result.
 */
export function vfioIoctlDeviceFeatureMigration(
  device: VfioDevice,
  flags: number,
  arg: VfioDeviceFeatureMigration,
  argsz = VFIO_DEVICE_FEATURE_MIGRATION_SIZE,
): number {
  if (device.migOps === undefined) return -Errno.ENOTTY;
  const ret = vfioCheckFeature(flags, argsz, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION_SIZE);
  if (ret !== 1) return ret;
  arg.flags = device.migrationFlags;
  return 0;
}

/**
 * GET the current migration state, or SET a new one (kernel:
 * `vfio_ioctl_device_feature_mig_device_state`). SET calls the driver's `migrationSetState`;
 * the data fd it opens is returned in `arg.dataFd` (null for none, and always null on GET or on
 * error). Returns 0 or -errno (-ENOTTY without migration ops).
 */
export function vfioIoctlDeviceFeatureMigDeviceState(
  device: VfioDevice,
  flags: number,
  arg: VfioDeviceFeatureMigState<VfioDataFile>,
  argsz = VFIO_DEVICE_FEATURE_MIG_STATE_SIZE,
): number {
  const ops = device.migOps;
  if (ops === undefined) return -Errno.ENOTTY;
  const ret = vfioCheckFeature(
    flags,
    argsz,
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_MIG_STATE_SIZE,
  );
  if (ret !== 1) return ret;
  arg.dataFd = null;
  if ((flags & VFIO_DEVICE_FEATURE_GET) !== 0) {
    const out = { state: VFIO_DEVICE_STATE_ERROR as VfioDeviceMigState };
    const r = ops.migrationGetState(device, out);
    if (r !== 0) return r;
    arg.deviceState = out.state;
    return 0;
  }
  const filp = ops.migrationSetState(device, arg.deviceState);
  if (typeof filp === 'number') return filp;
  arg.dataFd = filp;
  return 0;
}

/**
 * GET the estimated stop-copy length (kernel: `vfio_ioctl_device_feature_migration_data_size`);
 * valid in every state. Returns 0 or -errno.
 */
export function vfioIoctlDeviceFeatureMigrationDataSize(
  device: VfioDevice,
  flags: number,
  arg: VfioDeviceFeatureMigDataSize,
  argsz = VFIO_DEVICE_FEATURE_MIG_DATA_SIZE_SIZE,
): number {
  const ops = device.migOps;
  if (ops === undefined) return -Errno.ENOTTY;
  const ret = vfioCheckFeature(flags, argsz, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE_SIZE);
  if (ret !== 1) return ret;
  const out = { stopCopyLength: 0 };
  const r = ops.migrationGetDataSize(device, out);
  if (r !== 0) return r;
  arg.stopCopyLength = out.stopCopyLength;
  return 0;
}

/** Most ranges one logging start accepts: one kernel page of ranges (kernel: `LOG_MAX_RANGES`). */
export const LOG_MAX_RANGES = 4096 / VFIO_DEVICE_FEATURE_DMA_LOGGING_RANGE_SIZE;

/** Largest IOVA end a range may reach (kernel: ULONG_MAX; here the largest safe integer). */
const IOVA_END_MAX = Number.MAX_SAFE_INTEGER;

/**
 * The opening every DMA-logging feature shares (kernel: the `if (!device->log_ops) return -ENOTTY;`
 * then `vfio_check_feature(flags, argsz, op, minsz)` at the top of each
 * `vfio_ioctl_device_feature_logging_*`): the device's log ops, or the result to return (-ENOTTY,
 * a `vfioCheckFeature` error, or 0 for a PROBE).
 */
function loggingOps(
  device: VfioDevice,
  flags: number,
  argsz: number,
  supportedOps: number,
  minsz: number,
): VfioLogOps | number {
  const ops = device.logOps;
  if (ops === undefined) return -Errno.ENOTTY;
  const ret = vfioCheckFeature(flags, argsz, supportedOps, minsz);
  return ret !== 1 ? ret : ops;
}

/**
 * SET: starts DMA dirty logging over `arg.ranges` (kernel:
 * `vfio_ioctl_device_feature_logging_start`). Checks, in the kernel's order: log ops present
 * (-ENOTTY), the feature request, at least one range (-EINVAL), at most `LOG_MAX_RANGES`
 * (-E2BIG), each range aligned to the page size (-EINVAL), not overflowing (-EOVERFLOW), not
 * overlapping another (-EINVAL); then calls the driver, which may change `arg.pageSize`.
 * Differs: a page size that is not a positive power of two fails the alignment test.
 */
export function vfioIoctlDeviceFeatureLoggingStart(
  device: VfioDevice,
  flags: number,
  arg: VfioDeviceFeatureDmaLoggingControl,
  argsz = VFIO_DEVICE_FEATURE_DMA_LOGGING_CONTROL_SIZE,
): number {
  const ops = loggingOps(
    device,
    flags,
    argsz,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_CONTROL_SIZE,
  );
  if (typeof ops === 'number') return ops;
  const nnodes = arg.ranges.length;
  if (nnodes === 0) return -Errno.EINVAL;
  if (nnodes > LOG_MAX_RANGES) return -Errno.E2BIG;
  const pageSize = arg.pageSize;
  const pow2 = isPowerOf2(pageSize);
  const nodes: VfioIovaRangeNode[] = [];
  for (const range of arg.ranges) {
    if (!pow2 || !isAligned(range.iova, pageSize) || !isAligned(range.length, pageSize)) return -Errno.EINVAL;
    const end = range.iova + range.length;
    if (!Number.isSafeInteger(end) || end > IOVA_END_MAX || range.iova < 0 || range.length < 0) {
      return -Errno.EOVERFLOW;
    }
    const node = { start: range.iova, last: end - 1 };
    for (const n of nodes) {
      if (node.start <= n.last && n.start <= node.last) return -Errno.EINVAL;
    }
    nodes.push(node);
  }
  nodes.sort((a, b) => a.start - b.start);
  const size = { value: pageSize };
  const r = ops.logStart(device, nodes, nnodes, size);
  if (r !== 0) return r;
  arg.pageSize = size.value;
  return 0;
}

/** SET: stops DMA dirty logging (kernel: `vfio_ioctl_device_feature_logging_stop`). */
export function vfioIoctlDeviceFeatureLoggingStop(device: VfioDevice, flags: number, argsz = 0): number {
  const ops = loggingOps(device, flags, argsz, VFIO_DEVICE_FEATURE_SET, 0);
  return typeof ops === 'number' ? ops : ops.logStop(device);
}

/**
 * GET: reports and clears the dirty log of `[arg.iova, arg.iova + arg.length)` into
 * `arg.bitmap`, one bit per `arg.pageSize` (kernel: `vfio_ioctl_device_feature_logging_report`).
 * Returns 0, -ENOTTY without log ops, -EINVAL for a page size below 4 KiB or not a power of
 * two, -EOVERFLOW for a range past the address space, -EFAULT for a bitmap too short, or the
 * driver's error. Bits are only ever set, never cleared.
 */
export function vfioIoctlDeviceFeatureLoggingReport(
  device: VfioDevice,
  flags: number,
  arg: VfioDeviceFeatureDmaLoggingReport,
  argsz = VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT_SIZE,
): number {
  const ops = loggingOps(
    device,
    flags,
    argsz,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT_SIZE,
  );
  if (typeof ops === 'number') return ops;
  const pageSize = arg.pageSize;
  if (!(pageSize >= 4096) || !isPowerOf2(pageSize)) return -Errno.EINVAL;
  const end = arg.iova + arg.length;
  if (!Number.isSafeInteger(end) || arg.iova < 0 || arg.length < 0) return -Errno.EOVERFLOW;
  const iter = iovaBitmapAlloc(arg.iova, arg.length, pageSize, arg.bitmap);
  if (typeof iter === 'number') return iter;
  return iovaBitmapForEach(iter, device, (bm, iova, length, dev) =>
    ops.logReadAndClear(dev, iova, length, bm),
  );
}

/**
 * The data of one `VFIO_DEVICE_FEATURE` call, by feature id (kernel: `vfio_device_feature.data[]`,
 * include/uapi/linux/vfio.h).
 */
export type VfioDeviceFeatureData =
  | VfioDeviceFeatureMigration
  | VfioDeviceFeatureMigState<VfioDataFile>
  | VfioDeviceFeatureDmaLoggingControl
  | VfioDeviceFeatureDmaLoggingReport
  | VfioDeviceFeatureMigDataSize
  | undefined;

/**
 * The `VFIO_DEVICE_FEATURE` ioctl (kernel: `vfio_ioctl_device_feature`): rejects unknown flag
 * bits and GET with SET outside PROBE (-EINVAL), then dispatches on the feature id in the low 16
 * bits. `argsz` is the size of the feature data (kernel: `feature.argsz - minsz`); by default
 * the C size of the feature's struct. Unknown features return -EINVAL (no driver
 * `device_feature` op is modelled).
 */
export function vfioIoctlDeviceFeature(
  device: VfioDevice,
  flags: number,
  data: VfioDeviceFeatureData,
  argsz?: number,
): number {
  if (
    (flags &
      ~(
        VFIO_DEVICE_FEATURE_MASK |
        VFIO_DEVICE_FEATURE_SET |
        VFIO_DEVICE_FEATURE_GET |
        VFIO_DEVICE_FEATURE_PROBE
      )) !==
    0
  ) {
    return -Errno.EINVAL;
  }
  if (
    (flags & VFIO_DEVICE_FEATURE_PROBE) === 0 &&
    (flags & VFIO_DEVICE_FEATURE_SET) !== 0 &&
    (flags & VFIO_DEVICE_FEATURE_GET) !== 0
  ) {
    return -Errno.EINVAL;
  }
  const need = (what: string): never => {
    throw new VfioError(`VFIO_DEVICE_FEATURE: feature ${flags & VFIO_DEVICE_FEATURE_MASK} needs ${what}`, {
      rule: 'vfio_ioctl_device_feature: data',
      errno: -Errno.EFAULT,
    });
  };
  switch (flags & VFIO_DEVICE_FEATURE_MASK) {
    case VFIO_DEVICE_FEATURE_MIGRATION:
      return vfioIoctlDeviceFeatureMigration(
        device,
        flags,
        (data ?? need('a flags object')) as VfioDeviceFeatureMigration,
        argsz,
      );
    case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
      return vfioIoctlDeviceFeatureMigDeviceState(
        device,
        flags,
        (data ?? need('a mig_state object')) as VfioDeviceFeatureMigState<VfioDataFile>,
        argsz,
      );
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
      return vfioIoctlDeviceFeatureLoggingStart(
        device,
        flags,
        (data ?? need('a logging control')) as VfioDeviceFeatureDmaLoggingControl,
        argsz,
      );
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
      return vfioIoctlDeviceFeatureLoggingStop(device, flags, argsz);
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
      return vfioIoctlDeviceFeatureLoggingReport(
        device,
        flags,
        (data ?? need('a logging report')) as VfioDeviceFeatureDmaLoggingReport,
        argsz,
      );
    case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE:
      return vfioIoctlDeviceFeatureMigrationDataSize(
        device,
        flags,
        (data ?? need('a data size object')) as VfioDeviceFeatureMigDataSize,
        argsz,
      );
    default:
      return -Errno.EINVAL;
  }
}

/**
 * Merges `ranges` (sorted, disjoint) until at most `reqNodes` remain, always joining the pair
 * with the smallest gap; with `reqNodes` 1 the result spans first start to last end (kernel:
 * `vfio_combine_iova_ranges`, used by drivers whose tracker takes fewer ranges). Works in place
 * and returns `ranges`.
 */
export function vfioCombineIovaRanges(ranges: VfioIovaRangeNode[], reqNodes: number): VfioIovaRangeNode[] {
  if (ranges.length === 0 || reqNodes < 1) return ranges;
  if (reqNodes === 1) {
    const first = ranges[0] as VfioIovaRangeNode;
    first.last = (ranges[ranges.length - 1] as VfioIovaRangeNode).last;
    ranges.length = 1;
    return ranges;
  }
  while (ranges.length > reqNodes) {
    let best = 1;
    let minGap = Number.POSITIVE_INFINITY;
    for (let i = 1; i < ranges.length; i++) {
      const gap = (ranges[i] as VfioIovaRangeNode).start - (ranges[i - 1] as VfioIovaRangeNode).last;
      if (gap < minGap) {
        minGap = gap;
        best = i;
      }
    }
    (ranges[best - 1] as VfioIovaRangeNode).last = (ranges[best] as VfioIovaRangeNode).last;
    ranges.splice(best, 1);
  }
  return ranges;
}

/**
 * Arcs of the FSM a driver must implement for `flags`, as `[from, to]` (kernel: the comment above
 * `vfio_from_fsm_table`).
 */
export function vfioRequiredArcs(flags: number): Array<[VfioDeviceMigState, VfioDeviceMigState]> {
  const arcs: Array<[VfioDeviceMigState, VfioDeviceMigState]> = [
    [RS, S],
    [S, RS],
    [S, SC],
    [SC, S],
  ];
  const p2p = (flags & VFIO_MIGRATION_P2P) !== 0;
  const pre = (flags & VFIO_MIGRATION_PRE_COPY) !== 0;
  if (p2p) arcs.push([R, RP], [RP, R], [RP, S], [S, RP]);
  if (pre) arcs.push([R, PC], [PC, R]);
  if (pre && !p2p) arcs.push([PC, SC]);
  if (pre && p2p) arcs.push([PC, PP], [PP, PC], [PP, RP], [PP, SC], [RP, PP]);
  if (!p2p) arcs.push([R, S], [S, R]);
  return arcs;
}
