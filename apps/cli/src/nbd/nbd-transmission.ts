/**
 * The transmission phase of an NBD connection (§ "Transmission", § "Request types"): request
 * headers and write payloads parsed from the stream, each command started on the export and
 * answered when the device has completed it — READ, WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES
 * (NO_HOLE, FAST_ZERO, FUA), BLOCK_STATUS (`base:allocation`, REQ_ONE) and DISC. No kernel
 * counterpart on the server side; the Linux client is `drivers/block/nbd.c` (`nbd_send_cmd`,
 * `nbd_handle_reply`).
 *
 * WRITE_ZEROES: without NO_HOLE the range is deallocated (a hole, reading as zeroes); with it,
 * zeroes are written through the device like a WRITE (`NbdExport.zeroes`). FAST_ZERO with NO_HOLE
 * is refused at once with NBD_ENOTSUP and changes nothing (§ `NBD_CMD_WRITE_ZEROES`: a zero write
 * no faster than a WRITE MUST fail quickly); FAST_ZERO alone proceeds (a deallocation moves no data).
 * BLOCK_STATUS: one final NBD_REPLY_TYPE_BLOCK_STATUS chunk whose descriptors cover at most the
 * request (never beyond it), a hole being NBD_STATE_HOLE | NBD_STATE_ZERO and data 0; at most one
 * descriptor with REQ_ONE, at most MAX_STATUS_DESCRIPTORS otherwise (the client asks again from
 * where the reply stopped).
 *
 * Bad input: unknown commands or flags, misaligned requests, reads and block status queries beyond
 * the end, reads and zero writes without FAST_ZERO over the maximum block size (§ "Block size
 * constraints"; so a NO_HOLE zero write moves at most 32 MiB), BLOCK_STATUS of length 0 or without a negotiated
 * `base:allocation` context → NBD_EINVAL; writes and zero writes beyond the end → NBD_ENOSPC
 * (§ "Error values", § `NBD_CMD_WRITE_ZEROES`); on a read-only export WRITE, TRIM and WRITE_ZEROES
 * → NBD_EPERM; once the server shuts down every new request →
 * NBD_ESHUTDOWN (§ "Terminating the transmission phase": the client then disconnects). A wrong
 * request magic or a write payload over 32 MiB (§ "Block size constraints": a denial of service)
 * is a violation: a hard disconnect after the commands in flight have been answered. A write's
 * payload is read (or skipped) before its error reply, so the stream stays in step.
 *
 * `Transmission` is about 330 lines because it is one table of commands: the request parser and one
 * handler per command type (§ "Request types"), all sharing the in-flight count, the payload being
 * received and the checks of § "Request message".
 */
import type { InputQueue } from './input-queue.js';
import type { ServerCtx } from './nbd-context.js';
import type { NbdWriteSink } from './nbd-export-data.js';
import type { FlowControl } from './nbd-flow-control.js';
import { Stall } from './nbd-flow-control.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_RESIZE,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REQUEST_SIZE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  nbdCmdName,
  U64_TOO_BIG,
} from './nbd-proto.js';
import { decodeRequest, type NbdRequest } from './nbd-proto-transmission.js';
import type { ReplyWriter } from './nbd-replies.js';

/**
 * A write payload at least this long is received straight into the request's pages, and the
 * request header after it is read on its own, so that no payload byte lands in the read buffer.
 */
export const DIRECT_PAYLOAD_MIN = 16 * 1024;

/**
 * Most descriptors in one BLOCK_STATUS reply without REQ_ONE (a 1 MiB chunk). The protocol lets a
 * server return fewer than the whole range needs, as long as it returns at least one.
 */
export const MAX_STATUS_DESCRIPTORS = 2 ** 17;

/** What the connection does for the transmission phase. */
export interface TransmissionHost {
  /** A protocol violation: a hard disconnect once in-flight commands are answered. */
  violation(why: string): void;
  /** NBD_CMD_DISC: finish what is in flight, then close. */
  softDisconnect(): void;
  /** A command completed (its reply queued, or dropped if the client is gone). */
  commandDone(): void;
}

/**
 * A write payload being received: into `sink`, or (with `sink` undefined) skipped before `error`.
 * A connection receives one payload at a time, so it keeps one of these and refills it.
 */
interface Payload {
  req: NbdRequest | undefined;
  left: number;
  sink: NbdWriteSink | undefined;
  error: number;
  message: string;
}

/** The transmission phase of one connection. */
export class Transmission {
  readonly #ctx: ServerCtx;
  readonly #out: ReplyWriter;
  readonly #flow: FlowControl;
  readonly #host: TransmissionHost;
  /** The write whose payload is being received or skipped, if any (`#pay` when there is one). */
  #payload: Payload | undefined;
  /** The payload record, refilled for every write with a payload. */
  readonly #pay: Payload = { req: undefined, left: 0, sink: undefined, error: 0, message: '' };
  /** A write whose payload never arrived whole (its completion sends no reply). */
  #abandoned: NbdRequest | undefined;
  #inFlight = 0;
  /** The last request was a write with a payload of at least DIRECT_PAYLOAD_MIN bytes. */
  #afterLargeWrite = false;

  constructor(ctx: ServerCtx, out: ReplyWriter, flow: FlowControl, host: TransmissionHost) {
    this.#ctx = ctx;
    this.#out = out;
    this.#flow = flow;
    this.#host = host;
  }

  /** Commands started and not yet completed (a write counts from its header on). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** True between the start and the end of a message (a header, or a write and its payload). */
  get midMessage(): boolean {
    return this.#payload !== undefined;
  }

  /** Where the parser is (for logs). */
  get expecting(): string {
    return this.#payload === undefined ? 'request' : 'payload';
  }

  /** True right after a large write's payload: the next read should be a request header alone. */
  get expectsHeaderAfterLargeWrite(): boolean {
    return this.#payload === undefined && this.#afterLargeWrite;
  }

  /** Room in the current write's pages for the next payload bytes (at most its remaining length). */
  payloadSpan(): Uint8Array | undefined {
    const p = this.#payload;
    return p?.sink?.span(p.left);
  }

  /** `n` payload bytes were received into the last `payloadSpan`. */
  payloadReceived(n: number): void {
    const p = this.#payload!;
    p.sink!.advance(n);
    this.#payloadConsumed(p, n);
  }

  /** Parses what it can of `q`; false when it needs more input first. */
  step(q: InputQueue): boolean {
    const p = this.#payload;
    if (p !== undefined) {
      if (q.length === 0) return false;
      if (p.sink !== undefined) {
        const chunk = q.takeSome(p.left);
        p.sink.push(chunk);
        this.#payloadConsumed(p, chunk.length);
      } else {
        this.#payloadConsumed(p, q.discard(p.left));
      }
      return true;
    }
    const parked = this.#flow.parked;
    if (parked !== undefined) {
      this.#start(parked, true);
      return true;
    }
    if (this.#inFlight >= this.#ctx.exp.queueDepth) {
      this.#flow.stall(Stall.depth);
      return true;
    }
    if (q.length < NBD_REQUEST_SIZE) return false;
    const at = q.contiguous(NBD_REQUEST_SIZE);
    const r = at >= 0 ? decodeRequest(q.front, at) : decodeRequest(q.take(NBD_REQUEST_SIZE));
    if (at >= 0) q.discard(NBD_REQUEST_SIZE);
    if (r === undefined) {
      this.#host.violation('request without NBD_REQUEST_MAGIC');
      return true;
    }
    this.#afterLargeWrite = r.type === NBD_CMD_WRITE && r.length >= DIRECT_PAYLOAD_MIN;
    this.#start(r, false);
    return true;
  }

  /** The connection stops parsing: a write mid-payload is abandoned (it will get no reply). */
  abandon(): void {
    const p = this.#payload;
    this.#payload = undefined;
    if (p === undefined) return;
    const { req, sink } = p;
    p.req = undefined;
    p.sink = undefined;
    if (sink === undefined) return;
    this.#abandoned = req;
    sink.abort();
  }

  #payloadConsumed(p: Payload, n: number): void {
    if (this.#payload !== p) return; // abandoned meanwhile: the record is no longer this payload's
    p.left -= n;
    if (p.left > 0) return;
    this.#payload = undefined;
    const r = p.req!;
    p.req = undefined;
    if (p.sink === undefined) this.#out.error(r, p.error, p.message);
    else p.sink = undefined;
  }

  /** Receives `r`'s payload into `sink`, or (`sink` undefined) skips it before replying `error`. */
  #expectPayload(r: NbdRequest, sink: NbdWriteSink | undefined, error: number, message: string): void {
    const p = this.#pay;
    p.req = r;
    p.left = r.length;
    p.sink = sink;
    p.error = error;
    p.message = message;
    this.#payload = p;
  }

  /** Skips a write's payload, then answers `error`. */
  #skipPayload(r: NbdRequest, error: number, message: string): void {
    if (r.length === 0) this.#out.error(r, error, message);
    else this.#expectPayload(r, undefined, error, message);
  }

  /** The error (value and message) for a data command's flags, range and alignment, if any. */
  #check(r: NbdRequest, allowed: number): [number, string] | undefined {
    const exp = this.#ctx.exp;
    if ((r.flags & ~allowed) !== 0)
      return [NBD_EINVAL, `command flags 0x${r.flags.toString(16)} not valid here`];
    if (r.offset === U64_TOO_BIG || r.offset + r.length > exp.size) {
      const write = r.type === NBD_CMD_WRITE || r.type === NBD_CMD_WRITE_ZEROES;
      return [write ? NBD_ENOSPC : NBD_EINVAL, 'request beyond the end of the export'];
    }
    if (r.type !== NBD_CMD_TRIM && (r.offset % exp.minBlockSize !== 0 || r.length % exp.minBlockSize !== 0)) {
      return [NBD_EINVAL, `request not aligned to the ${exp.minBlockSize}-byte minimum block size`];
    }
    const changesData =
      r.type === NBD_CMD_WRITE || r.type === NBD_CMD_TRIM || r.type === NBD_CMD_WRITE_ZEROES;
    if (this.#ctx.readOnly && changesData) return [NBD_EPERM, 'the export is read-only'];
    return undefined;
  }

  /** Starts request `r` (`retry`: the parked request coming back). */
  #start(r: NbdRequest, retry: boolean): void {
    const ctx = this.#ctx;
    const exp = ctx.exp;
    if (!retry) ctx.count(ctx.stats.commands, r.type <= NBD_CMD_RESIZE ? nbdCmdName(r.type) : 'other');
    if (r.type === NBD_CMD_WRITE && r.length > exp.maxBlockSize) {
      // § "Block size constraints": a payload over 2^25 may be treated as a denial of service.
      this.#host.violation(`write payload of ${r.length} bytes over ${exp.maxBlockSize}`);
      return;
    }
    if (r.type === NBD_CMD_DISC) {
      // § NBD_CMD_DISC: finish outstanding requests, then close; no reply.
      this.#host.softDisconnect();
      return;
    }
    if (ctx.shuttingDown && !retry) {
      const msg = 'the server is shutting down';
      if (r.type === NBD_CMD_WRITE) this.#skipPayload(r, NBD_ESHUTDOWN, msg);
      else this.#out.error(r, NBD_ESHUTDOWN, msg);
      return;
    }
    switch (r.type) {
      case NBD_CMD_READ:
        this.#read(r);
        return;
      case NBD_CMD_WRITE:
        this.#write(r);
        return;
      case NBD_CMD_FLUSH:
        this.#flush(r);
        return;
      case NBD_CMD_TRIM:
        this.#trim(r);
        return;
      case NBD_CMD_WRITE_ZEROES:
        this.#writeZeroes(r);
        return;
      case NBD_CMD_BLOCK_STATUS:
        this.#blockStatus(r);
        return;
      default:
        this.#out.error(r, NBD_EINVAL, `${nbdCmdName(r.type)} is not supported`);
        return;
    }
  }

  #read(r: NbdRequest): void {
    const exp = this.#ctx.exp;
    if (r.length > exp.maxBlockSize) {
      this.#out.error(r, NBD_EINVAL, `read of ${r.length} bytes over the maximum block size`);
      return;
    }
    const bad = this.#check(r, NBD_CMD_FLAG_FUA | (this.#out.structured ? NBD_CMD_FLAG_DF : 0));
    if (bad !== undefined) {
      this.#out.error(r, bad[0], bad[1]);
      return;
    }
    if (!this.#flow.reserve(r, true)) return;
    this.#begin();
    exp.read(r.offset, r.length, (err, data) => {
      exp.release(r.length);
      if (err !== 0) this.#out.error(r, err, 'read failed on the device');
      else this.#out.read(r, data!.parts, data!.release);
      this.#flow.readDone(r.length);
      this.#end();
    });
  }

  #write(r: NbdRequest): void {
    const exp = this.#ctx.exp;
    const bad = this.#check(r, NBD_CMD_FLAG_FUA);
    if (bad !== undefined) {
      this.#skipPayload(r, bad[0], bad[1]);
      return;
    }
    if (!this.#flow.reserve(r, false)) return;
    this.#begin();
    const sink = exp.write(r.offset, r.length, (r.flags & NBD_CMD_FLAG_FUA) !== 0, (err) => {
      exp.release(r.length);
      if (r === this.#abandoned) {
        // the client left mid-payload: the request never arrived whole, so it gets no reply
      } else if (err !== 0) this.#out.error(r, err, 'write failed on the device');
      else {
        this.#ctx.stats.bytes.written += r.length;
        this.#out.ok(r);
      }
      this.#end();
    });
    if (r.length > 0) this.#expectPayload(r, sink, 0, '');
  }

  #flush(r: NbdRequest): void {
    if ((r.flags & ~NBD_CMD_FLAG_FUA) !== 0) {
      this.#out.error(r, NBD_EINVAL, 'flags not valid on a flush');
      return;
    }
    if (r.offset !== 0 || r.length !== 0) {
      this.#out.error(r, NBD_EINVAL, 'NBD_CMD_FLUSH offset and length must be zero');
      return;
    }
    this.#begin();
    this.#ctx.exp.flush((err) => {
      if (err !== 0) this.#out.error(r, err, 'flush failed on the device');
      else this.#out.ok(r);
      this.#end();
    });
  }

  #trim(r: NbdRequest): void {
    const bad = this.#check(r, NBD_CMD_FLAG_FUA);
    if (bad !== undefined) {
      this.#out.error(r, bad[0], bad[1]);
      return;
    }
    this.#begin();
    this.#ctx.exp.trim(r.offset, r.length, (r.flags & NBD_CMD_FLAG_FUA) !== 0, (err) => {
      if (err !== 0) this.#out.error(r, err, 'trim failed on the device');
      else {
        this.#ctx.stats.bytes.trimmed += r.length;
        this.#out.ok(r);
      }
      this.#end();
    });
  }

  #writeZeroes(r: NbdRequest): void {
    const ctx = this.#ctx;
    const fast = (r.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0;
    if (r.length > ctx.exp.maxBlockSize && !fast) {
      // § "Block size constraints": the maximum applies to WRITE_ZEROES unless FAST_ZERO is set
      this.#out.error(r, NBD_EINVAL, `write zeroes of ${r.length} bytes over the maximum block size`);
      return;
    }
    const bad = this.#check(r, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO);
    if (bad !== undefined) {
      this.#out.error(r, bad[0], bad[1]);
      return;
    }
    const noHole = (r.flags & NBD_CMD_FLAG_NO_HOLE) !== 0;
    if (noHole && fast) {
      ctx.stats.zeroes.fastRefused++;
      this.#out.error(r, NBD_ENOTSUP, 'zeroes without a hole are written like NBD_CMD_WRITE: not fast');
      return;
    }
    this.#begin();
    const how = noHole ? 'write' : 'deallocate';
    ctx.exp.zeroes(r.offset, r.length, how, (r.flags & NBD_CMD_FLAG_FUA) !== 0, (err) => {
      if (err !== 0) this.#out.error(r, err, 'write zeroes failed on the device');
      else {
        ctx.stats.bytes.zeroed += r.length;
        if (noHole) ctx.stats.zeroes.written += r.length;
        else ctx.stats.zeroes.deallocated += r.length;
        this.#out.ok(r);
      }
      this.#end();
    });
  }

  #blockStatus(r: NbdRequest): void {
    const out = this.#out;
    if (!out.structured || out.allocationContext === 0) {
      this.#out.error(r, NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS needs NBD_OPT_SET_META_CONTEXT (base:allocation)');
      return;
    }
    const bad = this.#check(r, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE);
    if (bad !== undefined) {
      this.#out.error(r, bad[0], bad[1]);
      return;
    }
    if (r.length === 0) {
      // § NBD_CMD_BLOCK_STATUS: unspecified, but no descriptor can be empty
      this.#out.error(r, NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS of length 0');
      return;
    }
    const id = out.allocationContext;
    const max = (r.flags & NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_STATUS_DESCRIPTORS;
    const stats = this.#ctx.stats.blockStatus;
    this.#begin();
    this.#ctx.exp.allocation(r.offset, r.length, max, (err, runs) => {
      if (err !== 0 || runs === null || runs.length === 0) {
        this.#out.error(r, err !== 0 ? err : NBD_EINVAL, 'block status failed on the device');
      } else {
        // (length, allocated) runs → (length, base:allocation flags) descriptors, in place
        for (let i = 1; i < runs.length; i += 2) {
          stats.bytes += runs[i - 1]!;
          runs[i] = runs[i] === 1 ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
        }
        stats.replies++;
        stats.descriptors += runs.length / 2;
        this.#out.blockStatus(r, id, runs);
      }
      this.#end();
    });
  }

  #begin(): void {
    this.#inFlight++;
    const stats = this.#ctx.stats;
    if (this.#inFlight > stats.maxInFlight) stats.maxInFlight = this.#inFlight;
  }

  #end(): void {
    this.#inFlight--;
    this.#host.commandDone();
  }
}
