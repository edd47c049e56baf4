/**
 * The mlx5 vfio driver's command layer: the migration data buffers (`mlx5_vhca_data_buffer`) in
 * both of their kernel shapes, the migration file and device structs, the firmware commands
 * (query, save, load, suspend, resume) and the dirty page tracker behind the DMA logging ops.
 * Kernel counterpart: drivers/vfio/pci/mlx5/cmd.c and cmd.h — the `'iova'` mapping follows
 * v6.16+ ("vfio/mlx5: Enable the DMA link API": a page-pointer array, `dma_iova_try_alloc` +
 * `dma_iova_link` per page + one `dma_iova_sync`, falling back to a streaming map per page whose
 * addresses live in the MTT); the `'sg'` mapping follows the version just before it (≤ v6.15:
 * pages appended to an `sg_append_table`, `dma_map_sgtable`, MTT filled from the DMA segments,
 * page lookup walking the sg list with a cached cursor).
 *
 * Metadata is counted in `machine.counters` in the kernel's sizes: the buffer struct (120 bytes
 * with an sg_append_table and the cursor, 88 with a page list and a `dma_iova_state`), the page
 * list (8 bytes a page; in sg mode only a transient ≤ 4 KiB bulk array), the `create_mkey_in`
 * command with its MTT (272 + 8 bytes a page, rounded to an even count: kept while mapped in
 * `'iova'` mode, built and freed around CREATE_MKEY in `'sg'` mode as v6.15's `_create_mkey`
 * did), and scatterlist chunks (32 bytes an entry, counted by dma-api).
 *
 * Differs on purpose: no chunk mode (one stop-copy buffer; `MAX_NUM_CHUNKS` slots kept for
 * shape), firmware commands complete synchronously (the SAVE callback runs before the command
 * returns), no PD/UAR/QP/CQ objects — the dirty tracker reads the guest domain's IOMMU dirty bits
 * (as iommufd's dirty tracking does) instead of a firmware page-tracker reporting over a QP;
 * `alloc_pages_bulk` is order-0 allocations from the machine.
 *
 * Size: about 1,200 lines in one file because it mirrors one kernel file, drivers/vfio/pci/mlx5/
 * cmd.c (more than 1,500 lines in v6.x) with the structs of cmd.h.
 */
import {
  type Device,
  DMA_NONE,
  type DmaDataDirection,
  DmaIovaState,
  dmaIovaDestroy,
  dmaIovaLink,
  dmaIovaSync,
  dmaIovaTryAlloc,
  dmaMapPhys,
  dmaMappingError,
  dmaMapSgtable,
  dmaUnmapPhys,
  dmaUnmapSgtable,
  dmaUseIova,
  type Scatterlist,
  SG_MAX_SINGLE_ALLOC,
  SgAppendTable,
  sgAllocAppendTableFromPages,
  sgDmaAddress,
  sgDmaLen,
  sgFreeAppendTable,
  sgNext,
} from '@iovalink/dma-api';
import {
  Errno,
  iommuIotlbGatherAddRange,
  iommuIotlbGatherInit,
  iommuIotlbSync,
  iommuReadAndClearDirty,
  iommuSetDirtyTracking,
  type Machine,
  PAGE_SIZE,
} from '@iovalink/iommu';
import { alignUp, INV_TWO32, lo32, putLe64, TWO32 } from '@iovalink/iommu/internal';
import { VfioError } from './errors.js';
import { type IovaBitmap, iovaBitmapSet } from './iova-bitmap.js';
import { Mlx5Vhca } from './mlx5-vhca.js';
import type { VfioIommu } from './vfio-iommu-type1.js';
import {
  type VfioDataFile,
  type VfioDevice,
  type VfioIovaRangeNode,
  type VfioLogOps,
  type VfioMigrationOps,
  vfioCombineIovaRanges,
} from './vfio-main.js';
import {
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  type VfioDeviceMigState,
  type VfioPrecopyInfo,
} from './vfio-uapi.js';

/**
 * How data buffers are DMA-mapped: `'sg'` = sg_append_table + dma_map_sgtable (kernel: cmd.c
 * ≤ v6.15), `'iova'` = the link API (kernel: cmd.c v6.16+, "vfio/mlx5: Enable the DMA link API").
 */
export type Mlx5vfMapping = 'sg' | 'iova';

/** Stop-copy chunks in flight in chunk mode (kernel: `MAX_NUM_CHUNKS`, cmd.h). */
export const MAX_NUM_CHUNKS = 2;
/**
 * Largest image LOAD accepts: the 32-bit `size` field of load_vhca_state_in (kernel: `MAX_LOAD_SIZE`,
 * main.c).
 */
export const MAX_LOAD_SIZE = 0xffffffff;
/**
 * Largest SAVE buffer: the 32-bit `size` field of save_vhca_state_in minus a page (kernel:
 * prep_stop_copy's cap).
 */
export const MAX_SAVE_SIZE = 0x100000000 - PAGE_SIZE;
/** Bytes of `create_mkey_in` before its MTT (0x880 bits, include/linux/mlx5/mlx5_ifc.h). */
export const MLX5_CREATE_MKEY_IN_SIZE = 272;
/**
 * Bytes of `struct mlx5_vhca_data_buffer` with a page list and a `dma_iova_state` (kernel:
 * drivers/vfio/pci/mlx5/cmd.h v6.16+, 64-bit).
 */
export const MLX5_VHCA_DATA_BUFFER_SIZE_IOVA = 88;
/**
 * Bytes of `struct mlx5_vhca_data_buffer` with an `sg_append_table` and the sequential-access cursor
 * (kernel: cmd.h ≤ v6.15, 64-bit).
 */
export const MLX5_VHCA_DATA_BUFFER_SIZE_SG = 120;
/**
 * Bytes of `struct mlx5_vf_migration_header`: le64 record_size, le32 flags, le32 tag (kernel:
 * drivers/vfio/pci/mlx5/cmd.h).
 */
export const MLX5_VF_MIGRATION_HEADER_SIZE = 16;
/**
 * Bytes of `struct mlx5_vf_migration_tag_stop_copy_data`: le64 stop_copy_size (kernel:
 * drivers/vfio/pci/mlx5/cmd.h).
 */
export const MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE = 8;
/** Record header flag: a reader may skip an unknown tag (kernel: `MLX5_MIGF_HEADER_FLAGS_TAG_OPTIONAL`). */
export const MLX5_MIGF_HEADER_FLAGS_TAG_OPTIONAL = 1 << 0;
/** Record header flag value: the tag must be understood (kernel: `MLX5_MIGF_HEADER_FLAGS_TAG_MANDATORY`). */
export const MLX5_MIGF_HEADER_FLAGS_TAG_MANDATORY = 0;
/** Record tag: firmware image data (kernel: `MLX5_MIGF_HEADER_TAG_FW_DATA`). */
export const MLX5_MIGF_HEADER_TAG_FW_DATA = 0;
/**
 * Record tag: the stop-copy buffer size the target should prepare (kernel:
 * `MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE`).
 */
export const MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE = 1 << 0;
/** Query flag: incremental size (kernel: `MLX5VF_QUERY_INC`). */
export const MLX5VF_QUERY_INC = 1 << 0;
/** Query flag: the final image (kernel: `MLX5VF_QUERY_FINAL`). */
export const MLX5VF_QUERY_FINAL = 1 << 1;
/** Query flag: pre-copy cleanup (kernel: `MLX5VF_QUERY_CLEANUP`). */
export const MLX5VF_QUERY_CLEANUP = 1 << 2;

/** Metadata kind: the buffer struct (kernel: the `kzalloc` of `mlx5vf_alloc_data_buffer`, cmd.c). */
export const MLX5_META_DATA_BUFFER = 'mlx5_vhca_data_buffer';
/**
 * Metadata kind: the page-pointer array of an `'iova'` buffer, 8 bytes a page (kernel: the `kvcalloc`
 * of `mlx5vf_add_pages`, cmd.c).
 */
export const MLX5_META_PAGE_LIST = 'mlx5_page_list';
/**
 * Metadata kind: the transient bulk page array of `'sg'` allocation, ≤ 512 pointers (kernel: the
 * `kvzalloc` of `mlx5vf_add_migration_pages`, cmd.c ≤ v6.15).
 */
export const MLX5_META_BULK_PAGE_LIST = 'mlx5_bulk_page_list';
/** Metadata kind: `create_mkey_in` with its MTT (kernel: `alloc_mkey_in`, cmd.c). */
export const MLX5_META_MKEY_IN = 'mlx5_mkey_in';
/**
 * Every metadata kind this package counts; scatterlists are counted by dma-api as `"scatterlist"`
 * (model only: no kernel counterpart).
 */
export const MLX5_META_KINDS: readonly string[] = [
  MLX5_META_DATA_BUFFER,
  MLX5_META_PAGE_LIST,
  MLX5_META_BULK_PAGE_LIST,
  MLX5_META_MKEY_IN,
];

/** Migration file states (kernel: `enum mlx5_vf_migf_state`, cmd.h); 0 = none yet. */
export const MLX5_MIGF_STATE_ERROR = 1;
/**
 * A pre-copy SAVE failed; only a full final image will be read (kernel:
 * `MLX5_MIGF_STATE_PRE_COPY_ERROR`).
 */
export const MLX5_MIGF_STATE_PRE_COPY_ERROR = 2;
/** The initial pre-copy image is queued (kernel: `MLX5_MIGF_STATE_PRE_COPY`). */
export const MLX5_MIGF_STATE_PRE_COPY = 3;
/** A stop-copy SAVE is running (kernel: `MLX5_MIGF_STATE_SAVE_STOP_COPY_CHUNK`). */
export const MLX5_MIGF_STATE_SAVE_STOP_COPY_CHUNK = 4;
/** The final image is queued: the stream ends after it (kernel: `MLX5_MIGF_STATE_COMPLETE`). */
export const MLX5_MIGF_STATE_COMPLETE = 5;

/** Resume write states (kernel: `enum mlx5_vf_load_state`, cmd.h). */
export const MLX5_VF_LOAD_STATE_READ_HEADER = 0;
/**
 * Make the header buffer big enough for the record's data (kernel:
 * `MLX5_VF_LOAD_STATE_PREP_HEADER_DATA`).
 */
export const MLX5_VF_LOAD_STATE_PREP_HEADER_DATA = 1;
/** Copy an optional record's data (kernel: `MLX5_VF_LOAD_STATE_READ_HEADER_DATA`). */
export const MLX5_VF_LOAD_STATE_READ_HEADER_DATA = 2;
/** Make the image buffer big enough (kernel: `MLX5_VF_LOAD_STATE_PREP_IMAGE`). */
export const MLX5_VF_LOAD_STATE_PREP_IMAGE = 3;
/** Copy image bytes (kernel: `MLX5_VF_LOAD_STATE_READ_IMAGE`). */
export const MLX5_VF_LOAD_STATE_READ_IMAGE = 4;
/** Issue LOAD_VHCA_STATE (kernel: `MLX5_VF_LOAD_STATE_LOAD_IMAGE`). */
export const MLX5_VF_LOAD_STATE_LOAD_IMAGE = 5;

/** The operations of a migration file (kernel: `mlx5vf_save_fops` / `mlx5vf_resume_fops`). */
export interface Mlx5vfFileOps {
  read?: (migf: Mlx5VfMigrationFile, buf: Uint8Array) => number;
  write?: (migf: Mlx5VfMigrationFile, buf: Uint8Array) => number;
  ioctl?: (migf: Mlx5VfMigrationFile, cmd: number, arg: VfioPrecopyInfo) => number;
  release: (migf: Mlx5VfMigrationFile) => void;
}

/**
 * A migration data buffer (kernel: `struct mlx5_vhca_data_buffer`, cmd.h). Which fields are in
 * use depends on `mapping`: `pageList` + `state` for `'iova'`, `table` + the cursor for `'sg'`.
 */
export class Mlx5VhcaDataBuffer {
  readonly migf: Mlx5VfMigrationFile;
  readonly mapping: Mlx5vfMapping;
  /** DMA direction: FROM_DEVICE (save), TO_DEVICE (load) or NONE (header, never mapped). */
  dmaDir: DmaDataDirection;
  /** Stream position of the first byte (kernel: `start_pos`). */
  startPos = 0;
  /** Bytes of data held (kernel: `length`). */
  length = 0;
  /** Pages held (kernel: `npages`). */
  npages = 0;
  /** Firmware memory key over the pages, valid while the buffer is mapped. */
  mkey = 0;
  /**
   * `'iova'`: the MTT of the `create_mkey_in` command kept while mapped (a big-endian u64 DMA
   * address per page; the fallback's unmap reads its addresses back); null while unmapped.
   */
  mkeyIn: Uint8Array | null = null;
  /** `'sg'`: mapped, the memory key created (kernel ≤ v6.15: `dmaed`; its MTT was freed after CREATE_MKEY). */
  dmaed = false;
  /** Chunk number in chunk mode (kernel: `stop_copy_chunk_num`); always 0 here. */
  stopCopyChunkNum = 0;
  /** `'iova'`: the pages (kernel: `page_list`). */
  pageList: number[] | null = null;
  /** `'iova'`: the IOVA range, when `dma_iova_try_alloc` succeeded (kernel: `state`). */
  readonly state = new DmaIovaState();
  /** `'sg'`: the pages as a scatterlist (kernel: `table`). */
  readonly table = new SgAppendTable();
  /** `'sg'` cursor: entry holding `lastOffset` (kernel: `last_offset_sg`). */
  lastOffsetSg: Scatterlist | null = null;
  /** `'sg'` cursor: its index (kernel: `sg_last_entry`). */
  sgLastEntry = 0;
  /** `'sg'` cursor: buffer offset where `lastOffsetSg` starts (kernel: `last_offset`). */
  lastOffset = 0;
  /** Freed (model only: catches use after free). */
  freed = false;

  constructor(migf: Mlx5VfMigrationFile, dmaDir: DmaDataDirection) {
    this.migf = migf;
    this.mapping = migf.mvdev.mapping;
    this.dmaDir = dmaDir;
  }

  /** Bytes of the struct as the kernel allocates it. */
  get structSize(): number {
    return this.mapping === 'iova' ? MLX5_VHCA_DATA_BUFFER_SIZE_IOVA : MLX5_VHCA_DATA_BUFFER_SIZE_SG;
  }
}

/**
 * A migration data file: the saving or resuming stream and its buffers (kernel: `struct
 * mlx5_vf_migration_file` plus the anon-inode `struct file` it lives behind). A saving file is
 * opened read-only, a resuming file write-only; both are streams (no position for pread/pwrite).
 */
export class Mlx5VfMigrationFile implements VfioDataFile {
  readonly mvdev: Mlx5vfPciCoreDevice;
  /** `'r'` for saving, `'w'` for resuming (kernel: O_RDONLY / O_WRONLY). */
  readonly fmode: 'r' | 'w';
  readonly fops: Mlx5vfFileOps;
  /** `MLX5_MIGF_STATE_*` or 0. */
  state = 0;
  /** Stream position (kernel: `filp->f_pos`). */
  fPos = 0;
  /** Stop-copy data buffers prepared ahead (kernel: `buf[MAX_NUM_CHUNKS]`). */
  readonly buf: (Mlx5VhcaDataBuffer | null)[] = new Array(MAX_NUM_CHUNKS).fill(null);
  /** Their record header buffers (kernel: `buf_header[MAX_NUM_CHUNKS]`). */
  readonly bufHeader: (Mlx5VhcaDataBuffer | null)[] = new Array(MAX_NUM_CHUNKS).fill(null);
  /** Buffers with data to read, in stream order (kernel: `buf_list`). */
  readonly bufList: Mlx5VhcaDataBuffer[] = [];
  /** Read-out buffers kept for reuse (kernel: `avail_list`). */
  readonly availList: Mlx5VhcaDataBuffer[] = [];
  /** Stream bytes produced (saving) or consumed into records (resuming) (kernel: `max_pos`). */
  maxPos = 0;
  /** Bytes of the initial pre-copy data (kernel: `pre_copy_initial_bytes`). */
  preCopyInitialBytes = 0;
  /** Resuming: the current record's size and tag. */
  recordSize = 0;
  recordTag = 0;
  /** Resuming: the stop-copy size the source announced (kernel: `stop_copy_prep_size`). */
  stopCopyPrepSize = 0;
  /** Resuming: `MLX5_VF_LOAD_STATE_*`. */
  loadState = MLX5_VF_LOAD_STATE_READ_HEADER;
  /** The last reference was dropped and the driver's release ran. */
  released = false;
  /** The user closed its fd. */
  userClosed = false;
  /**
   * References to the file: the user's fd, and the driver's while the device holds it (kernel:
   * `f_count`).
   */
  #refs = 1;

  constructor(mvdev: Mlx5vfPciCoreDevice, fmode: 'r' | 'w', fops: Mlx5vfFileOps) {
    this.mvdev = mvdev;
    this.fmode = fmode;
    this.fops = fops;
  }

  /** read(2): -EBADF unless open for reading, else the driver's read. */
  read(buf: Uint8Array): number {
    if (this.userClosed || this.fmode !== 'r') return -Errno.EBADF;
    return this.fops.read === undefined ? -Errno.EINVAL : this.fops.read(this, buf);
  }

  /** pread(2): -ESPIPE (kernel: a stream_open'ed file has no FMODE_PREAD). */
  pread(_buf: Uint8Array, _pos: number): number {
    return this.userClosed ? -Errno.EBADF : -Errno.ESPIPE;
  }

  /** write(2): -EBADF unless open for writing, else the driver's write. */
  write(buf: Uint8Array): number {
    if (this.userClosed || this.fmode !== 'w') return -Errno.EBADF;
    return this.fops.write === undefined ? -Errno.EINVAL : this.fops.write(this, buf);
  }

  /** pwrite(2): -ESPIPE. */
  pwrite(_buf: Uint8Array, _pos: number): number {
    return this.userClosed ? -Errno.EBADF : -Errno.ESPIPE;
  }

  /** ioctl(2): the driver's ioctl, or -ENOTTY when it has none. */
  ioctl(cmd: number, arg: VfioPrecopyInfo): number {
    if (this.userClosed) return -Errno.EBADF;
    return this.fops.ioctl === undefined ? -Errno.ENOTTY : this.fops.ioctl(this, cmd, arg);
  }

  /**
   * close(2) of the user's fd: drops the user's reference; the driver's release runs when no
   * reference is left (the device's own reference goes when it leaves the saving or resuming
   * states). Later calls on this fd return -EBADF.
   */
  release(): void {
    if (this.userClosed) return;
    this.userClosed = true;
    this.fput();
  }

  /** Takes a reference (kernel: `get_file`). */
  getFile(): void {
    this.#refs++;
  }

  /** Drops a reference; the last one runs the driver's release (kernel: `fput`). */
  fput(): void {
    if (this.#refs <= 0) {
      throw new VfioError('fput: file has no reference left', { rule: 'fput: refcount underflow' });
    }
    this.#refs--;
    if (this.#refs === 0) {
      this.released = true;
      this.fops.release(this);
    }
  }
}

/**
 * The DMA logging tracker's state (kernel: `struct mlx5_vhca_page_tracker`, reduced to what the
 * IOMMU-fed tracker needs).
 */
export interface Mlx5vfPageTracker {
  /** Tracked ranges (combined to at most `maxRanges`). */
  ranges: VfioIovaRangeNode[];
  /** Tracking granularity chosen at start. */
  pageSize: number;
  /** The tracker failed (kernel: `is_err`). */
  isErr: boolean;
}

/** Options of a model mlx5 VF under the vfio driver. */
export interface Mlx5vfPciDeviceOptions {
  name?: string;
  /** The PF device through which migration buffers are DMA-mapped (kernel: `mvdev->mdev->device`). */
  pf: Device;
  /** Bytes of device memory in the migratable state (multiple of 4 KiB). */
  memorySize: number;
  /** `VFIO_MIGRATION_*` flags (default STOP_COPY | P2P | PRE_COPY, as mlx5 sets). */
  migrationFlags?: number;
  /** Data buffer mapping (default `'iova'`). */
  mapping?: Mlx5vfMapping;
  /** Guest memory the device DMAs into; enables DMA logging over its domain's dirty bits. */
  guest?: VfioIommu;
  /** Called for every DMA write into guest memory. */
  onGuestWrite?: (iova: number, length: number) => void;
  /** Most ranges the tracker takes; more are combined (kernel: `pg_track_max_num_range`, default 4). */
  trackerMaxRanges?: number;
  /** Fill device memory from the machine's PRNG at creation (default true). */
  randomize?: boolean;
}

/**
 * An mlx5 VF bound to mlx5-vfio-pci (kernel: `struct mlx5vf_pci_core_device`, cmd.h), which is
 * also the VFIO core's `vfio_device`. Create it with `mlx5vfPciCreateDevice` (mlx5-main), which
 * installs the migration and logging ops and opens it in RUNNING.
 */
export class Mlx5vfPciCoreDevice implements VfioDevice {
  readonly name: string;
  readonly machine: Machine;
  /** The PF's DMA device (kernel: `mdev->device`). */
  readonly mdev: Device;
  /** The hardware: state, firmware commands, DMA. */
  readonly vhca: Mlx5Vhca;
  readonly mapping: Mlx5vfMapping;
  migrationFlags: number;
  migOps: VfioMigrationOps | undefined = undefined;
  logOps: VfioLogOps | undefined = undefined;
  warnCount = 0;
  /** Current migration state (kernel: `mig_state`). */
  migState: VfioDeviceMigState = VFIO_DEVICE_STATE_RUNNING;
  savingMigf: Mlx5VfMigrationFile | null = null;
  resumingMigf: Mlx5VfMigrationFile | null = null;
  /** The PF went away (kernel: `mdev_detach`). */
  mdevDetach = false;
  /** Chunk mode (kernel: `chunk_mode`); not modelled, always false. */
  readonly chunkMode = false;
  /** DMA logging is on (kernel: `log_active`). */
  logActive = false;
  tracker: Mlx5vfPageTracker = { ranges: [], pageSize: PAGE_SIZE, isErr: false };
  readonly guest: VfioIommu | undefined;
  readonly trackerMaxRanges: number;

  constructor(options: Mlx5vfPciDeviceOptions) {
    this.name = options.name ?? 'mlx5-vfio-pci';
    this.mdev = options.pf;
    this.machine = options.pf.machine;
    this.mapping = options.mapping ?? 'iova';
    this.migrationFlags =
      options.migrationFlags ?? VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
    if ((this.migrationFlags & VFIO_MIGRATION_STOP_COPY) === 0) {
      throw new VfioError(`${this.name}: migration flags must include VFIO_MIGRATION_STOP_COPY`, {
        rule: 'vfio_device_feature_migration: STOP_COPY mandatory',
      });
    }
    this.guest = options.guest;
    this.trackerMaxRanges = options.trackerMaxRanges ?? 4;
    this.vhca = new Mlx5Vhca(this.machine, {
      name: this.name,
      memorySize: options.memorySize,
      pf: options.pf,
      ...(options.guest === undefined
        ? {}
        : { guest: { domain: options.guest.domain, size: options.guest.mappedBytes } }),
      ...(options.onGuestWrite === undefined ? {} : { onGuestWrite: options.onGuestWrite }),
    });
    if (options.randomize ?? true) this.vhca.randomize();
  }

  /** Current migration state (kernel: `mig_state`, as `migration_get_state` reads it). */
  getState(): VfioDeviceMigState {
    return this.migState;
  }

  /** Drives the device to `newState` through the installed migration ops: a data fd, null, or -errno. */
  setState(newState: number): VfioDataFile | null | number {
    const ops = this.migOps;
    if (ops === undefined) return -Errno.ENOTTY;
    return ops.migrationSetState(this, newState);
  }

  /** Lets the device run `steps` operations (nothing happens while it is suspended). */
  run(steps: number): number {
    return this.vhca.run(steps);
  }
}

// ---------------------------------------------------------------------------------------------
// Pages, page lookup and DMA mapping of data buffers
// ---------------------------------------------------------------------------------------------

/** `alloc_pages_bulk`: up to `n` order-0 pages pushed onto `out`; returns how many were allocated. */
function allocPagesBulk(machine: Machine, n: number, out: number[]): number {
  let filled = 0;
  while (filled < n) {
    const pa = machine.pages.allocPages(0);
    if (pa === 0) break;
    out.push(pa);
    filled++;
  }
  return filled;
}

/**
 * Allocates the `create_mkey_in` command for `npages` (kernel: `alloc_mkey_in`); returns its MTT,
 * sized in octwords of two entries (`ALIGN(npages, 2)`).
 */
function allocMkeyIn(machine: Machine, npages: number): Uint8Array {
  machine.counters.kmalloc(MLX5_META_MKEY_IN, MLX5_CREATE_MKEY_IN_SIZE + 8 * alignUp(npages, 2));
  return new Uint8Array(8 * alignUp(npages, 2));
}

/** Frees `create_mkey_in` (kernel: `kvfree(mkey_in)`). */
function freeMkeyIn(machine: Machine, mtt: Uint8Array): void {
  machine.counters.kfree(MLX5_META_MKEY_IN, MLX5_CREATE_MKEY_IN_SIZE + mtt.length);
}

/** Writes MTT entry `i` as a big-endian u64 (kernel: `cpu_to_be64`). */
function mttSet(mtt: Uint8Array, i: number, addr: number): void {
  const hi = Math.floor(addr * INV_TWO32);
  const lo = lo32(addr);
  const o = 8 * i;
  mtt[o] = (hi >>> 24) & 0xff;
  mtt[o + 1] = (hi >>> 16) & 0xff;
  mtt[o + 2] = (hi >>> 8) & 0xff;
  mtt[o + 3] = hi & 0xff;
  mtt[o + 4] = (lo >>> 24) & 0xff;
  mtt[o + 5] = (lo >>> 16) & 0xff;
  mtt[o + 6] = (lo >>> 8) & 0xff;
  mtt[o + 7] = lo & 0xff;
}

/** Reads MTT entry `i` (kernel: `be64_to_cpu`). */
export function mttGet(mtt: Uint8Array, i: number): number {
  const o = 8 * i;
  const hi =
    (((mtt[o] as number) << 24) |
      ((mtt[o + 1] as number) << 16) |
      ((mtt[o + 2] as number) << 8) |
      (mtt[o + 3] as number)) >>>
    0;
  const lo =
    (((mtt[o + 4] as number) << 24) |
      ((mtt[o + 5] as number) << 16) |
      ((mtt[o + 6] as number) << 8) |
      (mtt[o + 7] as number)) >>>
    0;
  return hi * TWO32 + lo;
}

/** CREATE_MKEY over the first `npages` MTT entries (kernel: `create_mkey`). */
function createMkey(mvdev: Mlx5vfPciCoreDevice, npages: number, mtt: Uint8Array): number {
  const table = new Float64Array(npages);
  for (let i = 0; i < npages; i++) table[i] = mttGet(mtt, i);
  return mvdev.vhca.createMkey(table);
}

/**
 * Unmaps `npages` pages of an `'iova'` buffer (kernel: `unregister_dma_pages`, cmd.c): with an
 * IOVA range, one `dma_iova_destroy` of `npages` pages; else a streaming unmap of each MTT
 * address, last page first.
 */
export function unregisterDmaPages(
  mdev: Device,
  npages: number,
  mkeyIn: Uint8Array,
  state: DmaIovaState,
  dir: DmaDataDirection,
): void {
  if (dmaUseIova(state)) {
    dmaIovaDestroy(mdev, state, npages * PAGE_SIZE, dir, 0);
  } else {
    for (let i = npages - 1; i >= 0; i--) dmaUnmapPhys(mdev, mttGet(mkeyIn, i), PAGE_SIZE, dir);
  }
}

/**
 * Maps `npages` pages for the device and fills the MTT (kernel: `register_dma_pages`, cmd.c,
 * v6.16+): when `dma_iova_try_alloc` gets one IOVA range, each page is linked at `i *
 * PAGE_SIZE` and the MTT holds `state.addr + i * PAGE_SIZE`, then one `dma_iova_sync`; else each
 * page is mapped on its own (`dma_map_page`; `dma_map_phys` here) and its address stored. Any
 * error unmaps the pages done and is returned. Throws `VfioError` for DMA_NONE (kernel: WARN).
 */
export function registerDmaPages(
  mdev: Device,
  npages: number,
  pageList: readonly number[],
  mkeyIn: Uint8Array,
  state: DmaIovaState,
  dir: DmaDataDirection,
): number {
  if (dir === DMA_NONE) {
    throw new VfioError('register_dma_pages: DMA_NONE buffer', { rule: 'register_dma_pages: DMA_NONE' });
  }
  let i = 0;
  let err = 0;
  if (dmaIovaTryAlloc(mdev, state, 0, npages * PAGE_SIZE)) {
    let addr = state.addr;
    let mapped = 0;
    for (; i < npages; i++) {
      err = dmaIovaLink(mdev, state, pageList[i] as number, mapped, PAGE_SIZE, dir, 0);
      if (err !== 0) break;
      mttSet(mkeyIn, i, addr);
      addr += PAGE_SIZE;
      mapped += PAGE_SIZE;
    }
    if (err === 0) err = dmaIovaSync(mdev, state, 0, mapped);
  } else {
    for (; i < npages; i++) {
      const addr = dmaMapPhys(mdev, pageList[i] as number, PAGE_SIZE, dir);
      if (dmaMappingError(mdev, addr)) {
        err = -Errno.ENOMEM;
        break;
      }
      mttSet(mkeyIn, i, addr);
    }
  }
  if (err !== 0) unregisterDmaPages(mdev, i, mkeyIn, state, dir);
  return err;
}

/** True once a buffer is DMA-mapped with a memory key (kernel: `buf->mkey_in` v6.16+, `buf->dmaed` ≤ v6.15). */
export function mlx5vfBufferDmaed(buf: Mlx5VhcaDataBuffer): boolean {
  return buf.mapping === 'iova' ? buf.mkeyIn !== null : buf.dmaed;
}

/**
 * DMA-maps a buffer for the device and creates its memory key (kernel: `mlx5vf_dma_data_buffer`,
 * cmd.c). `'iova'`: `alloc_mkey_in` + `register_dma_pages`, the command kept for the buffer's
 * life; `'sg'` (≤ v6.15 `_create_mkey`): `dma_map_sgtable` of the whole table, then a transient
 * command whose MTT is filled one address per page from the DMA segments and freed once the key
 * exists. Returns 0,
 * -ENOTCONN, -EINVAL (already mapped or empty), or the mapping error with nothing left mapped.
 */
export function mlx5vfDmaDataBuffer(buf: Mlx5VhcaDataBuffer): number {
  const mvdev = buf.migf.mvdev;
  const mdev = mvdev.mdev;
  const machine = mvdev.machine;
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  if (mlx5vfBufferDmaed(buf) || buf.npages === 0) return -Errno.EINVAL;
  if (buf.mapping === 'sg') {
    const sgt = buf.table.sgt;
    const ret = dmaMapSgtable(mdev, sgt, buf.dmaDir, 0);
    if (ret !== 0) return ret;
    const mtt = allocMkeyIn(machine, buf.npages);
    let i = 0;
    let sg = sgt.sgl;
    for (let n = 0; n < sgt.nents && sg !== null; n++, sg = sgNext(sg)) {
      const base = sgDmaAddress(sg);
      const len = sgDmaLen(sg);
      for (let off = 0; off < len && i < buf.npages; off += PAGE_SIZE) mttSet(mtt, i++, base + off);
    }
    buf.mkey = createMkey(mvdev, buf.npages, mtt);
    freeMkeyIn(machine, mtt);
    buf.dmaed = true;
    return 0;
  }
  const mtt = allocMkeyIn(machine, buf.npages);
  const ret = registerDmaPages(mdev, buf.npages, buf.pageList as number[], mtt, buf.state, buf.dmaDir);
  if (ret !== 0) {
    freeMkeyIn(machine, mtt);
    return ret;
  }
  buf.mkeyIn = mtt;
  buf.mkey = createMkey(mvdev, buf.npages, mtt);
  return 0;
}

/**
 * `'sg'`: appends `npages` fresh pages to the buffer's sg_append_table, up to 512 at a time
 * through a transient page array (kernel: `mlx5vf_add_migration_pages`, cmd.c ≤ v6.15;
 * `sg_alloc_append_table_from_pages` with max_segment UINT_MAX and left_pages
 * SG_MAX_SINGLE_ALLOC, so physically contiguous pages merge into one entry). Returns 0 or
 * -ENOMEM; pages appended before a failure stay in the table for `mlx5vfFreeDataBuffer`.
 */
export function mlx5vfAddMigrationPages(buf: Mlx5VhcaDataBuffer, npages: number): number {
  const machine = buf.migf.mvdev.machine;
  let toAlloc = npages;
  let toFill = Math.min(npages, PAGE_SIZE / 8);
  const listBytes = toFill * 8;
  machine.counters.kmalloc(MLX5_META_BULK_PAGE_LIST, listBytes);
  let ret = 0;
  do {
    const pageList: number[] = [];
    const filled = allocPagesBulk(machine, toFill, pageList);
    if (filled === 0) {
      ret = -Errno.ENOMEM;
      break;
    }
    toAlloc -= filled;
    ret = sgAllocAppendTableFromPages(
      machine,
      buf.table,
      pageList,
      filled,
      0,
      filled * PAGE_SIZE,
      0xffffffff,
      SG_MAX_SINGLE_ALLOC,
    );
    if (ret !== 0) {
      for (let i = filled - 1; i >= 0; i--) machine.pages.freePages(pageList[i] as number, 0);
      break;
    }
    buf.npages += filled;
    toFill = Math.min(toAlloc, PAGE_SIZE / 8);
  } while (toAlloc > 0);
  machine.counters.kfree(MLX5_META_BULK_PAGE_LIST, listBytes);
  return ret;
}

/**
 * `'iova'`: allocates the page-pointer array and `npages` pages into it (kernel:
 * `mlx5vf_add_pages`, cmd.c v6.16+), bulk allocating until full. Returns 0, or -ENOMEM when a
 * bulk allocation gets no page at all, with nothing left allocated.
 */
export function mlx5vfAddPages(buf: Mlx5VhcaDataBuffer, npages: number): number {
  const machine = buf.migf.mvdev.machine;
  machine.counters.kmalloc(MLX5_META_PAGE_LIST, npages * 8);
  const list: number[] = [];
  while (list.length < npages) {
    if (allocPagesBulk(machine, npages - list.length, list) === 0) {
      for (let i = list.length - 1; i >= 0; i--) machine.pages.freePages(list[i] as number, 0);
      machine.counters.kfree(MLX5_META_PAGE_LIST, npages * 8);
      return -Errno.ENOMEM;
    }
  }
  buf.pageList = list;
  return 0;
}

/**
 * The page holding buffer offset `offset` (page-aligned), as a physical address, or 0 beyond the
 * buffer (kernel: `mlx5vf_get_migration_page`). `'iova'`: an index into the page list; `'sg'`:
 * a walk of the sg list from a cursor cached for sequential access, restarting from the head
 * when asked for an earlier offset.
 */
export function mlx5vfGetMigrationPage(buf: Mlx5VhcaDataBuffer, offset: number): number {
  if (buf.mapping === 'iova') {
    const entry = Math.floor(offset / PAGE_SIZE);
    if (entry >= buf.npages || buf.pageList === null) return 0;
    return buf.pageList[entry] as number;
  }
  const sgt = buf.table.sgt;
  if (offset < buf.lastOffset || buf.lastOffsetSg === null) {
    buf.lastOffset = 0;
    buf.lastOffsetSg = sgt.sgl;
    buf.sgLastEntry = 0;
  }
  let curOffset = buf.lastOffset;
  let sg = buf.lastOffsetSg;
  for (let i = 0; i < sgt.origNents - buf.sgLastEntry && sg !== null; i++, sg = sgNext(sg)) {
    if (offset < sg.length + curOffset) {
      buf.lastOffsetSg = sg;
      buf.sgLastEntry += i;
      buf.lastOffset = curOffset;
      return sg.page + Math.floor((offset - curOffset) / PAGE_SIZE) * PAGE_SIZE;
    }
    curOffset += sg.length;
  }
  return 0;
}

/**
 * Frees every page of an `'sg'` buffer by walking its table (kernel: `for_each_sgtable_page` +
 * `__free_page`).
 */
function freeSgPages(machine: Machine, table: SgAppendTable): void {
  let sg = table.sgt.sgl;
  for (let n = 0; n < table.sgt.origNents && sg !== null; n++, sg = sgNext(sg)) {
    for (let off = 0; off < sg.offset + sg.length; off += PAGE_SIZE)
      machine.pages.freePages(sg.page + off, 0);
  }
}

/**
 * Frees a buffer: memory key, DMA mapping and MTT when mapped, then pages and page list or sg
 * table, then the struct (kernel: `mlx5vf_free_data_buffer`, cmd.c). Throws `VfioError` for a
 * buffer freed twice.
 */
export function mlx5vfFreeDataBuffer(buf: Mlx5VhcaDataBuffer): void {
  if (buf.freed)
    throw new VfioError('mlx5vf_free_data_buffer: buffer freed twice', {
      rule: 'mlx5vf_free_data_buffer: double free',
    });
  const mvdev = buf.migf.mvdev;
  const machine = mvdev.machine;
  if (buf.mkeyIn !== null) {
    mvdev.vhca.destroyMkey(buf.mkey);
    unregisterDmaPages(mvdev.mdev, buf.npages, buf.mkeyIn, buf.state, buf.dmaDir);
    freeMkeyIn(machine, buf.mkeyIn);
    buf.mkeyIn = null;
  }
  if (buf.dmaed) {
    mvdev.vhca.destroyMkey(buf.mkey);
    dmaUnmapSgtable(mvdev.mdev, buf.table.sgt, buf.dmaDir, 0);
    buf.dmaed = false;
  }
  if (buf.mapping === 'iova') {
    if (buf.pageList !== null) {
      for (let i = buf.pageList.length - 1; i >= 0; i--)
        machine.pages.freePages(buf.pageList[i] as number, 0);
      machine.counters.kfree(MLX5_META_PAGE_LIST, buf.pageList.length * 8);
      buf.pageList = null;
    }
  } else {
    freeSgPages(machine, buf.table);
    sgFreeAppendTable(machine, buf.table);
    buf.lastOffsetSg = null;
  }
  buf.npages = 0;
  buf.freed = true;
  machine.counters.kfree(MLX5_META_DATA_BUFFER, buf.structSize);
}

/**
 * Allocates a buffer of `npages` pages and, unless `dmaDir` is DMA_NONE, maps it for the device
 * (kernel: `mlx5vf_alloc_data_buffer`, cmd.c). Returns the buffer or -errno with everything
 * freed.
 */
export function mlx5vfAllocDataBuffer(
  migf: Mlx5VfMigrationFile,
  npages: number,
  dmaDir: DmaDataDirection,
): Mlx5VhcaDataBuffer | number {
  const buf = new Mlx5VhcaDataBuffer(migf, dmaDir);
  migf.mvdev.machine.counters.kmalloc(MLX5_META_DATA_BUFFER, buf.structSize);
  if (npages > 0) {
    let ret: number;
    if (buf.mapping === 'iova') {
      ret = mlx5vfAddPages(buf, npages);
      if (ret === 0) buf.npages = npages;
    } else {
      ret = mlx5vfAddMigrationPages(buf, npages);
    }
    if (ret === 0 && dmaDir !== DMA_NONE) ret = mlx5vfDmaDataBuffer(buf);
    if (ret !== 0) {
      mlx5vfFreeDataBuffer(buf);
      return ret;
    }
  }
  return buf;
}

/** Puts a buffer on the file's reuse list (kernel: `mlx5vf_put_data_buffer`, cmd.c). */
export function mlx5vfPutDataBuffer(buf: Mlx5VhcaDataBuffer): void {
  buf.stopCopyChunkNum = 0;
  buf.migf.availList.push(buf);
}

/**
 * A buffer of at least `npages` pages in direction `dmaDir` (kernel: `mlx5vf_get_data_buffer`,
 * cmd.c): the first reusable buffer of that direction big enough is taken from the reuse list
 * (smaller ones of that direction met on the way are freed), else a new one is allocated.
 * Returns the buffer or -errno.
 */
export function mlx5vfGetDataBuffer(
  migf: Mlx5VfMigrationFile,
  npages: number,
  dmaDir: DmaDataDirection,
): Mlx5VhcaDataBuffer | number {
  if (migf.mvdev.mdevDetach) return -Errno.ENOTCONN;
  const freeList: Mlx5VhcaDataBuffer[] = [];
  let found: Mlx5VhcaDataBuffer | undefined;
  for (let i = 0; i < migf.availList.length; i++) {
    const b = migf.availList[i] as Mlx5VhcaDataBuffer;
    if (b.dmaDir !== dmaDir) continue;
    migf.availList.splice(i, 1);
    i--;
    if (b.npages >= npages) {
      found = b;
      break;
    }
    freeList.push(b);
  }
  const buf = found ?? mlx5vfAllocDataBuffer(migf, npages, dmaDir);
  for (const b of freeList) mlx5vfFreeDataBuffer(b);
  return buf;
}

/**
 * Frees every buffer of a migration file: prepared stop-copy and header buffers, the data list
 * and the reuse list (kernel: `mlx5fv_cmd_clean_migf_resources`, cmd.c, whose name has the
 * kernel's own letter swap).
 */
export function mlx5fvCmdCleanMigfResources(migf: Mlx5VfMigrationFile): void {
  for (let i = 0; i < MAX_NUM_CHUNKS; i++) {
    const b = migf.buf[i];
    if (b !== null && b !== undefined) {
      mlx5vfFreeDataBuffer(b);
      migf.buf[i] = null;
    }
    const h = migf.bufHeader[i];
    if (h !== null && h !== undefined) {
      mlx5vfFreeDataBuffer(h);
      migf.bufHeader[i] = null;
    }
  }
  const all = [...migf.bufList, ...migf.availList];
  migf.bufList.length = 0;
  migf.availList.length = 0;
  for (const b of all) mlx5vfFreeDataBuffer(b);
}

// ---------------------------------------------------------------------------------------------
// Firmware commands
// ---------------------------------------------------------------------------------------------

/** SUSPEND_VHCA with `opMod` (kernel: `mlx5vf_cmd_suspend_vhca`, cmd.c). Returns 0 or -errno. */
export function mlx5vfCmdSuspendVhca(mvdev: Mlx5vfPciCoreDevice, opMod: number): number {
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  return mvdev.vhca.suspend(opMod);
}

/** RESUME_VHCA with `opMod` (kernel: `mlx5vf_cmd_resume_vhca`, cmd.c). Returns 0 or -errno. */
export function mlx5vfCmdResumeVhca(mvdev: Mlx5vfPciCoreDevice, opMod: number): number {
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  return mvdev.vhca.resume(opMod);
}

/**
 * The state sizes a query returns (kernel: the `state_size`/`total_size` out-parameters of
 * `mlx5vf_cmd_query_vhca_migration_state`, cmd.c).
 */
export interface Mlx5vfStateSize {
  /** Bytes the next SAVE needs (kernel: `*state_size`). */
  stateSize: number;
  /** Bytes of the whole remaining state (kernel: `*total_size`). */
  totalSize: number;
}

/**
 * QUERY_VHCA_MIGRATION_STATE (kernel: `mlx5vf_cmd_query_vhca_migration_state`, cmd.c): the
 * size of the next image, full or incremental (`MLX5VF_QUERY_INC`), final (`_FINAL`) or for the
 * pre-copy cleanup (`_CLEANUP`). After a pre-copy error an incremental query reports 0 unless it
 * is for the final image, which is then a full one; a saving file in ERROR gives -ENODEV.
 */
export function mlx5vfCmdQueryVhcaMigrationState(
  mvdev: Mlx5vfPciCoreDevice,
  out: Mlx5vfStateSize,
  queryFlags: number,
): number {
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  let flags = queryFlags;
  if ((flags & MLX5VF_QUERY_INC) !== 0) {
    const migf = mvdev.savingMigf;
    if (migf === null) return -Errno.EINVAL;
    if (migf.state === MLX5_MIGF_STATE_PRE_COPY_ERROR && (flags & MLX5VF_QUERY_CLEANUP) === 0) {
      if ((flags & MLX5VF_QUERY_FINAL) === 0) {
        out.stateSize = 0;
        return 0;
      }
      flags &= ~MLX5VF_QUERY_INC;
    }
    if (migf.state === MLX5_MIGF_STATE_ERROR) return -Errno.ENODEV;
  }
  const q = mvdev.vhca.queryMigrationState(
    (flags & MLX5VF_QUERY_INC) !== 0,
    (flags & MLX5VF_QUERY_FINAL) !== 0,
  );
  out.stateSize = q.requiredUmemSize;
  out.totalSize = mvdev.chunkMode ? q.remainingTotalSize : q.requiredUmemSize;
  return 0;
}

/** Writes a 16-byte record header (le64 size, le32 flags, le32 tag) at the start of `out`. */
function putRecordHeader(out: Uint8Array, recordSize: number, flags: number, tag: number): void {
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  putLe64(v, 0, recordSize);
  v.setUint32(8, flags, true);
  v.setUint32(12, tag, true);
}

/**
 * Queues a FW_DATA record header for an image of `imageSize` bytes in `headerBuf` (kernel:
 * `add_buf_header`, cmd.c); counts it as initial pre-copy data for the first image.
 */
export function addBufHeader(
  headerBuf: Mlx5VhcaDataBuffer,
  imageSize: number,
  initialPreCopy: boolean,
): number {
  const migf = headerBuf.migf;
  const page = mlx5vfGetMigrationPage(headerBuf, 0);
  if (page === 0) return -Errno.EINVAL;
  const hdr = new Uint8Array(MLX5_VF_MIGRATION_HEADER_SIZE);
  putRecordHeader(hdr, imageSize, MLX5_MIGF_HEADER_FLAGS_TAG_MANDATORY, MLX5_MIGF_HEADER_TAG_FW_DATA);
  migf.mvdev.machine.phys.write(page, hdr);
  headerBuf.length = MLX5_VF_MIGRATION_HEADER_SIZE;
  headerBuf.startPos = migf.maxPos;
  migf.maxPos += headerBuf.length;
  migf.bufList.push(headerBuf);
  if (initialPreCopy) migf.preCopyInitialBytes += MLX5_VF_MIGRATION_HEADER_SIZE;
  return 0;
}

/**
 * Writes the STOP_COPY_SIZE optional record (header + le64 size) into a header buffer's first
 * page (kernel: the record-building half of `mlx5vf_add_stop_copy_header`, main.c).
 */
export function writeStopCopySizeRecord(headerBuf: Mlx5VhcaDataBuffer, stopCopySize: number): number {
  const page = mlx5vfGetMigrationPage(headerBuf, 0);
  if (page === 0) return -Errno.EINVAL;
  const rec = new Uint8Array(MLX5_VF_MIGRATION_HEADER_SIZE + MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE);
  putRecordHeader(
    rec,
    MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE,
    MLX5_MIGF_HEADER_FLAGS_TAG_OPTIONAL,
    MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE,
  );
  putLe64(new DataView(rec.buffer), MLX5_VF_MIGRATION_HEADER_SIZE, stopCopySize);
  headerBuf.migf.mvdev.machine.phys.write(page, rec);
  headerBuf.length = rec.length;
  return 0;
}

/**
 * SAVE_VHCA_STATE into `buf` and, on completion, queue a FW_DATA header and the image on the
 * file's data list (kernel: `mlx5vf_cmd_save_vhca_state` with `mlx5vf_save_callback`, cmd.c).
 * `inc` saves only what changed since the last image; `track` keeps tracking on. A save that is
 * neither tracking nor the pre-copy cleanup is a stop-copy chunk: its header buffer is the one
 * prepared in `migf.bufHeader`, and its completion ends the stream (COMPLETE). A failed command
 * puts the buffers back and marks the file ERROR. Returns 0 (the command was issued) or -errno
 * when it could not be issued.
 */
export function mlx5vfCmdSaveVhcaState(
  mvdev: Mlx5vfPciCoreDevice,
  migf: Mlx5VfMigrationFile,
  buf: Mlx5VhcaDataBuffer,
  inc: boolean,
  track: boolean,
): number {
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  const preCopyCleanup =
    (migf.state === MLX5_MIGF_STATE_PRE_COPY || migf.state === MLX5_MIGF_STATE_PRE_COPY_ERROR) &&
    !track &&
    !inc;
  if (migf.state === MLX5_MIGF_STATE_PRE_COPY_ERROR) inc = false;
  const stopCopyChunk = !track && !preCopyCleanup;
  let headerBuf: Mlx5VhcaDataBuffer | null = null;
  if (stopCopyChunk) {
    const idx = buf.stopCopyChunkNum !== 0 ? buf.stopCopyChunkNum - 1 : 0;
    headerBuf = migf.bufHeader[idx] ?? null;
    migf.bufHeader[idx] = null;
  }
  if (headerBuf === null) {
    const h = mlx5vfGetDataBuffer(migf, Math.ceil(MLX5_VF_MIGRATION_HEADER_SIZE / PAGE_SIZE), DMA_NONE);
    if (typeof h === 'number') return h;
    headerBuf = h;
  }
  if (stopCopyChunk) migf.state = MLX5_MIGF_STATE_SAVE_STOP_COPY_CHUNK;
  // the firmware runs the command; its completion callback follows at once
  const out = mvdev.vhca.saveVhcaState(buf.mkey, buf.npages * PAGE_SIZE, inc, track);
  let status = out.status;
  if (status === 0) {
    const initialPreCopy = migf.state !== MLX5_MIGF_STATE_PRE_COPY && !stopCopyChunk;
    status = addBufHeader(headerBuf, out.actualImageSize, initialPreCopy);
    if (status === 0) {
      buf.length = out.actualImageSize;
      buf.startPos = migf.maxPos;
      migf.maxPos += buf.length;
      migf.bufList.push(buf);
      if (initialPreCopy) {
        migf.preCopyInitialBytes += out.actualImageSize;
        migf.state = MLX5_MIGF_STATE_PRE_COPY;
      }
      if (stopCopyChunk) migf.state = MLX5_MIGF_STATE_COMPLETE;
      return 0;
    }
  }
  // kernel: mlx5vf_mig_file_cleanup_cb
  mlx5vfPutDataBuffer(buf);
  mlx5vfPutDataBuffer(headerBuf);
  migf.state = MLX5_MIGF_STATE_ERROR;
  return 0;
}

/**
 * LOAD_VHCA_STATE from `buf`, mapping it for the device first if it is not yet (kernel:
 * `mlx5vf_cmd_load_vhca_state`, cmd.c). Returns 0 or -errno (the firmware's verdict on the
 * image, or a mapping error).
 */
export function mlx5vfCmdLoadVhcaState(
  mvdev: Mlx5vfPciCoreDevice,
  _migf: Mlx5VfMigrationFile,
  buf: Mlx5VhcaDataBuffer,
): number {
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  if (!mlx5vfBufferDmaed(buf)) {
    const err = mlx5vfDmaDataBuffer(buf);
    if (err !== 0) return err;
  }
  return mvdev.vhca.loadVhcaState(buf.mkey, buf.length);
}

// ---------------------------------------------------------------------------------------------
// DMA logging: the page tracker
// ---------------------------------------------------------------------------------------------

/**
 * Smallest and largest tracking granule the tracker accepts (kernel: pg_track_log_min/max_page_size
 * caps).
 */
const TRACKER_MIN_PAGE = PAGE_SIZE;
const TRACKER_MAX_PAGE = 1 << 21;

/**
 * Starts DMA dirty logging over `ranges` (kernel: `mlx5vf_start_page_tracker`, cmd.c): more
 * ranges than the tracker takes are combined (`vfio_combine_iova_ranges`), the page size is
 * clamped to the tracker's granules, hardware dirty tracking is turned on for the guest domain
 * and stale dirty bits in the ranges are cleared. Returns 0, -EINVAL if logging is already
 * active, -ENOTCONN, or -EOPNOTSUPP when the IOMMU cannot track dirty pages.
 */
export function mlx5vfStartPageTracker(
  vdev: VfioDevice,
  ranges: VfioIovaRangeNode[],
  _nnodes: number,
  pageSize: { value: number },
): number {
  const mvdev = vdev as Mlx5vfPciCoreDevice;
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  if (mvdev.logActive) return -Errno.EINVAL;
  const guest = mvdev.guest;
  if (guest === undefined) return -Errno.EOPNOTSUPP;
  const list = ranges.map((r) => ({ start: r.start, last: r.last }));
  if (list.length > mvdev.trackerMaxRanges) vfioCombineIovaRanges(list, mvdev.trackerMaxRanges);
  let size = TRACKER_MIN_PAGE;
  while (size < pageSize.value && size < TRACKER_MAX_PAGE) size *= 2;
  const ret = iommuSetDirtyTracking(guest.domain, true);
  if (ret !== 0) return ret;
  for (const r of list) iommuReadAndClearDirty(guest.domain, r.start, r.last - r.start + 1, false, () => {});
  mvdev.tracker = { ranges: list, pageSize: size, isErr: false };
  pageSize.value = size;
  mvdev.logActive = true;
  return 0;
}

/** Stops DMA dirty logging (kernel: `mlx5vf_stop_page_tracker`, cmd.c). Always 0. */
export function mlx5vfStopPageTracker(vdev: VfioDevice): number {
  const mvdev = vdev as Mlx5vfPciCoreDevice;
  if (!mvdev.logActive) return 0;
  if (mvdev.guest !== undefined && !mvdev.guest.released) iommuSetDirtyTracking(mvdev.guest.domain, false);
  mvdev.tracker = { ranges: [], pageSize: PAGE_SIZE, isErr: false };
  mvdev.logActive = false;
  return 0;
}

/**
 * Reports the pages written in `[iova, iova + length)` since the last report into `dirty` and
 * clears them (kernel: `mlx5vf_tracker_read_and_clear`, cmd.c). Fed by the guest domain's IOMMU
 * dirty bits within the tracked ranges, then one IOTLB sync of the ranges read, as iommufd does
 * after a read-and-clear. Returns 0, -EINVAL when logging is off, -ENOTCONN, or -EIO after a
 * tracker error.
 */
export function mlx5vfTrackerReadAndClear(
  vdev: VfioDevice,
  iova: number,
  length: number,
  dirty: IovaBitmap,
): number {
  const mvdev = vdev as Mlx5vfPciCoreDevice;
  if (!mvdev.logActive) return -Errno.EINVAL;
  if (mvdev.mdevDetach) return -Errno.ENOTCONN;
  if (mvdev.tracker.isErr) return -Errno.EIO;
  const guest = mvdev.guest as VfioIommu;
  const domain = guest.domain;
  const gather = iommuIotlbGatherInit();
  const end = iova + length;
  for (const r of mvdev.tracker.ranges) {
    const lo = Math.max(iova, r.start);
    const hi = Math.min(end, r.last + 1);
    if (lo >= hi) continue;
    const ret = iommuReadAndClearDirty(domain, lo, hi - lo, false, (leafIova, leafSize) => {
      iovaBitmapSet(
        dirty,
        Math.max(leafIova, lo),
        Math.min(leafIova + leafSize, hi) - Math.max(leafIova, lo),
      );
      iommuIotlbGatherAddRange(gather, leafIova, leafSize);
    });
    if (ret !== 0) {
      mvdev.tracker.isErr = true;
      return -Errno.EIO;
    }
  }
  iommuIotlbSync(domain, gather);
  return 0;
}
