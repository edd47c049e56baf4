/**
 * Flow control of an NBD connection: when it stops parsing requests (commands in flight at the
 * queue depth, no buffer memory, or too many reply bytes the client has not read), when it stops
 * reading its socket, and the buffer-budget grant of a request parked meanwhile. No kernel
 * counterpart; `drivers/block/nbd.c`'s peer servers (qemu-nbd, nbdkit) bound requests in flight
 * per client the same way.
 *
 * The socket is paused only while the client does not read its replies (its going away then shows
 * as a failed write) or while more than `INPUT_LIMIT` bytes wait to be parsed. Waiting for memory
 * or for in-flight commands keeps reading into the input queue, so a client that closes or resets
 * its connection meanwhile is noticed at once. A parked request owns its grant: it starts with it
 * or returns it when the connection stops (`stop`), whichever state the connection is in.
 */
import type { Socket } from 'node:net';
import type { InputQueue } from './input-queue.js';
import type { NbdExport } from './nbd-export.js';
import type { NbdRequest } from './nbd-proto-transmission.js';

/** Why a connection does not parse its next request. */
export const Stall = {
  /** `queueDepth` commands are in flight. */
  depth: 1,
  /** The parked request waits for buffer memory. */
  memory: 2,
  /** Reply bytes the client has not read are over `OUTPUT_LIMIT`. */
  output: 4,
} as const;
export type Stall = (typeof Stall)[keyof typeof Stall];

/** Bytes of unparsed input a connection keeps reading while it waits for memory or commands. */
export const INPUT_LIMIT = 256 * 1024;
/**
 * Reply bytes one connection may hold (queued in its socket, plus READs in flight whose replies
 * are coming): no new READ starts beyond it, and no request is parsed while the socket holds more.
 */
export const OUTPUT_LIMIT = 48 * 2 ** 20;

/** A request parsed but not started, and whether its buffer memory has been granted. */
interface Parked {
  req: NbdRequest;
  /** The grant is held (the request starts with it, or it is returned). */
  granted: boolean;
  /** Parked for room for its reply (a READ), not for memory. */
  forOutput: boolean;
  /** Withdraws a queued memory wait (true), or does nothing once granted (false). */
  withdraw: () => boolean;
}

/** The flow control of one connection. */
export class FlowControl {
  readonly #sock: Socket;
  readonly #exp: NbdExport;
  readonly #input: InputQueue;
  readonly #resume: () => void;
  #stalls = 0;
  #reading = true;
  /** The connection stopped parsing: read on and drop the bytes, to see the client's end. */
  #stopped = false;
  #parked: Parked | undefined;
  /** Bytes of READs on the device whose replies will be queued. */
  #readBytesInFlight = 0;

  /** `resume` runs the parser again once nothing stalls it. */
  constructor(sock: Socket, exp: NbdExport, input: InputQueue, resume: () => void) {
    this.#sock = sock;
    this.#exp = exp;
    this.#input = input;
    this.#resume = resume;
  }

  /** True while something stops the parser. */
  get stalled(): boolean {
    return this.#stalls !== 0;
  }

  stall(reason: Stall): void {
    this.#stalls |= reason;
    this.updateReading();
  }

  unstall(reason: Stall): void {
    if ((this.#stalls & reason) === 0) return;
    this.#stalls &= ~reason;
    this.updateReading();
    if (this.#stalls === 0) this.#resume();
  }

  /** A command completed: the depth stall ends, and the output stall if the replies fit again. */
  commandDone(): void {
    this.unstall(Stall.depth);
    this.#checkOutput();
  }

  /** Transmission replies were queued: stall when the client is not taking them. */
  replyQueued(): void {
    if (this.#sock.writableLength > OUTPUT_LIMIT) this.stall(Stall.output);
  }

  /** The socket took every queued byte ('drain'). */
  outputDrained(): void {
    this.#checkOutput();
  }

  /**
   * Buffer memory (and, for a READ, room for its reply) for `r`: true if it may start now (the
   * budget reserved); false with `r` parked until it may (retry with the parked request).
   * The parked request comes back here, with its grant if it has one.
   */
  reserve(r: NbdRequest, isRead: boolean): boolean {
    const parked = this.#parked;
    const granted = parked !== undefined && parked.req === r && parked.granted;
    this.#parked = undefined;
    if (!granted && isRead && !this.#outputRoom(r.length)) {
      this.#parked = { req: r, granted: false, forOutput: true, withdraw: () => false };
      this.stall(Stall.output);
      return false;
    }
    if (granted || this.#exp.tryReserve(r.length)) {
      if (isRead) this.#readBytesInFlight += r.length;
      return true;
    }
    const p: Parked = { req: r, granted: false, forOutput: false, withdraw: () => false };
    this.#parked = p;
    this.stall(Stall.memory);
    p.withdraw = this.#exp.waitForMemory(r.length, () => {
      p.granted = true;
      this.unstall(Stall.memory);
    });
    return false;
  }

  /** The parked request, to try again (it stays parked until `reserve` takes it). */
  get parked(): NbdRequest | undefined {
    return this.#parked?.req;
  }

  /** A READ reserved with `reserve` has been answered (or failed): its reply bytes are queued. */
  readDone(bytes: number): void {
    this.#readBytesInFlight -= bytes;
  }

  /**
   * The connection stops parsing: the parked request's memory is withdrawn or returned, nothing
   * stalls any more, and the socket is read on (its bytes dropped) until the client's end.
   */
  stop(): void {
    const p = this.#parked;
    this.#parked = undefined;
    if (p !== undefined && !p.withdraw() && p.granted) this.#exp.release(p.req.length);
    this.#stopped = true;
    this.#stalls = 0;
    this.updateReading();
  }

  /** Pauses or resumes the socket as the rules above say. */
  updateReading(): void {
    const read =
      this.#stopped ||
      ((this.#stalls & Stall.output) === 0 && (this.#stalls === 0 || this.#input.length < INPUT_LIMIT));
    if (read === this.#reading || this.#sock.destroyed) return;
    this.#reading = read;
    if (read) this.#sock.resume();
    else this.#sock.pause();
  }

  /** A READ of `bytes` fits the connection's reply bound (one always fits when nothing is held). */
  #outputRoom(bytes: number): boolean {
    const held = this.#sock.writableLength + this.#readBytesInFlight;
    return held === 0 || held + bytes <= OUTPUT_LIMIT;
  }

  #checkOutput(): void {
    if ((this.#stalls & Stall.output) === 0) return;
    const parked = this.#parked;
    if (this.#sock.writableLength > OUTPUT_LIMIT) return;
    if (parked?.forOutput === true && !this.#outputRoom(parked.req.length)) return;
    this.unstall(Stall.output);
  }
}
