/**
 * Exact integer arithmetic on addresses above 2^31 without slow paths. Addresses are doubles in
 * V8 once they pass 2^31, and `x % m` on a double compiles to a call to fmod (about 8 ns here),
 * while a multiply by an exact power-of-two reciprocal, a floor and a mask cost about 1.5 ns. Every
 * helper is exact for non-negative safe integers and power-of-two moduli. Kernel counterpart: the
 * shifts and masks of `include/linux/align.h` and `iova.h` (`iova_offset`, `ALIGN`), `is_power_of_2`
 * (include/linux/log2.h), and the `cpu_to_le64` / `le64_to_cpu` accessors: written once here, the
 * bottom layer, for every package above.
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

/**
 * `x` rounded down to a multiple of the power of two `a` (kernel: `ALIGN_DOWN`, include/linux/align.h).
 * Exact for any safe integer `x` (negative too) and any power of two `a` up to 2^52: the division
 * by a power of two is exact, so `floor` sees the true quotient.
 */
export function alignDown(x: number, a: number): number {
  return Math.floor(x / a) * a;
}

/** `x` rounded up to a multiple of the power of two `a` (kernel: `ALIGN`, include/linux/align.h); exact as `alignDown`. */
export function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

/**
 * True if `x` is a multiple of the power of two `a` (kernel: `IS_ALIGNED`, include/linux/align.h),
 * for any power of two up to 2^52. `isAlignedPow2` is the faster form for `a <= 2^30`.
 */
export function isAligned(x: number, a: number): boolean {
  return Math.floor(x / a) * a === x;
}

/** True if `n` is a power of two (kernel: `is_power_of_2`, include/linux/log2.h); false for 0, fractions, non-integers. */
export function isPowerOf2(n: number): boolean {
  if (!(n > 0 && Number.isSafeInteger(n))) return false;
  return n <= 0x40000000 ? (n & (n - 1)) === 0 : 2 ** Math.round(Math.log2(n)) === n;
}

/** Number of bits needed to represent `x` (kernel: `fls_long`, include/linux/bitops.h), for 0 <= x < 2^53. */
export function flsLong(x: number): number {
  if (x <= 0xffffffff) return 32 - Math.clz32(x);
  return 64 - Math.clz32(Math.floor(x / 4294967296));
}

/** `n` rounded up to a power of two, for 1 <= n <= 2^52 (kernel: `roundup_pow_of_two`, include/linux/log2.h). */
export function roundupPowOfTwo(n: number): number {
  return 2 ** flsLong(n - 1);
}

/** Writes a little-endian u64 (an address up to 2^53) at `off` of a view, without BigInt (kernel: `cpu_to_le64` store). */
export function putLe64(view: DataView, off: number, value: number): void {
  if (value < TWO32) {
    view.setUint32(off, value, true);
    view.setUint32(off + 4, 0, true);
    return;
  }
  view.setUint32(off, lo32(value), true);
  view.setUint32(off + 4, Math.floor(value * INV_TWO32), true);
}

/** Reads a little-endian u64 written by `putLe64` (kernel: `le64_to_cpu` load; values above 2^53 lose precision). */
export function getLe64(view: DataView, off: number): number {
  return view.getUint32(off, true) + view.getUint32(off + 4, true) * TWO32;
}
