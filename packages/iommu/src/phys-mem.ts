/**
 * Physical memory: a byte-addressable RAM of a configured size, backed lazily (a frame never
 * written reads as zeros and costs nothing until a frame of its 64 KiB block is written), so a
 * 64 GiB machine costs only what is touched. Kernel counterpart: the memory `struct page`s describe
 * (mm/memory-model). Blocks live in a two-level table indexed by block number, so lookup is two
 * array reads.
 */
import { hex, MachineError } from './errors.js';

/** log2 of the CPU page size. */
export const PAGE_SHIFT = 12;
/** The CPU page size in bytes (4 KiB). */
export const PAGE_SIZE = 4096;
/** log2 of the bytes of one backing block: 64 KiB, sixteen frames. */
const BLOCK_SHIFT = 16;
/** Bytes of one backing block. */
const BLOCK_SIZE = 1 << BLOCK_SHIFT;
/** Frames in one backing block. */
const FRAMES_PER_BLOCK = BLOCK_SIZE / PAGE_SIZE;
/** Blocks per second-level table of the directory (256 MiB of RAM). */
const L2_SIZE = 4096;

/** A second-level table: the blocks of 256 MiB of RAM and, per block, a bitmask of its frames that hold data. */
interface L2Table {
  blocks: Array<Uint8Array | undefined>;
  backed: Uint16Array;
}

/** Number of bits set in a 16-bit mask. */
function popcount16(v: number): number {
  let x = v - ((v >>> 1) & 0x5555);
  x = (x & 0x3333) + ((x >>> 2) & 0x3333);
  x = (x + (x >>> 4)) & 0x0f0f;
  return (x + (x >>> 8)) & 0x1f;
}

/**
 * Lazily backed physical RAM from address 0 to `size`. Frames are backed sixteen at a time, in
 * 64 KiB blocks of contiguous memory, so physically contiguous pages are contiguous bytes too: a
 * run of pages copies with one `set`, and a caller may receive data straight into a span of RAM
 * (`span`) the way a user-space server receives into its pinned I/O buffer.
 */
export class PhysMem {
  /** RAM size in bytes. */
  readonly size: number;
  /** Number of 4 KiB frames. */
  readonly nrFrames: number;
  readonly #dir: (L2Table | undefined)[];
  #backed = 0;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new MachineError(`physical memory size ${size} is not a positive multiple of ${PAGE_SIZE}`, {
        rule: 'phys-mem: size',
      });
    }
    this.size = size;
    this.nrFrames = size / PAGE_SIZE;
    this.#dir = new Array(Math.ceil(size / BLOCK_SIZE / L2_SIZE));
  }

  /** Number of frames that hold data (were written at least once since last discarded). */
  get backedFrames(): number {
    return this.#backed;
  }

  /** Throws unless `[pa, pa + len)` lies inside RAM. */
  check(pa: number, len: number): void {
    if (!(pa >= 0 && len >= 0 && pa + len <= this.size && Number.isSafeInteger(pa + len))) {
      throw new MachineError(
        `physical access [${hex(pa)}, +${hex(len)}) is outside RAM [0, ${hex(this.size)})`,
        { rule: 'phys-mem: outside RAM' },
      );
    }
  }

  /** The block with index `bi`, or undefined when none of its frames was ever backed. */
  #peekBlock(bi: number): Uint8Array | undefined {
    const l2 = this.#dir[Math.floor(bi / L2_SIZE)];
    return l2 === undefined ? undefined : l2.blocks[bi % L2_SIZE];
  }

  /**
   * The block holding byte `pa`, allocated if needed, with the frames of `[pa, pa + n)` (inside
   * that block) marked as holding data.
   */
  #backBlock(pa: number, n: number): Uint8Array {
    const bi = Math.floor(pa / BLOCK_SIZE);
    const hi = Math.floor(bi / L2_SIZE);
    let l2 = this.#dir[hi];
    if (l2 === undefined) {
      l2 = { blocks: new Array(L2_SIZE), backed: new Uint16Array(L2_SIZE) };
      this.#dir[hi] = l2;
    }
    const lo = bi % L2_SIZE;
    let b = l2.blocks[lo];
    if (b === undefined) {
      b = new Uint8Array(BLOCK_SIZE);
      l2.blocks[lo] = b;
    }
    const o = pa - bi * BLOCK_SIZE;
    const first = o >>> 12;
    const last = (o + n - 1) >>> 12;
    const bits = ((2 << last) - 1) & ~((1 << first) - 1);
    const had = l2.backed[lo]!;
    if ((had & bits) !== bits) {
      this.#backed += popcount16(bits & ~had);
      l2.backed[lo] = had | bits;
    }
    return b;
  }

  /** The frame at `pfn` as a view of RAM, backing it with zeros if it was never written (for writers). */
  frame(pfn: number): Uint8Array {
    const pa = pfn * PAGE_SIZE;
    const b = this.#backBlock(pa, PAGE_SIZE);
    const o = modBlock(pa);
    return b.subarray(o, o + PAGE_SIZE);
  }

  /** The frame at `pfn` if it holds data, else `undefined` (reads as zeros). */
  peekFrame(pfn: number): Uint8Array | undefined {
    const bi = Math.floor(pfn / FRAMES_PER_BLOCK);
    const l2 = this.#dir[Math.floor(bi / L2_SIZE)];
    if (l2 === undefined || ((l2.backed[bi % L2_SIZE]! >>> (pfn % FRAMES_PER_BLOCK)) & 1) === 0)
      return undefined;
    const o = (pfn % FRAMES_PER_BLOCK) * PAGE_SIZE;
    return l2.blocks[bi % L2_SIZE]!.subarray(o, o + PAGE_SIZE);
  }

  /**
   * Drops a frame's backing (its contents become zeros), e.g. when a page is freed and scrubbed;
   * a block none of whose frames holds data is released.
   */
  discardFrame(pfn: number): void {
    const bi = Math.floor(pfn / FRAMES_PER_BLOCK);
    const l2 = this.#dir[Math.floor(bi / L2_SIZE)];
    if (l2 === undefined) return;
    const lo = bi % L2_SIZE;
    const bit = 1 << (pfn % FRAMES_PER_BLOCK);
    const had = l2.backed[lo]!;
    if ((had & bit) === 0) return;
    this.#backed--;
    l2.backed[lo] = had & ~bit;
    if (had === bit && !(l2.blocks[lo]!.buffer instanceof SharedArrayBuffer)) {
      l2.blocks[lo] = undefined;
    } else {
      const o = (pfn % FRAMES_PER_BLOCK) * PAGE_SIZE;
      l2.blocks[lo]!.fill(0, o, o + PAGE_SIZE);
    }
  }

  /**
   * A writable view of RAM from `pa`: `maxLen` bytes, or fewer where the backing block ends
   * (at least one byte when `maxLen > 0`). Its frames count as holding data. For a CPU-side
   * producer filling a buffer in place (e.g. a socket read into the pages of an I/O buffer).
   */
  span(pa: number, maxLen: number): Uint8Array {
    this.check(pa, maxLen);
    const o = modBlock(pa);
    const n = Math.min(maxLen, BLOCK_SIZE - o);
    if (n === 0) return new Uint8Array(0);
    return this.#backBlock(pa, n).subarray(o, o + n);
  }

  /**
   * Backs `[pa, pa + len)` (64 KiB-aligned) with one new `SharedArrayBuffer`, keeping what the
   * range held, and returns it: another thread attaches it (`attachShared`) to see and fill the
   * same bytes, e.g. a server thread receiving payloads into the pages the device thread maps.
   * Shared blocks stay backed for the life of the memory (discarding a frame zeroes it).
   */
  share(pa: number, len: number): SharedArrayBuffer {
    this.#checkShareable(pa, len);
    const sab = new SharedArrayBuffer(len);
    const bytes = new Uint8Array(sab);
    // copy only blocks that hold data: the new memory is zeros, and untouched pages cost nothing
    for (let o = 0; o < len; o += BLOCK_SIZE) {
      const b = this.#peekBlock((pa + o) / BLOCK_SIZE);
      if (b !== undefined) bytes.set(b, o);
    }
    this.#useShared(pa, sab);
    return sab;
  }

  /** Makes the `SharedArrayBuffer` another `PhysMem` returned from `share(pa, …)` the backing of the same range here. */
  attachShared(pa: number, sab: SharedArrayBuffer): void {
    this.#checkShareable(pa, sab.byteLength);
    this.#useShared(pa, sab);
  }

  #checkShareable(pa: number, len: number): void {
    this.check(pa, len);
    if (pa % BLOCK_SIZE !== 0 || len % BLOCK_SIZE !== 0 || len === 0) {
      throw new MachineError(
        `shared RAM [${hex(pa)}, +${hex(len)}) must be a non-empty range aligned to ${hex(BLOCK_SIZE)} bytes`,
        { rule: 'phys-mem: shared range alignment' },
      );
    }
  }

  #useShared(pa: number, sab: SharedArrayBuffer): void {
    for (let o = 0; o < sab.byteLength; o += BLOCK_SIZE) {
      this.#backBlock(pa + o, BLOCK_SIZE);
      const bi = (pa + o) / BLOCK_SIZE;
      this.#dir[Math.floor(bi / L2_SIZE)]!.blocks[bi % L2_SIZE] = new Uint8Array(sab, o, BLOCK_SIZE);
    }
  }

  /** Copies `dst.length` bytes starting at physical address `pa` into `dst`. */
  readInto(pa: number, dst: Uint8Array): void {
    this.copyOut(pa, dst, 0, dst.length);
  }

  /** Copies `len` bytes at physical address `pa` into `dst` at `dstOff`. */
  copyOut(pa: number, dst: Uint8Array, dstOff: number, len: number): void {
    this.check(pa, len);
    let done = 0;
    while (done < len) {
      const a = pa + done;
      const o = modBlock(a);
      const n = Math.min(BLOCK_SIZE - o, len - done);
      const b = this.#peekBlock(Math.floor(a / BLOCK_SIZE));
      if (b === undefined) dst.fill(0, dstOff + done, dstOff + done + n);
      else dst.set(b.subarray(o, o + n), dstOff + done);
      done += n;
    }
  }

  /** Reads `len` bytes at `pa` into a new array. */
  read(pa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.copyOut(pa, out, 0, len);
    return out;
  }

  /** Writes `src` at physical address `pa`. */
  write(pa: number, src: Uint8Array): void {
    this.copyIn(pa, src, 0, src.length);
  }

  /** Writes the `len` bytes of `src` at `srcOff` to physical address `pa`. */
  copyIn(pa: number, src: Uint8Array, srcOff: number, len: number): void {
    this.check(pa, len);
    let done = 0;
    while (done < len) {
      const a = pa + done;
      const o = modBlock(a);
      const n = Math.min(BLOCK_SIZE - o, len - done);
      const b = this.#backBlock(a, n);
      const from = srcOff + done;
      b.set(from === 0 && n === src.length ? src : src.subarray(from, from + n), o);
      done += n;
    }
  }

  /** Fills `len` bytes at `pa` with `byte`. */
  fill(pa: number, len: number, byte: number): void {
    this.check(pa, len);
    let done = 0;
    while (done < len) {
      const a = pa + done;
      const o = modBlock(a);
      const n = Math.min(BLOCK_SIZE - o, len - done);
      if (byte === 0) {
        // zeros need no backing: only frames that hold data are cleared
        this.#peekBlock(Math.floor(a / BLOCK_SIZE))?.fill(0, o, o + n);
      } else {
        this.#backBlock(a, n).fill(byte, o, o + n);
      }
      done += n;
    }
  }

  /** Copies `len` bytes from physical `src` to physical `dst` (ranges may not overlap). */
  copy(dst: number, src: number, len: number): void {
    this.write(dst, this.read(src, len));
  }
}

/** Offset of `pa` in its backing block. */
function modBlock(pa: number): number {
  return pa % BLOCK_SIZE;
}
