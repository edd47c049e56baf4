/**
 * The VFIO migration uAPI: device migration states with their uAPI numbers, the migration
 * feature flags, the `VFIO_DEVICE_FEATURE` ids and flag bits, the ioctl numbers, and the structs
 * exchanged with userspace as plain TypeScript interfaces. Kernel counterpart:
 * include/uapi/linux/vfio.h (v6.17; the PRE_COPY states since v6.2, DMA logging since v6.2,
 * MIG_DATA_SIZE since v6.3). Differs on purpose: structs are objects with camelCase fields
 * instead of packed C layouts (their C sizes are kept as `*_SIZE` constants for `argsz`
 * checks), and a data fd is an object (`null` where the kernel writes -1).
 */

/** The device failed and must be reset (kernel: `VFIO_DEVICE_STATE_ERROR`). */
export const VFIO_DEVICE_STATE_ERROR = 0;
/** Stopped: no DMA, no interrupts, no internal state change (kernel: `VFIO_DEVICE_STATE_STOP`). */
export const VFIO_DEVICE_STATE_STOP = 1;
/** Running normally (kernel: `VFIO_DEVICE_STATE_RUNNING`). */
export const VFIO_DEVICE_STATE_RUNNING = 2;
/** Stopped, internal state readable through the data fd (kernel: `VFIO_DEVICE_STATE_STOP_COPY`). */
export const VFIO_DEVICE_STATE_STOP_COPY = 3;
/** Stopped, loading a new internal state from the data fd (kernel: `VFIO_DEVICE_STATE_RESUMING`). */
export const VFIO_DEVICE_STATE_RESUMING = 4;
/** Running but initiating no peer-to-peer DMA (kernel: `VFIO_DEVICE_STATE_RUNNING_P2P`). */
export const VFIO_DEVICE_STATE_RUNNING_P2P = 5;
/**
 * Running and tracking internal state changes; pre-copy data readable (kernel:
 * `VFIO_DEVICE_STATE_PRE_COPY`).
 */
export const VFIO_DEVICE_STATE_PRE_COPY = 6;
/** PRE_COPY with no peer-to-peer DMA initiated (kernel: `VFIO_DEVICE_STATE_PRE_COPY_P2P`). */
export const VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;
/** Number of migration states (kernel: `VFIO_DEVICE_STATE_NR`, newer headers). */
export const VFIO_DEVICE_STATE_NR = 8;

/** One device migration state (kernel: `enum vfio_device_mig_state`). */
export type VfioDeviceMigState = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7;

/**
 * All states in uAPI order, for iteration (kernel: the values of `enum vfio_device_mig_state`,
 * include/uapi/linux/vfio.h).
 */
export const VFIO_DEVICE_STATES: readonly VfioDeviceMigState[] = [0, 1, 2, 3, 4, 5, 6, 7];

const STATE_NAMES = [
  'ERROR',
  'STOP',
  'RUNNING',
  'STOP_COPY',
  'RESUMING',
  'RUNNING_P2P',
  'PRE_COPY',
  'PRE_COPY_P2P',
] as const;

/**
 * Name of a state as the uAPI spells it without its prefix (`3` → `"STOP_COPY"`). Kernel: none (QEMU's
 * `mig_state_to_str`).
 */
export function vfioDeviceStateName(state: number): string {
  return STATE_NAMES[state] ?? `state ${state}`;
}

/**
 * True if `state` is one of the eight uAPI states (kernel: the `>= ARRAY_SIZE(vfio_from_fsm_table)`
 * test of drivers/vfio/vfio_main.c).
 */
export function isVfioDeviceMigState(state: number): state is VfioDeviceMigState {
  return Number.isInteger(state) && state >= 0 && state < VFIO_DEVICE_STATE_NR;
}

/** STOP, STOP_COPY and RESUMING are supported; mandatory (kernel: `VFIO_MIGRATION_STOP_COPY`). */
export const VFIO_MIGRATION_STOP_COPY = 1 << 0;
/** RUNNING_P2P is supported (kernel: `VFIO_MIGRATION_P2P`). */
export const VFIO_MIGRATION_P2P = 1 << 1;
/** PRE_COPY (and with P2P, PRE_COPY_P2P) is supported (kernel: `VFIO_MIGRATION_PRE_COPY`). */
export const VFIO_MIGRATION_PRE_COPY = 1 << 2;

/**
 * The four flag sets the uAPI defines behaviour for (kernel: the comment above `struct
 * vfio_device_feature_migration`, include/uapi/linux/vfio.h).
 */
export const VFIO_MIGRATION_FLAG_SETS: readonly number[] = [
  VFIO_MIGRATION_STOP_COPY,
  VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
];

/** Low 16 bits of `vfio_device_feature.flags`: the feature id (kernel: `VFIO_DEVICE_FEATURE_MASK`). */
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
/** Read the feature (kernel: `VFIO_DEVICE_FEATURE_GET`). */
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
/** Write the feature (kernel: `VFIO_DEVICE_FEATURE_SET`). */
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
/** Only ask whether GET/SET are supported (kernel: `VFIO_DEVICE_FEATURE_PROBE`). */
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;

/** GET the migration flags (kernel: `VFIO_DEVICE_FEATURE_MIGRATION`). */
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
/**
 * SET a new migration state (may return a data fd) or GET the current one (kernel:
 * `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`).
 */
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
/** Allow low-power entry (kernel: `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY`); not modelled. */
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
/**
 * Low-power entry with a wake-up eventfd (kernel: `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP`);
 * not modelled.
 */
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
/** Leave low power (kernel: `VFIO_DEVICE_FEATURE_LOW_POWER_EXIT`); not modelled. */
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
/** SET: start device DMA dirty logging over IOVA ranges (kernel: `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
/** SET: stop device DMA dirty logging (kernel: `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
/** GET: report and clear the dirty bitmap of a range (kernel: `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
/** GET: estimated stop-copy length (kernel: `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`). */
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

/** ioctl type of VFIO (kernel: `VFIO_TYPE`, the character ';'). */
export const VFIO_TYPE = 0x3b;
/** First VFIO ioctl number (kernel: `VFIO_BASE`). */
export const VFIO_BASE = 100;
/** `_IO(type, nr)` as the kernel encodes it (no direction, no size). */
function ioc(type: number, nr: number): number {
  return (type << 8) | nr;
}
/** The device feature ioctl (kernel: `VFIO_DEVICE_FEATURE` = `_IO(VFIO_TYPE, VFIO_BASE + 17)`). */
export const VFIO_DEVICE_FEATURE = ioc(VFIO_TYPE, VFIO_BASE + 17);
/**
 * Pre-copy size query on a saving data fd (kernel: `VFIO_MIG_GET_PRECOPY_INFO` = `_IO(VFIO_TYPE,
 * VFIO_BASE + 21)`).
 */
export const VFIO_MIG_GET_PRECOPY_INFO = ioc(VFIO_TYPE, VFIO_BASE + 21);

/** `struct vfio_device_feature_migration` (kernel: include/uapi/linux/vfio.h). */
export interface VfioDeviceFeatureMigration {
  /** `VFIO_MIGRATION_*` bits the device supports. */
  flags: number;
}
/** C size of `struct vfio_device_feature_migration` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_MIGRATION_SIZE = 8;

/**
 * `struct vfio_device_feature_mig_state` (kernel: include/uapi/linux/vfio.h). Differs: `dataFd` is the
 * file object, `null` for -1.
 */
export interface VfioDeviceFeatureMigState<F = unknown> {
  /** The state to set (SET) or the current state (GET). */
  deviceState: number;
  /** The data transfer fd an arc opened, or null (kernel: -1). */
  dataFd: F | null;
}
/** C size of `struct vfio_device_feature_mig_state` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_MIG_STATE_SIZE = 8;

/** `struct vfio_device_feature_mig_data_size` (kernel: include/uapi/linux/vfio.h). */
export interface VfioDeviceFeatureMigDataSize {
  /** Estimated bytes the STOP_COPY phase will produce. */
  stopCopyLength: number;
}
/** C size of `struct vfio_device_feature_mig_data_size` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE_SIZE = 8;

/** `struct vfio_device_feature_dma_logging_range` (kernel: include/uapi/linux/vfio.h). */
export interface VfioDeviceFeatureDmaLoggingRange {
  iova: number;
  length: number;
}
/** C size of `struct vfio_device_feature_dma_logging_range` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_RANGE_SIZE = 16;

/**
 * `struct vfio_device_feature_dma_logging_control` (kernel: include/uapi/linux/vfio.h). Differs:
 * `ranges` is the array itself (`num_ranges` is its length).
 */
export interface VfioDeviceFeatureDmaLoggingControl {
  /** In: the tracking granularity hint; out: the page size the device chose. */
  pageSize: number;
  ranges: VfioDeviceFeatureDmaLoggingRange[];
}
/** C size of `struct vfio_device_feature_dma_logging_control` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_CONTROL_SIZE = 24;

/**
 * `struct vfio_device_feature_dma_logging_report` (kernel: include/uapi/linux/vfio.h). Differs:
 * `bitmap` is the buffer itself, bytes of little-endian u64 words: bit `n` (byte `n >> 3`, bit
 * `n & 7`) reports the page at `iova + n * pageSize`.
 */
export interface VfioDeviceFeatureDmaLoggingReport {
  iova: number;
  length: number;
  pageSize: number;
  bitmap: Uint8Array;
}
/** C size of `struct vfio_device_feature_dma_logging_report` (kernel: include/uapi/linux/vfio.h). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT_SIZE = 32;

/** `struct vfio_precopy_info` (kernel: include/uapi/linux/vfio.h). */
export interface VfioPrecopyInfo {
  /** Caller's struct size; below `VFIO_PRECOPY_INFO_SIZE` → -EINVAL. */
  argsz: number;
  flags: number;
  /** Initial pre-copy bytes still to read. */
  initialBytes: number;
  /** Bytes of state changed since data was last read, available or pending. */
  dirtyBytes: number;
}
/**
 * C size (`offsetofend(dirty_bytes)`) of `struct vfio_precopy_info` (kernel:
 * include/uapi/linux/vfio.h; the minsz of `mlx5vf_precopy_ioctl`).
 */
export const VFIO_PRECOPY_INFO_SIZE = 24;
