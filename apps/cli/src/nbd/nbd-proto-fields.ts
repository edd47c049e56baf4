/**
 * Field access of NBD messages: big-endian 16-, 32- and 64-bit fields and the protocol's strings
 * (§ "Conventions" of the NBD protocol document). 64-bit fields are read as two 32-bit halves,
 * without BigInt, and values ≥ 2^53 are reported as `U64_TOO_BIG` (no export is that large; see
 * `readU64`). Kernel counterpart: the `be32_to_cpu` / `cpu_to_be64` conversions of
 * `drivers/block/nbd.c` (the client side).
 */
import { NBD_MAX_STRING, U64_TOO_BIG } from './nbd-proto.js';

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

/** UTF-8 encoder of the protocol strings (names, descriptions, messages). */
export const utf8 = new TextEncoder();
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
