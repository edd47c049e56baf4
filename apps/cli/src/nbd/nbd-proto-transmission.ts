/**
 * The messages of the NBD transmission phase: the request header, the simple reply header, the
 * structured reply chunk header and the error chunk (§ "Request message", § "Simple reply
 * message", § "Structured reply chunk message" of the NBD protocol document). The request handle
 * is kept as two opaque 32-bit halves. Kernel counterpart: `struct nbd_request` / `struct
 * nbd_reply` of `include/uapi/linux/nbd.h`, which `drivers/block/nbd.c` (the client side) sends in
 * `nbd_send_cmd` and reads in `nbd_handle_reply`.
 */
import {
  NBD_MAX_STRING,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_ERROR,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_SIZE,
} from './nbd-proto.js';
import { readU16, readU32, readU64, utf8, writeU16, writeU32, writeU64 } from './nbd-proto-fields.js';

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
