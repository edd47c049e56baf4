// The integer helpers of bits.ts against the kernel macros they stand for (include/linux/align.h,
// log2.h, bitops.h): exact above 2^32, where `|`/`&`/`>>` on doubles would truncate.
import { describe, expect, it } from 'vitest';
import {
  alignDown,
  alignUp,
  flsLong,
  getLe64,
  isAligned,
  isPowerOf2,
  putLe64,
  roundupPowOfTwo,
} from '../src/bits.js';

const G = 2 ** 30;

describe('ALIGN / ALIGN_DOWN / IS_ALIGNED', () => {
  it('round to the neighbouring multiples, below and above 2^32', () => {
    expect(alignUp(4097, 4096)).toBe(8192);
    expect(alignUp(8192, 4096)).toBe(8192);
    expect(alignDown(8191, 4096)).toBe(4096);
    expect(alignUp(5 * 2 ** 40 + 1, 2 ** 21)).toBe(5 * 2 ** 40 + 2 ** 21);
    expect(alignDown(5 * 2 ** 40 + 2 ** 21 - 1, 2 ** 21)).toBe(5 * 2 ** 40);
    expect(alignUp(3 * G + 1, 4 * G)).toBe(4 * G);
    expect(alignDown(2 ** 52 - 1, 2 ** 51)).toBe(2 ** 51);
  });

  it('ALIGN_DOWN of a negative value goes towards minus infinity (the allocator search relies on it)', () => {
    expect(alignDown(-1, 8)).toBe(-8);
    expect(alignDown(-8, 8)).toBe(-8);
  });

  it('IS_ALIGNED is true exactly for multiples, also for alignments above 2^30', () => {
    expect(isAligned(6 * G, 2 * G)).toBe(true);
    expect(isAligned(6 * G + 4096, 2 * G)).toBe(false);
    expect(isAligned(2 ** 40 + 4096, 4096)).toBe(true);
    expect(isAligned(2 ** 40 + 4095, 4096)).toBe(false);
    expect(isAligned(4096.5, 4096)).toBe(false);
  });
});

describe('is_power_of_2 / roundup_pow_of_two / fls_long', () => {
  it('is_power_of_2 accepts 1, 2, 4 … 2^52 and nothing else', () => {
    for (let k = 0; k <= 52; k++) expect(isPowerOf2(2 ** k)).toBe(true);
    for (const n of [0, -4, 3, 6, 4095, 2 ** 31 + 1, 3 * 2 ** 40, 2 ** 52 + 2, 0.5, 4096.5, Number.NaN]) {
      expect(isPowerOf2(n)).toBe(false);
    }
  });

  it('roundup_pow_of_two and fls_long across the 2^32 boundary', () => {
    expect(roundupPowOfTwo(1)).toBe(1);
    expect(roundupPowOfTwo(5)).toBe(8);
    expect(roundupPowOfTwo(2 ** 32)).toBe(2 ** 32);
    expect(roundupPowOfTwo(2 ** 32 + 1)).toBe(2 ** 33);
    expect(flsLong(0)).toBe(0);
    expect(flsLong(2 ** 32 - 1)).toBe(32);
    expect(flsLong(2 ** 32)).toBe(33);
  });
});

describe('cpu_to_le64 / le64_to_cpu', () => {
  it('stores the low word first and round-trips values up to 2^53 - 1', () => {
    const v = new DataView(new ArrayBuffer(16));
    for (const x of [0, 1, 2 ** 32 - 1, 2 ** 32, 0x1234_5678_9abc, 2 ** 53 - 1]) {
      putLe64(v, 8, x);
      expect(v.getUint32(8, true)).toBe(x % 2 ** 32);
      expect(v.getUint32(12, true)).toBe(Math.floor(x / 2 ** 32));
      expect(getLe64(v, 8)).toBe(x);
    }
  });
});
