/**
 * Small replies of one batch packed into one reused output buffer: headers, short error chunks and
 * the data of small READs are copied side by side into a slab and reach the socket as one write
 * when the batch ends, instead of as one stream write per header and per data part. A slab is
 * reused once the socket has handed every byte written from it to the kernel (the write callback),
 * so a steady stream of small replies allocates nothing. No kernel counterpart: what a user-space
 * server does with its per-connection send buffer (nbdkit's `MSG_MORE` batching, qemu-nbd's
 * `qio_channel_writev` of a header and a bounce buffer).
 */

/** Bytes of one slab. */
export const SLAB_BYTES = 256 * 1024;
/** A READ reply of at most this many data bytes is copied into the batch (beyond: sent from its pages). */
export const PACK_MAX = 16 * 1024;
/** Idle slabs a connection keeps for reuse. */
const SPARE_SLABS = 2;

/** Where packed bytes go: the socket's write with a completion callback. */
export type SlabSink = (bytes: Uint8Array, written: () => void) => void;

interface Slab {
  buf: Buffer;
  /** Writes from this slab the socket has not yet completed. */
  pending: number;
}

/** The output buffer of one connection. */
export class ReplyBatch {
  readonly #sink: SlabSink;
  #cur: Slab | undefined;
  /** Start of the bytes packed and not yet written, and their end, in `#cur`. */
  #start = 0;
  #end = 0;
  readonly #spare: Slab[] = [];

  constructor(sink: SlabSink) {
    this.#sink = sink;
  }

  /** Bytes packed and not yet handed to the socket. */
  get packedBytes(): number {
    return this.#end - this.#start;
  }

  /**
   * Room for `n` more bytes (n ≤ SLAB_BYTES): their offset in `buf`, to fill before the next call.
   * When the slab is full, the packed bytes are written first and a fresh slab is taken.
   */
  reserve(n: number): number {
    let s = this.#cur;
    if (s === undefined || this.#end + n > SLAB_BYTES) {
      this.flush();
      s = this.#spare.pop() ?? { buf: Buffer.allocUnsafeSlow(SLAB_BYTES), pending: 0 };
      this.#retire();
      this.#cur = s;
      this.#start = 0;
      this.#end = 0;
    }
    const at = this.#end;
    this.#end = at + n;
    return at;
  }

  /** The slab `reserve` returned an offset into (valid until the next `reserve`). */
  get buf(): Buffer {
    return this.#cur!.buf;
  }

  /** Hands the packed bytes to the socket as one write. */
  flush(): void {
    const s = this.#cur;
    if (s === undefined || this.#end === this.#start) return;
    const view = s.buf.subarray(this.#start, this.#end);
    this.#start = this.#end;
    s.pending++;
    this.#sink(view, () => {
      s.pending--;
      if (s !== this.#cur && s.pending === 0 && this.#spare.length < SPARE_SLABS) this.#spare.push(s);
    });
  }

  /** The current slab is being replaced: it goes to the spares at once if nothing of it is in flight. */
  #retire(): void {
    const s = this.#cur;
    if (s !== undefined && s.pending === 0 && this.#spare.length < SPARE_SLABS) this.#spare.push(s);
  }
}
