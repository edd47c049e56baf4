/**
 * The input side of an NBD connection: the bytes of the client's stream received and not yet
 * parsed, as the chunks they arrived in, consumed from the front without copying when a message
 * lies in one chunk. No kernel counterpart (a server's receive buffer).
 */
const EMPTY = Buffer.alloc(0);

/** Bytes of a stream not yet parsed: received chunks, consumed from the front without copying. */
export class InputQueue {
  readonly #chunks: Buffer[] = [];
  #off = 0;
  /** Bytes available. */
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.#chunks.push(b);
    this.length += b.length;
  }

  /** Consumes `n` ≤ length bytes as one contiguous buffer (a view when they lie in one chunk). */
  take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.#chunks[0]!;
    if (first.length - this.#off >= n) {
      const r = first.subarray(this.#off, this.#off + n);
      this.#advance(n);
      return r;
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length - this.#off, n - done);
      c.copy(out, done, this.#off, this.#off + k);
      done += k;
      this.#advance(k);
    }
    return out;
  }

  /**
   * Where `n` ≤ length bytes lie contiguously: their offset in `front`, or -1 when they span
   * chunks (then `take` copies them). Consume them with `discard(n)` after reading them.
   */
  contiguous(n: number): number {
    const first = this.#chunks[0];
    return first !== undefined && first.length - this.#off >= n ? this.#off : -1;
  }

  /** The first chunk (see `contiguous`). */
  get front(): Buffer {
    return this.#chunks[0] ?? EMPTY;
  }

  /** Consumes up to `n` bytes from the first chunk (a view). */
  takeSome(n: number): Buffer {
    const first = this.#chunks[0]!;
    const k = Math.min(n, first.length - this.#off);
    const r = first.subarray(this.#off, this.#off + k);
    this.#advance(k);
    return r;
  }

  /** Drops up to `n` bytes; returns how many. */
  discard(n: number): number {
    let done = 0;
    while (done < n && this.length > 0) {
      const k = Math.min(this.#chunks[0]!.length - this.#off, n - done);
      this.#advance(k);
      done += k;
    }
    return done;
  }

  /** Copies the queued bytes that lie in `ab` (a buffer about to be reused) into buffers of their own. */
  detach(ab: ArrayBufferLike): void {
    for (let i = 0; i < this.#chunks.length; i++) {
      const c = this.#chunks[i]!;
      if (c.buffer !== ab) continue;
      this.#chunks[i] = Buffer.from(i === 0 ? c.subarray(this.#off) : c);
      if (i === 0) this.#off = 0;
    }
  }

  clear(): void {
    this.#chunks.length = 0;
    this.#off = 0;
    this.length = 0;
  }

  #advance(n: number): void {
    this.#off += n;
    this.length -= n;
    if (this.#off === this.#chunks[0]!.length) {
      this.#chunks.shift();
      this.#off = 0;
    }
  }
}
