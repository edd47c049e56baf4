/**
 * The NVMe protocol pieces the PCI driver and the device model share: the controller page size,
 * I/O opcodes, command flags, SGL descriptor types, status codes, the command and completion
 * shapes, and the status → block status rule. As in Linux `include/linux/nvme.h` and
 * `nvme_error_status` in `drivers/nvme/host/core.c` (v6.17), after the NVM Express Base
 * Specification 2.0.
 * Differs on purpose: a command is an object, not 64 bytes in a submission queue in host memory
 * (so commands and completions are not fetched by DMA; their data, PRP lists and SGL segments
 * are); a Dataset Management command names its range list through its data pointer as NVMe does.
 */
import {
  BLK_STS_IOERR,
  BLK_STS_MEDIUM,
  BLK_STS_NOSPC,
  BLK_STS_NOTSUPP,
  BLK_STS_OK,
  BLK_STS_RESV_CONFLICT,
  BLK_STS_TARGET,
  BLK_STS_TRANSPORT,
  type BlkStatus,
} from './blk-status.js';

/** log2 of the controller memory page size the driver uses (kernel: `NVME_CTRL_PAGE_SHIFT`). */
export const NVME_CTRL_PAGE_SHIFT = 12;
/** The controller memory page size: PRP entries address pages of this size (kernel: `NVME_CTRL_PAGE_SIZE`). */
export const NVME_CTRL_PAGE_SIZE = 4096;

/** Flush opcode (kernel: `nvme_cmd_flush`). */
export const NVME_CMD_FLUSH = 0x00;
/** Write opcode (kernel: `nvme_cmd_write`). */
export const NVME_CMD_WRITE = 0x01;
/** Read opcode (kernel: `nvme_cmd_read`). */
export const NVME_CMD_READ = 0x02;
/** Dataset Management (discard) opcode (kernel: `nvme_cmd_dsm`). */
export const NVME_CMD_DSM = 0x09;

/** Command flag: the data pointer is an SGL, metadata a contiguous buffer (kernel: `NVME_CMD_SGL_METABUF`). */
export const NVME_CMD_SGL_METABUF = 1 << 6;
/** Command flag: data and metadata pointers are SGLs (kernel: `NVME_CMD_SGL_METASEG`). */
export const NVME_CMD_SGL_METASEG = 1 << 7;
/** Either SGL flag. */
export const NVME_CMD_SGL_ALL = NVME_CMD_SGL_METABUF | NVME_CMD_SGL_METASEG;

/** SGL descriptor type: data block (kernel: `NVME_SGL_FMT_DATA_DESC`). */
export const NVME_SGL_FMT_DATA_DESC = 0x00;
/** SGL descriptor type: segment pointing to more descriptors (kernel: `NVME_SGL_FMT_SEG_DESC`). */
export const NVME_SGL_FMT_SEG_DESC = 0x02;
/** SGL descriptor type: last segment (kernel: `NVME_SGL_FMT_LAST_SEG_DESC`). */
export const NVME_SGL_FMT_LAST_SEG_DESC = 0x03;
/** Bytes of one SGL descriptor (kernel: `sizeof(struct nvme_sgl_desc)`). */
export const NVME_SGL_DESC_SIZE = 16;
/** Bytes of one DSM range (kernel: `sizeof(struct nvme_dsm_range)`). */
export const NVME_DSM_RANGE_SIZE = 16;
/** DSM attribute: deallocate (kernel: `NVME_DSMGMT_AD`). */
export const NVME_DSMGMT_AD = 1 << 2;

/** Success (kernel: `NVME_SC_SUCCESS`). */
export const NVME_SC_SUCCESS = 0x0;
/** Invalid command opcode (kernel: `NVME_SC_INVALID_OPCODE`). */
export const NVME_SC_INVALID_OPCODE = 0x1;
/** Invalid field in command (kernel: `NVME_SC_INVALID_FIELD`). */
export const NVME_SC_INVALID_FIELD = 0x2;
/** Data transfer error (kernel: `NVME_SC_DATA_XFER_ERROR`). */
export const NVME_SC_DATA_XFER_ERROR = 0x4;
/** Internal error (kernel: `NVME_SC_INTERNAL`). */
export const NVME_SC_INTERNAL = 0x6;
/** Invalid namespace (kernel: `NVME_SC_INVALID_NS`). */
export const NVME_SC_INVALID_NS = 0xb;
/** Data SGL length invalid (kernel: `NVME_SC_SGL_INVALID_DATA`). */
export const NVME_SC_SGL_INVALID_DATA = 0xf;
/** SGL descriptor type invalid (kernel: `NVME_SC_SGL_INVALID_TYPE`). */
export const NVME_SC_SGL_INVALID_TYPE = 0x11;
/** PRP offset invalid: a PRP entry after the first is not page aligned (kernel: `NVME_SC_PRP_INVALID_OFFSET`). */
export const NVME_SC_PRP_INVALID_OFFSET = 0x13;
/** LBA out of range (kernel: `NVME_SC_LBA_RANGE`). */
export const NVME_SC_LBA_RANGE = 0x80;
/** Capacity exceeded (kernel: `NVME_SC_CAP_EXCEEDED`). */
export const NVME_SC_CAP_EXCEEDED = 0x81;
/** Reservation conflict (kernel: `NVME_SC_RESERVATION_CONFLICT`). */
export const NVME_SC_RESERVATION_CONFLICT = 0x83;
/** Write fault (kernel: `NVME_SC_WRITE_FAULT`). */
export const NVME_SC_WRITE_FAULT = 0x280;
/** Unrecovered read error (kernel: `NVME_SC_READ_ERROR`). */
export const NVME_SC_READ_ERROR = 0x281;
/** Host path error (kernel: `NVME_SC_HOST_PATH_ERROR`). */
export const NVME_SC_HOST_PATH_ERROR = 0x370;
/** Do Not Retry bit of the status field (kernel: `NVME_STATUS_DNR`). */
export const NVME_STATUS_DNR = 0x4000;
/** Status code type + status code (kernel: `NVME_SCT_SC_MASK`). */
export const NVME_SCT_SC_MASK = 0x7ff;

/** One submission queue entry (kernel: `struct nvme_command`, the common/rw/dsm views). */
export class NvmeCommand {
  /** Opcode (kernel: `common.opcode`). */
  opcode = 0;
  /** NVME_CMD_SGL_* (kernel: `common.flags`). */
  flags = 0;
  /** Command identifier, the blk-mq tag (kernel: `common.command_id`). */
  commandId = 0;
  /** Namespace (kernel: `common.nsid`). */
  nsid = 1;
  /** PRP entry 1, or SGL descriptor address (kernel: `dptr.prp1` / `dptr.sgl.addr`). */
  prp1 = 0;
  /** PRP entry 2 or PRP list pointer (kernel: `dptr.prp2`). */
  prp2 = 0;
  /** SGL descriptor length (kernel: `dptr.sgl.length`). */
  sglLength = 0;
  /** SGL descriptor type << 4 (kernel: `dptr.sgl.type`). */
  sglType = 0;
  /** Starting LBA (kernel: `rw.slba`). */
  slba = 0;
  /** Number of logical blocks, 0-based (kernel: `rw.length`). */
  length = 0;
  /** DSM: number of ranges, 0-based (kernel: `dsm.nr`). */
  dsmNr = 0;
  /** DSM attributes (kernel: `dsm.attributes`). */
  dsmAttributes = 0;

  /** Clears every field (kernel: `memset(cmnd, 0, sizeof(*cmnd))` in `nvme_setup_cmd`). */
  reset(): void {
    this.opcode = 0;
    this.flags = 0;
    this.commandId = 0;
    this.nsid = 1;
    this.prp1 = 0;
    this.prp2 = 0;
    this.sglLength = 0;
    this.sglType = 0;
    this.slba = 0;
    this.length = 0;
    this.dsmNr = 0;
    this.dsmAttributes = 0;
  }

  /** A copy, as the controller fetches it. */
  clone(): NvmeCommand {
    return Object.assign(new NvmeCommand(), this);
  }
}

/** True when the command's data pointer is an SGL (kernel: `nvme_pci_cmd_use_sgl`). */
export function nvmePciCmdUseSgl(cmd: NvmeCommand): boolean {
  return (cmd.flags & NVME_CMD_SGL_ALL) !== 0;
}

/** One completion queue entry (kernel: `struct nvme_completion`). */
export interface NvmeCompletion {
  /** Submission queue id (kernel: `sq_id`). */
  sqId: number;
  /** Command identifier (kernel: `command_id`). */
  commandId: number;
  /** Status field without the phase bit (kernel: `status >> 1`). */
  status: number;
}

/** The block status for an NVMe status (kernel: `nvme_error_status`, drivers/nvme/host/core.c). */
export function nvmeErrorStatus(status: number): BlkStatus {
  switch (status & NVME_SCT_SC_MASK) {
    case NVME_SC_SUCCESS:
      return BLK_STS_OK;
    case NVME_SC_CAP_EXCEEDED:
      return BLK_STS_NOSPC;
    case NVME_SC_LBA_RANGE:
      return BLK_STS_TARGET;
    case NVME_SC_INVALID_OPCODE:
    case NVME_SC_INVALID_FIELD:
    case NVME_SC_INVALID_NS:
      return BLK_STS_NOTSUPP;
    case NVME_SC_WRITE_FAULT:
    case NVME_SC_READ_ERROR:
      return BLK_STS_MEDIUM;
    case NVME_SC_RESERVATION_CONFLICT:
      return BLK_STS_RESV_CONFLICT;
    case NVME_SC_HOST_PATH_ERROR:
      return BLK_STS_TRANSPORT;
    default:
      return BLK_STS_IOERR;
  }
}
