/**
 * The NBD wire protocol's numbers and names: magics, message sizes, handshake, client and
 * transmission flags, option and reply types, information types, commands and their flags,
 * structured reply types, the `base:allocation` context, error values, and the `NbdError` the
 * server throws; named as in the protocol document (`doc/proto.md` of the NetworkBlockDevice
 * project, "The NBD protocol"; section names are cited as § "…"). Only what a fixed-newstyle server
 * without TLS or extended headers needs. Kernel counterpart: `include/uapi/linux/nbd.h` (the client
 * side in `drivers/block/nbd.c`).
 *
 * The messages built from them are encoded and decoded in `nbd-proto-handshake.ts` (negotiation)
 * and `nbd-proto-transmission.ts` (requests and replies), on the big-endian field access of
 * `nbd-proto-fields.ts`.
 */
import { IovalinkError, type IovalinkErrorOptions } from '@iovalink/iommu';

// ---------------------------------------------------------------------------------------------
// § "Newstyle negotiation", § "Fixed newstyle negotiation"
// ---------------------------------------------------------------------------------------------

/** 'NBDMAGIC', the first 8 bytes the server sends (also `INIT_PASSWD`); § "Newstyle negotiation". */
export const NBDMAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT', the newstyle magic: after NBDMAGIC, and before every client option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply (`0x3e889045565a9`); § "Fixed newstyle negotiation". */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;
/** Magic of a transmission request; § "Request message". */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply (was `NBD_REPLY_MAGIC`); § "Simple reply message". */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk; § "Structured reply chunk message". */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// The magics as 32-bit halves, for comparisons without BigInt on the hot path.
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
export const OPT_REPLY_MAGIC_HI = 0x0003e889;
export const OPT_REPLY_MAGIC_LO = 0x045565a9;

/** Bytes of the server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export const NBD_GREETING_SIZE = 18;
/** Bytes of the client flags that answer the greeting. */
export const NBD_CLIENT_FLAGS_SIZE = 4;
/** Bytes of an option request header: IHAVEOPT, option, data length. */
export const NBD_OPT_HEADER_SIZE = 16;
/** Bytes of an option reply header: magic, option, reply type, data length. */
export const NBD_OPT_REPLY_HEADER_SIZE = 20;
/** Bytes of a transmission request header; § "Request message". */
export const NBD_REQUEST_SIZE = 28;
/** Bytes of a simple reply header (the read payload follows); § "Simple reply message". */
export const NBD_SIMPLE_REPLY_SIZE = 16;
/** Bytes of a structured reply chunk header; § "Structured reply chunk message". */
export const NBD_STRUCTURED_REPLY_SIZE = 20;
/** Zero bytes after the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was negotiated. */
export const NBD_EXPORT_NAME_PAD = 124;
/** Longest string the protocol allows (export names, messages); § "Conventions". */
export const NBD_MAX_STRING = 4096;

// ---------------------------------------------------------------------------------------------
// § "Handshake flags", § "Client flags"
// ---------------------------------------------------------------------------------------------

/** Handshake flag bit 0: the server speaks fixed newstyle. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Handshake flag bit 1: the server can omit the 124 zero bytes after NBD_OPT_EXPORT_NAME. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flag bit 0: the client speaks fixed newstyle. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** Client flag bit 1: no 124 zero bytes after NBD_OPT_EXPORT_NAME. */
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---------------------------------------------------------------------------------------------
// § "Transmission flags"
// ---------------------------------------------------------------------------------------------

/** Bit 0: always set. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
/** Bit 1: the export is read-only. */
export const NBD_FLAG_READ_ONLY = 1 << 1;
/** Bit 2: NBD_CMD_FLUSH is supported. */
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
/** Bit 3: NBD_CMD_FLAG_FUA is supported. */
export const NBD_FLAG_SEND_FUA = 1 << 3;
/** Bit 4: the export behaves like a rotational medium. */
export const NBD_FLAG_ROTATIONAL = 1 << 4;
/** Bit 5: NBD_CMD_TRIM is supported. */
export const NBD_FLAG_SEND_TRIM = 1 << 5;
/** Bit 6: NBD_CMD_WRITE_ZEROES (and NBD_CMD_FLAG_NO_HOLE) are supported. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** Bit 7: NBD_CMD_FLAG_DF is supported on reads (only with structured replies). */
export const NBD_FLAG_SEND_DF = 1 << 7;
/** Bit 8: flush/FUA effects are visible across all connections to the export. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
/** Bit 9: NBD_CMD_RESIZE (experimental). */
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
/** Bit 10: NBD_CMD_CACHE is understood. */
export const NBD_FLAG_SEND_CACHE = 1 << 10;
/** Bit 11: NBD_CMD_FLAG_FAST_ZERO is supported. */
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---------------------------------------------------------------------------------------------
// § "Option types"
// ---------------------------------------------------------------------------------------------

/** Choose an export and enter transmission; no error reply possible. */
export const NBD_OPT_EXPORT_NAME = 1;
/** Soft disconnect during negotiation; the server replies NBD_REP_ACK. */
export const NBD_OPT_ABORT = 2;
/** List the exports: NBD_REP_SERVER per export, then NBD_REP_ACK. */
export const NBD_OPT_LIST = 3;
/** Withdrawn (PEEK_EXPORT); unused. */
export const NBD_OPT_PEEK_EXPORT = 4;
/** Upgrade to TLS. */
export const NBD_OPT_STARTTLS = 5;
/** Details of one export without entering transmission. */
export const NBD_OPT_INFO = 6;
/** Like NBD_OPT_INFO, then enter transmission on NBD_REP_ACK. */
export const NBD_OPT_GO = 7;
/** Use structured replies in transmission. */
export const NBD_OPT_STRUCTURED_REPLY = 8;
/** List metadata contexts. */
export const NBD_OPT_LIST_META_CONTEXT = 9;
/** Select metadata contexts for NBD_CMD_BLOCK_STATUS. */
export const NBD_OPT_SET_META_CONTEXT = 10;
/** 64-bit extended headers (later extension; not supported here). */
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ---------------------------------------------------------------------------------------------
// § "Option reply types"
// ---------------------------------------------------------------------------------------------

/** The option succeeded (or a list of replies ended); no data. */
export const NBD_REP_ACK = 1;
/** One export of NBD_OPT_LIST: 32-bit name length, name, optional description. */
export const NBD_REP_SERVER = 2;
/** One piece of information for NBD_OPT_INFO/GO: 16-bit type, payload. */
export const NBD_REP_INFO = 3;
/** One metadata context: 32-bit id, name. */
export const NBD_REP_META_CONTEXT = 4;
/** Bit 31: the reply type is an error. */
export const NBD_REP_FLAG_ERROR = 2 ** 31;
/** The option is unknown to this server. */
export const NBD_REP_ERR_UNSUP = 2 ** 31 + 1;
/** Known and valid, but forbidden by policy. */
export const NBD_REP_ERR_POLICY = 2 ** 31 + 2;
/** Known, but syntactically or semantically invalid. */
export const NBD_REP_ERR_INVALID = 2 ** 31 + 3;
/** Not supported on this platform. */
export const NBD_REP_ERR_PLATFORM = 2 ** 31 + 4;
/** TLS must be negotiated first. */
export const NBD_REP_ERR_TLS_REQD = 2 ** 31 + 5;
/** The requested export does not exist. */
export const NBD_REP_ERR_UNKNOWN = 2 ** 31 + 6;
/** The server is shutting down. */
export const NBD_REP_ERR_SHUTDOWN = 2 ** 31 + 7;
/** The client must request NBD_INFO_BLOCK_SIZE before entering transmission. */
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 2 ** 31 + 8;
/** The request or its reply is too large. */
export const NBD_REP_ERR_TOO_BIG = 2 ** 31 + 9;

// ---------------------------------------------------------------------------------------------
// § "NBD_OPT_INFO (6) and NBD_OPT_GO (7)": information types
// ---------------------------------------------------------------------------------------------

/** Export size (64 bits) and transmission flags (16 bits); mandatory before NBD_REP_ACK. */
export const NBD_INFO_EXPORT = 0;
/** The export's canonical name. */
export const NBD_INFO_NAME = 1;
/** A human-readable description of the export. */
export const NBD_INFO_DESCRIPTION = 2;
/** Minimum, preferred and maximum block sizes (32 bits each); § "Block size constraints". */
export const NBD_INFO_BLOCK_SIZE = 3;

// ---------------------------------------------------------------------------------------------
// § "Request types", § "Command flags"
// ---------------------------------------------------------------------------------------------

/** Read `length` bytes at `offset`. */
export const NBD_CMD_READ = 0;
/** Write the `length` payload bytes that follow the header at `offset`. */
export const NBD_CMD_WRITE = 1;
/** Disconnect after finishing outstanding requests; no reply. */
export const NBD_CMD_DISC = 2;
/** Persist every write already replied to; offset and length are zero. */
export const NBD_CMD_FLUSH = 3;
/** The range is no longer needed (discard hint). */
export const NBD_CMD_TRIM = 4;
/** Prefetch hint. */
export const NBD_CMD_CACHE = 5;
/** Write zeroes without a payload. */
export const NBD_CMD_WRITE_ZEROES = 6;
/** Query metadata contexts over a range. */
export const NBD_CMD_BLOCK_STATUS = 7;
/** Resize the export (experimental). */
export const NBD_CMD_RESIZE = 8;

/** Command flag bit 0: reply only when the command's writes are persistent. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
/** Command flag bit 1: write zeroes without punching a hole. */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** Command flag bit 2: the read reply must have at most one content chunk. */
export const NBD_CMD_FLAG_DF = 1 << 2;
/** Command flag bit 3: block status for one extent only. */
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
/** Command flag bit 4: fail write zeroes unless faster than writing. */
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---------------------------------------------------------------------------------------------
// § "Structured reply flags", § "Structured reply types"
// ---------------------------------------------------------------------------------------------

/** Structured reply flag bit 0: the final chunk of a reply. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
/** Empty final chunk: success unless an error chunk came before. */
export const NBD_REPLY_TYPE_NONE = 0;
/** Content chunk: 64-bit offset, then data. */
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
/** Content chunk: 64-bit offset, 32-bit size of a range that reads as zeroes. */
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
/** Block status chunk: context id, then (length, flags) descriptors. */
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Bit 15: the chunk type is an error. */
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
/** Error chunk: 32-bit error, 16-bit message length, message. */
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
/** Error chunk with the 64-bit offset where it happened after the message. */
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// ---------------------------------------------------------------------------------------------
// § "Metadata contexts": `base:allocation`
// ---------------------------------------------------------------------------------------------

/** The one metadata context this server offers: allocation state (§ "Metadata contexts"). */
export const NBD_META_BASE_ALLOCATION = 'base:allocation';
/** `base:allocation` flag bit 0: the extent is a hole (not allocated in the backing store). */
export const NBD_STATE_HOLE = 1 << 0;
/** `base:allocation` flag bit 1: the extent reads as all zeroes. */
export const NBD_STATE_ZERO = 1 << 1;

// ---------------------------------------------------------------------------------------------
// § "Error values"
// ---------------------------------------------------------------------------------------------

/** Operation not permitted (e.g. a write to a read-only export). */
export const NBD_EPERM = 1;
/** Input/output error. */
export const NBD_EIO = 5;
/** Cannot allocate memory (servers should avoid it). */
export const NBD_ENOMEM = 12;
/** Invalid argument: unknown command or flag, misaligned or oversized request, read beyond the end. */
export const NBD_EINVAL = 22;
/** No space left on device: a write beyond the end. */
export const NBD_ENOSPC = 28;
/** Value too large (a DF read that cannot be sent unfragmented). */
export const NBD_EOVERFLOW = 75;
/** Operation not supported (fast zero only). */
export const NBD_ENOTSUP = 95;
/** The server is shutting down; the client must disconnect. */
export const NBD_ESHUTDOWN = 108;

/** § "Block size constraints": lengths below 2^25 must not be treated as a denial of service. */
export const NBD_MAX_PORTABLE_PAYLOAD = 2 ** 25;

/** Value `readU64` returns for a 64-bit field that is 2^53 or more (not a safe integer). */
export const U64_TOO_BIG = -1;

const OPT_NAMES: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
  [NBD_OPT_ABORT]: 'NBD_OPT_ABORT',
  [NBD_OPT_LIST]: 'NBD_OPT_LIST',
  [NBD_OPT_PEEK_EXPORT]: 'NBD_OPT_PEEK_EXPORT',
  [NBD_OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
  [NBD_OPT_INFO]: 'NBD_OPT_INFO',
  [NBD_OPT_GO]: 'NBD_OPT_GO',
  [NBD_OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
  [NBD_OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
  [NBD_OPT_EXTENDED_HEADERS]: 'NBD_OPT_EXTENDED_HEADERS',
};

const CMD_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ',
  [NBD_CMD_WRITE]: 'NBD_CMD_WRITE',
  [NBD_CMD_DISC]: 'NBD_CMD_DISC',
  [NBD_CMD_FLUSH]: 'NBD_CMD_FLUSH',
  [NBD_CMD_TRIM]: 'NBD_CMD_TRIM',
  [NBD_CMD_CACHE]: 'NBD_CMD_CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
  [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
  [NBD_CMD_RESIZE]: 'NBD_CMD_RESIZE',
};

const ERR_NAMES: Record<number, string> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/** Protocol name of an option number (`NBD_OPT_GO`), or `NBD_OPT_<n>` when unknown. */
export function nbdOptName(opt: number): string {
  return OPT_NAMES[opt] ?? `NBD_OPT_${opt}`;
}

/** Protocol name of a command type (`NBD_CMD_READ`), or `NBD_CMD_<n>` when unknown. */
export function nbdCmdName(type: number): string {
  return CMD_NAMES[type] ?? `NBD_CMD_${type}`;
}

/** Name of an NBD error value (`EINVAL`), or `E<n>` when not one of § "Error values". */
export function nbdErrName(err: number): string {
  return ERR_NAMES[err] ?? `E${err}`;
}

/** A protocol violation or misuse found by the server (the `rule` names the protocol rule). */
export class NbdError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'NbdError';
  }
}
