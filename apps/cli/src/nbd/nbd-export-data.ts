/**
 * The data operations of an NBD export, READ and WRITE: a command becomes block requests of at most
 * `maxPiece` bytes on the export's device, each into or from a piece of pages of the machine. A
 * read's reply is sent straight from those pages; a write's payload is received straight into
 * them and each full piece is submitted at once. Also the completion types every operation uses
 * and the mapping of block statuses to NBD errors. Kernel counterpart: what a user-space server on
 * Linux does with O_DIRECT `pread`/`pwrite` on an NVMe namespace (`block/fops.c`
 * `blkdev_direct_IO`, splitting at the queue's `max_sectors`), the peer of `drivers/block/nbd.c`.
 */
import { BLK_STS_INVAL, BLK_STS_NOSPC, BLK_STS_NOTSUPP, BLK_STS_OK } from '@iovalink/blk-mq';
import type { NbdBlockDevice } from './nbd-device.js';
import type { NbdBufferPool, PieceBuf, PieceOwner } from './nbd-export-buffers.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC } from './nbd-proto.js';

/** Completion of an export operation: 0 or an NBD error value. */
export type NbdDone = (error: number) => void;

/**
 * A write in progress: the payload arrives from the socket either straight into the request's
 * pages (`span`, then `advance`) or as chunks copied in (`push`); full pieces are submitted at once.
 */
export interface NbdWriteSink {
  /**
   * Where the next payload bytes go: a writable view of the request's pages (physical memory of
   * the machine) of at most `max` bytes, or `undefined` when the rest of the payload is being
   * swallowed (no buffer memory, or an earlier piece failed). Fill it, then call `advance`.
   */
  span(max: number): Uint8Array | undefined;
  /** `n` bytes were written at the start of the last `span`. */
  advance(n: number): void;
  /** Copies the next payload bytes into the request's pages. */
  push(chunk: Uint8Array): void;
  /** Abandons the write (client gone): unsubmitted pieces are freed, the callback never runs. */
  abort(): void;
}

/** The data of a completed read: views of the request's pages, in order, until `release`. */
export interface NbdReadData {
  parts: Uint8Array[];
  /** Frees the pages (idempotent); the views must not be used after it. */
  release(): void;
}

/** What the operations use of their export (`NbdExport` hands it to them). */
export interface NbdExportIo {
  /** The export's device. */
  readonly device: NbdBlockDevice;
  /** Largest block request (bytes). */
  readonly maxPiece: number;
  /** The export's request buffers. */
  readonly buffers: NbdBufferPool;
  /** Schedules a clock run: the device runs and its completions are delivered. */
  kick(): void;
  /** Runs a completion callback, counting and reporting what it throws. */
  guard(fn: () => void): void;
  /** Counts and reports what a completion callback threw (`guard` without the closure). */
  fault(e: unknown): void;
  /** Flushes the device's write cache (the post-flush of a FUA command). */
  flush(done: NbdDone): void;
}

/** NBD error value for a block status (kernel: `blk_status_to_errno`, then the protocol's set). */
export function blkStatusToNbd(status: number): number {
  if (status === BLK_STS_OK) return 0;
  if (status === BLK_STS_NOSPC) return NBD_ENOSPC;
  if (status === BLK_STS_INVAL || status === BLK_STS_NOTSUPP) return NBD_EINVAL;
  return NBD_EIO;
}

/** The parts of a read until it completes (never handed out). */
const NO_PARTS: Uint8Array[] = [];
/** Where a completed read collects its views before they become its `parts`, an array of their number. */
const views: Uint8Array[] = [];
/** What `views` holds between reads. */
const NO_VIEW = new Uint8Array(0);

/** `NbdExport.read` on the export `io`. */
export function readPieces(
  io: NbdExportIo,
  offset: number,
  length: number,
  done: (error: number, data: NbdReadData | null) => void,
): void {
  new PieceRead(io, done).start(offset, length);
}

/**
 * A read in flight, then its data: one block request per piece, the pieces in a list; once all
 * have completed, the views of their pages until `release` (kernel: a direct-I/O `struct dio`
 * with its bios, `block/fops.c`).
 */
class PieceRead implements NbdReadData, PieceOwner {
  parts: Uint8Array[] = NO_PARTS;
  readonly #io: NbdExportIo;
  readonly #done: (error: number, data: NbdReadData | null) => void;
  #err = 0;
  /** Block requests in flight, plus the submission reference. */
  #refs = 1;
  #first: PieceBuf | undefined = undefined;
  #last: PieceBuf | undefined = undefined;
  #live = true;

  constructor(io: NbdExportIo, done: (error: number, data: NbdReadData | null) => void) {
    this.#io = io;
    this.#done = done;
  }

  /** Submits one block request per piece of at most `maxPiece` bytes. */
  start(offset: number, length: number): void {
    const io = this.#io;
    for (let pos = 0; pos < length; pos += io.maxPiece) {
      const n = Math.min(io.maxPiece, length - pos);
      const p = io.buffers.allocPiece(n);
      if (p === undefined) {
        this.#err = NBD_ENOMEM;
        break;
      }
      if (this.#last === undefined) this.#first = p;
      else this.#last.next = p;
      this.#last = p;
      this.#refs++;
      p.owner = this;
      io.device.submit('read', offset + pos, n, p.segs, p.endIo);
    }
    io.kick();
    this.#finish();
  }

  pieceDone(_p: PieceBuf, status: number): void {
    if (status !== BLK_STS_OK && this.#err === 0) this.#err = blkStatusToNbd(status);
    this.#finish();
  }

  /** Frees the pages (idempotent); the views must not be used after it. */
  readonly release = (): void => {
    if (!this.#live) return;
    this.#live = false;
    this.#freePieces();
  };

  #freePieces(): void {
    const buffers = this.#io.buffers;
    let p = this.#first;
    this.#first = undefined;
    this.#last = undefined;
    while (p !== undefined) {
      const next = p.next;
      buffers.freePiece(p);
      p = next;
    }
  }

  #finish(): void {
    if (--this.#refs !== 0) return;
    const io = this.#io;
    if (this.#err !== 0) {
      this.#live = false;
      this.#freePieces();
      try {
        this.#done(this.#err, null);
      } catch (e) {
        io.fault(e);
      }
      return;
    }
    const mem = io.device.phys;
    let n = 0;
    for (let p = this.#first; p !== undefined; p = p.next) {
      const segs = p.segs;
      for (let i = 0; i < segs.length; i++) {
        const s = segs[i]!;
        for (let at = 0; at < s.len; ) {
          const v = mem.span(s.phys + at, s.len - at);
          views[n++] = v;
          at += v.length;
        }
      }
    }
    this.parts = n === 1 ? [views[0]!] : views.slice(0, n);
    for (let i = 0; i < n; i++) views[i] = NO_VIEW;
    try {
      this.#done(0, this);
    } catch (e) {
      io.fault(e);
    }
  }
}

/** `NbdExport.write` on the export `io`: the sink the payload is received through. */
export function writePieces(
  io: NbdExportIo,
  offset: number,
  length: number,
  fua: boolean,
  done: NbdDone,
): NbdWriteSink {
  return new PieceWrite(io, offset, length, fua, done);
}

/**
 * A write in progress: the piece being filled from the payload and the block requests of full
 * pieces in flight (kernel: a direct-I/O `struct dio` whose bios are submitted as the user pages
 * are pinned, `block/fops.c`).
 */
class PieceWrite implements NbdWriteSink, PieceOwner {
  readonly #io: NbdExportIo;
  readonly #offset: number;
  readonly #length: number;
  readonly #fua: boolean;
  readonly #done: NbdDone;
  #err = 0;
  /** Block requests in flight, plus the submission reference (dropped when the payload is complete or abandoned). */
  #refs = 1;
  #open = true;
  #received = 0;
  /** The piece being filled and how much of it is (it starts at `#received - #curFill` of the payload). */
  #cur: PieceBuf | undefined = undefined;
  #curFill = 0;
  /** The segment of `#cur` being filled and the offset in it. */
  #seg = 0;
  #segOff = 0;

  constructor(io: NbdExportIo, offset: number, length: number, fua: boolean, done: NbdDone) {
    this.#io = io;
    this.#offset = offset;
    this.#length = length;
    this.#fua = fua;
    this.#done = done;
    if (length === 0) this.#close();
  }

  span(max: number): Uint8Array | undefined {
    if (!this.#open || this.#received === this.#length || !this.#openPiece()) return undefined;
    const s = this.#cur!.segs[this.#seg]!;
    const off = this.#segOff;
    return this.#io.device.phys.span(s.phys + off, Math.min(max, s.len - off, this.#length - this.#received));
  }

  advance(k: number): void {
    this.#received += k;
    const cur = this.#cur;
    if (cur !== undefined) {
      this.#curFill += k;
      this.#segOff += k;
      if (this.#segOff === cur.segs[this.#seg]!.len) {
        this.#seg++;
        this.#segOff = 0;
      }
      if (this.#curFill === cur.bytes) {
        this.#cur = undefined;
        this.#submit(cur, this.#received - cur.bytes);
      }
    }
    if (this.#received === this.#length) this.#close();
  }

  push(chunk: Uint8Array): void {
    const phys = this.#io.device.phys;
    let at = 0;
    while (this.#open && at < chunk.length && this.#received < this.#length) {
      // straight into the piece's current segment (no view of the pages), or swallowed
      let k = Math.min(chunk.length - at, this.#length - this.#received);
      if (this.#openPiece()) {
        const s = this.#cur!.segs[this.#seg]!;
        k = Math.min(k, s.len - this.#segOff);
        phys.copyIn(s.phys + this.#segOff, chunk, at, k);
      }
      at += k;
      this.advance(k);
    }
  }

  abort(): void {
    if (!this.#open) return;
    if (this.#cur !== undefined) {
      this.#io.buffers.freePiece(this.#cur);
      this.#cur = undefined;
    }
    if (this.#err === 0) this.#err = NBD_EIO;
    this.#close();
  }

  /** The payload is complete or abandoned: drops the submission reference. */
  #close(): void {
    this.#open = false;
    this.#finish();
  }

  pieceDone(p: PieceBuf, status: number): void {
    this.#io.buffers.freePiece(p);
    if (status !== BLK_STS_OK && this.#err === 0) this.#err = blkStatusToNbd(status);
    this.#finish();
  }

  #finish(): void {
    if (--this.#refs !== 0) return;
    const io = this.#io;
    if (this.#err === 0 && this.#fua) {
      io.flush(this.#done);
      return;
    }
    try {
      this.#done(this.#err);
    } catch (e) {
      io.fault(e);
    }
  }

  #submit(p: PieceBuf, at: number): void {
    const io = this.#io;
    this.#refs++;
    p.owner = this;
    io.device.submit('write', this.#offset + at, p.bytes, p.segs, p.endIo);
    io.kick();
  }

  /** Opens the next piece if none is open; false when the payload is being swallowed. */
  #openPiece(): boolean {
    if (this.#cur !== undefined) return true;
    if (this.#err !== 0) return false;
    const n = Math.min(this.#io.maxPiece, this.#length - this.#received);
    const p = this.#io.buffers.allocPiece(n);
    if (p === undefined) {
      this.#err = NBD_ENOMEM; // no machine memory: the rest of the payload is swallowed
      return false;
    }
    this.#cur = p;
    this.#curFill = 0;
    this.#seg = 0;
    this.#segOff = 0;
    return true;
  }
}
