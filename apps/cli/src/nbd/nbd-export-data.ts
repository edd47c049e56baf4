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
import type { NbdBufferPool, PieceBuf } from './nbd-export-buffers.js';
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

/** `NbdExport.read` on the export `io`. */
export function readPieces(
  io: NbdExportIo,
  offset: number,
  length: number,
  done: (error: number, data: NbdReadData | null) => void,
): void {
  const pieces: PieceBuf[] = [];
  let err = 0;
  let refs = 1;
  const finish = () => {
    if (--refs !== 0) return;
    if (err !== 0) {
      for (const p of pieces) io.buffers.freePiece(p);
      io.guard(() => done(err, null));
      return;
    }
    const parts: Uint8Array[] = [];
    const phys = io.device.phys;
    for (const p of pieces) {
      for (const s of p.segs) {
        for (let at = 0; at < s.len; ) {
          const v = phys.span(s.phys + at, s.len - at);
          parts.push(v);
          at += v.length;
        }
      }
    }
    let live = true;
    const release = () => {
      if (!live) return;
      live = false;
      for (const p of pieces) io.buffers.freePiece(p);
    };
    io.guard(() => done(0, { parts, release }));
  };
  for (let pos = 0; pos < length; pos += io.maxPiece) {
    const n = Math.min(io.maxPiece, length - pos);
    const p = io.buffers.allocPiece(n);
    if (p === undefined) {
      err = NBD_ENOMEM;
      break;
    }
    pieces.push(p);
    refs++;
    io.device.submit('read', offset + pos, n, p.segs, (status) => {
      if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
      finish();
    });
  }
  io.kick();
  finish();
}

/** `NbdExport.write` on the export `io`: the sink the payload is received through. */
export function writePieces(
  io: NbdExportIo,
  offset: number,
  length: number,
  fua: boolean,
  done: NbdDone,
): NbdWriteSink {
  const phys = io.device.phys;
  let err = 0;
  let refs = 1; // the submission reference, dropped when the payload is complete or abandoned
  let open = true;
  let received = 0;
  let cur: PieceBuf | undefined;
  let curStart = 0;
  let curFill = 0;
  let seg = 0;
  let segOff = 0;
  const finish = () => {
    if (--refs !== 0) return;
    if (err === 0 && fua) io.flush(done);
    else io.guard(() => done(err));
  };
  const close = () => {
    open = false;
    finish();
  };
  const submit = (p: PieceBuf, at: number) => {
    refs++;
    io.device.submit('write', offset + at, p.bytes, p.segs, (status) => {
      io.buffers.freePiece(p);
      if (status !== BLK_STS_OK && err === 0) err = blkStatusToNbd(status);
      finish();
    });
    io.kick();
  };
  /** Opens the next piece if none is open; false when the payload is being swallowed. */
  const openPiece = (): boolean => {
    if (cur !== undefined) return true;
    if (err !== 0) return false;
    const n = Math.min(io.maxPiece, length - received);
    cur = io.buffers.allocPiece(n);
    if (cur === undefined) {
      err = NBD_ENOMEM; // no machine memory: the rest of the payload is swallowed
      return false;
    }
    curStart = received;
    curFill = 0;
    seg = 0;
    segOff = 0;
    return true;
  };
  const sink: NbdWriteSink = {
    span: (max: number) => {
      if (!open || received === length || !openPiece()) return undefined;
      const s = cur!.segs[seg]!;
      return phys.span(s.phys + segOff, Math.min(max, s.len - segOff, length - received));
    },
    advance: (k: number) => {
      received += k;
      if (cur !== undefined) {
        curFill += k;
        segOff += k;
        if (segOff === cur.segs[seg]!.len) {
          seg++;
          segOff = 0;
        }
        if (curFill === cur.bytes) {
          const p = cur;
          cur = undefined;
          submit(p, curStart);
        }
      }
      if (received === length) close();
    },
    push: (chunk: Uint8Array) => {
      let at = 0;
      while (open && at < chunk.length && received < length) {
        const dst = sink.span(chunk.length - at);
        const k = dst === undefined ? Math.min(chunk.length - at, length - received) : dst.length;
        if (dst !== undefined) dst.set(at === 0 && k === chunk.length ? chunk : chunk.subarray(at, at + k));
        at += k;
        sink.advance(k);
      }
    },
    abort: () => {
      if (!open) return;
      if (cur !== undefined) {
        io.buffers.freePiece(cur);
        cur = undefined;
      }
      if (err === 0) err = NBD_EIO;
      close();
    },
  };
  if (length === 0) close();
  return sink;
}
