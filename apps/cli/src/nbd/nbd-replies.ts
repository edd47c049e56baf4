/**
 * The output side of an NBD connection: option replies of the handshake (§ "Option reply types"),
 * and simple or structured replies of the transmission phase (§ "Simple reply message",
 * § "Structured reply chunk message"). Replies of one clock run of the export leave in one
 * corked batch: small ones packed into a reused buffer (`nbd-reply-batch.ts`), the data of large
 * READs sent from the request's pages. No kernel counterpart (the peer of `drivers/block/nbd.c`'s `nbd_handle_reply`).
 */
import type { Socket } from 'node:net';
import type { ServerCtx } from './nbd-context.js';
import {
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_SIZE,
  nbdErrName,
} from './nbd-proto.js';
import { writeU32, writeU64 } from './nbd-proto-fields.js';
import { encodeOptionError, encodeOptionReply } from './nbd-proto-handshake.js';
import {
  encodeErrorChunk,
  type NbdRequest,
  writeSimpleReply,
  writeStructuredReply,
} from './nbd-proto-transmission.js';
import { PACK_MAX, ReplyBatch } from './nbd-reply-batch.js';

const REP_ERR_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

/**
 * Reply bytes a connection may have queued for READ data still to be sent from the request's
 * pages; beyond it, data is copied and the pages freed at once.
 */
export const PIN_LIMIT = 4 * 2 ** 20;

/** Writes one connection's replies to its socket (nothing once the socket can no longer be written). */
export class ReplyWriter {
  readonly #sock: Socket;
  readonly #ctx: ServerCtx;
  /** Replies are being batched until the export's clock run ends. */
  #batching = false;
  /** Small replies of the batch, packed. */
  readonly #packed: ReplyBatch;
  /** Structured replies were negotiated (NBD_OPT_STRUCTURED_REPLY). */
  structured = false;
  /** Id of `base:allocation` when NBD_OPT_SET_META_CONTEXT selected it, else 0. */
  allocationContext = 0;
  /** Called after every transmission reply, so flow control can see the output grow. */
  onQueued: () => void = () => {};

  constructor(sock: Socket, ctx: ServerCtx) {
    this.#sock = sock;
    this.#ctx = ctx;
    this.#packed = new ReplyBatch((b, written) => {
      sock.write(b, () => written());
    });
  }

  /** True while replies can still reach the client. */
  get writable(): boolean {
    return !this.#sock.destroyed && this.#sock.writable;
  }

  /** Reply bytes queued in the socket, not yet taken by the kernel. */
  get queuedBytes(): number {
    return this.#sock.writableLength + this.#packed.packedBytes;
  }

  /** Sends handshake bytes at once (the greeting, option replies). */
  send(b: Uint8Array): void {
    if (!this.writable) return;
    this.#packed.flush();
    this.#sock.write(b);
  }

  /** Ends the server's side of the stream after every reply queued so far. */
  end(): void {
    this.#packed.flush();
    this.#sock.end();
  }

  /** An option reply of type `type` to option `opt`. */
  option(opt: number, type: number, data?: Uint8Array): void {
    this.send(encodeOptionReply(opt, type, data));
  }

  /** An option error reply (counted by its NBD_REP_ERR name). */
  optionError(opt: number, type: number, message: string): void {
    this.#ctx.count(this.#ctx.stats.errors, REP_ERR_NAMES[type] ?? `NBD_REP_ERR_${type}`);
    this.send(encodeOptionError(opt, type, message));
  }

  /** A successful reply without data. */
  ok(r: NbdRequest): void {
    if (!this.#begin()) return;
    const at = this.#packed.reserve(NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(this.#packed.buf, at, 0, r.handleHi, r.handleLo);
    this.onQueued();
  }

  /**
   * A READ's reply: a simple reply, or one final NBD_REPLY_TYPE_OFFSET_DATA chunk (so
   * NBD_CMD_FLAG_DF always holds), then the data `parts` (views of the request's pages). Up to
   * `PACK_MAX` bytes of data are copied into the batch's buffer and `sent` runs at once; larger
   * data is sent from the pages without a copy and `sent` runs once the socket no longer needs
   * them (written to the kernel, or dropped with the connection). A connection with over `PIN_LIMIT` bytes queued
   * (a client not reading its replies) gets a copy instead and `sent` runs at once, so the pages
   * that slow clients hold stay bounded.
   */
  read(r: NbdRequest, parts: readonly Uint8Array[], sent: () => void): void {
    this.#ctx.stats.bytes.read += r.length;
    const hdr = !this.structured
      ? NBD_SIMPLE_REPLY_SIZE
      : r.length === 0
        ? NBD_STRUCTURED_REPLY_SIZE
        : NBD_STRUCTURED_REPLY_SIZE + 8;
    if (!this.#begin()) {
      sent();
      return;
    }
    const s = this.#sock;
    const packed = this.#packed;
    const small = r.length <= PACK_MAX;
    // small data is copied next to the other replies of the batch; large data follows its header
    let at = packed.reserve(small ? hdr + r.length : hdr);
    const b = packed.buf;
    if (!this.structured) {
      writeSimpleReply(b, at, 0, r.handleHi, r.handleLo);
    } else if (r.length === 0) {
      // no content chunk can describe zero bytes: a lone final NBD_REPLY_TYPE_NONE
      writeStructuredReply(b, at, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r.handleHi, r.handleLo, 0);
    } else {
      writeStructuredReply(
        b,
        at,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        r.handleHi,
        r.handleLo,
        8 + r.length,
      );
      writeU64(b, at + NBD_STRUCTURED_REPLY_SIZE, r.offset);
    }
    if (small) {
      at += hdr;
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i]!;
        b.set(p, at);
        at += p.length;
      }
      sent();
      this.onQueued();
      return;
    }
    packed.flush();
    if (s.writableLength > PIN_LIMIT) {
      // a client behind on its replies gets a copy, so that it cannot pin the machine's pages
      s.write(Buffer.concat(parts));
      sent();
      this.onQueued();
      return;
    }
    const last = parts.length - 1;
    for (let i = 0; i < last; i++) s.write(parts[i]!);
    // a stream runs write callbacks in order, and with an error when it is destroyed first (`sent`
    // takes no argument: the pages are freed either way)
    s.write(parts[last]!, sent);
    this.onQueued();
  }

  /** A final structured chunk of `type` carrying `payload` (structured replies only). */
  chunk(r: NbdRequest, type: number, payload: Uint8Array): void {
    const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_SIZE + payload.length);
    writeStructuredReply(b, 0, NBD_REPLY_FLAG_DONE, type, r.handleHi, r.handleLo, payload.length);
    b.set(payload, NBD_STRUCTURED_REPLY_SIZE);
    this.#queue(b);
  }

  /**
   * A BLOCK_STATUS reply: one final NBD_REPLY_TYPE_BLOCK_STATUS chunk for context `id` with the
   * descriptors `desc` as `(length, flags)` pairs (§ `NBD_REPLY_TYPE_BLOCK_STATUS`; structured
   * replies only).
   */
  blockStatus(r: NbdRequest, id: number, desc: readonly number[]): void {
    const len = 4 + 4 * desc.length;
    const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_SIZE + len);
    writeStructuredReply(b, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, r.handleHi, r.handleLo, len);
    writeU32(b, NBD_STRUCTURED_REPLY_SIZE, id);
    for (let i = 0; i < desc.length; i++) writeU32(b, NBD_STRUCTURED_REPLY_SIZE + 4 + 4 * i, desc[i]!);
    this.#queue(b);
  }

  /** An error reply: a structured error chunk when negotiated (with a message), else a simple reply. */
  error(r: NbdRequest, err: number, message: string): void {
    if (!this.writable) return; // e.g. a write abandoned mid-payload
    this.#ctx.count(this.#ctx.stats.errors, nbdErrName(err));
    if (this.structured) {
      this.#queue(encodeErrorChunk(r.handleHi, r.handleLo, err, message));
    } else {
      const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, 0, err, r.handleHi, r.handleLo);
      this.#queue(b);
    }
  }

  /** Queues a transmission reply (false when it cannot be sent); replies of one clock run leave in one corked batch. */
  #queue(b: Uint8Array): boolean {
    if (!this.#begin()) return false;
    if (b.length <= PACK_MAX) {
      const at = this.#packed.reserve(b.length);
      this.#packed.buf.set(b, at);
    } else {
      this.#packed.flush();
      this.#sock.write(b);
    }
    this.onQueued();
    return true;
  }

  /** Opens the batch of this clock run if none is open; false when nothing can be sent. */
  #begin(): boolean {
    if (!this.writable) return false;
    if (!this.#batching) {
      this.#batching = true;
      this.#sock.cork();
      this.#ctx.exp.afterRun(this.#endBatch);
    }
    return true;
  }

  /** Closes the batch once the clock run has ended: the replies leave (one function for every batch). */
  readonly #endBatch = (): void => {
    this.#batching = false;
    this.#packed.flush();
    this.#sock.uncork();
  };
}
