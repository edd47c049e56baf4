/**
 * The mlx5 vfio driver's migration front: the saving and resuming data fds (stream read with
 * the PRE_COPY temporary end, `VFIO_MIG_GET_PRECOPY_INFO`, the record-parsing resume write),
 * preparing the stop-copy buffers, the FSM arcs and the `set_device_state` loop that walks them,
 * the data size query, reset, open and close. Kernel counterpart: drivers/vfio/pci/mlx5/main.c
 * (v6.17).
 *
 * Differs on purpose:
 * - A failed arc leaves the device in ERROR (fds disabled), as the uAPI allows and the spec
 *   asks; mlx5 leaves it in the last state it reached.
 * - Leaving RESUMING checks the stream was complete (no partial record, the load state machine
 *   idle, a FINAL image loaded) and fails the arc otherwise — the uAPI's "must fail the SET_STATE
 *   ioctl" for incomplete data, which mlx5 leaves to its firmware. A truncated or corrupted
 *   stream therefore ends in ERROR, never in a half-loaded RUNNING.
 * - Arcs for flag sets without P2P (RUNNING ↔ STOP, PRE_COPY → STOP_COPY), which mlx5 never
 *   needs because it always sets P2P, are implemented from their uAPI meaning.
 * - The pre-copy cleanup SAVE (PRE_COPY → RUNNING) is the firmware ending tracking; no image.
 * - Reads never block: where the kernel would wait for a SAVE in flight, the model has none (the
 *   firmware completes at once); an empty stream that is neither in pre-copy nor complete reads
 *   -EAGAIN as with O_NONBLOCK.
 *
 * Size: about 1,000 lines in one file because it mirrors one kernel file, drivers/vfio/pci/mlx5/
 * main.c (about 1,400 lines in v6.x: `mlx5vf_pci_aer_reset_done` runs through line 1,372).
 */
import { DMA_FROM_DEVICE, DMA_NONE, DMA_TO_DEVICE, type DmaDataDirection } from '@iovalink/dma-api';
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { getLe64 } from '@iovalink/iommu/internal';
import { VfioError } from './errors.js';
import {
  MAX_LOAD_SIZE,
  MAX_SAVE_SIZE,
  MLX5_MIGF_HEADER_FLAGS_TAG_OPTIONAL,
  MLX5_MIGF_HEADER_TAG_FW_DATA,
  MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE,
  MLX5_MIGF_STATE_COMPLETE,
  MLX5_MIGF_STATE_ERROR,
  MLX5_MIGF_STATE_PRE_COPY,
  MLX5_MIGF_STATE_PRE_COPY_ERROR,
  MLX5_VF_LOAD_STATE_LOAD_IMAGE,
  MLX5_VF_LOAD_STATE_PREP_HEADER_DATA,
  MLX5_VF_LOAD_STATE_PREP_IMAGE,
  MLX5_VF_LOAD_STATE_READ_HEADER,
  MLX5_VF_LOAD_STATE_READ_HEADER_DATA,
  MLX5_VF_LOAD_STATE_READ_IMAGE,
  MLX5_VF_MIGRATION_HEADER_SIZE,
  MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE,
  MLX5VF_QUERY_CLEANUP,
  MLX5VF_QUERY_FINAL,
  MLX5VF_QUERY_INC,
  Mlx5VfMigrationFile,
  type Mlx5VhcaDataBuffer,
  type Mlx5vfFileOps,
  Mlx5vfPciCoreDevice,
  type Mlx5vfPciDeviceOptions,
  mlx5fvCmdCleanMigfResources,
  mlx5vfAllocDataBuffer,
  mlx5vfCmdLoadVhcaState,
  mlx5vfCmdQueryVhcaMigrationState,
  mlx5vfCmdResumeVhca,
  mlx5vfCmdSaveVhcaState,
  mlx5vfCmdSuspendVhca,
  mlx5vfFreeDataBuffer,
  mlx5vfGetDataBuffer,
  mlx5vfGetMigrationPage,
  mlx5vfPutDataBuffer,
  mlx5vfStartPageTracker,
  mlx5vfStopPageTracker,
  mlx5vfTrackerReadAndClear,
  writeStopCopySizeRecord,
} from './mlx5-cmd.js';
import { MLX5_VHCA_OP_MOD_INITIATOR, MLX5_VHCA_OP_MOD_RESPONDER } from './mlx5-vhca.js';
import {
  type VfioDataFile,
  type VfioDevice,
  type VfioLogOps,
  type VfioMigrationOps,
  vfioMigGetNextState,
} from './vfio-main.js';
import {
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_PRECOPY_INFO_SIZE,
  type VfioDeviceMigState,
  type VfioPrecopyInfo,
  vfioDeviceStateName,
} from './vfio-uapi.js';

// ---------------------------------------------------------------------------------------------
// Data fds
// ---------------------------------------------------------------------------------------------

/** Disables a migration file: ERROR state, position reset (kernel: `mlx5vf_disable_fd`). */
export function mlx5vfDisableFd(migf: Mlx5VfMigrationFile): void {
  migf.state = MLX5_MIGF_STATE_ERROR;
  migf.fPos = 0;
}

/** Release of a data fd once no reference is left (kernel: `mlx5vf_release_file`): the file is disabled. */
export function mlx5vfReleaseFile(migf: Mlx5VfMigrationFile): void {
  mlx5vfDisableFd(migf);
}

/** Marks a file ERROR (kernel: `mlx5vf_mark_err`). */
export function mlx5vfMarkErr(migf: Mlx5VfMigrationFile): void {
  migf.state = MLX5_MIGF_STATE_ERROR;
}

/**
 * The data buffer holding stream position `pos` (kernel: `mlx5vf_get_data_buff_from_pos`): it
 * must be the first on the data list (a stream is read in order); `endOfData` when the list is
 * empty. A position outside the first buffer puts the file in ERROR and returns null.
 */
export function mlx5vfGetDataBuffFromPos(
  migf: Mlx5VfMigrationFile,
  pos: number,
  out: { endOfData: boolean },
): Mlx5VhcaDataBuffer | null {
  out.endOfData = false;
  const buf = migf.bufList[0];
  if (buf === undefined) {
    out.endOfData = true;
    return null;
  }
  if (pos >= buf.startPos && pos < buf.startPos + buf.length) return buf;
  migf.state = MLX5_MIGF_STATE_ERROR;
  return null;
}

/** A buffer was read out: back to the reuse list (kernel: `mlx5vf_buf_read_done`, without chunk mode). */
export function mlx5vfBufReadDone(buf: Mlx5VhcaDataBuffer): void {
  const list = buf.migf.bufList;
  const i = list.indexOf(buf);
  if (i >= 0) list.splice(i, 1);
  buf.migf.availList.push(buf);
}

/** Cursor over a user buffer (kernel: the `buf`/`len`/`pos` triple passed by pointer). */
interface UserIo {
  /** User memory. */
  data: Uint8Array;
  /** Next byte of `data`. */
  off: number;
  /** Bytes left. */
  len: number;
  /** Bytes done this call. */
  done: number;
}

/**
 * Copies from `buf` at the file position into user memory, page by page through
 * `mlx5vfGetMigrationPage` (kernel: `mlx5vf_buf_read`). Returns bytes copied or -EINVAL when a
 * page is missing; a buffer read to its end is done.
 */
export function mlx5vfBufRead(buf: Mlx5VhcaDataBuffer, io: UserIo): number {
  const migf = buf.migf;
  const phys = migf.mvdev.machine.phys;
  let copyLen = Math.min(buf.startPos + buf.length - migf.fPos, io.len);
  let done = 0;
  while (copyLen > 0) {
    let offset = migf.fPos - buf.startPos;
    const pageOffset = offset % PAGE_SIZE;
    offset -= pageOffset;
    const page = mlx5vfGetMigrationPage(buf, offset);
    if (page === 0) return -Errno.EINVAL;
    const pageLen = Math.min(copyLen, PAGE_SIZE - pageOffset);
    phys.readInto(page + pageOffset, io.data.subarray(io.off, io.off + pageLen));
    migf.fPos += pageLen;
    io.len -= pageLen;
    io.off += pageLen;
    done += pageLen;
    copyLen -= pageLen;
  }
  if (migf.fPos >= buf.startPos + buf.length) mlx5vfBufReadDone(buf);
  return done;
}

/**
 * read(2) of a saving fd (kernel: `mlx5vf_save_read`): copies queued data in stream order.
 * Returns the bytes read; 0 at the end of a complete stream; -ENOMSG at the temporary end of a
 * PRE_COPY stream; -ENODEV once the file is in ERROR (failed save, or disabled when the device
 * left the saving states); -EAGAIN for an empty stream still being produced.
 */
export function mlx5vfSaveRead(migf: Mlx5VfMigrationFile, data: Uint8Array): number {
  if (migf.state === MLX5_MIGF_STATE_ERROR) return -Errno.ENODEV;
  const io: UserIo = { data, off: 0, len: data.length, done: 0 };
  let first = true;
  const eod = { endOfData: false };
  while (io.len > 0) {
    const buf = mlx5vfGetDataBuffFromPos(migf, migf.fPos, eod);
    if (first) {
      first = false;
      if (
        eod.endOfData &&
        (migf.state === MLX5_MIGF_STATE_PRE_COPY || migf.state === MLX5_MIGF_STATE_PRE_COPY_ERROR)
      ) {
        return -Errno.ENOMSG;
      }
      if (eod.endOfData && migf.state !== MLX5_MIGF_STATE_COMPLETE) return -Errno.EAGAIN;
    }
    if (eod.endOfData) break;
    if (buf === null) return -Errno.EINVAL;
    const count = mlx5vfBufRead(buf, io);
    if (count < 0) return count;
    io.done += count;
  }
  return io.done;
}

/**
 * `VFIO_MIG_GET_PRECOPY_INFO` on a saving fd (kernel: `mlx5vf_precopy_ioctl`). Valid only while
 * the device is in PRE_COPY or PRE_COPY_P2P (-EINVAL otherwise, or for a short `argsz`); any
 * other command is -ENOTTY. Reports `initialBytes` while the reader is still inside the initial
 * image, else `dirtyBytes` = unread bytes plus what the device has changed. When everything
 * produced has been read and the device has changed state, a new incremental SAVE is issued
 * into a reused buffer, so more data becomes readable.
 */
export function mlx5vfPrecopyIoctl(migf: Mlx5VfMigrationFile, cmd: number, info: VfioPrecopyInfo): number {
  const mvdev = migf.mvdev;
  if (cmd !== VFIO_MIG_GET_PRECOPY_INFO) return -Errno.ENOTTY;
  if (info.argsz < VFIO_PRECOPY_INFO_SIZE) return -Errno.EINVAL;
  if (mvdev.migState !== VFIO_DEVICE_STATE_PRE_COPY && mvdev.migState !== VFIO_DEVICE_STATE_PRE_COPY_P2P) {
    return -Errno.EINVAL;
  }
  let incLength = 0;
  if (mvdev.migState === VFIO_DEVICE_STATE_PRE_COPY) {
    const sz = { stateSize: 0, totalSize: 0 };
    const ret = mlx5vfCmdQueryVhcaMigrationState(mvdev, sz, MLX5VF_QUERY_INC);
    if (ret !== 0) return ret;
    incLength = sz.stateSize;
  }
  if (migf.state === MLX5_MIGF_STATE_ERROR) return -Errno.ENODEV;
  let initialBytes = 0;
  let dirtyBytes = 0;
  let endOfData = false;
  if (migf.preCopyInitialBytes > migf.fPos) {
    initialBytes = migf.preCopyInitialBytes - migf.fPos;
  } else {
    dirtyBytes = migf.maxPos - migf.fPos;
    if (dirtyBytes === 0) endOfData = true;
    dirtyBytes += incLength;
  }
  if (endOfData && incLength > 0) {
    // the current state has been read and the device has a dirty state: save it now
    const buf = mlx5vfGetDataBuffer(migf, Math.ceil(incLength / PAGE_SIZE), DMA_FROM_DEVICE);
    if (typeof buf === 'number') {
      mlx5vfMarkErr(migf);
      return buf;
    }
    const ret = mlx5vfCmdSaveVhcaState(mvdev, migf, buf, true, true);
    if (ret !== 0) {
      mlx5vfMarkErr(migf);
      mlx5vfPutDataBuffer(buf);
      return ret;
    }
  }
  info.flags = 0;
  info.initialBytes = initialBytes;
  info.dirtyBytes = dirtyBytes;
  return 0;
}

/** The saving fd's operations (kernel: `mlx5vf_save_fops`). */
export const MLX5VF_SAVE_FOPS: Mlx5vfFileOps = {
  read: mlx5vfSaveRead,
  ioctl: mlx5vfPrecopyIoctl,
  release: mlx5vfReleaseFile,
};

/**
 * Takes the prepared stop-copy buffer `index`, or a bigger one when `requiredLength` does not
 * fit (kernel: `mlx5vf_mig_file_get_stop_copy_buf`). Throws `VfioError` when none was prepared
 * (kernel: WARN).
 */
export function mlx5vfMigFileGetStopCopyBuf(
  migf: Mlx5VfMigrationFile,
  index: number,
  requiredLength: number,
): Mlx5VhcaDataBuffer | number {
  const npages = Math.ceil(requiredLength / PAGE_SIZE);
  const buf = migf.buf[index];
  if (buf === null || buf === undefined) {
    throw new VfioError('mlx5vf_mig_file_get_stop_copy_buf: no stop-copy buffer prepared', {
      rule: 'mlx5vf_mig_file_get_stop_copy_buf: missing buffer',
    });
  }
  const chunkNum = buf.stopCopyChunkNum;
  migf.buf[index] = null;
  if (buf.npages >= npages) return buf;
  mlx5vfPutDataBuffer(buf);
  const fresh = mlx5vfGetDataBuffer(migf, npages, DMA_FROM_DEVICE);
  if (typeof fresh === 'number') return fresh;
  fresh.stopCopyChunkNum = chunkNum;
  return fresh;
}

/**
 * Queues the optional STOP_COPY_SIZE record announcing the stop-copy buffer size (kernel:
 * `mlx5vf_add_stop_copy_header`); with tracking its 24 bytes start the initial pre-copy bytes.
 */
export function mlx5vfAddStopCopyHeader(migf: Mlx5VfMigrationFile, track: boolean): number {
  const size = MLX5_VF_MIGRATION_HEADER_SIZE + MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE;
  const headerBuf = mlx5vfGetDataBuffer(migf, Math.ceil(size / PAGE_SIZE), DMA_NONE);
  if (typeof headerBuf === 'number') return headerBuf;
  const stopCopy = migf.buf[0] as Mlx5VhcaDataBuffer;
  const ret = writeStopCopySizeRecord(headerBuf, stopCopy.npages * PAGE_SIZE);
  if (ret !== 0) {
    mlx5vfPutDataBuffer(headerBuf);
    return ret;
  }
  headerBuf.startPos = migf.maxPos;
  migf.maxPos += headerBuf.length;
  migf.bufList.push(headerBuf);
  if (track) migf.preCopyInitialBytes = size;
  return 0;
}

/**
 * Prepares the stop-copy data buffer (state size, +10 % when pre-copy tracking may grow it,
 * capped at the SAVE limit) and its header buffer, then queues the STOP_COPY_SIZE record (kernel:
 * `mlx5vf_prep_stop_copy`, without chunk mode). On error the buffers go back to the reuse list.
 */
export function mlx5vfPrepStopCopy(
  mvdev: Mlx5vfPciCoreDevice,
  migf: Mlx5VfMigrationFile,
  stateSize: number,
  _fullSize: number,
  track: boolean,
): number {
  let incStateSize = track ? stateSize + Math.floor(stateSize / 10) : stateSize;
  incStateSize = Math.min(incStateSize, MAX_SAVE_SIZE);
  const numChunks = mvdev.chunkMode ? 2 : 1;
  let ret = 0;
  for (let i = 0; i < numChunks && ret === 0; i++) {
    const buf = mlx5vfGetDataBuffer(migf, Math.ceil(incStateSize / PAGE_SIZE), DMA_FROM_DEVICE);
    if (typeof buf === 'number') {
      ret = buf;
      break;
    }
    migf.buf[i] = buf;
    const hdr = mlx5vfGetDataBuffer(migf, Math.ceil(MLX5_VF_MIGRATION_HEADER_SIZE / PAGE_SIZE), DMA_NONE);
    if (typeof hdr === 'number') {
      ret = hdr;
      break;
    }
    migf.bufHeader[i] = hdr;
  }
  if (ret === 0) ret = mlx5vfAddStopCopyHeader(migf, track);
  if (ret === 0) return 0;
  for (let i = 0; i < numChunks; i++) {
    const b = migf.buf[i];
    if (b !== null && b !== undefined) {
      mlx5vfPutDataBuffer(b);
      migf.buf[i] = null;
    }
    const h = migf.bufHeader[i];
    if (h !== null && h !== undefined) {
      mlx5vfPutDataBuffer(h);
      migf.bufHeader[i] = null;
    }
  }
  return ret;
}

/**
 * Saves the final incremental image into the prepared stop-copy buffer (kernel:
 * `mlx5vf_pci_save_device_inc_data`). Errors mark the file ERROR and are returned.
 */
export function mlx5vfPciSaveDeviceIncData(mvdev: Mlx5vfPciCoreDevice): number {
  const migf = mvdev.savingMigf;
  if (migf === null) return -Errno.EINVAL;
  if (migf.state === MLX5_MIGF_STATE_ERROR) return -Errno.ENODEV;
  const sz = { stateSize: 0, totalSize: 0 };
  let ret = mlx5vfCmdQueryVhcaMigrationState(mvdev, sz, MLX5VF_QUERY_INC | MLX5VF_QUERY_FINAL);
  if (ret === 0) {
    const buf = mlx5vfMigFileGetStopCopyBuf(migf, 0, sz.stateSize);
    if (typeof buf === 'number') {
      ret = buf;
    } else {
      ret = mlx5vfCmdSaveVhcaState(mvdev, migf, buf, true, false);
      if (ret !== 0) mlx5vfPutDataBuffer(buf);
    }
  }
  if (ret !== 0) mlx5vfMarkErr(migf);
  return ret;
}

/**
 * Opens a saving file (kernel: `mlx5vf_pci_save_device_data`): queries the state size, prepares
 * the stop-copy buffers and the STOP_COPY_SIZE record, and saves a full image — into the
 * stop-copy buffer itself without tracking (STOP → STOP_COPY), or into a second buffer of the
 * same size with tracking started (→ PRE_COPY), leaving the stop-copy buffer for the end.
 * Returns the file or -errno with everything freed.
 */
export function mlx5vfPciSaveDeviceData(
  mvdev: Mlx5vfPciCoreDevice,
  track: boolean,
): Mlx5VfMigrationFile | number {
  const migf = new Mlx5VfMigrationFile(mvdev, 'r', MLX5VF_SAVE_FOPS);
  const sz = { stateSize: 0, totalSize: 0 };
  let ret = mlx5vfCmdQueryVhcaMigrationState(mvdev, sz, 0);
  if (ret === 0) ret = mlx5vfPrepStopCopy(mvdev, migf, sz.stateSize, sz.totalSize, track);
  if (ret !== 0) {
    mlx5fvCmdCleanMigfResources(migf);
    return ret;
  }
  let buf: Mlx5VhcaDataBuffer;
  if (track) {
    const b = mlx5vfAllocDataBuffer(migf, (migf.buf[0] as Mlx5VhcaDataBuffer).npages, DMA_FROM_DEVICE);
    if (typeof b === 'number') {
      mlx5fvCmdCleanMigfResources(migf);
      return b;
    }
    buf = b;
  } else {
    buf = migf.buf[0] as Mlx5VhcaDataBuffer;
    migf.buf[0] = null;
  }
  ret = mlx5vfCmdSaveVhcaState(mvdev, migf, buf, false, track);
  if (ret !== 0) {
    mlx5vfFreeDataBuffer(buf);
    mlx5fvCmdCleanMigfResources(migf);
    return ret;
  }
  return migf;
}

/**
 * Copies user bytes into the buffer at the file position, within one page (kernel:
 * `mlx5vf_append_page_to_mig_buf`).
 */
function mlx5vfAppendPageToMigBuf(buf: Mlx5VhcaDataBuffer, io: UserIo, toCopy: { len: number }): number {
  const migf = buf.migf;
  const offset = migf.fPos - buf.startPos;
  const pageOffset = offset % PAGE_SIZE;
  const page = mlx5vfGetMigrationPage(buf, offset - pageOffset);
  if (page === 0) return -Errno.EINVAL;
  const pageLen = Math.min(toCopy.len, PAGE_SIZE - pageOffset);
  migf.mvdev.machine.phys.write(page + pageOffset, io.data.subarray(io.off, io.off + pageLen));
  migf.fPos += pageLen;
  io.done += pageLen;
  io.off += pageLen;
  toCopy.len -= pageLen;
  buf.length += pageLen;
  return 0;
}

/** Appends up to `want` user bytes to `buf`; returns 0 or -errno and the count moved in `moved`. */
function appendToBuf(buf: Mlx5VhcaDataBuffer, io: UserIo, want: number): number {
  const toCopy = { len: Math.min(io.len, want) };
  const copyLen = toCopy.len;
  while (toCopy.len > 0) {
    const ret = mlx5vfAppendPageToMigBuf(buf, io, toCopy);
    if (ret !== 0) return ret;
  }
  io.len -= copyLen;
  return 0;
}

/** Reads the 16-byte record header from a header buffer's first page. */
function readRecordHeader(
  migf: Mlx5VfMigrationFile,
  page: number,
): { recordSize: number; flags: number; tag: number } {
  const b = migf.mvdev.machine.phys.read(page, MLX5_VF_MIGRATION_HEADER_SIZE);
  const v = new DataView(b.buffer);
  return {
    recordSize: getLe64(v, 0),
    flags: v.getUint32(8, true),
    tag: v.getUint32(12, true),
  };
}

/**
 * resume write, READ_HEADER: collects the 16-byte record header; when whole, checks the record
 * size against the LOAD limit (-ENOMEM) and dispatches on the tag: FW_DATA → PREP_IMAGE,
 * STOP_COPY_SIZE or an unknown optional tag → PREP_HEADER_DATA, an unknown mandatory tag →
 * -EOPNOTSUPP (kernel: `mlx5vf_resume_read_header`).
 */
function mlx5vfResumeReadHeader(
  migf: Mlx5VfMigrationFile,
  hbuf: Mlx5VhcaDataBuffer,
  io: UserIo,
  work: { has: boolean },
): number {
  const copyLen = Math.min(io.len, MLX5_VF_MIGRATION_HEADER_SIZE - hbuf.length);
  const page = mlx5vfGetMigrationPage(hbuf, 0);
  if (page === 0) return -Errno.EINVAL;
  migf.mvdev.machine.phys.write(page + hbuf.length, io.data.subarray(io.off, io.off + copyLen));
  io.off += copyLen;
  migf.fPos += copyLen;
  io.done += copyLen;
  io.len -= copyLen;
  hbuf.length += copyLen;
  if (hbuf.length === MLX5_VF_MIGRATION_HEADER_SIZE) {
    const h = readRecordHeader(migf, page);
    if (h.recordSize > MAX_LOAD_SIZE) return -Errno.ENOMEM;
    migf.recordSize = h.recordSize;
    migf.recordTag = h.tag;
    switch (h.tag) {
      case MLX5_MIGF_HEADER_TAG_FW_DATA:
        migf.loadState = MLX5_VF_LOAD_STATE_PREP_IMAGE;
        break;
      case MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE:
        migf.loadState = MLX5_VF_LOAD_STATE_PREP_HEADER_DATA;
        break;
      default:
        if ((h.flags & MLX5_MIGF_HEADER_FLAGS_TAG_OPTIONAL) === 0) return -Errno.EOPNOTSUPP;
        migf.loadState = MLX5_VF_LOAD_STATE_PREP_HEADER_DATA;
    }
    migf.maxPos += hbuf.length;
    hbuf.length = 0;
    work.has = true;
  }
  return 0;
}

/**
 * resume write, READ_HEADER_DATA: an optional record's data; STOP_COPY_SIZE sets the prep size
 * (kernel: `mlx5vf_resume_read_header_data`).
 */
function mlx5vfResumeReadHeaderData(migf: Mlx5VfMigrationFile, hbuf: Mlx5VhcaDataBuffer, io: UserIo): number {
  const ret = appendToBuf(hbuf, io, migf.recordSize - hbuf.length);
  if (ret !== 0) return ret;
  if (hbuf.length === migf.recordSize) {
    if (migf.recordTag === MLX5_MIGF_HEADER_TAG_STOP_COPY_SIZE) {
      const page = mlx5vfGetMigrationPage(hbuf, 0);
      if (page === 0) return -Errno.EINVAL;
      const b = migf.mvdev.machine.phys.read(page, MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE);
      migf.stopCopyPrepSize = Math.min(getLe64(new DataView(b.buffer), 0), MAX_LOAD_SIZE);
    }
    migf.loadState = MLX5_VF_LOAD_STATE_READ_HEADER;
    migf.maxPos += migf.recordSize;
    hbuf.length = 0;
  }
  return 0;
}

/**
 * resume write, READ_IMAGE: image bytes; a whole image moves to LOAD_IMAGE (kernel:
 * `mlx5vf_resume_read_image`).
 */
function mlx5vfResumeReadImage(
  migf: Mlx5VfMigrationFile,
  vbuf: Mlx5VhcaDataBuffer,
  io: UserIo,
  work: { has: boolean },
): number {
  const imageSize = migf.recordSize;
  const ret = appendToBuf(vbuf, io, imageSize - vbuf.length);
  if (ret !== 0) return ret;
  if (vbuf.length === imageSize) {
    migf.loadState = MLX5_VF_LOAD_STATE_LOAD_IMAGE;
    migf.maxPos += imageSize;
    work.has = true;
  }
  return 0;
}

/**
 * resume write, PREP_HEADER_DATA / PREP_IMAGE: makes slot 0 of `slots` (the file's header or
 * image buffer) hold at least `size` bytes, freeing a smaller buffer and allocating a new one in
 * direction `dir` (kernel: the two PREP cases of `mlx5vf_resume_write`). Returns the buffer, or
 * -errno with the slot empty.
 */
function mlx5vfResumePrepBuf(
  migf: Mlx5VfMigrationFile,
  slots: (Mlx5VhcaDataBuffer | null)[],
  size: number,
  dir: DmaDataDirection,
): Mlx5VhcaDataBuffer | number {
  const npages = Math.ceil(size / PAGE_SIZE);
  const cur = slots[0] as Mlx5VhcaDataBuffer;
  if (cur.npages >= npages) return cur;
  mlx5vfFreeDataBuffer(cur);
  slots[0] = null;
  const b = mlx5vfAllocDataBuffer(migf, npages, dir);
  if (typeof b !== 'number') slots[0] = b;
  return b;
}

/**
 * write(2) of a resuming fd (kernel: `mlx5vf_resume_write`): parses records as they arrive —
 * header, optional data, image — growing the header and image buffers when a record needs more
 * pages, and issues LOAD_VHCA_STATE for each whole image. Returns the bytes consumed, or -errno
 * (-ENODEV on a file in ERROR; -ENOMEM, -EOPNOTSUPP, -EINVAL from records and the firmware),
 * after which the file is in ERROR.
 */
export function mlx5vfResumeWrite(migf: Mlx5VfMigrationFile, data: Uint8Array): number {
  const mvdev = migf.mvdev;
  let vbuf = migf.buf[0] as Mlx5VhcaDataBuffer;
  let hbuf = migf.bufHeader[0] as Mlx5VhcaDataBuffer;
  const io: UserIo = { data, off: 0, len: data.length, done: 0 };
  const work = { has: false };
  let ret = 0;
  if (!Number.isSafeInteger(migf.fPos + data.length)) return -Errno.EINVAL;
  if (migf.state === MLX5_MIGF_STATE_ERROR) ret = -Errno.ENODEV;
  while (ret === 0 && (io.len > 0 || work.has)) {
    work.has = false;
    switch (migf.loadState) {
      case MLX5_VF_LOAD_STATE_READ_HEADER:
        ret = mlx5vfResumeReadHeader(migf, hbuf, io, work);
        break;
      case MLX5_VF_LOAD_STATE_PREP_HEADER_DATA: {
        const b = mlx5vfResumePrepBuf(migf, migf.bufHeader, migf.recordSize, DMA_NONE);
        if (typeof b === 'number') {
          ret = b;
          break;
        }
        hbuf = b;
        hbuf.startPos = migf.maxPos;
        migf.loadState = MLX5_VF_LOAD_STATE_READ_HEADER_DATA;
        break;
      }
      case MLX5_VF_LOAD_STATE_READ_HEADER_DATA:
        ret = mlx5vfResumeReadHeaderData(migf, hbuf, io);
        break;
      case MLX5_VF_LOAD_STATE_PREP_IMAGE: {
        const size = Math.max(migf.recordSize, migf.stopCopyPrepSize);
        const b = mlx5vfResumePrepBuf(migf, migf.buf, size, DMA_TO_DEVICE);
        if (typeof b === 'number') {
          ret = b;
          break;
        }
        vbuf = b;
        vbuf.startPos = migf.maxPos;
        migf.loadState = MLX5_VF_LOAD_STATE_READ_IMAGE;
        break;
      }
      case MLX5_VF_LOAD_STATE_READ_IMAGE:
        ret = mlx5vfResumeReadImage(migf, vbuf, io, work);
        break;
      case MLX5_VF_LOAD_STATE_LOAD_IMAGE:
        ret = mlx5vfCmdLoadVhcaState(mvdev, migf, vbuf);
        if (ret !== 0) break;
        migf.loadState = MLX5_VF_LOAD_STATE_READ_HEADER;
        hbuf.length = 0;
        vbuf.length = 0;
        break;
      default:
        break;
    }
  }
  if (ret !== 0) {
    migf.state = MLX5_MIGF_STATE_ERROR;
    return ret;
  }
  return io.done;
}

/** The resuming fd's operations (kernel: `mlx5vf_resume_fops`). */
export const MLX5VF_RESUME_FOPS: Mlx5vfFileOps = {
  write: mlx5vfResumeWrite,
  release: mlx5vfReleaseFile,
};

/**
 * Opens a resuming file: an empty image buffer (mapped when a record sizes it) and a one-page
 * header buffer, load state READ_HEADER (kernel: `mlx5vf_pci_resume_device_data`). The device
 * forgets any earlier load. Returns the file or -errno.
 */
export function mlx5vfPciResumeDeviceData(mvdev: Mlx5vfPciCoreDevice): Mlx5VfMigrationFile | number {
  const migf = new Mlx5VfMigrationFile(mvdev, 'w', MLX5VF_RESUME_FOPS);
  const buf = mlx5vfAllocDataBuffer(migf, 0, DMA_TO_DEVICE);
  if (typeof buf === 'number') return buf;
  migf.buf[0] = buf;
  const hdr = mlx5vfAllocDataBuffer(migf, Math.ceil(MLX5_VF_MIGRATION_HEADER_SIZE / PAGE_SIZE), DMA_NONE);
  if (typeof hdr === 'number') {
    mlx5vfFreeDataBuffer(buf);
    migf.buf[0] = null;
    return hdr;
  }
  migf.bufHeader[0] = hdr;
  migf.loadState = MLX5_VF_LOAD_STATE_READ_HEADER;
  mvdev.vhca.beginLoad();
  return migf;
}

/**
 * True when a resuming file received a whole stream: not in ERROR, no partial record, and a
 * FINAL image loaded (model check run when leaving RESUMING; see the file header).
 */
export function mlx5vfResumeComplete(migf: Mlx5VfMigrationFile): boolean {
  const hbuf = migf.bufHeader[0];
  return (
    migf.state !== MLX5_MIGF_STATE_ERROR &&
    migf.loadState === MLX5_VF_LOAD_STATE_READ_HEADER &&
    hbuf !== null &&
    hbuf !== undefined &&
    hbuf.length === 0 &&
    migf.mvdev.vhca.loadedFinal
  );
}

/**
 * Disables both data fds and frees their buffers (kernel: `mlx5vf_disable_fds`); returns the
 * saving file's last state (0 when there was none).
 */
export function mlx5vfDisableFds(mvdev: Mlx5vfPciCoreDevice): number {
  let lastSaveState = 0;
  const r = mvdev.resumingMigf;
  if (r !== null) {
    mlx5vfDisableFd(r);
    mlx5fvCmdCleanMigfResources(r);
    mvdev.resumingMigf = null;
    r.fput();
  }
  const s = mvdev.savingMigf;
  if (s !== null) {
    lastSaveState = s.state;
    mlx5vfDisableFd(s);
    mlx5fvCmdCleanMigfResources(s);
    mvdev.savingMigf = null;
    s.fput();
  }
  return lastSaveState;
}

/** What one arc gives back: a new data fd, null, or -errno. */
type Mlx5vfArcResult = VfioDataFile | null | number;
/** One arc of the migration FSM as the driver performs it. */
type Mlx5vfArc = (mvdev: Mlx5vfPciCoreDevice) => Mlx5vfArcResult;

/** Null for 0, else the -errno itself. */
function nullOrErrno(ret: number): null | number {
  return ret !== 0 ? ret : null;
}

/** A VHCA command taking an op_mod: `mlx5vf_cmd_suspend_vhca` or `mlx5vf_cmd_resume_vhca`. */
type Mlx5vfVhcaCmd = (mvdev: Mlx5vfPciCoreDevice, opMod: number) => number;

/** The command with each op_mod in turn, stopping at the first failure. */
function mlx5vfVhcaArc(cmd: Mlx5vfVhcaCmd, opMods: readonly number[]): Mlx5vfArc {
  return (mvdev) => {
    for (const opMod of opMods) {
      const ret = cmd(mvdev, opMod);
      if (ret !== 0) return ret;
    }
    return null;
  };
}

/** SUSPEND_VHCA with each op_mod in turn (kernel: `mlx5vf_cmd_suspend_vhca`). */
function mlx5vfSuspendArc(...opMods: number[]): Mlx5vfArc {
  return mlx5vfVhcaArc(mlx5vfCmdSuspendVhca, opMods);
}

/** RESUME_VHCA with each op_mod in turn (kernel: `mlx5vf_cmd_resume_vhca`). */
function mlx5vfResumeArc(...opMods: number[]): Mlx5vfArc {
  return mlx5vfVhcaArc(mlx5vfCmdResumeVhca, opMods);
}

/**
 * STOP → STOP_COPY (`track` false) and RUNNING(_P2P) → PRE_COPY(_P2P) (`track` true): a saving
 * file is opened, installed and handed out (kernel: `mlx5vf_pci_save_device_data`).
 */
function mlx5vfStartSaveArc(track: boolean): Mlx5vfArc {
  return (mvdev) => {
    const migf = mlx5vfPciSaveDeviceData(mvdev, track);
    if (typeof migf === 'number') return migf;
    migf.getFile();
    mvdev.savingMigf = migf;
    return migf;
  };
}

/** STOP_COPY → STOP: the transfer is over, both fds go (kernel: `mlx5vf_disable_fds`). */
function mlx5vfEndStopCopyArc(mvdev: Mlx5vfPciCoreDevice): Mlx5vfArcResult {
  mlx5vfDisableFds(mvdev);
  return null;
}

/**
 * PRE_COPY(_P2P) → RUNNING(_P2P): the pre-copy is abandoned: a query with the cleanup bit ends the
 * firmware's tracking, the fds go, and a saving file that had failed makes the arc -EIO.
 */
function mlx5vfEndPrecopyArc(mvdev: Mlx5vfPciCoreDevice): Mlx5vfArcResult {
  const sz = { stateSize: 0, totalSize: 0 };
  const ret = mlx5vfCmdQueryVhcaMigrationState(mvdev, sz, MLX5VF_QUERY_INC | MLX5VF_QUERY_CLEANUP);
  if (ret !== 0) return ret;
  // pre-copy cleanup: the firmware stops tracking
  mvdev.vhca.stopTracking();
  const state = mlx5vfDisableFds(mvdev);
  return state !== MLX5_MIGF_STATE_ERROR ? null : -Errno.EIO;
}

/** STOP → RESUMING: a resuming file is opened, installed and handed out (kernel: `mlx5vf_pci_resume_device_data`). */
function mlx5vfStartResumeArc(mvdev: Mlx5vfPciCoreDevice): Mlx5vfArcResult {
  const migf = mlx5vfPciResumeDeviceData(mvdev);
  if (typeof migf === 'number') return migf;
  migf.getFile();
  mvdev.resumingMigf = migf;
  return migf;
}

/** RESUMING → STOP: -EINVAL unless the whole image was loaded, then the fds go. */
function mlx5vfEndResumeArc(mvdev: Mlx5vfPciCoreDevice): Mlx5vfArcResult {
  const migf = mvdev.resumingMigf;
  if (migf === null || !mlx5vfResumeComplete(migf)) return -Errno.EINVAL;
  mlx5vfDisableFds(mvdev);
  return null;
}

/**
 * PRE_COPY(_P2P) → STOP_COPY: the device is suspended (each op_mod in turn) and the final
 * incremental image saved (kernel: `mlx5vf_pci_save_device_inc_data`).
 */
function mlx5vfStopCopyFromPrecopyArc(...opMods: number[]): Mlx5vfArc {
  const suspend = mlx5vfSuspendArc(...opMods);
  return (mvdev) => {
    const ret = suspend(mvdev);
    return ret !== null ? ret : nullOrErrno(mlx5vfPciSaveDeviceIncData(mvdev));
  };
}

/** Key of the arc `cur → next` in `MLX5VF_ARCS` (device states are below 16). */
function mlx5vfArcKey(cur: number, next: number): number {
  return cur * 16 + next;
}

/**
 * Every arc the driver performs, in the order `mlx5vf_pci_step_device_state_locked` tests them,
 * then the arcs of flag sets without P2P (mlx5 always has P2P; the model lets a test drop it).
 */
const MLX5VF_ARCS: ReadonlyMap<number, Mlx5vfArc> = new Map([
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING_P2P, VFIO_DEVICE_STATE_STOP),
    mlx5vfSuspendArc(MLX5_VHCA_OP_MOD_RESPONDER),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_RUNNING_P2P),
    mlx5vfResumeArc(MLX5_VHCA_OP_MOD_RESPONDER),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_RUNNING_P2P),
    mlx5vfSuspendArc(MLX5_VHCA_OP_MOD_INITIATOR),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY, VFIO_DEVICE_STATE_PRE_COPY_P2P),
    mlx5vfSuspendArc(MLX5_VHCA_OP_MOD_INITIATOR),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING_P2P, VFIO_DEVICE_STATE_RUNNING),
    mlx5vfResumeArc(MLX5_VHCA_OP_MOD_INITIATOR),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY_P2P, VFIO_DEVICE_STATE_PRE_COPY),
    mlx5vfResumeArc(MLX5_VHCA_OP_MOD_INITIATOR),
  ],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_STOP_COPY), mlx5vfStartSaveArc(false)],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_STATE_STOP), mlx5vfEndStopCopyArc],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY, VFIO_DEVICE_STATE_RUNNING), mlx5vfEndPrecopyArc],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY_P2P, VFIO_DEVICE_STATE_RUNNING_P2P), mlx5vfEndPrecopyArc],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_RESUMING), mlx5vfStartResumeArc],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_RESUMING, VFIO_DEVICE_STATE_STOP), mlx5vfEndResumeArc],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_PRE_COPY), mlx5vfStartSaveArc(true)],
  [mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING_P2P, VFIO_DEVICE_STATE_PRE_COPY_P2P), mlx5vfStartSaveArc(true)],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY_P2P, VFIO_DEVICE_STATE_STOP_COPY),
    mlx5vfStopCopyFromPrecopyArc(MLX5_VHCA_OP_MOD_RESPONDER),
  ],
  // without P2P
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_RUNNING, VFIO_DEVICE_STATE_STOP),
    mlx5vfSuspendArc(MLX5_VHCA_OP_MOD_INITIATOR, MLX5_VHCA_OP_MOD_RESPONDER),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_RUNNING),
    mlx5vfResumeArc(MLX5_VHCA_OP_MOD_RESPONDER, MLX5_VHCA_OP_MOD_INITIATOR),
  ],
  [
    mlx5vfArcKey(VFIO_DEVICE_STATE_PRE_COPY, VFIO_DEVICE_STATE_STOP_COPY),
    mlx5vfStopCopyFromPrecopyArc(MLX5_VHCA_OP_MOD_INITIATOR, MLX5_VHCA_OP_MOD_RESPONDER),
  ],
]);

/**
 * Performs one FSM arc from the current state to `next` (kernel:
 * `mlx5vf_pci_step_device_state_locked`). Returns a new data fd (STOP → STOP_COPY, RUNNING →
 * PRE_COPY, RUNNING_P2P → PRE_COPY_P2P, STOP → RESUMING), null, or -errno. Throws `VfioError`
 * for an arc the FSM never produces (kernel: WARN). Differs: the kernel's chain of `if`s is a
 * table of named arcs here, in the kernel's order.
 */
export function mlx5vfPciStepDeviceStateLocked(
  mvdev: Mlx5vfPciCoreDevice,
  next: number,
): VfioDataFile | null | number {
  const cur = mvdev.migState;
  const arc = MLX5VF_ARCS.get(mlx5vfArcKey(cur, next));
  if (arc !== undefined) return arc(mvdev);
  throw new VfioError(
    `${mvdev.name}: no arc ${vfioDeviceStateName(cur)} -> ${vfioDeviceStateName(next)} (vfio_mig_get_next_state never produces it)`,
    { rule: 'mlx5vf_pci_step_device_state_locked: unexpected arc', errno: -Errno.EINVAL },
  );
}

/**
 * Drives the device to `newState` one arc at a time (kernel: `mlx5vf_pci_set_device_state`):
 * `vfioMigGetNextState` picks each arc; an error from it (unsupported or blocked request) is
 * returned with the state unchanged; a failed arc is returned and leaves the device in ERROR
 * with its fds disabled (see the file header). Returns the data fd the last arc opened, null, or
 * -errno; an arc opening a fd that is not the last one is a driver bug (-EINVAL, counted as a
 * warning).
 */
export function mlx5vfPciSetDeviceState(vdev: VfioDevice, newState: number): VfioDataFile | null | number {
  const mvdev = vdev as Mlx5vfPciCoreDevice;
  let res: VfioDataFile | null | number = null;
  while (newState !== mvdev.migState) {
    const next = vfioMigGetNextState(mvdev, mvdev.migState, newState);
    if (next < 0) {
      res = next;
      break;
    }
    res = mlx5vfPciStepDeviceStateLocked(mvdev, next);
    if (typeof res === 'number') {
      mlx5vfDisableFds(mvdev);
      mvdev.migState = VFIO_DEVICE_STATE_ERROR;
      break;
    }
    mvdev.migState = next as VfioDeviceMigState;
    if (res !== null && newState !== mvdev.migState) {
      mvdev.warnCount++;
      res.release();
      res = -Errno.EINVAL;
      break;
    }
  }
  return res;
}

/** Current state (kernel: `mlx5vf_pci_get_device_state`). Always 0. */
export function mlx5vfPciGetDeviceState(vdev: VfioDevice, out: { state: VfioDeviceMigState }): number {
  out.state = (vdev as Mlx5vfPciCoreDevice).migState;
  return 0;
}

/** Stop-copy length estimate: the full image size (kernel: `mlx5vf_pci_get_data_size`). */
export function mlx5vfPciGetDataSize(vdev: VfioDevice, out: { stopCopyLength: number }): number {
  const sz = { stateSize: 0, totalSize: 0 };
  const ret = mlx5vfCmdQueryVhcaMigrationState(vdev as Mlx5vfPciCoreDevice, sz, 0);
  if (ret === 0) out.stopCopyLength = sz.totalSize;
  return ret;
}

/** The driver's migration ops (kernel: `mlx5vf_pci_mig_ops`). */
export const MLX5VF_PCI_MIG_OPS: VfioMigrationOps = {
  migrationSetState: mlx5vfPciSetDeviceState,
  migrationGetState: mlx5vfPciGetDeviceState,
  migrationGetDataSize: mlx5vfPciGetDataSize,
};

/** The driver's DMA logging ops (kernel: `mlx5vf_pci_log_ops`). */
export const MLX5VF_PCI_LOG_OPS: VfioLogOps = {
  logStart: mlx5vfStartPageTracker,
  logStop: mlx5vfStopPageTracker,
  logReadAndClear: mlx5vfTrackerReadAndClear,
};

/** After a function reset: state RUNNING, fds disabled (kernel: `mlx5vf_pci_aer_reset_done`). */
export function mlx5vfPciAerResetDone(mvdev: Mlx5vfPciCoreDevice): void {
  mvdev.migState = VFIO_DEVICE_STATE_RUNNING;
  mlx5vfDisableFds(mvdev);
}

/**
 * `VFIO_DEVICE_RESET`: a function-level reset of the device (its state cleared) followed by the
 * driver's reset-done handler, the way out of ERROR (kernel: `vfio_pci_core_ioctl_reset` →
 * `pci_try_reset_function` → `mlx5vf_pci_aer_reset_done`). Always 0.
 */
export function vfioPciCoreIoctlReset(mvdev: Mlx5vfPciCoreDevice): number {
  mvdev.vhca.reset();
  mlx5vfPciAerResetDone(mvdev);
  return 0;
}

/** Opening the device fd: migration state RUNNING (kernel: `mlx5vf_pci_open_device`). */
export function mlx5vfPciOpenDevice(mvdev: Mlx5vfPciCoreDevice): number {
  mvdev.migState = VFIO_DEVICE_STATE_RUNNING;
  return 0;
}

/**
 * Closing the device fd: fds disabled, buffers freed, logging stopped (kernel:
 * `mlx5vf_pci_close_device` → `mlx5vf_cmd_close_migratable`).
 */
export function mlx5vfPciCloseDevice(mvdev: Mlx5vfPciCoreDevice): void {
  mlx5vfDisableFds(mvdev);
  mlx5vfStopPageTracker(mvdev);
}

/**
 * Creates an mlx5 VF under mlx5-vfio-pci, installs its migration ops (and logging ops when it
 * has guest memory) and opens it in RUNNING (kernel: `mlx5vf_pci_probe` →
 * `mlx5vf_pci_init_dev` → `mlx5vf_cmd_set_migratable`, then `mlx5vf_pci_open_device`).
 */
export function mlx5vfPciCreateDevice(options: Mlx5vfPciDeviceOptions): Mlx5vfPciCoreDevice {
  const mvdev = new Mlx5vfPciCoreDevice(options);
  mvdev.migOps = MLX5VF_PCI_MIG_OPS;
  mvdev.logOps = options.guest === undefined ? undefined : MLX5VF_PCI_LOG_OPS;
  mlx5vfPciOpenDevice(mvdev);
  return mvdev;
}
