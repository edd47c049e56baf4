/**
 * A device's backing store: the bytes of a disk, kept sparse in 64 KiB chunks allocated on first
 * write, so a large namespace costs only what is written; unwritten and discarded bytes read as
 * zeros. No kernel counterpart (null_blk's memory-backed mode keeps a radix tree of pages,
 * `struct nullb_page`, for the same purpose); the media of the device models.
 */

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
