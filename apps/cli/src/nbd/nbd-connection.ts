/**
 * One client connection of the NBD server: its socket, its lifecycle and the parser loop that
 * hands the stream to the phase it is in — the handshake (`nbd-negotiation.ts`) or transmission
 * (`nbd-transmission.ts`) — under the connection's flow control (`nbd-flow-control.ts`).
 * Protocol: `doc/proto.md` of the NetworkBlockDevice project (§ "Protocol phases"). No kernel
 * counterpart on the server side; the Linux client is `drivers/block/nbd.c`.
 *
 * Lifecycle (`state`, one value at a time; transitions are the methods named after them):
 *
 *   negotiating ──enterTransmission──▶ transmitting
 *        │                                  │
 *        └──────────────stopParsing─────────┘──▶ draining ──(nothing in flight) endConnection──▶ ending
 *   any state ──socket closed──▶ closed ──(nothing in flight) finish──▶ done
 *
 * `draining` stops parsing (a violation, NBD_OPT_ABORT, NBD_CMD_DISC, the client's end of stream
 * or a lost socket) and waits for the commands in flight; `ending` has sent the server's end of
 * stream and gives the client `graceMs` to close; `closed` waits for commands still on the device
 * (their replies are dropped); `done` is reported to the server once.
 *
 * Time limits (`ServerCtx.timers`, injectable): a client still negotiating `handshakeLimitMs`
 * after it connected is dropped (qemu-nbd's `--handshake-limit`, its fix for CVE-2024-7409); a
 * connection in `ending`, or idle after the server began shutting down, is destroyed after
 * `graceMs`. Commands in flight are always waited for.
 */
import type { Socket } from 'node:net';
import { InputQueue } from './input-queue.js';
import type { ServerCtx } from './nbd-context.js';
import { FlowControl } from './nbd-flow-control.js';
import { Negotiation } from './nbd-negotiation.js';
import { NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_REQUEST_SIZE } from './nbd-proto.js';
import { encodeGreeting } from './nbd-proto-handshake.js';
import { ReplyWriter } from './nbd-replies.js';
import { Transmission } from './nbd-transmission.js';
import { adoptSocket, canAdopt } from './socket-reader.js';

/** The lifecycle states of a connection (see the header). */
export const ConnectionState = {
  negotiating: 'negotiating',
  transmitting: 'transmitting',
  draining: 'draining',
  ending: 'ending',
  closed: 'closed',
  done: 'done',
} as const;
export type ConnectionState = (typeof ConnectionState)[keyof typeof ConnectionState];

/** Bytes of a connection's reused read buffer. */
const READ_BUFFER_SIZE = 64 * 1024;

/** One client connection. */
export class NbdConnection {
  readonly id: number;
  #state: ConnectionState = ConnectionState.negotiating;
  readonly #ctx: ServerCtx;
  readonly #sock: Socket;
  readonly #input = new InputQueue();
  readonly #out: ReplyWriter;
  readonly #flow: FlowControl;
  readonly #negotiation: Negotiation;
  readonly #transmission: Transmission;
  /** The client has ended its side of the stream (a half-closing client still gets its replies). */
  #clientFinished = false;
  /** The parser loop is running / was asked to run again meanwhile (reentrancy guard). */
  #parsing = false;
  #parseRequested = false;
  /** Why the connection stopped (logged when it is done). */
  #stopReason = '';
  /** The pending time limit (handshake limit or grace period), if any. */
  #timer: unknown;
  /** The reused read buffer, and a view of its first request header's bytes. */
  readonly #readBuf = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);
  readonly #headerBuf = this.#readBuf.subarray(0, NBD_REQUEST_SIZE);
  /** The span of request pages the pending read fills, if it is one. */
  #direct: Uint8Array | undefined;

  /**
   * A connection on the accepted socket `raw` (accepted paused). With `zeroCopy` (and a socket
   * that allows it) reads go straight into write requests' pages or into one reused buffer
   * (`socket-reader.ts`); otherwise the socket's `data` chunks are parsed as they come.
   */
  constructor(ctx: ServerCtx, raw: Socket, id: number, zeroCopy: boolean) {
    this.#ctx = ctx;
    this.id = id;
    let sock = raw;
    if (zeroCopy && canAdopt(raw)) {
      sock = adoptSocket(
        raw,
        { nextBuffer: () => this.#nextBuffer(), onRead: (n, buf) => this.#onRead(n, buf) },
        true,
      );
    } else {
      raw.on('data', (b: Buffer) => this.#onChunk(b));
      raw.resume();
    }
    this.#sock = sock;
    this.#out = new ReplyWriter(sock, ctx);
    this.#flow = new FlowControl(sock, ctx.exp, this.#input, () => this.#parse());
    this.#out.onQueued = () => this.#flow.replyQueued();
    this.#negotiation = new Negotiation(ctx, this.#out, {
      enterTransmission: () => this.#enterTransmission(),
      violation: (why) => this.#violation(why),
      clientAborted: () => this.#stopParsing('NBD_OPT_ABORT'),
    });
    this.#transmission = new Transmission(ctx, this.#out, this.#flow, {
      violation: (why) => this.#violation(why),
      softDisconnect: () => this.#stopParsing('NBD_CMD_DISC'),
      commandDone: () => this.#commandDone(),
    });
    sock.on('end', () => this.#onClientFinished());
    sock.on('error', (e) => {
      this.#stopReason ||= `socket error: ${e.message}`;
      this.#leaving('connection lost');
    });
    sock.on('close', () => this.#onClose());
    sock.on('drain', () => this.#flow.outputDrained());
    if (ctx.handshakeLimitMs > 0) {
      this.#timer = ctx.timers.set(() => this.#handshakeExpired(), ctx.handshakeLimitMs);
    }
    // § "Newstyle negotiation": the server speaks first.
    this.#out.send(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  }

  /** Where the connection is in its lifecycle. */
  get state(): ConnectionState {
    return this.#state;
  }

  /**
   * The server is shutting down (`ServerCtx.shuttingDown` is set): options are refused with
   * NBD_REP_ERR_SHUTDOWN and new requests with NBD_ESHUTDOWN; commands in flight finish; a
   * connection with nothing in flight gets `graceMs` to disconnect before it is destroyed.
   */
  shutdown(): void {
    this.#startGraceIfIdle();
  }

  // -------------------------------------------------------------------------------------------
  // Transitions
  // -------------------------------------------------------------------------------------------

  #enterTransmission(): void {
    this.#cancelTimer();
    this.#state = ConnectionState.transmitting;
    const c = this.#ctx.stats.connections;
    c.transmissions++;
    if (this.#out.structured) c.structuredReplies++;
    if (this.#ctx.shuttingDown) this.#startGraceIfIdle();
  }

  /** Stops parsing (→ draining): nothing more is read into requests; in-flight commands finish. */
  #stopParsing(why: string): void {
    if (this.#state !== ConnectionState.negotiating && this.#state !== ConnectionState.transmitting) return;
    this.#stopReason ||= why;
    this.#state = ConnectionState.draining;
    this.#cancelTimer();
    this.#transmission.abandon();
    this.#input.clear();
    // reading goes on, its bytes dropped, so that the client's end of the stream is seen
    this.#flow.stop();
    this.#endIfIdle();
  }

  /** draining → ending once nothing is in flight: the server's end of stream, then a grace period. */
  #endIfIdle(): void {
    if (this.#state !== ConnectionState.draining || this.#transmission.inFlight > 0) return;
    this.#state = ConnectionState.ending;
    if (this.#sock.destroyed) return;
    this.#out.end();
    this.#timer = this.#ctx.timers.set(() => this.#sock.destroy(), this.#ctx.graceMs);
  }

  /** The socket closed (any state → closed), then done once nothing is in flight. */
  #onClose(): void {
    this.#leaving('connection lost');
    this.#state = ConnectionState.closed;
    this.#finishIfIdle();
  }

  #finishIfIdle(): void {
    if (this.#state !== ConnectionState.closed || this.#transmission.inFlight > 0) return;
    this.#state = ConnectionState.done;
    this.#cancelTimer();
    this.#ctx.log(`nbd[${this.id}]: closed (${this.#stopReason || 'socket closed'})`);
    this.#ctx.onDone(this.id);
  }

  // -------------------------------------------------------------------------------------------
  // Events
  // -------------------------------------------------------------------------------------------

  #commandDone(): void {
    this.#flow.commandDone();
    this.#endIfIdle();
    this.#finishIfIdle();
    if (this.#ctx.shuttingDown) this.#startGraceIfIdle();
  }

  /** A protocol violation: a hard disconnect once in-flight commands are answered. */
  #violation(why: string): void {
    if (this.#state !== ConnectionState.negotiating && this.#state !== ConnectionState.transmitting) return;
    this.#ctx.stats.connections.protocolErrors++;
    this.#ctx.log(`nbd[${this.id}]: protocol violation: ${why}; disconnecting`);
    this.#stopParsing(why);
  }

  #handshakeExpired(): void {
    this.#timer = undefined;
    if (this.#state !== ConnectionState.negotiating) return;
    this.#ctx.stats.connections.handshakeTimeouts++;
    this.#ctx.log(
      `nbd[${this.id}]: handshake not completed within ${this.#ctx.handshakeLimitMs} ms; dropped`,
    );
    this.#stopParsing('handshake time limit');
    this.#sock.destroy(); // nothing can be in flight while negotiating
  }

  /** After shutdown began: a connection with nothing in flight gets the grace period, then is destroyed. */
  #startGraceIfIdle(): void {
    const s = this.#state;
    if (s !== ConnectionState.negotiating && s !== ConnectionState.transmitting) return;
    if (this.#transmission.inFlight > 0 || this.#timer !== undefined) return;
    this.#timer = this.#ctx.timers.set(() => this.#sock.destroy(), this.#ctx.graceMs);
  }

  #cancelTimer(): void {
    if (this.#timer === undefined) return;
    this.#ctx.timers.clear(this.#timer);
    this.#timer = undefined;
  }

  /** The client ended its side: parse what it sent (a half-closing client still gets its replies). */
  #onClientFinished(): void {
    if (this.#clientFinished) return;
    this.#clientFinished = true;
    if (!this.#flow.stalled) this.#parse();
  }

  /** The client is gone or has finished sending: count it, then stop parsing. */
  #leaving(why: string): void {
    const s = this.#state;
    if (s !== ConnectionState.negotiating && s !== ConnectionState.transmitting) return;
    const phase = s === ConnectionState.negotiating ? this.#negotiation : this.#transmission;
    const mid = this.#input.length > 0 || this.#transmission.inFlight > 0 || phase.midMessage;
    if (mid) this.#ctx.stats.connections.aborted++;
    this.#stopParsing(mid ? `${why} mid-message (${phase.expecting})` : why);
  }

  // -------------------------------------------------------------------------------------------
  // Input
  // -------------------------------------------------------------------------------------------

  #parsingInput(): boolean {
    return this.#state === ConnectionState.negotiating || this.#state === ConnectionState.transmitting;
  }

  /** A chunk the socket allocated (its `data` event). */
  #onChunk(b: Buffer): void {
    if (!this.#parsingInput()) return; // nothing may follow NBD_CMD_DISC or a violation
    this.#input.push(b);
    this.#parse();
  }

  /**
   * Where the next read goes: mid-payload of a write (nothing queued, not stalled), the next
   * span of the request's pages; right after a large write, a request header's worth of the read
   * buffer; otherwise the whole read buffer.
   */
  #nextBuffer(): Uint8Array {
    this.#direct = undefined;
    if (this.#state === ConnectionState.transmitting && this.#input.length === 0) {
      if (!this.#flow.stalled) {
        const span = this.#transmission.payloadSpan();
        if (span !== undefined) {
          this.#direct = span;
          return span;
        }
      }
      if (this.#transmission.expectsHeaderAfterLargeWrite) return this.#headerBuf;
    }
    return this.#readBuf;
  }

  /** `n` bytes arrived in `buf`, the buffer `#nextBuffer` chose. */
  #onRead(n: number, buf: Uint8Array): void {
    if (!this.#parsingInput()) return;
    if (buf === this.#direct) {
      // payload bytes already in the request's pages (a span is chosen only mid-payload, and a
      // connection stops reading before anything can end the payload early)
      this.#direct = undefined;
      this.#transmission.payloadReceived(n);
      this.#parse();
      return;
    }
    this.#input.push(this.#readBuf.subarray(0, n));
    this.#parse();
    this.#input.detach(this.#readBuf.buffer);
  }

  /** Runs the parser of the current phase over the input until it needs more or must wait. */
  #parse(): void {
    if (this.#parsing) {
      this.#parseRequested = true;
      return;
    }
    this.#parsing = true;
    try {
      do {
        this.#parseRequested = false;
        this.#parseSteps();
      } while (this.#parseRequested);
    } catch (e) {
      this.#ctx.log(`nbd[${this.id}]: internal error: ${(e as Error).stack ?? String(e)}`);
      this.#ctx.count(this.#ctx.stats.errors, 'internal');
      this.#sock.destroy();
    } finally {
      this.#parsing = false;
      this.#flow.updateReading();
    }
  }

  #parseSteps(): void {
    for (;;) {
      if (this.#flow.stalled) return;
      let progressed: boolean;
      if (this.#state === ConnectionState.negotiating) progressed = this.#negotiation.step(this.#input);
      else if (this.#state === ConnectionState.transmitting)
        progressed = this.#transmission.step(this.#input);
      else return;
      if (!progressed) {
        // at the end of the client's stream the rest is lost (mid-message: the message)
        if (this.#clientFinished) this.#leaving('client disconnected');
        return;
      }
    }
  }
}
