/**
 * The messages of NBD negotiation: the server greeting, option requests and option replies, and
 * the data of NBD_REP_SERVER, NBD_REP_INFO (NBD_INFO_EXPORT, NAME, DESCRIPTION, BLOCK_SIZE),
 * NBD_OPT_INFO / NBD_OPT_GO and the metadata-context options (§ "Newstyle negotiation", § "Fixed
 * newstyle negotiation", § "Option types", § "Option reply types" of the NBD protocol document).
 * Decoders for what the server receives, encoders for what it sends, and the client's side of
 * each for tests and tools. Kernel counterpart: none; the kernel's `drivers/block/nbd.c` leaves
 * the handshake to the user-space `nbd-client`.
 */
import {
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  NBD_EXPORT_NAME_PAD,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAX_STRING,
  NBD_OPT_HEADER_SIZE,
  NBD_OPT_REPLY_HEADER_SIZE,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  NbdError,
  OPT_REPLY_MAGIC_HI,
  OPT_REPLY_MAGIC_LO,
} from './nbd-proto.js';
import { decodeString, readU16, readU32, utf8, writeU16, writeU32, writeU64 } from './nbd-proto-fields.js';

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
