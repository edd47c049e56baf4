/**
 * A source → target live migration of an assigned device, driven the way a VMM drives it: the
 * target (opened in RUNNING) goes STOP → RESUMING; the source goes RUNNING → PRE_COPY (when
 * supported) and its pre-copy data is streamed to the target while the device keeps running;
 * then the source goes to STOP_COPY and the rest of the stream is moved until end of data; the
 * target leaves RESUMING for STOP (where the stream is validated) and RUNNING; the source goes to
 * STOP. Guest memory, when given, is copied alongside using the device's DMA dirty logging, so
 * only pages the device wrote since the last pass are copied again. At the end the target's
 * device state is compared with the source's byte for byte.
 *
 * Counterpart: userspace, not the kernel — QEMU's hw/vfio/migration.c (save/load of the device
 * state stream with VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE and the data fd,
 * VFIO_MIG_GET_PRECOPY_INFO, 1 MiB reads) and hw/vfio/container's dirty tracking with
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_*. Differs on purpose: one synchronous loop, no migration
 * stream framing of its own (bytes go straight from the source fd to the target fd), no
 * convergence heuristics beyond an iteration cap and a dirty-bytes threshold, no VM CPUs (only
 * the device writes guest memory).
 */
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { iovaBitmapBytes, iovaBitmapTest } from './iova-bitmap.js';
import type { Mlx5vfPciCoreDevice } from './mlx5-cmd.js';
import { mlx5VhcaStateEqual } from './mlx5-vhca.js';
import { type VfioIommu, vfioDmaRw } from './vfio-iommu-type1.js';
import { type VfioDataFile, type VfioDevice, vfioIoctlDeviceFeature } from './vfio-main.js';
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_PRECOPY_INFO_SIZE,
  type VfioDeviceFeatureMigState,
  type VfioPrecopyInfo,
} from './vfio-uapi.js';

/** QEMU's data fd buffer size (hw/vfio/migration.c: `VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE`, 1 MiB). */
export const VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE = 1 << 20;

/**
 * Phases of a migration, reported at their start (QEMU: the save/load stages of hw/vfio/migration.c;
 * no kernel counterpart).
 */
export type VfioMigrationPhase =
  /** Target to RESUMING, DMA logging started, first full guest copy. */
  | 'setup'
  /**
   * Source RUNNING → PRE_COPY: buffers allocated and mapped, initial image saved (skipped without
   * PRE_COPY).
   */
  | 'precopy-setup'
  /** Pre-copy passes while the device runs. */
  | 'precopy'
  /**
   * Source to STOP_COPY, the rest of the stream (loaded by the target as it arrives), last dirty guest
   * pages: the downtime's data phase.
   */
  | 'stop-copy'
  /** Target RESUMING → STOP (stream validated) → RUNNING. */
  | 'resume'
  /** Source STOP: its data fd disabled and buffers freed. */
  | 'cleanup'
  /** Finished; the comparisons follow. */
  | 'done';

/**
 * Options of `vfioMigrate` (QEMU: the migration parameters hw/vfio/migration.c reads; no kernel
 * counterpart).
 */
export interface VfioMigrateOptions {
  /** Bytes per read/write of the stream (default 1 MiB, as QEMU). */
  chunkSize?: number;
  /** Use PRE_COPY when the source supports it (default true). */
  precopy?: boolean;
  /** Most pre-copy iterations (default 8). */
  maxPrecopyIterations?: number;
  /** Device operations the source runs after each pre-copy pass (default 1000). */
  stepsPerIteration?: number;
  /** Leave pre-copy once the initial data is read and at most this many dirty bytes remain (default 0). */
  precopyThreshold?: number;
  /** Guest memory of both sides, copied with DMA dirty logging (same mapped layout on both). */
  guest?: { source: VfioIommu; target: VfioIommu };
  /** Called when each phase starts (for measurements). */
  onPhase?: (phase: VfioMigrationPhase) => void;
}

/** What a migration did (no kernel counterpart: the VMM's view). */
export interface VfioMigrationResult {
  /** 0, or the first -errno met. */
  ret: number;
  /** The step that failed, if one did. */
  failedAt: string | undefined;
  /** Pre-copy passes made. */
  precopyIterations: number;
  /** Stream bytes moved during pre-copy. */
  precopyBytes: number;
  /** Stream bytes moved after STOP_COPY (the downtime phase). */
  stopCopyBytes: number;
  /** Guest pages copied, the first full pass included. */
  guestPagesCopied: number;
  /** The target's device state equals the source's. */
  equal: boolean;
  /** Guest memory equal on both sides (undefined without guest memory). */
  guestEqual: boolean | undefined;
}

/**
 * SET the migration state through the uAPI (QEMU: `vfio_migration_set_state`, hw/vfio/migration.c,
 * issuing `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` handled by drivers/vfio/vfio_main.c); returns the
 * data fd, null, or -errno.
 */
export function vfioMigSetState(device: VfioDevice, state: number): VfioDataFile | null | number {
  const mig: VfioDeviceFeatureMigState<VfioDataFile> = { deviceState: state, dataFd: null };
  const ret = vfioIoctlDeviceFeature(
    device,
    VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    mig,
  );
  return ret !== 0 ? ret : mig.dataFd;
}

/**
 * GET the migration state through the uAPI (QEMU: `vfio_query_device_state`-style GET of
 * `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`, drivers/vfio/vfio_main.c); returns the state or -errno.
 */
export function vfioMigGetState(device: VfioDevice): number {
  const mig: VfioDeviceFeatureMigState<VfioDataFile> = { deviceState: 0, dataFd: null };
  const ret = vfioIoctlDeviceFeature(
    device,
    VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    mig,
  );
  return ret !== 0 ? ret : mig.deviceState;
}

/** Writes all of `data` to `fd`; returns 0 or -errno. */
function writeAll(fd: VfioDataFile, data: Uint8Array): number {
  let off = 0;
  while (off < data.length) {
    const n = fd.write(data.subarray(off));
    if (n < 0) return n;
    if (n === 0) return -Errno.EIO;
    off += n;
  }
  return 0;
}

/**
 * Moves what the source fd has to the target fd (QEMU: `vfio_save_block` + load): until end of
 * stream (0), or -ENOMSG (the pre-copy temporary end) when `precopy`. Returns bytes moved or
 * -errno.
 */
function pump(src: VfioDataFile, dst: VfioDataFile, buf: Uint8Array, precopy: boolean): number {
  let moved = 0;
  for (;;) {
    const n = src.read(buf);
    if (n === 0) return moved;
    if (n === -Errno.ENOMSG && precopy) return moved;
    if (n < 0) return n;
    const w = writeAll(dst, buf.subarray(0, n));
    if (w < 0) return w;
    moved += n;
  }
}

/** Copies the guest page at `iova` from source to target through `page`; false when either side faults. */
function copyGuestPage(
  guest: { source: VfioIommu; target: VfioIommu },
  iova: number,
  page: Uint8Array,
): boolean {
  return vfioDmaRw(guest.source, iova, page, false) === 0 && vfioDmaRw(guest.target, iova, page, true) === 0;
}

/**
 * Reports and clears the source's DMA log over its guest memory and copies the dirty pages; returns
 * pages copied or -errno.
 */
function copyDirtyGuest(device: VfioDevice, guest: { source: VfioIommu; target: VfioIommu }): number {
  let copied = 0;
  const page = new Uint8Array(PAGE_SIZE);
  for (const d of guest.source.dmaList) {
    const bitmap = new Uint8Array(iovaBitmapBytes(d.size, PAGE_SIZE));
    const ret = vfioIoctlDeviceFeature(
      device,
      VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
      {
        iova: d.iova,
        length: d.size,
        pageSize: PAGE_SIZE,
        bitmap,
      },
    );
    if (ret !== 0) return ret;
    for (let i = 0; i < d.size / PAGE_SIZE; i++) {
      if (!iovaBitmapTest(bitmap, i)) continue;
      if (!copyGuestPage(guest, d.iova + i * PAGE_SIZE, page)) return -Errno.EFAULT;
      copied++;
    }
  }
  return copied;
}

/** Copies all guest memory; returns pages copied or -errno. */
function copyAllGuest(guest: { source: VfioIommu; target: VfioIommu }): number {
  let copied = 0;
  const page = new Uint8Array(PAGE_SIZE);
  for (const d of guest.source.dmaList) {
    for (let off = 0; off < d.size; off += PAGE_SIZE) {
      if (!copyGuestPage(guest, d.iova + off, page)) return -Errno.EFAULT;
      copied++;
    }
  }
  return copied;
}

/** True if both sides' guest memory is byte-equal. */
function guestEqual(guest: { source: VfioIommu; target: VfioIommu }): boolean {
  const a = new Uint8Array(PAGE_SIZE);
  const b = new Uint8Array(PAGE_SIZE);
  for (const d of guest.source.dmaList) {
    for (let off = 0; off < d.size; off += PAGE_SIZE) {
      if (vfioDmaRw(guest.source, d.iova + off, a, false) !== 0) return false;
      if (vfioDmaRw(guest.target, d.iova + off, b, false) !== 0) return false;
      for (let i = 0; i < PAGE_SIZE; i++) if (a[i] !== b[i]) return false;
    }
  }
  return true;
}

/**
 * Migrates `source` to `target` through the VFIO uAPI, as a VMM does (QEMU: the VFIO device's
 * save_setup/save_live_iterate/save_live_complete_precopy and load handlers, hw/vfio/migration.c;
 * see the file header):
 * target STOP → RESUMING; source RUNNING → PRE_COPY (iterations while the device runs) →
 * STOP_COPY; target RESUMING → STOP → RUNNING; source STOP; then compares device state (and
 * guest memory). Both devices must start in RUNNING. Stops at the first error, releasing the data
 * fds, and reports it in `ret`/`failedAt` (the devices stay where the error left them).
 */
export function vfioMigrate(
  source: Mlx5vfPciCoreDevice,
  target: Mlx5vfPciCoreDevice,
  options: VfioMigrateOptions = {},
): VfioMigrationResult {
  const run = new MigrationRun(source, target, options);
  options.onPhase?.('setup');
  const failure =
    run.targetToResuming() ??
    run.guestSetup() ??
    run.precopy() ??
    run.stopCopy() ??
    run.resumeTarget() ??
    run.stopSource();
  return failure === undefined ? run.finish() : run.fail(failure);
}

/** The step a migration stopped at and its -errno. */
interface MigFailure {
  step: string;
  ret: number;
}

function isFailure(x: VfioDataFile | MigFailure): x is MigFailure {
  return typeof (x as MigFailure).step === 'string';
}

/** One migration's devices, options, open data fds and result; `vfioMigrate` runs its steps in order. */
class MigrationRun {
  readonly #source: Mlx5vfPciCoreDevice;
  readonly #target: Mlx5vfPciCoreDevice;
  readonly #options: VfioMigrateOptions;
  readonly #buf: Uint8Array;
  readonly #guest: { source: VfioIommu; target: VfioIommu } | undefined;
  /** Guest memory is copied by DMA dirty logging (else only the first full copy is made). */
  readonly #logging: boolean;
  /** Every data fd opened, released at the end or on failure. */
  readonly #fds: VfioDataFile[] = [];
  #dst: VfioDataFile | null = null;
  #src: VfioDataFile | null = null;
  readonly #result: VfioMigrationResult = {
    ret: 0,
    failedAt: undefined,
    precopyIterations: 0,
    precopyBytes: 0,
    stopCopyBytes: 0,
    guestPagesCopied: 0,
    equal: false,
    guestEqual: undefined,
  };

  constructor(source: Mlx5vfPciCoreDevice, target: Mlx5vfPciCoreDevice, options: VfioMigrateOptions) {
    this.#source = source;
    this.#target = target;
    this.#options = options;
    this.#buf = new Uint8Array(options.chunkSize ?? VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE);
    this.#guest = options.guest;
    this.#logging = options.guest !== undefined && source.logOps !== undefined;
  }

  /** Target RUNNING → STOP → RESUMING; keeps its data fd (QEMU: `vfio_load_setup`). */
  targetToResuming(): MigFailure | undefined {
    const r = vfioMigSetState(this.#target, VFIO_DEVICE_STATE_STOP);
    if (typeof r === 'number') return { step: 'target STOP', ret: r };
    const fd = this.#openDataFd(this.#target, VFIO_DEVICE_STATE_RESUMING, 'target RESUMING');
    if (isFailure(fd)) return fd;
    this.#dst = fd;
    return undefined;
  }

  /** Starts DMA logging on the source's guest memory, then copies all of it once. */
  guestSetup(): MigFailure | undefined {
    const guest = this.#guest;
    if (guest === undefined) return undefined;
    if (this.#logging) {
      const ranges = guest.source.dmaList.map((d) => ({ iova: d.iova, length: d.size }));
      const ret = vfioIoctlDeviceFeature(
        this.#source,
        VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        { pageSize: PAGE_SIZE, ranges },
      );
      if (ret !== 0) return { step: 'DMA logging start', ret };
    }
    const n = copyAllGuest(guest);
    if (n < 0) return { step: 'guest copy', ret: n };
    this.#result.guestPagesCopied += n;
    return undefined;
  }

  /**
   * Source RUNNING → PRE_COPY and its passes while the device runs, until the initial data is
   * read and the dirty bytes fall to the threshold, or the iteration cap (QEMU:
   * `vfio_save_setup` + `vfio_save_iterate`). Skipped without PRE_COPY support or when disabled.
   */
  precopy(): MigFailure | undefined {
    const options = this.#options;
    if (!(options.precopy ?? true) || (this.#source.migrationFlags & VFIO_MIGRATION_PRE_COPY) === 0)
      return undefined;
    options.onPhase?.('precopy-setup');
    const src = this.#openDataFd(this.#source, VFIO_DEVICE_STATE_PRE_COPY, 'source PRE_COPY');
    if (isFailure(src)) return src;
    this.#src = src;
    options.onPhase?.('precopy');
    const max = options.maxPrecopyIterations ?? 8;
    const threshold = options.precopyThreshold ?? 0;
    const info: VfioPrecopyInfo = { argsz: VFIO_PRECOPY_INFO_SIZE, flags: 0, initialBytes: 0, dirtyBytes: 0 };
    while (this.#result.precopyIterations < max) {
      const failure = this.#precopyPass(src, info);
      if (failure !== undefined) return failure;
      if (info.initialBytes === 0 && info.dirtyBytes <= threshold) break;
    }
    return undefined;
  }

  /**
   * One pre-copy pass: query, move what the source has, copy the dirty guest pages, let the
   * device run, query again (the answer decides whether to go on).
   */
  #precopyPass(src: VfioDataFile, info: VfioPrecopyInfo): MigFailure | undefined {
    const result = this.#result;
    const ret = src.ioctl(VFIO_MIG_GET_PRECOPY_INFO, info);
    if (ret !== 0) return { step: 'VFIO_MIG_GET_PRECOPY_INFO', ret };
    const moved = pump(src, this.#dst as VfioDataFile, this.#buf, true);
    if (moved < 0) return { step: 'pre-copy stream', ret: moved };
    result.precopyBytes += moved;
    result.precopyIterations++;
    const dirty = this.#copyDirtyGuest();
    if (dirty !== undefined) return dirty;
    this.#source.run(this.#options.stepsPerIteration ?? 1000);
    const again = src.ioctl(VFIO_MIG_GET_PRECOPY_INFO, info);
    if (again !== 0) return { step: 'VFIO_MIG_GET_PRECOPY_INFO', ret: again };
    return undefined;
  }

  /**
   * Source to STOP_COPY, the rest of the stream to the target, the last dirty guest pages, DMA
   * logging stopped (QEMU: `vfio_save_complete_precopy`).
   */
  stopCopy(): MigFailure | undefined {
    this.#options.onPhase?.('stop-copy');
    const r = vfioMigSetState(this.#source, VFIO_DEVICE_STATE_STOP_COPY);
    if (typeof r === 'number') return { step: 'source STOP_COPY', ret: r };
    if (r !== null) {
      this.#src = r;
      this.#fds.push(r);
    }
    const src = this.#src;
    if (src === null) return { step: 'source STOP_COPY', ret: -Errno.EINVAL };
    const moved = pump(src, this.#dst as VfioDataFile, this.#buf, false);
    if (moved < 0) return { step: 'stop-copy stream', ret: moved };
    this.#result.stopCopyBytes = moved;
    if (!this.#logging) return undefined;
    const dirty = this.#copyDirtyGuest();
    if (dirty !== undefined) return dirty;
    const ret = vfioIoctlDeviceFeature(
      this.#source,
      VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
      undefined,
    );
    return ret !== 0 ? { step: 'DMA logging stop', ret } : undefined;
  }

  /** Target RESUMING → STOP (the stream is validated) → RUNNING (QEMU: `vfio_load_cleanup`). */
  resumeTarget(): MigFailure | undefined {
    this.#options.onPhase?.('resume');
    let r = vfioMigSetState(this.#target, VFIO_DEVICE_STATE_STOP);
    if (typeof r === 'number') return { step: 'target STOP', ret: r };
    r = vfioMigSetState(this.#target, VFIO_DEVICE_STATE_RUNNING);
    return typeof r === 'number' ? { step: 'target RUNNING', ret: r } : undefined;
  }

  /** Source leaves the saving states for STOP (QEMU: `vfio_save_cleanup`). */
  stopSource(): MigFailure | undefined {
    this.#options.onPhase?.('cleanup');
    const r = vfioMigSetState(this.#source, VFIO_DEVICE_STATE_STOP);
    return typeof r === 'number' ? { step: 'source STOP', ret: r } : undefined;
  }

  /** Releases the data fds and compares device state (and guest memory) of both sides. */
  finish(): VfioMigrationResult {
    const result = this.#result;
    for (const fd of this.#fds) fd.release();
    this.#options.onPhase?.('done');
    result.equal = mlx5VhcaStateEqual(this.#source.vhca, this.#target.vhca);
    if (this.#guest !== undefined) result.guestEqual = guestEqual(this.#guest);
    return result;
  }

  /** Records the failure and releases the data fds; the devices stay where the error left them. */
  fail(failure: MigFailure): VfioMigrationResult {
    const result = this.#result;
    result.ret = failure.ret;
    result.failedAt = failure.step;
    for (const fd of this.#fds) fd.release();
    return result;
  }

  /** SETs a state that must hand back a data fd and keeps the fd; a missing fd is -EINVAL. */
  #openDataFd(device: VfioDevice, state: number, step: string): VfioDataFile | MigFailure {
    const r = vfioMigSetState(device, state);
    if (typeof r === 'number') return { step, ret: r };
    if (r === null) return { step, ret: -Errno.EINVAL };
    this.#fds.push(r);
    return r;
  }

  /** With DMA logging, copies the guest pages dirtied since the last report. */
  #copyDirtyGuest(): MigFailure | undefined {
    if (!this.#logging || this.#guest === undefined) return undefined;
    const n = copyDirtyGuest(this.#source, this.#guest);
    if (n < 0) return { step: 'DMA logging report', ret: n };
    this.#result.guestPagesCopied += n;
    return undefined;
  }
}
