/**
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, initial and final inversion, as zlib and
 * Ethernet compute it), used by the model device to checksum its migration images. Kernel
 * counterpart: lib/crc32.c (`crc32_le`, which takes and returns the raw register; `crc32`
 * below adds the zlib-style inversions). Differs on purpose: slicing-by-4 tables in JS rather
 * than the kernel's generated tables or CPU instructions.
 */

/** Four 256-entry tables for slicing-by-4. */
const TABLES: Uint32Array[] = (() => {
  const t0 = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t0[n] = c >>> 0;
  }
  const out = [t0];
  for (let s = 1; s < 4; s++) {
    const prev = out[s - 1] as Uint32Array;
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      const p = prev[n] as number;
      t[n] = ((p >>> 8) ^ (t0[p & 0xff] as number)) >>> 0;
    }
    out.push(t);
  }
  return out;
})();

/**
 * Continues a raw little-endian CRC register over `data` (kernel: `crc32_le(crc, p, len)`,
 * lib/crc32.c): no inversion in or out.
 */
export function crc32Le(crc: number, data: Uint8Array): number {
  const [t0, t1, t2, t3] = TABLES as [Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let c = crc >>> 0;
  let i = 0;
  const n = data.length;
  const end4 = n - (n % 4);
  while (i < end4) {
    c ^=
      (data[i] as number) |
      ((data[i + 1] as number) << 8) |
      ((data[i + 2] as number) << 16) |
      ((data[i + 3] as number) << 24);
    c =
      (t3[c & 0xff] as number) ^
      (t2[(c >>> 8) & 0xff] as number) ^
      (t1[(c >>> 16) & 0xff] as number) ^
      (t0[c >>> 24] as number);
    i += 4;
  }
  while (i < n) {
    c = (t0[(c ^ (data[i] as number)) & 0xff] as number) ^ (c >>> 8);
    i++;
  }
  return c >>> 0;
}

/**
 * CRC-32 of `data` with the usual inversions (`crc32(0, data)` = zlib's `crc32`); continue with
 * the previous result (kernel: `crc32_le(~crc, p, len) ^ ~0`, lib/crc32.c).
 */
export function crc32(prev: number, data: Uint8Array): number {
  return (crc32Le(~prev >>> 0, data) ^ 0xffffffff) >>> 0;
}
