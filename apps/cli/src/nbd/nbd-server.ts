/**
 * An NBD server for the simulated NVMe device: fixed newstyle negotiation (NBD_OPT_GO, INFO,
 * LIST, ABORT, EXPORT_NAME, STRUCTURED_REPLY; every other option answered NBD_REP_ERR_UNSUP) and
 * the transmission phase (READ, WRITE with FUA, FLUSH, TRIM, DISC), on a Unix socket or loopback
 * TCP only. Protocol: `doc/proto.md` of the NetworkBlockDevice project (sections cited as § "…").
 * Kernel counterpart: none on the server side; the Linux client is `drivers/block/nbd.c`.
 *
 * Each connection parses its socket as a byte stream (a state machine that never blocks), so many
 * clients are read concurrently; each command becomes block requests on the one shared export
 * (`nbd-export.ts`), whose device runs on this thread or, with `deviceThread`, on a worker thread
 * of its own (`nbd-device-remote.ts`). Up to `queueDepth` commands per connection are in flight (pipelining); the
 * socket is paused beyond that, while waiting for buffer memory, or while the client does not
 * read its replies. Replies may be sent out of order (§ "Transmission"); a reply is sent only
 * after the device completed the command, so whatever was acknowledged is in the backing store.
 *
 * Bad input: unknown options → NBD_REP_ERR_UNSUP; malformed known options → NBD_REP_ERR_INVALID;
 * unknown commands or flags, misaligned requests, reads beyond the end or over the maximum block
 * size → NBD_EINVAL; writes beyond the end → NBD_ENOSPC (§ "Error values"). A wrong magic, unknown
 * client flags, an unknown export with NBD_OPT_EXPORT_NAME, or a write payload over 32 MiB
 * (§ "Block size constraints": a denial of service) end the connection (a hard disconnect) after
 * the commands already in flight have been answered. A client that disconnects mid-request loses
 * only that unacknowledged request.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, isIP, type Server, type Socket } from 'node:net';
import { NbdExport, type NbdExportOptions, type NbdExportStats, type NbdWriteSink } from './nbd-export.js';
import {
  decodeInfoRequest,
  decodeOptionHeader,
  decodeRequest,
  decodeString,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
  NBD_CLIENT_FLAGS_SIZE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_RESIZE,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_MAX_STRING,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_HEADER_SIZE,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_SIZE,
  NbdError,
  type NbdRequest,
  nbdCmdName,
  nbdErrName,
  nbdOptName,
  U64_TOO_BIG,
  writeSimpleReply,
  writeStructuredReply,
  writeU64,
} from './nbd-proto.js';
import { adoptSocket, canAdopt } from './socket-reader.js';

/** Options of `startNbdServer`: where to listen, plus the export's options. */
export interface NbdServerOptions extends NbdExportOptions {
  /** Listen on this Unix socket path (exclusive with `port`). */
  socket?: string;
  /** Listen on this loopback TCP port (0 = any free port). */
  port?: number;
  /** Loopback address for `port` (default 127.0.0.1; other hosts are refused). */
  host?: string;
  /** On close, how long clients get to disconnect before their sockets are destroyed (default 2 s). */
  shutdownGraceMs?: number;
  /** Concurrent connections at most (default 64). */
  maxConnections?: number;
  /**
   * Receive write payloads straight into the request's pages and everything else into one reused
   * buffer per connection (default true); false parses the socket's own chunks and copies payloads.
   */
  zeroCopy?: boolean;
  /** Diagnostics (connections, protocol errors); default silent. */
  log?: (line: string) => void;
}

/** Where the server listens. */
export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** Counters of a server run. */
export interface NbdServerStats {
  /** Wall-clock milliseconds since the server started. */
  uptimeMs: number;
  /** What happened to client connections. */
  connections: {
    /** Connections accepted by the listener (refused ones included). */
    accepted: number;
    /** Refused: not loopback, or over `maxConnections`. */
    refused: number;
    /** Connections that entered the transmission phase. */
    transmissions: number;
    /** Connections that negotiated structured replies. */
    structuredReplies: number;
    /** Connections the server dropped for a protocol violation (hard disconnects). */
    protocolErrors: number;
    /** Connections lost mid-message or with commands in flight (their unanswered commands are lost). */
    aborted: number;
    /** Connections open now. */
    open: number;
    /** Most connections open at once. */
    maxConcurrent: number;
  };
  /** Options received, by protocol name (`other` for numbers the protocol does not define). */
  options: Record<string, number>;
  /** Commands received, by protocol name (`other` for types the protocol does not define). */
  commands: Record<string, number>;
  /** Error replies sent, by NBD error name (option errors by NBD_REP_ERR name). */
  errors: Record<string, number>;
  /** Payload bytes of successful commands. */
  bytes: { read: number; written: number; trimmed: number };
  /** Most commands in flight on one connection. */
  maxInFlight: number;
  /** The device side. */
  device: NbdExportStats;
}

/** A running server. */
export interface NbdServerHandle {
  /** Where it listens. */
  address: NbdAddress;
  /** The NBD URI clients use (`nbd+unix:///?socket=…` or `nbd://host:port`). */
  uri: string;
  /** The export (device, machine) behind the server. */
  export: NbdExport;
  /** Counters so far. */
  stats(): NbdServerStats;
  /**
   * Stops accepting, lets in-flight commands finish and their replies go out, closes every
   * connection, removes the device (dma-debug checks teardown) and resolves with the counters.
   */
  close(): Promise<NbdServerStats>;
}

const REP_ERR_NAMES: Record<number, string> = {
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
};

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses. */
export function isLoopbackAddress(addr: string): boolean {
  const a = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1' || a === '0:0:0:0:0:0:0:1';
}

const EMPTY = Buffer.alloc(0);

/** Bytes of a stream not yet parsed: received chunks, consumed from the front without copying. */
class InputQueue {
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

/** Connection phases: handshake (`flags` … `optSkip`), transmission (`request` … `payloadSkip`), end. */
type Phase =
  | 'flags'
  | 'optHeader'
  | 'optData'
  | 'optSkip'
  | 'request'
  | 'payload'
  | 'payloadSkip'
  | 'draining';

/** Reasons a connection stops reading its socket (bits). */
const STALL_DEPTH = 1;
const STALL_MEMORY = 2;
const STALL_OUTPUT = 4;

/** Longest NBD_OPT_INFO/GO data: name length, a 4096-byte name, count, 65535 info types. */
const MAX_INFO_DATA = 4 + NBD_MAX_STRING + 2 + 2 * 0xffff;
/** Bytes of unparsed input a connection keeps reading while it waits for memory or commands. */
const INPUT_LIMIT = 256 * 1024;
/** Stop reading requests while this many reply bytes wait in the socket. */
const OUTPUT_HIGH_WATER = 48 * 2 ** 20;
/** Bytes of a connection's reused read buffer. */
const READ_BUFFER_SIZE = 64 * 1024;
/**
 * A write payload at least this long is received straight into the request's pages, and the
 * request header after it is read on its own, so that no payload byte lands in the read buffer.
 */
const DIRECT_PAYLOAD_MIN = 16 * 1024;

/** State shared by the connections of one server. */
interface ServerCtx {
  exp: NbdExport;
  stats: NbdServerStats;
  shuttingDown: boolean;
  graceMs: number;
  log: (line: string) => void;
  count(table: Record<string, number>, key: string): void;
  onDone(c: NbdConnection): void;
}

/** One client connection: the negotiation and transmission state machine of § "Protocol phases". */
class NbdConnection {
  readonly id: number;
  readonly #ctx: ServerCtx;
  readonly #exp: NbdExport;
  readonly #sock: Socket;
  readonly #in = new InputQueue();
  #phase: Phase = 'flags';
  #noZeroes = false;
  #structured = false;
  /** Current option, its data length, and data bytes left. */
  #opt = 0;
  #optLen = 0;
  #optLeft = 0;
  /** Current write: its request, sink (undefined when the payload is skipped), bytes left. */
  #wreq: NbdRequest | undefined;
  #wsink: NbdWriteSink | undefined;
  #wleft = 0;
  #wskipErr = 0;
  #wskipMsg = '';
  /** A write whose payload never arrived whole. */
  #abandoned: NbdRequest | undefined;
  /**
   * A request parsed but not started: it waits for buffer memory (`granted` false, `cancel`
   * withdraws the wait) or holds its grant until the connection may go on (`granted` true; the
   * grant is the connection's to start the request with or to return).
   */
  #parked: { req: NbdRequest; granted: boolean; cancel: () => boolean } | undefined;
  /** Whether the socket is being read (false while paused). */
  #reading = true;
  #inFlight = 0;
  #stalls = 0;
  #processing = false;
  #again = false;
  #corked = false;
  #ended = false;
  #closed = false;
  #done = false;
  #shutdown = false;
  #eof = false;
  #why = '';
  #timer: NodeJS.Timeout | undefined;
  /** The reused read buffer, and a view of its first request header's bytes. */
  readonly #readBuf = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);
  readonly #headerBuf = this.#readBuf.subarray(0, NBD_REQUEST_SIZE);
  /** The span of request pages the pending read fills, if it is one. */
  #direct: Uint8Array | undefined;
  /** The last request was a write with a payload of at least DIRECT_PAYLOAD_MIN bytes. */
  #largeWrite = false;

  /**
   * A connection on the accepted socket `raw` (accepted paused). With `zeroCopy` (and a socket
   * that allows it) reads go straight into write requests' pages or into one reused buffer
   * (`socket-reader.ts`); otherwise the socket's `data` chunks are parsed as they come.
   */
  constructor(ctx: ServerCtx, raw: Socket, id: number, zeroCopy: boolean) {
    this.#ctx = ctx;
    this.#exp = ctx.exp;
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
    sock.on('end', () => this.#onEof());
    sock.on('error', (e) => {
      this.#why ||= `socket error: ${e.message}`;
      this.#onGone();
    });
    sock.on('close', () => {
      this.#closed = true;
      this.#onGone();
      this.#maybeDone();
    });
    sock.on('drain', () => this.#unstall(STALL_OUTPUT));
    // § "Newstyle negotiation": the server speaks first.
    sock.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  }

  /** Server shutdown: error further options, stop taking requests, finish in-flight ones, close. */
  shutdown(): void {
    this.#shutdown = true;
    if (this.#phase === 'request') this.#drain();
    this.#timer ??= setTimeout(() => this.#sock.destroy(), this.#ctx.graceMs);
    this.#timer.unref();
  }

  // -------------------------------------------------------------------------------------------
  // Input
  // -------------------------------------------------------------------------------------------

  /** A chunk the socket allocated (its `data` event). */
  #onChunk(b: Buffer): void {
    if (this.#phase === 'draining') return; // nothing may follow NBD_CMD_DISC or a violation
    this.#in.push(b);
    this.#process();
  }

  /**
   * Where the next read goes: mid-payload of a write (nothing queued, not stalled), the next
   * span of the request's pages; right after a large write, a request header's worth of the read
   * buffer; otherwise the whole read buffer.
   */
  #nextBuffer(): Uint8Array {
    this.#direct = undefined;
    if (this.#phase === 'payload' && this.#in.length === 0 && this.#stalls === 0) {
      const span = this.#wsink?.span(this.#wleft);
      if (span !== undefined) {
        this.#direct = span;
        return span;
      }
    }
    if (this.#phase === 'request' && this.#largeWrite && this.#in.length === 0) return this.#headerBuf;
    return this.#readBuf;
  }

  /** `n` bytes arrived in `buf`, the buffer `#nextBuffer` chose. */
  #onRead(n: number, buf: Uint8Array): void {
    if (this.#phase === 'draining') return;
    if (buf === this.#direct) {
      // payload bytes already in the request's pages (a span is chosen only mid-payload, and a
      // connection stops reading before anything can end the payload early)
      this.#direct = undefined;
      this.#payloadTaken(n).advance(n);
      this.#process();
      return;
    }
    this.#in.push(this.#readBuf.subarray(0, n));
    this.#process();
    this.#in.detach(this.#readBuf.buffer);
  }

  /** `n` payload bytes of the current write have been taken from the stream; returns its sink. */
  #payloadTaken(n: number): NbdWriteSink {
    const sink = this.#wsink!;
    this.#wleft -= n;
    if (this.#wleft === 0) {
      this.#phase = 'request';
      this.#wsink = undefined;
    }
    return sink;
  }

  // -------------------------------------------------------------------------------------------
  // Parsing
  // -------------------------------------------------------------------------------------------

  #process(): void {
    if (this.#processing) {
      this.#again = true;
      return;
    }
    this.#processing = true;
    try {
      do {
        this.#again = false;
        this.#step();
      } while (this.#again);
    } catch (e) {
      this.#ctx.log(`nbd[${this.id}]: internal error: ${(e as Error).stack ?? String(e)}`);
      this.#ctx.count(this.#ctx.stats.errors, 'internal');
      this.#sock.destroy();
    } finally {
      this.#processing = false;
      this.#updateReading();
    }
  }

  #step(): void {
    const q = this.#in;
    for (;;) {
      if (this.#stalls !== 0) return;
      switch (this.#phase) {
        case 'flags': {
          if (q.length < NBD_CLIENT_FLAGS_SIZE) {
            this.#needMore();
            return;
          }
          const f = q.take(4).readUInt32BE(0);
          // § "Client flags": the server MUST drop the connection on unknown flags
          if ((f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
            this.#violation(`unknown client flags 0x${f.toString(16)}`);
            return;
          }
          this.#noZeroes = (f & NBD_FLAG_C_NO_ZEROES) !== 0;
          this.#phase = 'optHeader';
          break;
        }
        case 'optHeader': {
          if (q.length < NBD_OPT_HEADER_SIZE) {
            this.#needMore();
            return;
          }
          const h = decodeOptionHeader(q.take(NBD_OPT_HEADER_SIZE));
          if (h === undefined) {
            this.#violation('option without the IHAVEOPT magic');
            return;
          }
          this.#ctx.count(
            this.#ctx.stats.options,
            h.option <= NBD_OPT_EXTENDED_HEADERS ? nbdOptName(h.option) : 'other',
          );
          this.#opt = h.option;
          this.#optLen = h.length;
          this.#optLeft = h.length;
          const buffered =
            (h.option === NBD_OPT_INFO || h.option === NBD_OPT_GO) && h.length <= MAX_INFO_DATA
              ? true
              : h.option === NBD_OPT_EXPORT_NAME && h.length <= NBD_MAX_STRING;
          this.#phase = buffered ? 'optData' : 'optSkip';
          break;
        }
        case 'optData': {
          if (q.length < this.#optLeft) {
            this.#needMore();
            return;
          }
          const data = q.take(this.#optLeft);
          this.#optLeft = 0;
          this.#phase = 'optHeader';
          this.#option(this.#opt, data);
          break;
        }
        case 'optSkip': {
          this.#optLeft -= q.discard(this.#optLeft);
          if (this.#optLeft > 0) {
            this.#needMore();
            return;
          }
          this.#phase = 'optHeader';
          this.#option(this.#opt, undefined);
          break;
        }
        case 'request': {
          if (this.#parked !== undefined) {
            const r = this.#parked.req;
            this.#parked = undefined;
            this.#request(r, true);
            break;
          }
          if (this.#shutdown) {
            this.#drain();
            return;
          }
          if (this.#inFlight >= this.#exp.queueDepth) {
            this.#stall(STALL_DEPTH);
            return;
          }
          if (q.length < NBD_REQUEST_SIZE) {
            this.#needMore();
            return;
          }
          const r = decodeRequest(q.take(NBD_REQUEST_SIZE));
          if (r === undefined) {
            this.#violation('request without NBD_REQUEST_MAGIC');
            return;
          }
          this.#largeWrite = r.type === NBD_CMD_WRITE && r.length >= DIRECT_PAYLOAD_MIN;
          this.#request(r, false);
          break;
        }
        case 'payload': {
          if (q.length === 0) {
            this.#needMore();
            return;
          }
          const chunk = q.takeSome(this.#wleft);
          this.#payloadTaken(chunk.length).push(chunk);
          break;
        }
        case 'payloadSkip': {
          this.#wleft -= q.discard(this.#wleft);
          if (this.#wleft > 0) {
            this.#needMore();
            return;
          }
          this.#phase = 'request';
          this.#replyError(this.#wreq!, this.#wskipErr, this.#wskipMsg);
          this.#wreq = undefined;
          break;
        }
        case 'draining':
          return;
      }
    }
  }

  /** Waits for more input; at the end of the client's stream, stops (mid-message: the message is lost). */
  #needMore(): void {
    if (!this.#eof) return;
    this.#leaving('client disconnected');
  }

  /** True while part of a message has been received, or commands are in flight. */
  #midMessage(): boolean {
    const p = this.#phase;
    return (
      this.#in.length > 0 || this.#inFlight > 0 || (p !== 'flags' && p !== 'optHeader' && p !== 'request')
    );
  }

  /** The client is gone or has finished sending: count it, then stop reading. */
  #leaving(why: string): void {
    if (this.#phase === 'draining') return;
    const mid = this.#midMessage();
    if (mid) this.#ctx.stats.connections.aborted++;
    this.#why ||= mid ? `${why} mid-message (${this.#phase})` : why;
    this.#drain();
  }

  // -------------------------------------------------------------------------------------------
  // Negotiation (§ "Option types")
  // -------------------------------------------------------------------------------------------

  #send(b: Uint8Array): void {
    if (!this.#sock.destroyed && this.#sock.writable) this.#sock.write(b);
  }

  #optReply(type: number, data?: Uint8Array): void {
    this.#send(encodeOptionReply(this.#opt, type, data));
  }

  #optError(type: number, message: string): void {
    this.#ctx.count(this.#ctx.stats.errors, REP_ERR_NAMES[type] ?? `NBD_REP_ERR_${type}`);
    this.#send(encodeOptionError(this.#opt, type, message));
  }

  /** Handles one option; `data` is undefined when its data was skipped (too long or not needed). */
  #option(opt: number, data: Buffer | undefined): void {
    const exp = this.#exp;
    if (this.#shutdown && opt !== NBD_OPT_ABORT) {
      if (opt === NBD_OPT_EXPORT_NAME) this.#violation('shutting down (NBD_OPT_EXPORT_NAME cannot fail)');
      else this.#optError(NBD_REP_ERR_SHUTDOWN, 'the server is shutting down');
      return;
    }
    switch (opt) {
      case NBD_OPT_EXPORT_NAME: {
        // No error reply is possible: an unknown export ends the session (§ NBD_OPT_EXPORT_NAME).
        const name = data === undefined ? undefined : decodeString(data);
        if (name === undefined || !exp.matches(name)) {
          this.#violation(`unknown export "${name ?? '?'}"`);
          return;
        }
        this.#send(encodeExportNameReply(exp.size, this.#transmissionFlags(), this.#noZeroes));
        this.#enterTransmission();
        return;
      }
      case NBD_OPT_ABORT:
        // § NBD_OPT_ABORT: the server MUST reply NBD_REP_ACK (data is ignored); the client then closes.
        this.#optReply(NBD_REP_ACK);
        this.#why = 'NBD_OPT_ABORT';
        this.#drain();
        return;
      case NBD_OPT_LIST:
        if (this.#optLen !== 0) {
          this.#optError(NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return;
        }
        this.#optReply(NBD_REP_SERVER, encodeRepServer(exp.name, exp.description));
        this.#optReply(NBD_REP_ACK);
        return;
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        const req = data === undefined ? undefined : decodeInfoRequest(data);
        if (req === undefined) {
          this.#optError(NBD_REP_ERR_INVALID, `malformed ${nbdOptName(opt)} data`);
          return;
        }
        if (!exp.matches(req.name)) {
          this.#optError(NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
          return;
        }
        this.#optReply(NBD_REP_INFO, encodeInfoExport(exp.size, this.#transmissionFlags()));
        // Sent even when not requested (allowed: § NBD_OPT_INFO), as our minimum block size is not 1.
        this.#optReply(
          NBD_REP_INFO,
          encodeInfoBlockSize(exp.minBlockSize, exp.preferredBlockSize, exp.maxBlockSize),
        );
        if (req.requests.includes(NBD_INFO_NAME))
          this.#optReply(NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, exp.name));
        if (req.requests.includes(NBD_INFO_DESCRIPTION)) {
          this.#optReply(NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, exp.description));
        }
        this.#optReply(NBD_REP_ACK);
        if (opt === NBD_OPT_GO) this.#enterTransmission();
        return;
      }
      case NBD_OPT_STRUCTURED_REPLY:
        if (this.#optLen !== 0) {
          this.#optError(NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          return;
        }
        if (this.#structured) {
          this.#optError(NBD_REP_ERR_INVALID, 'structured replies already negotiated');
          return;
        }
        this.#structured = true;
        this.#optReply(NBD_REP_ACK);
        return;
      default:
        // STARTTLS (NOTLS mode may answer UNSUP), metadata contexts, extended headers, unknown.
        this.#optError(NBD_REP_ERR_UNSUP, `${nbdOptName(opt)} is not supported`);
        return;
    }
  }

  #transmissionFlags(): number {
    // CAN_MULTI_CONN: one device and one cache behind every connection.
    let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM;
    f |= NBD_FLAG_CAN_MULTI_CONN;
    if (this.#structured) f |= NBD_FLAG_SEND_DF;
    return f;
  }

  #enterTransmission(): void {
    this.#ctx.stats.connections.transmissions++;
    if (this.#structured) this.#ctx.stats.connections.structuredReplies++;
    this.#phase = 'request';
  }

  // -------------------------------------------------------------------------------------------
  // Transmission (§ "Request types")
  // -------------------------------------------------------------------------------------------

  /** The error (value and message) for a data command's flags, range and alignment, if any. */
  #check(r: NbdRequest, allowed: number): [number, string] | undefined {
    const exp = this.#exp;
    if ((r.flags & ~allowed) !== 0)
      return [NBD_EINVAL, `command flags 0x${r.flags.toString(16)} not valid here`];
    if (r.offset === U64_TOO_BIG || r.offset + r.length > exp.size) {
      return [r.type === NBD_CMD_WRITE ? NBD_ENOSPC : NBD_EINVAL, 'request beyond the end of the export'];
    }
    if (r.type !== NBD_CMD_TRIM && (r.offset % exp.minBlockSize !== 0 || r.length % exp.minBlockSize !== 0)) {
      return [NBD_EINVAL, `request not aligned to the ${exp.minBlockSize}-byte minimum block size`];
    }
    return undefined;
  }

  #request(r: NbdRequest, retry: boolean): void {
    const exp = this.#exp;
    const stats = this.#ctx.stats;
    if (!retry) this.#ctx.count(stats.commands, r.type <= NBD_CMD_RESIZE ? nbdCmdName(r.type) : 'other');
    switch (r.type) {
      case NBD_CMD_READ: {
        const allowed = NBD_CMD_FLAG_FUA | (this.#structured ? NBD_CMD_FLAG_DF : 0);
        if (r.length > exp.maxBlockSize) {
          this.#replyError(r, NBD_EINVAL, `read of ${r.length} bytes over the maximum block size`);
          return;
        }
        const bad = this.#check(r, allowed);
        if (bad !== undefined) {
          this.#replyError(r, bad[0], bad[1]);
          return;
        }
        if (!this.#reserve(r, retry)) return;
        this.#begin();
        const room = this.#structured ? NBD_STRUCTURED_REPLY_SIZE + 8 : NBD_SIMPLE_REPLY_SIZE;
        exp.read(r.offset, r.length, room, (err, buf) => {
          exp.release(r.length);
          if (err !== 0) this.#replyError(r, err, 'read failed on the device');
          else this.#replyRead(r, buf!);
          this.#end();
        });
        return;
      }
      case NBD_CMD_WRITE: {
        if (r.length > exp.maxBlockSize) {
          // § "Block size constraints": a payload over 2^25 may be treated as a denial of service.
          this.#violation(`write payload of ${r.length} bytes over ${exp.maxBlockSize}`);
          return;
        }
        const bad = this.#check(r, NBD_CMD_FLAG_FUA);
        if (bad !== undefined) {
          this.#wreq = r;
          this.#wleft = r.length;
          this.#wskipErr = bad[0];
          this.#wskipMsg = bad[1];
          this.#phase = 'payloadSkip';
          return;
        }
        if (!this.#reserve(r, retry)) return;
        this.#begin();
        this.#wreq = r;
        this.#wleft = r.length;
        this.#phase = r.length === 0 ? 'request' : 'payload';
        this.#wsink = exp.write(r.offset, r.length, (r.flags & NBD_CMD_FLAG_FUA) !== 0, (err) => {
          exp.release(r.length);
          if (r === this.#abandoned) {
            // the client left mid-payload: the request never arrived whole, so it gets no reply
          } else if (err !== 0) this.#replyError(r, err, 'write failed on the device');
          else {
            stats.bytes.written += r.length;
            this.#replyOk(r);
          }
          this.#end();
        });
        if (r.length === 0) this.#wsink = undefined;
        return;
      }
      case NBD_CMD_FLUSH: {
        if ((r.flags & ~NBD_CMD_FLAG_FUA) !== 0) {
          this.#replyError(r, NBD_EINVAL, 'flags not valid on a flush');
          return;
        }
        if (r.offset !== 0 || r.length !== 0) {
          this.#replyError(r, NBD_EINVAL, 'NBD_CMD_FLUSH offset and length must be zero');
          return;
        }
        this.#begin();
        exp.flush((err) => {
          if (err !== 0) this.#replyError(r, err, 'flush failed on the device');
          else this.#replyOk(r);
          this.#end();
        });
        return;
      }
      case NBD_CMD_TRIM: {
        const bad = this.#check(r, NBD_CMD_FLAG_FUA);
        if (bad !== undefined) {
          this.#replyError(r, bad[0], bad[1]);
          return;
        }
        this.#begin();
        exp.trim(r.offset, r.length, (r.flags & NBD_CMD_FLAG_FUA) !== 0, (err) => {
          if (err !== 0) this.#replyError(r, err, 'trim failed on the device');
          else {
            stats.bytes.trimmed += r.length;
            this.#replyOk(r);
          }
          this.#end();
        });
        return;
      }
      case NBD_CMD_DISC:
        // § NBD_CMD_DISC: finish outstanding requests, then close; no reply.
        this.#why = 'NBD_CMD_DISC';
        this.#drain();
        return;
      default:
        this.#replyError(r, NBD_EINVAL, `${nbdCmdName(r.type)} is not supported`);
        return;
    }
  }

  /** Reserves buffer memory for a read or write; false (and the request parked) if it must wait. */
  #reserve(r: NbdRequest, granted: boolean): boolean {
    if (granted || this.#exp.tryReserve(r.length)) return true;
    const parked = {
      req: r,
      granted: false,
      cancel: () => false,
    };
    this.#parked = parked;
    this.#stall(STALL_MEMORY);
    parked.cancel = this.#exp.waitForMemory(r.length, () => {
      parked.granted = true;
      this.#unstall(STALL_MEMORY);
    });
    return false;
  }

  #begin(): void {
    this.#inFlight++;
    if (this.#inFlight > this.#ctx.stats.maxInFlight) this.#ctx.stats.maxInFlight = this.#inFlight;
  }

  #end(): void {
    this.#inFlight--;
    if ((this.#stalls & STALL_DEPTH) !== 0) this.#unstall(STALL_DEPTH);
    this.#maybeFinish();
    this.#maybeDone();
  }

  // -------------------------------------------------------------------------------------------
  // Replies
  // -------------------------------------------------------------------------------------------

  /** Queues a reply; replies of one clock run leave in one corked batch. */
  #write(b: Uint8Array): void {
    const s = this.#sock;
    if (s.destroyed || !s.writable) return;
    if (!this.#corked) {
      this.#corked = true;
      s.cork();
      this.#exp.afterRun(() => {
        this.#corked = false;
        s.uncork();
      });
    }
    s.write(b);
    if (s.writableLength > OUTPUT_HIGH_WATER && (this.#stalls & STALL_OUTPUT) === 0)
      this.#stall(STALL_OUTPUT);
  }

  #replyOk(r: NbdRequest): void {
    const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, 0, 0, r.handleHi, r.handleLo);
    this.#write(b);
  }

  #replyRead(r: NbdRequest, b: Buffer): void {
    this.#ctx.stats.bytes.read += r.length;
    if (!this.#structured) {
      writeSimpleReply(b, 0, 0, r.handleHi, r.handleLo);
    } else if (r.length === 0) {
      // no content chunk can describe zero bytes: a lone final NBD_REPLY_TYPE_NONE
      b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_SIZE);
      writeStructuredReply(b, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, r.handleHi, r.handleLo, 0);
    } else {
      // one content chunk (so NBD_CMD_FLAG_DF always holds), final: every byte is already here
      writeStructuredReply(
        b,
        0,
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        r.handleHi,
        r.handleLo,
        8 + r.length,
      );
      writeU64(b, NBD_STRUCTURED_REPLY_SIZE, r.offset);
    }
    this.#write(b);
  }

  /** An error reply: a structured error chunk when negotiated (with a message), else a simple reply. */
  #replyError(r: NbdRequest, err: number, message: string): void {
    if (this.#sock.destroyed || !this.#sock.writable) return; // e.g. a write abandoned mid-payload
    this.#ctx.count(this.#ctx.stats.errors, nbdErrName(err));
    if (this.#structured) {
      this.#write(encodeErrorChunk(r.handleHi, r.handleLo, err, message));
    } else {
      const b = Buffer.allocUnsafe(NBD_SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, 0, err, r.handleHi, r.handleLo);
      this.#write(b);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Flow control and the end of a connection
  // -------------------------------------------------------------------------------------------

  #stall(bit: number): void {
    this.#stalls |= bit;
    this.#updateReading();
  }

  #unstall(bit: number): void {
    if ((this.#stalls & bit) === 0) return;
    this.#stalls &= ~bit;
    this.#updateReading();
    if (this.#stalls === 0) this.#process();
  }

  /**
   * Pauses or resumes the socket. It is paused only while the client does not read its replies
   * (its going away then shows as a failed write) or while input beyond `INPUT_LIMIT` waits to be
   * parsed; waiting for buffer memory or for in-flight commands keeps reading, so that a client
   * that closes or resets its connection meanwhile is noticed at once.
   */
  #updateReading(): void {
    const read =
      this.#phase === 'draining' ||
      ((this.#stalls & STALL_OUTPUT) === 0 && (this.#stalls === 0 || this.#in.length < INPUT_LIMIT));
    if (read === this.#reading || this.#closed) return;
    this.#reading = read;
    if (read) this.#sock.resume();
    else this.#sock.pause();
  }

  /** A protocol violation: a hard disconnect once in-flight commands are answered. */
  #violation(why: string): void {
    if (this.#phase === 'draining') return;
    this.#ctx.stats.connections.protocolErrors++;
    this.#ctx.log(`nbd[${this.id}]: protocol violation: ${why}; disconnecting`);
    this.#why = why;
    this.#drain();
  }

  /** Stops parsing; the connection closes when nothing is in flight. */
  #drain(): void {
    const parked = this.#parked;
    this.#parked = undefined;
    // a parked request's memory: withdrawn while still queued, returned once granted
    if (parked !== undefined && !parked.cancel() && parked.granted) this.#exp.release(parked.req.length);
    if (this.#phase === 'payload' && this.#wsink !== undefined) {
      this.#abandoned = this.#wreq;
      this.#wsink.abort();
      this.#wsink = undefined;
    }
    this.#phase = 'draining';
    this.#in.clear();
    // Reading goes on, its bytes dropped, so that the client's end of the stream is seen (a
    // paused socket would never notice it) and the loop keeps the connection alive until then.
    this.#stalls = 0;
    this.#updateReading();
    this.#maybeFinish();
  }

  /** The client ended its side: parse what it sent (a half-closing client still gets its replies). */
  #onEof(): void {
    if (this.#eof) return;
    this.#eof = true;
    if (this.#stalls === 0) this.#process();
  }

  /** The socket is gone (error or close): nothing more can be read or sent. */
  #onGone(): void {
    this.#leaving('connection lost');
  }

  #maybeFinish(): void {
    if (this.#phase !== 'draining' || this.#inFlight > 0 || this.#ended) return;
    this.#ended = true;
    if (!this.#sock.destroyed) {
      this.#sock.end();
      this.#timer ??= setTimeout(() => this.#sock.destroy(), this.#ctx.graceMs);
      this.#timer.unref();
    }
  }

  #maybeDone(): void {
    if (this.#done || !this.#closed || this.#inFlight > 0) return;
    this.#done = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#ctx.log(`nbd[${this.id}]: closed (${this.#why || 'socket closed'})`);
    this.#ctx.onDone(this);
  }
}

function emptyStats(device: NbdExportStats): NbdServerStats {
  return {
    uptimeMs: 0,
    connections: {
      accepted: 0,
      refused: 0,
      transmissions: 0,
      structuredReplies: 0,
      protocolErrors: 0,
      aborted: 0,
      open: 0,
      maxConcurrent: 0,
    },
    options: {},
    commands: {},
    errors: {},
    bytes: { read: 0, written: 0, trimmed: 0 },
    maxInFlight: 0,
    device,
  };
}

/** Removes a stale Unix socket file (nobody listening); throws if the path is in use or not a socket. */
async function clearStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) {
    throw new NbdError(`${path} exists and is not a socket`, { rule: 'nbd serve: socket path' });
  }
  const inUse = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (inUse) throw new NbdError(`${path} is in use by another server`, { rule: 'nbd serve: socket in use' });
  unlinkSync(path);
}

/**
 * Starts an NBD server for a new simulated NVMe device (`NbdExport`) on a Unix socket or a
 * loopback TCP port, and resolves once it listens. Throws `NbdError` for a non-loopback host or
 * both/neither of `socket` and `port`.
 */
export async function startNbdServer(options: NbdServerOptions): Promise<NbdServerHandle> {
  if ((options.socket === undefined) === (options.port === undefined)) {
    throw new NbdError('give exactly one of a Unix socket path and a TCP port', {
      rule: 'nbd serve: address',
    });
  }
  let host = options.host ?? '127.0.0.1';
  if (host === 'localhost') host = '127.0.0.1';
  if (options.port !== undefined && !isLoopbackAddress(host)) {
    throw new NbdError(
      `refusing to listen on ${host}: only loopback addresses (127.0.0.0/8, ::1) are allowed`,
      {
        rule: 'nbd serve: loopback only',
      },
    );
  }
  if (
    options.port !== undefined &&
    !(Number.isInteger(options.port) && options.port >= 0 && options.port < 65536)
  ) {
    throw new NbdError(`port ${options.port} must be an integer in 0..65535`, { rule: 'nbd serve: port' });
  }
  if (options.socket !== undefined) await clearStaleSocket(options.socket);

  const exp = await NbdExport.open(options);
  const log = options.log ?? (() => {});
  const started = performance.now();
  const stats = emptyStats(exp.stats());
  const conns = new Set<NbdConnection>();
  let nextId = 1;
  let onAllDone: (() => void) | undefined;
  const ctx: ServerCtx = {
    exp,
    stats,
    shuttingDown: false,
    graceMs: options.shutdownGraceMs ?? 2000,
    log,
    count(table, key) {
      table[key] = (table[key] ?? 0) + 1;
    },
    onDone(c) {
      conns.delete(c);
      if (conns.size === 0) onAllDone?.();
    },
  };
  exp.onInternalError = (e) => {
    ctx.count(stats.errors, 'internal');
    log(`nbd: internal error: ${(e as Error).stack ?? String(e)}`);
  };
  const maxConns = options.maxConnections ?? 64;

  const zeroCopy = options.zeroCopy ?? true;
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => {
    stats.connections.accepted++;
    const remote = sock.remoteAddress;
    if (ctx.shuttingDown || conns.size >= maxConns || (remote !== undefined && !isLoopbackAddress(remote))) {
      stats.connections.refused++;
      sock.destroy();
      return;
    }
    if (options.port !== undefined) sock.setNoDelay(true); // kept by the handle if adopted
    const c = new NbdConnection(ctx, sock, nextId++, zeroCopy);
    conns.add(c);
    if (conns.size > stats.connections.maxConcurrent) stats.connections.maxConcurrent = conns.size;
    log(`nbd[${c.id}]: connected${remote === undefined ? '' : ` from ${remote}`}`);
  });

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        resolve();
      };
      if (options.socket !== undefined) server.listen(options.socket, done);
      else server.listen(options.port, host, done);
    });
  } catch (e) {
    exp.close(); // stops the device thread too
    throw e;
  }
  server.on('error', (e) => log(`nbd: server error: ${e.message}`));

  let address: NbdAddress;
  let uri: string;
  if (options.socket !== undefined) {
    address = { kind: 'unix', path: options.socket };
    uri = `nbd+unix:///?socket=${options.socket}`;
  } else {
    const a = server.address();
    const port = typeof a === 'object' && a !== null ? a.port : options.port!;
    address = { kind: 'tcp', host, port };
    uri = `nbd://${host.includes(':') ? `[${host}]` : host}:${port}/`;
  }

  const snapshot = (): NbdServerStats => {
    stats.uptimeMs = Math.round(performance.now() - started);
    stats.device = exp.stats();
    stats.connections.open = conns.size;
    return structuredClone(stats);
  };

  let closing: Promise<NbdServerStats> | undefined;
  const close = (): Promise<NbdServerStats> => {
    closing ??= (async () => {
      ctx.shuttingDown = true;
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      const allDone = new Promise<void>((resolve) => {
        onAllDone = resolve;
        if (conns.size === 0) resolve();
      });
      for (const c of conns) c.shutdown();
      await allDone;
      await serverClosed;
      if (options.socket !== undefined) {
        try {
          if (existsSync(options.socket) && lstatSync(options.socket).isSocket()) unlinkSync(options.socket);
        } catch {
          // already gone
        }
      }
      exp.close();
      return snapshot();
    })();
    return closing;
  };

  return { address, uri, export: exp, stats: snapshot, close };
}
