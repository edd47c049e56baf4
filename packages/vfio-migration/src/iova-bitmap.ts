/**
 * The dirty bitmap a DMA logging report fills: one bit per `pageSize` of IOVA from `iova`, held
 * in the caller's buffer of little-endian u64 words. Kernel counterpart:
 * drivers/vfio/iova_bitmap.c (v6.17: `iova_bitmap_alloc`, `iova_bitmap_for_each`,
 * `iova_bitmap_set`). Differs on purpose: the kernel pins the user bitmap a window of pages at a
 * time and walks the range window by window; the model writes the caller's `Uint8Array`
 * directly and calls the walker once for the whole range. A bitmap too short for the range
 * fails like a pin of missing user memory (-EFAULT).
 */
import { Errno } from '@iovalink/iommu';

/** An IOVA range's dirty bitmap (kernel: `struct iova_bitmap`). */
export class IovaBitmap {
  /** First IOVA the bitmap covers. */
  readonly iova: number;
  /** Bytes of IOVA covered. */
  readonly length: number;
  /** IOVA bytes one bit stands for (a power of two). */
  readonly pageSize: number;
  /** The caller's bitmap bytes (bit `n` = byte `n >> 3`, bit `n & 7`). */
  readonly data: Uint8Array;

  constructor(iova: number, length: number, pageSize: number, data: Uint8Array) {
    this.iova = iova;
    this.length = length;
    this.pageSize = pageSize;
    this.data = data;
  }
}

/** Bytes of bitmap a range needs, rounded to whole u64 words (kernel: the size `iova_bitmap_alloc` pins). */
export function iovaBitmapBytes(length: number, pageSize: number): number {
  const bits = Math.ceil(length / pageSize);
  return Math.ceil(bits / 64) * 8;
}

/**
 * Wraps the caller's bitmap for `[iova, iova + length)` at `pageSize` granularity (kernel:
 * `iova_bitmap_alloc`). Returns the bitmap, or -EFAULT when `data` is shorter than the range
 * needs (the kernel fails pinning the missing user pages), -EINVAL for an empty range.
 */
export function iovaBitmapAlloc(
  iova: number,
  length: number,
  pageSize: number,
  data: Uint8Array,
): IovaBitmap | number {
  if (!(length > 0)) return -Errno.EINVAL;
  if (data.length < Math.ceil(Math.ceil(length / pageSize) / 8)) return -Errno.EFAULT;
  return new IovaBitmap(iova, length, pageSize, data);
}

/**
 * Calls `fn(bitmap, iova, length, opaque)` over the bitmap's range and returns its result
 * (kernel: `iova_bitmap_for_each`). Differs: one call for the whole range (the kernel calls once
 * per pinned window).
 */
export function iovaBitmapForEach<T>(
  bitmap: IovaBitmap,
  opaque: T,
  fn: (bitmap: IovaBitmap, iova: number, length: number, opaque: T) => number,
): number {
  return fn(bitmap, bitmap.iova, bitmap.length, opaque);
}

/**
 * Marks `[iova, iova + length)` dirty: sets the bit of every page the range touches, clipped to
 * the bitmap's range (kernel: `iova_bitmap_set`). Never clears a bit.
 */
export function iovaBitmapSet(bitmap: IovaBitmap, iova: number, length: number): void {
  if (!(length > 0)) return;
  const lo = Math.max(iova, bitmap.iova);
  const hi = Math.min(iova + length, bitmap.iova + bitmap.length);
  if (lo >= hi) return;
  const first = Math.floor((lo - bitmap.iova) / bitmap.pageSize);
  const last = Math.floor((hi - 1 - bitmap.iova) / bitmap.pageSize);
  const d = bitmap.data;
  for (let bit = first; bit <= last; bit++) d[bit >>> 3] = (d[bit >>> 3] as number) | (1 << (bit & 7));
}

/** True if bit `n` of a report bitmap is set (a reader's helper; the kernel leaves this to userspace). */
export function iovaBitmapTest(data: Uint8Array, n: number): boolean {
  return ((data[n >>> 3] ?? 0) & (1 << (n & 7))) !== 0;
}
