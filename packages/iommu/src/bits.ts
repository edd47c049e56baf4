/**
 * Exact integer arithmetic on addresses above 2^31 without slow paths. Addresses are doubles in
 * V8 once they pass 2^31, and `x % m` on a double compiles to a call to fmod (about 8 ns here),
 * while a multiply by an exact power-of-two reciprocal, a floor and a mask cost about 1.5 ns. Every
 * helper is exact for non-negative safe integers and power-of-two moduli. Kernel counterpart: the
 * shifts and masks of `include/linux/align.h` and `iova.h` (`iova_offset`, `ALIGN`).
 */

/** 2^32. */
export const TWO32 = 4294967296;
/** 1 / 2^32, exact. */
export const INV_TWO32 = 1 / 4294967296;

/** `x mod 2^32` (x a non-negative safe integer). */
export function lo32(x: number): number {
  return x - Math.floor(x * INV_TWO32) * TWO32;
}

/** `x mod m` for a power of two `m ≤ 2^30` (x a non-negative safe integer). */
export function modPow2(x: number, m: number): number {
  return (x - Math.floor(x * INV_TWO32) * TWO32) & (m - 1);
}

/** True if `x` is a multiple of the power of two `m ≤ 2^30`. */
export function isAlignedPow2(x: number, m: number): boolean {
  return ((x - Math.floor(x * INV_TWO32) * TWO32) & (m - 1)) === 0;
}
