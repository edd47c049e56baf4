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
 */
import { BlkError } from './errors.js';

/** Bytes of one chunk. */
export const STORE_CHUNK_SIZE = 64 * 1024;
const CHUNK = STORE_CHUNK_SIZE;
/** What a hole reads as; never written (views of it are only read from). */
const ZEROS = new Uint8Array(CHUNK);

/** A sparse byte store: 64 KiB chunks allocated on first write; unwritten bytes read as zero. */
export class SparseStore {
  readonly #chunks = new Map<number, Uint8Array>();

  /** Chunks holding data. */
  get chunks(): number {
    return this.#chunks.size;
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
      const allocated = this.#chunks.has(Math.floor(a / CHUNK)) ? 1 : 0;
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
    const c = this.#chunks.get(idx) ?? ZEROS;
    return o === 0 && n === CHUNK ? c : c.subarray(o, o + n);
  }

  /**
   * A view of the `n` bytes at `off` for a device to write into (the chunk is allocated if it is
   * a hole); the range must not cross a chunk boundary, as for `spanForRead`.
   */
  spanForWrite(off: number, n: number): Uint8Array {
    const idx = Math.floor(off / CHUNK);
    const o = off - idx * CHUNK;
    let c = this.#chunks.get(idx);
    if (c === undefined) {
      c = new Uint8Array(CHUNK);
      this.#chunks.set(idx, c);
    }
    return o === 0 && n === CHUNK ? c : c.subarray(o, o + n);
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
      if (o === 0 && n === CHUNK) this.#chunks.delete(idx);
      else this.#chunks.get(idx)?.fill(0, o, o + n);
      done += n;
    }
  }
}

/** Bytes from `off` to the end of its chunk, at most `left`: one step of a walk over chunks. */
export function chunkRun(off: number, left: number): number {
  return Math.min(CHUNK - (off % CHUNK), left);
}
