// The dirty report bitmap (drivers/vfio/iova_bitmap.c) and the image checksum (lib/crc32.c).
import { crc32 as zlibCrc32 } from 'node:zlib';
import { Errno } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { crc32, crc32Le } from '../src/crc32.js';
import {
  IovaBitmap,
  iovaBitmapAlloc,
  iovaBitmapBytes,
  iovaBitmapForEach,
  iovaBitmapSet,
  iovaBitmapTest,
} from '../src/iova-bitmap.js';

describe('iova_bitmap_alloc', () => {
  it('needs whole u64 words for the range, -EFAULT when the user bitmap is short', () => {
    expect(iovaBitmapBytes(4096, 4096)).toBe(8);
    expect(iovaBitmapBytes(65 * 4096, 4096)).toBe(16);
    expect(iovaBitmapAlloc(0, 64 * 4096, 4096, new Uint8Array(7))).toBe(-Errno.EFAULT);
    expect(iovaBitmapAlloc(0, 0, 4096, new Uint8Array(8))).toBe(-Errno.EINVAL);
    expect(iovaBitmapAlloc(0, 64 * 4096, 4096, new Uint8Array(8))).toBeInstanceOf(IovaBitmap);
  });
});

describe('iova_bitmap_set', () => {
  it('sets the bit of every page a range touches, clipped to the bitmap, never clearing', () => {
    const data = new Uint8Array(8);
    data[7] = 0x80;
    const bm = new IovaBitmap(0x10000, 64 * 0x1000, 0x1000, data);
    iovaBitmapSet(bm, 0x10000, 1);
    iovaBitmapSet(bm, 0x12fff, 2); // pages 2 and 3
    iovaBitmapSet(bm, 0x0, 0x10000); // wholly below
    iovaBitmapSet(bm, 0x10000 + 62 * 0x1000, 0x100000); // runs past the end
    const set = [...Array(64).keys()].filter((i) => iovaBitmapTest(data, i));
    expect(set).toEqual([0, 2, 3, 62, 63]);
  });

  it('for_each hands the whole range to the callback', () => {
    const bm = new IovaBitmap(0x2000, 0x8000, 0x1000, new Uint8Array(8));
    const seen: Array<[number, number]> = [];
    expect(
      iovaBitmapForEach(bm, 'x', (_b, iova, len, opaque) => {
        seen.push([iova, len]);
        return opaque === 'x' ? 0 : -1;
      }),
    ).toBe(0);
    expect(seen).toEqual([[0x2000, 0x8000]]);
  });
});

describe('crc32_le', () => {
  it('matches zlib, also when continued across calls', () => {
    const d = new Uint8Array(10_001);
    for (let i = 0; i < d.length; i++) d[i] = (i * 131 + 7) & 0xff;
    expect(crc32(0, d)).toBe(zlibCrc32(d));
    expect(crc32(crc32(0, d.subarray(0, 4097)), d.subarray(4097))).toBe(zlibCrc32(d));
    expect(crc32(0, new TextEncoder().encode('123456789'))).toBe(0xcbf43926);
    // the raw register form: no inversions
    expect(crc32Le(0xffffffff, new Uint8Array(0))).toBe(0xffffffff);
  });
});
