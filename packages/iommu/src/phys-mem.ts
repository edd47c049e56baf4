/**
 * Physical memory: a byte-addressable RAM of a configured size, backed lazily one 4 KiB frame at
 * a time (a frame never written reads as zeros and costs nothing), so a 64 GiB machine costs only
 * what is touched. Kernel counterpart: the memory `struct page`s describe (mm/memory-model).
 * Frames live in a two-level table indexed by pfn, so lookup is two array reads.
 */
import { hex, MachineError } from './errors.js';

/** log2 of the CPU page size. */
export const PAGE_SHIFT = 12;
/** The CPU page size in bytes (4 KiB). */
export const PAGE_SIZE = 4096;
/** Bits of pfn per second-level frame table. */
const L2_SHIFT = 12;
const L2_SIZE = 1 << L2_SHIFT;
const L2_MASK = L2_SIZE - 1;

/** Lazily backed physical RAM from address 0 to `size`. */
export class PhysMem {
  /** RAM size in bytes. */
  readonly size: number;
  /** Number of 4 KiB frames. */
  readonly nrFrames: number;
  readonly #dir: (Array<Uint8Array | undefined> | undefined)[];
  #backed = 0;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new MachineError(`physical memory size ${size} is not a positive multiple of ${PAGE_SIZE}`, {
        rule: 'phys-mem: size',
      });
    }
    this.size = size;
    this.nrFrames = size / PAGE_SIZE;
    this.#dir = new Array(Math.ceil(this.nrFrames / L2_SIZE));
  }

  /** Number of frames that hold data (were written at least once). */
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

  /** The frame at `pfn`, backing it with zeros if it was never written (for writers). */
  frame(pfn: number): Uint8Array {
    const hi = Math.floor(pfn / L2_SIZE);
    let l2 = this.#dir[hi];
    if (l2 === undefined) {
      l2 = new Array(L2_SIZE);
      this.#dir[hi] = l2;
    }
    let f = l2[pfn & L2_MASK];
    if (f === undefined) {
      f = new Uint8Array(PAGE_SIZE);
      l2[pfn & L2_MASK] = f;
      this.#backed++;
    }
    return f;
  }

  /** The frame at `pfn` if it holds data, else `undefined` (reads as zeros). */
  peekFrame(pfn: number): Uint8Array | undefined {
    const l2 = this.#dir[Math.floor(pfn / L2_SIZE)];
    return l2 === undefined ? undefined : l2[pfn & L2_MASK];
  }

  /** Drops a frame's backing (its contents become zeros), e.g. when a page is freed and scrubbed. */
  discardFrame(pfn: number): void {
    const l2 = this.#dir[Math.floor(pfn / L2_SIZE)];
    if (l2 !== undefined && l2[pfn & L2_MASK] !== undefined) {
      l2[pfn & L2_MASK] = undefined;
      this.#backed--;
    }
  }

  /** Copies `dst.length` bytes starting at physical address `pa` into `dst`. */
  readInto(pa: number, dst: Uint8Array): void {
    this.check(pa, dst.length);
    let done = 0;
    while (done < dst.length) {
      const a = pa + done;
      const pfn = Math.floor(a / PAGE_SIZE);
      const off = a - pfn * PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, dst.length - done);
      const f = this.peekFrame(pfn);
      if (f === undefined) dst.fill(0, done, done + n);
      else dst.set(f.subarray(off, off + n), done);
      done += n;
    }
  }

  /** Reads `len` bytes at `pa` into a new array. */
  read(pa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.readInto(pa, out);
    return out;
  }

  /** Writes `src` at physical address `pa`. */
  write(pa: number, src: Uint8Array): void {
    this.check(pa, src.length);
    let done = 0;
    while (done < src.length) {
      const a = pa + done;
      const pfn = Math.floor(a / PAGE_SIZE);
      const off = a - pfn * PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, src.length - done);
      this.frame(pfn).set(src.subarray(done, done + n), off);
      done += n;
    }
  }

  /** Fills `len` bytes at `pa` with `byte`. */
  fill(pa: number, len: number, byte: number): void {
    this.check(pa, len);
    let done = 0;
    while (done < len) {
      const a = pa + done;
      const pfn = Math.floor(a / PAGE_SIZE);
      const off = a - pfn * PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, len - done);
      if (byte === 0) {
        const f = this.peekFrame(pfn);
        if (f !== undefined) f.fill(0, off, off + n);
      } else {
        this.frame(pfn).fill(byte, off, off + n);
      }
      done += n;
    }
  }

  /** Copies `len` bytes from physical `src` to physical `dst` (ranges may not overlap). */
  copy(dst: number, src: number, len: number): void {
    this.write(dst, this.read(src, len));
  }
}
