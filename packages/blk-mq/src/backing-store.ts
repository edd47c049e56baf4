/**
 * A device's backing store: the bytes of a disk, kept sparse in 64 KiB chunks allocated on first
 * write, so a large namespace costs only what is written; unwritten and discarded bytes read as
 * zeros. No kernel counterpart (null_blk's memory-backed mode keeps a radix tree of pages,
 * `struct nullb_page`, for the same purpose); the media of the device models.
 *
 * Allocation is tracked per chunk: `extents` reports which runs of a range hold a chunk (data)
 * and which do not (holes, reading as zeros) — never-written chunks and chunks dropped whole by
 * `zero`. A chunk zeroed only in part stays allocated (its bytes read as zeros, but it is data),
 * as a file system keeps a block that was zeroed rather than punched.
 *
 * Memory layout: chunks are slots of large slabs (`ArrayBuffer`s of up to 64 MiB, growing from
 * 1 MiB), never one allocation each. A slab that large is mapped lazily by the host (fresh
 * zero pages, no memset), so a chunk's 4 KiB pages cost host memory only once written: random
 * 4 KiB writes cost about the bytes written, not 64 KiB each. A chunk that is discarded whole goes
 * to a free list and is zeroed when it is reused. The directory maps a chunk's index to its slot
 * (a number, no object per chunk) in two levels of typed arrays, one second-level table per 256 MiB
 * of the store that holds data, so a lookup is two array reads (no hashing).
 */
import { BlkError } from './errors.js';

/** Bytes of one chunk: the granularity of allocation (what NBD `BLOCK_STATUS` reports holes and data in). */
export const STORE_CHUNK_SIZE = 64 * 1024;
const CHUNK = STORE_CHUNK_SIZE;
/** What a hole reads as; never written (views of it are only read from). */
const ZEROS = new Uint8Array(CHUNK);
/** Chunks of the largest slab (64 MiB); a slot is `slab * SLAB_SLOTS + chunk within the slab`. */
const SLAB_SLOTS = 1024;
/** Chunks of the first slab (1 MiB); each next slab doubles, up to `SLAB_SLOTS`. */
const FIRST_SLAB_SLOTS = 16;
/**
 * Where a slab's first chunk starts in its allocation. glibc hands out a large block as a fresh
 * mapping with a 16-byte header before the data, so the data is 16 bytes past a host page; a
 * chunk starting 4080 bytes in starts on a host page, and a 4 KiB write then touches one host page
 * instead of two (measured: twice the resident memory for random 4 KiB writes without it). Other
 * allocators only lose that saving.
 */
const SLAB_PAD = 4096 - 16;
/** Chunks per second-level table of the directory (256 MiB of the store). */
const DIR_SLOTS = 4096;

/** A sparse byte store: 64 KiB chunks allocated on first write; unwritten bytes read as zero. */
export class SparseStore {
  /** Chunk index → its slot + 1 (0: a hole), in tables of `DIR_SLOTS` chunks. */
  readonly #dir: Array<Int32Array | undefined> = [];
  #nrChunks = 0;
  readonly #slabs: Uint8Array[] = [];
  /** Chunks handed out of the last slab. */
  #lastUsed = 0;
  /** Slots of chunks discarded whole, to reuse (zeroed first). */
  readonly #free: number[] = [];

  /** Chunks holding data. */
  get chunks(): number {
    return this.#nrChunks;
  }

  /** The slot of chunk `idx`, or -1 when it is a hole. */
  #slotOf(idx: number): number {
    const t = this.#dir[Math.floor(idx / DIR_SLOTS)];
    return t === undefined ? -1 : t[idx % DIR_SLOTS]! - 1;
  }

  /** Makes `slot` the chunk `idx` (a hole until now). */
  #setSlot(idx: number, slot: number): void {
    const hi = Math.floor(idx / DIR_SLOTS);
    let t = this.#dir[hi];
    if (t === undefined) {
      t = new Int32Array(DIR_SLOTS);
      this.#dir[hi] = t;
    }
    t[idx % DIR_SLOTS] = slot + 1;
    this.#nrChunks++;
  }

  /** The bytes of slot `slot` from `o`, `n` long. */
  #view(slot: number, o: number, n: number): Uint8Array {
    const slab = this.#slabs[Math.floor(slot / SLAB_SLOTS)]!;
    const at = SLAB_PAD + (slot % SLAB_SLOTS) * CHUNK + o;
    return slab.subarray(at, at + n);
  }

  /** A slot for a new chunk: a zeroed free one, else the next of the last slab (a new slab when it is full). */
  #allocSlot(): number {
    const reuse = this.#free.pop();
    if (reuse !== undefined) {
      this.#view(reuse, 0, CHUNK).fill(0);
      return reuse;
    }
    const last = this.#slabs.length - 1;
    if (last < 0 || this.#lastUsed === (this.#slabs[last]!.length - 4096) / CHUNK) {
      const slots = Math.min(SLAB_SLOTS, FIRST_SLAB_SLOTS * 2 ** this.#slabs.length);
      this.#slabs.push(new Uint8Array(slots * CHUNK + 4096));
      this.#lastUsed = 0;
    }
    return (this.#slabs.length - 1) * SLAB_SLOTS + this.#lastUsed++;
  }

  /**
   * The allocation map of `[off, off + len)`: runs of chunks that hold data and runs that are holes,
   * written to `out` (cleared first) as `(length, allocated)` pairs with `allocated` 1 or 0, adjacent
   * chunks of one state merged into one run, and the runs clipped to the range. At most `maxRuns`
   * runs are written (the last one then ends where its state changes); returns the bytes they
   * cover (`len` unless cut short). Kernel counterpart: none for a block device; a file-backed server
   * asks the file system (`lseek` with `SEEK_DATA`/`SEEK_HOLE`, `iomap_seek_data` in fs/iomap/seek.c).
   * Throws `BlkError` for a negative or non-integer range or `maxRuns` below 1 (`out` untouched).
   */
  extents(off: number, len: number, out: number[], maxRuns = Number.MAX_SAFE_INTEGER): number {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0) {
      throw new BlkError(
        `store extents of [${off}, +${len}): offset and length must be non-negative safe integers`,
        { rule: 'backing store: extents range' },
      );
    }
    if (!(maxRuns >= 1)) {
      throw new BlkError(`store extents: maxRuns ${maxRuns} must be at least 1`, {
        rule: 'backing store: extents maxRuns',
      });
    }
    out.length = 0;
    let covered = 0;
    while (covered < len) {
      const a = off + covered;
      const n = chunkRun(a, len - covered);
      const allocated = this.#slotOf(Math.floor(a / CHUNK)) >= 0 ? 1 : 0;
      const last = out.length - 2;
      if (last >= 0 && out[last + 1] === allocated) out[last]! += n;
      else if (out.length / 2 >= maxRuns) break;
      else out.push(n, allocated);
      covered += n;
    }
    return covered;
  }

  /**
   * A view of the `n` bytes at `off` for a device to read from; the range must not cross a chunk
   * boundary (`chunkRun(off, n)` is the longest such run). A hole reads as zeros: the view
   * is then of a shared zero chunk, and must not be written.
   */
  spanForRead(off: number, n: number): Uint8Array {
    const idx = Math.floor(off / CHUNK);
    const o = off - idx * CHUNK;
    const slot = this.#slotOf(idx);
    if (slot < 0) return o === 0 && n === CHUNK ? ZEROS : ZEROS.subarray(o, o + n);
    return this.#view(slot, o, n);
  }

  /**
   * A view of the `n` bytes at `off` for a device to write into (the chunk is allocated if it is
   * a hole); the range must not cross a chunk boundary, as for `spanForRead`.
   */
  spanForWrite(off: number, n: number): Uint8Array {
    const idx = Math.floor(off / CHUNK);
    let slot = this.#slotOf(idx);
    if (slot < 0) {
      slot = this.#allocSlot();
      this.#setSlot(idx, slot);
    }
    return this.#view(slot, off - idx * CHUNK, n);
  }

  /** Copies `dst.length` bytes from byte offset `off`. */
  read(off: number, dst: Uint8Array): void {
    for (let done = 0; done < dst.length; ) {
      const n = chunkRun(off + done, dst.length - done);
      dst.set(this.spanForRead(off + done, n), done);
      done += n;
    }
  }

  /** Writes `src` at byte offset `off`. */
  write(off: number, src: Uint8Array): void {
    for (let done = 0; done < src.length; ) {
      const n = chunkRun(off + done, src.length - done);
      this.spanForWrite(off + done, n).set(src.subarray(done, done + n));
      done += n;
    }
  }

  /** Zeroes `len` bytes at `off`, dropping whole chunks. */
  zero(off: number, len: number): void {
    let done = 0;
    while (done < len) {
      const a = off + done;
      const idx = Math.floor(a / CHUNK);
      const o = a - idx * CHUNK;
      const n = chunkRun(a, len - done);
      const slot = this.#slotOf(idx);
      if (slot >= 0) {
        if (o === 0 && n === CHUNK) {
          this.#dir[Math.floor(idx / DIR_SLOTS)]![idx % DIR_SLOTS] = 0;
          this.#nrChunks--;
          this.#free.push(slot);
        } else {
          this.#view(slot, o, n).fill(0);
        }
      }
      done += n;
    }
  }
}

/** Bytes from `off` to the end of its chunk, at most `left`: one step of a walk over chunks. */
export function chunkRun(off: number, left: number): number {
  return Math.min(CHUNK - (off % CHUNK), left);
}
