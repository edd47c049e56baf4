/**
 * The NBD wire protocol: constants and message encoders/decoders, named as in the protocol
 * document (`doc/proto.md` of the NetworkBlockDevice project, "The NBD protocol"; section names are
 * cited as § "…"). Only what a fixed-newstyle server without TLS or extended headers needs.
 * Kernel counterpart: `include/uapi/linux/nbd.h` (the client side in `drivers/block/nbd.c`).
 * All fields are big-endian. 64-bit fields are read as two 32-bit halves, without BigInt, and
 * values ≥ 2^53 are reported as `U64_TOO_BIG` (no export is that large; see `readU64`).
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
const NBDMAGIC_HI = 0x4e42444d;
const NBDMAGIC_LO = 0x41474943;
const IHAVEOPT_HI = 0x49484156;
const IHAVEOPT_LO = 0x454f5054;
const OPT_REPLY_MAGIC_HI = 0x0003e889;
const OPT_REPLY_MAGIC_LO = 0x045565a9;

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

// ---------------------------------------------------------------------------------------------
// Field access
// ---------------------------------------------------------------------------------------------

/**
 * Reads a big-endian unsigned 64-bit field as a number: the value if it is below 2^53, else
 * `U64_TOO_BIG`. Two 32-bit reads, no BigInt (the hot path parses one per request).
 */
export function readU64(b: Uint8Array, off: number): number {
  const hi = readU32(b, off);
  if (hi >= 0x20_0000) return U64_TOO_BIG;
  return hi * 0x1_0000_0000 + readU32(b, off + 4);
}

/** Writes a safe non-negative integer as a big-endian 64-bit field. */
export function writeU64(b: Uint8Array, off: number, v: number): void {
  const hi = Math.floor(v / 0x1_0000_0000);
  writeU32(b, off, hi);
  writeU32(b, off + 4, v - hi * 0x1_0000_0000);
}

/** Reads a big-endian unsigned 32-bit field. */
export function readU32(b: Uint8Array, off: number): number {
  return ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
}

/** Writes a big-endian unsigned 32-bit field. */
export function writeU32(b: Uint8Array, off: number, v: number): void {
  b[off] = v >>> 24;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

/** Reads a big-endian unsigned 16-bit field. */
export function readU16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

/** Writes a big-endian unsigned 16-bit field. */
export function writeU16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/** Decodes a protocol string (UTF-8, no NUL); `undefined` if it is not valid. § "Conventions". */
export function decodeString(b: Uint8Array): string | undefined {
  if (b.length > NBD_MAX_STRING || b.includes(0)) return undefined;
  try {
    return utf8Strict.decode(b);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/** The server greeting: NBDMAGIC, IHAVEOPT, handshake flags; § "Newstyle negotiation". */
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const b = new Uint8Array(NBD_GREETING_SIZE);
  writeU32(b, 0, NBDMAGIC_HI);
  writeU32(b, 4, NBDMAGIC_LO);
  writeU32(b, 8, IHAVEOPT_HI);
  writeU32(b, 12, IHAVEOPT_LO);
  writeU16(b, 16, handshakeFlags);
  return b;
}

/** A client option header. */
export interface OptionHeader {
  /** NBD_OPT_*. */
  option: number;
  /** Bytes of option data that follow. */
  length: number;
}

/**
 * Parses an option header (16 bytes at `off`): `undefined` when the magic is not IHAVEOPT (the
 * stream cannot be resynchronised; the server must drop the connection).
 */
export function decodeOptionHeader(b: Uint8Array, off = 0): OptionHeader | undefined {
  if (readU32(b, off) !== IHAVEOPT_HI || readU32(b, off + 4) !== IHAVEOPT_LO) return undefined;
  return { option: readU32(b, off + 8), length: readU32(b, off + 12) };
}

/** Encodes an option request (client side; for tests and tools). */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(NBD_OPT_HEADER_SIZE + data.length);
  writeU32(b, 0, IHAVEOPT_HI);
  writeU32(b, 4, IHAVEOPT_LO);
  writeU32(b, 8, option);
  writeU32(b, 12, data.length);
  b.set(data, NBD_OPT_HEADER_SIZE);
  return b;
}

/** An option reply: magic, option, reply type, data; § "Fixed newstyle negotiation". */
export function encodeOptionReply(option: number, type: number, data?: Uint8Array): Uint8Array {
  const len = data?.length ?? 0;
  const b = new Uint8Array(NBD_OPT_REPLY_HEADER_SIZE + len);
  writeU32(b, 0, OPT_REPLY_MAGIC_HI);
  writeU32(b, 4, OPT_REPLY_MAGIC_LO);
  writeU32(b, 8, option);
  writeU32(b, 12, type);
  writeU32(b, 16, len);
  if (data !== undefined) b.set(data, NBD_OPT_REPLY_HEADER_SIZE);
  return b;
}

/** An error option reply whose data is a human-readable message (§ "Option reply types"). */
export function encodeOptionError(option: number, type: number, message: string): Uint8Array {
  return encodeOptionReply(option, type, utf8.encode(message.slice(0, NBD_MAX_STRING)));
}

/** A decoded option reply (client side). */
export interface OptionReply {
  /** The option replied to. */
  option: number;
  /** NBD_REP_* reply type. */
  type: number;
  /** Reply data. */
  data: Uint8Array;
}

/** Parses an option reply at `off` if complete: the reply and its total size, else `undefined`. */
export function decodeOptionReply(b: Uint8Array, off = 0): { reply: OptionReply; size: number } | undefined {
  if (b.length - off < NBD_OPT_REPLY_HEADER_SIZE) return undefined;
  if (readU32(b, off) !== OPT_REPLY_MAGIC_HI || readU32(b, off + 4) !== OPT_REPLY_MAGIC_LO) {
    throw new NbdError('bad option reply magic', { rule: 'nbd: option reply magic' });
  }
  const len = readU32(b, off + 16);
  if (b.length - off < NBD_OPT_REPLY_HEADER_SIZE + len) return undefined;
  return {
    reply: {
      option: readU32(b, off + 8),
      type: readU32(b, off + 12),
      data: b.slice(off + NBD_OPT_REPLY_HEADER_SIZE, off + NBD_OPT_REPLY_HEADER_SIZE + len),
    },
    size: NBD_OPT_REPLY_HEADER_SIZE + len,
  };
}

/** Data of an NBD_REP_SERVER reply: 32-bit name length, name, description. */
export function encodeRepServer(name: string, description = ''): Uint8Array {
  const n = utf8.encode(name);
  const d = utf8.encode(description);
  const b = new Uint8Array(4 + n.length + d.length);
  writeU32(b, 0, n.length);
  b.set(n, 4);
  b.set(d, 4 + n.length);
  return b;
}

/** Data of NBD_REP_INFO / NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags. */
export function encodeInfoExport(size: number, transmissionFlags: number): Uint8Array {
  const b = new Uint8Array(12);
  writeU16(b, 0, NBD_INFO_EXPORT);
  writeU64(b, 2, size);
  writeU16(b, 10, transmissionFlags);
  return b;
}

/** Data of NBD_REP_INFO / NBD_INFO_NAME or NBD_INFO_DESCRIPTION: type, string. */
export function encodeInfoString(type: number, s: string): Uint8Array {
  const t = utf8.encode(s);
  const b = new Uint8Array(2 + t.length);
  writeU16(b, 0, type);
  b.set(t, 2);
  return b;
}

/** Data of NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum (§ "Block size constraints"). */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Uint8Array {
  const b = new Uint8Array(14);
  writeU16(b, 0, NBD_INFO_BLOCK_SIZE);
  writeU32(b, 2, min);
  writeU32(b, 6, preferred);
  writeU32(b, 10, max);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: 64-bit size, flags, and 124 zeroes unless `noZeroes`. */
export function encodeExportNameReply(
  size: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Uint8Array {
  const b = new Uint8Array(10 + (noZeroes ? 0 : NBD_EXPORT_NAME_PAD));
  writeU64(b, 0, size);
  writeU16(b, 8, transmissionFlags);
  return b;
}

/** The request data of NBD_OPT_INFO / NBD_OPT_GO. */
export interface InfoRequest {
  /** Export name ('' is the default export). */
  name: string;
  /** NBD_INFO_* types the client asks for. */
  requests: number[];
}

/**
 * Parses NBD_OPT_INFO / NBD_OPT_GO data: 32-bit name length (≤ data length - 6), name, 16-bit
 * count, that many 16-bit NBD_INFO types, and nothing else. `undefined` when malformed
 * (the server answers NBD_REP_ERR_INVALID).
 */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | undefined {
  if (data.length < 6) return undefined;
  const nameLen = readU32(data, 0);
  if (nameLen > data.length - 6) return undefined;
  const name = decodeString(data.subarray(4, 4 + nameLen));
  if (name === undefined) return undefined;
  const n = readU16(data, 4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * n) return undefined;
  const requests: number[] = [];
  for (let i = 0; i < n; i++) requests.push(readU16(data, 6 + nameLen + 2 * i));
  return { name, requests };
}

/** Encodes NBD_OPT_INFO / NBD_OPT_GO data (client side). */
export function encodeInfoRequest(name: string, requests: readonly number[] = []): Uint8Array {
  const n = utf8.encode(name);
  const b = new Uint8Array(6 + n.length + 2 * requests.length);
  writeU32(b, 0, n.length);
  b.set(n, 4);
  writeU16(b, 4 + n.length, requests.length);
  for (let i = 0; i < requests.length; i++) writeU16(b, 6 + n.length + 2 * i, requests[i]!);
  return b;
}

/** The request data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  /** Export name ('' is the default export). */
  name: string;
  /** Queries, each starting with a namespace and a colon (not checked here). */
  queries: string[];
}

/**
 * Parses NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: 32-bit export name length,
 * name, 32-bit query count, then per query a 32-bit length and the query string, and nothing
 * else (§ `NBD_OPT_LIST_META_CONTEXT`). `undefined` when malformed (a length that runs past the
 * data, trailing bytes, or a string that is not valid UTF-8 without NUL): the server answers
 * NBD_REP_ERR_INVALID.
 */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest | undefined {
  if (data.length < 8) return undefined;
  const nameLen = readU32(data, 0);
  if (nameLen > data.length - 8) return undefined;
  const name = decodeString(data.subarray(4, 4 + nameLen));
  if (name === undefined) return undefined;
  const n = readU32(data, 4 + nameLen);
  let off = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (data.length - off < 4) return undefined;
    const len = readU32(data, off);
    if (len > data.length - off - 4) return undefined;
    const q = decodeString(data.subarray(off + 4, off + 4 + len));
    if (q === undefined) return undefined;
    queries.push(q);
    off += 4 + len;
  }
  return off === data.length ? { name, queries } : undefined;
}

/** Encodes NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data (client side). */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Uint8Array {
  const n = utf8.encode(name);
  const qs = queries.map((q) => utf8.encode(q));
  const b = new Uint8Array(8 + n.length + qs.reduce((t, q) => t + 4 + q.length, 0));
  writeU32(b, 0, n.length);
  b.set(n, 4);
  writeU32(b, 4 + n.length, qs.length);
  let off = 8 + n.length;
  for (const q of qs) {
    writeU32(b, off, q.length);
    b.set(q, off + 4);
    off += 4 + q.length;
  }
  return b;
}

/** Data of NBD_REP_META_CONTEXT: 32-bit context id, context name. */
export function encodeRepMetaContext(id: number, name: string): Uint8Array {
  const t = utf8.encode(name);
  const b = new Uint8Array(4 + t.length);
  writeU32(b, 0, id);
  b.set(t, 4);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

/** A parsed request header; § "Request message". The handle is kept as two opaque 32-bit halves. */
export interface NbdRequest {
  /** NBD_CMD_FLAG_* bits. */
  flags: number;
  /** NBD_CMD_*. */
  type: number;
  /** High 32 bits of the client's handle (cookie). */
  handleHi: number;
  /** Low 32 bits of the client's handle. */
  handleLo: number;
  /** Byte offset, or `U64_TOO_BIG`. */
  offset: number;
  /** Byte length. */
  length: number;
}

/**
 * Parses a 28-byte request header at `off`: `undefined` when the magic is wrong (the stream is
 * lost; the server must drop the connection).
 */
export function decodeRequest(b: Uint8Array, off = 0): NbdRequest | undefined {
  if (readU32(b, off) !== NBD_REQUEST_MAGIC) return undefined;
  return {
    flags: readU16(b, off + 4),
    type: readU16(b, off + 6),
    handleHi: readU32(b, off + 8),
    handleLo: readU32(b, off + 12),
    offset: readU64(b, off + 16),
    length: readU32(b, off + 24),
  };
}

/** Encodes a request header (client side; tests and tools). `offset` must be a safe integer. */
export function encodeRequest(
  type: number,
  flags: number,
  handleHi: number,
  handleLo: number,
  offset: number,
  length: number,
): Uint8Array {
  const b = new Uint8Array(NBD_REQUEST_SIZE);
  writeU32(b, 0, NBD_REQUEST_MAGIC);
  writeU16(b, 4, flags);
  writeU16(b, 6, type);
  writeU32(b, 8, handleHi);
  writeU32(b, 12, handleLo);
  writeU64(b, 16, offset);
  writeU32(b, 24, length);
  return b;
}

/** Writes a simple reply header (16 bytes) at `off` of `b`; § "Simple reply message". */
export function writeSimpleReply(b: Uint8Array, off: number, error: number, hi: number, lo: number): void {
  writeU32(b, off, NBD_SIMPLE_REPLY_MAGIC);
  writeU32(b, off + 4, error);
  writeU32(b, off + 8, hi);
  writeU32(b, off + 12, lo);
}

/** Writes a structured reply chunk header (20 bytes) at `off`; § "Structured reply chunk message". */
export function writeStructuredReply(
  b: Uint8Array,
  off: number,
  flags: number,
  type: number,
  hi: number,
  lo: number,
  length: number,
): void {
  writeU32(b, off, NBD_STRUCTURED_REPLY_MAGIC);
  writeU16(b, off + 4, flags);
  writeU16(b, off + 6, type);
  writeU32(b, off + 8, hi);
  writeU32(b, off + 12, lo);
  writeU32(b, off + 16, length);
}

/**
 * A final NBD_REPLY_TYPE_ERROR chunk: error, message length, message (§ "Structured reply
 * types"); the message is cut to the protocol's string limit.
 */
export function encodeErrorChunk(hi: number, lo: number, error: number, message: string): Uint8Array {
  const m = utf8.encode(message).subarray(0, NBD_MAX_STRING);
  const b = new Uint8Array(NBD_STRUCTURED_REPLY_SIZE + 6 + m.length);
  writeStructuredReply(b, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, hi, lo, 6 + m.length);
  writeU32(b, NBD_STRUCTURED_REPLY_SIZE, error);
  writeU16(b, NBD_STRUCTURED_REPLY_SIZE + 4, m.length);
  b.set(m, NBD_STRUCTURED_REPLY_SIZE + 6);
  return b;
}
