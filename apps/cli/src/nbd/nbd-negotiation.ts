/**
 * The handshake of an NBD connection: client flags, then options until one enters the
 * transmission phase (§ "Newstyle negotiation", § "Option types"): NBD_OPT_GO, INFO, LIST, ABORT,
 * EXPORT_NAME, STRUCTURED_REPLY, and LIST_META_CONTEXT / SET_META_CONTEXT for the one metadata
 * context offered, `base:allocation` (§ "Metadata contexts"); every other option is answered
 * NBD_REP_ERR_UNSUP. No kernel counterpart (the peer of the handshake `nbd-client` does before
 * `NBD_SET_SOCK`).
 *
 * Metadata context queries: `base:allocation` selects it; `base:` (and, for LIST, no query at all)
 * lists it; every other query, of any namespace, matches nothing and is ignored (§
 * `NBD_OPT_LIST_META_CONTEXT`: unknown namespaces MUST be ignored). SET requires structured
 * replies first (NBD_REP_ERR_INVALID otherwise); LIST is answered without them (the protocol lets a
 * server refuse it; qemu-nbd 7.2 answers it too). An unknown export is NBD_REP_ERR_UNKNOWN, and SET
 * replaces the selection even when it fails.
 *
 * Bad input: unknown options → NBD_REP_ERR_UNSUP; malformed known options → NBD_REP_ERR_INVALID;
 * metadata context data over 64 KiB → NBD_REP_ERR_TOO_BIG (read and dropped).
 * Unknown client flags, a missing IHAVEOPT magic, an unknown export with NBD_OPT_EXPORT_NAME (which
 * has no error reply) and an option length over 32 MiB (qemu-nbd's `nbd_negotiate_options` rule:
 * no option needs more, and reading it would only feed a denial of service) disconnect.
 */
import type { InputQueue } from './input-queue.js';
import type { ServerCtx } from './nbd-context.js';
import { printable } from './nbd-context.js';
import {
  NBD_CLIENT_FLAGS_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_MAX_STRING,
  NBD_META_BASE_ALLOCATION,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_HEADER_SIZE,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  nbdOptName,
} from './nbd-proto.js';
import { decodeString } from './nbd-proto-fields.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeRepMetaContext,
  encodeRepServer,
} from './nbd-proto-handshake.js';
import type { ReplyWriter } from './nbd-replies.js';

/** Longest NBD_OPT_INFO/GO data: name length, a 4096-byte name, count, 65535 info types. */
const MAX_INFO_DATA = 4 + NBD_MAX_STRING + 2 + 2 * 0xffff;
/** Longest NBD_OPT_LIST/SET_META_CONTEXT data received (longer is read, dropped, NBD_REP_ERR_TOO_BIG). */
const MAX_META_DATA = 64 * 1024;
/** The id `base:allocation` gets from NBD_OPT_SET_META_CONTEXT (any value is allowed; not 0, which LIST uses). */
export const ALLOCATION_CONTEXT_ID = 1;
/** Longest option data accepted at all (qemu-nbd's NBD_MAX_BUFFER_SIZE); longer disconnects. */
export const MAX_OPTION_LENGTH = 32 * 2 ** 20;

/** What the handshake parser expects next. */
const Expect = {
  clientFlags: 'clientFlags',
  optionHeader: 'optionHeader',
  /** The current option's data, received whole (options whose data we use). */
  optionData: 'optionData',
  /** The current option's data, read and dropped (options whose data we do not need). */
  optionSkip: 'optionSkip',
} as const;
type Expect = (typeof Expect)[keyof typeof Expect];

/** What the connection does for the handshake. */
export interface NegotiationHost {
  /** NBD_OPT_GO or NBD_OPT_EXPORT_NAME succeeded: the transmission phase begins. */
  enterTransmission(): void;
  /** A protocol violation: a hard disconnect. */
  violation(why: string): void;
  /** The client ended the session (NBD_OPT_ABORT, acknowledged). */
  clientAborted(): void;
}

/** The handshake of one connection. */
export class Negotiation {
  readonly #ctx: ServerCtx;
  readonly #out: ReplyWriter;
  readonly #host: NegotiationHost;
  #expect: Expect = Expect.clientFlags;
  /** The client asked for no 124 zero bytes after NBD_OPT_EXPORT_NAME's reply. */
  #noZeroes = false;
  /** The current option, its data length, and the data bytes still to come. */
  #option = 0;
  #optionLength = 0;
  #optionLeft = 0;

  constructor(ctx: ServerCtx, out: ReplyWriter, host: NegotiationHost) {
    this.#ctx = ctx;
    this.#out = out;
    this.#host = host;
  }

  /** True between the start and the end of a message. */
  get midMessage(): boolean {
    return this.#expect !== Expect.clientFlags && this.#expect !== Expect.optionHeader;
  }

  /** Where the parser is (for logs). */
  get expecting(): string {
    return this.#expect;
  }

  /** Parses what it can of `q`; false when it needs more input first. */
  step(q: InputQueue): boolean {
    switch (this.#expect) {
      case Expect.clientFlags: {
        if (q.length < NBD_CLIENT_FLAGS_SIZE) return false;
        const f = q.take(4).readUInt32BE(0);
        // § "Client flags": the server MUST drop the connection on unknown flags
        if ((f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
          this.#host.violation(`unknown client flags 0x${f.toString(16)}`);
          return true;
        }
        this.#noZeroes = (f & NBD_FLAG_C_NO_ZEROES) !== 0;
        this.#expect = Expect.optionHeader;
        return true;
      }
      case Expect.optionHeader: {
        if (q.length < NBD_OPT_HEADER_SIZE) return false;
        const h = decodeOptionHeader(q.take(NBD_OPT_HEADER_SIZE));
        if (h === undefined) {
          this.#host.violation('option without the IHAVEOPT magic');
          return true;
        }
        const stats = this.#ctx.stats;
        this.#ctx.count(stats.options, h.option <= NBD_OPT_EXTENDED_HEADERS ? nbdOptName(h.option) : 'other');
        if (h.length > MAX_OPTION_LENGTH) {
          this.#host.violation(`option length ${h.length} over ${MAX_OPTION_LENGTH}`);
          return true;
        }
        this.#option = h.option;
        this.#optionLength = h.length;
        this.#optionLeft = h.length;
        const isInfo = h.option === NBD_OPT_INFO || h.option === NBD_OPT_GO;
        const isMeta = h.option === NBD_OPT_LIST_META_CONTEXT || h.option === NBD_OPT_SET_META_CONTEXT;
        const buffered =
          (isInfo && h.length <= MAX_INFO_DATA) ||
          (isMeta && h.length <= MAX_META_DATA) ||
          (h.option === NBD_OPT_EXPORT_NAME && h.length <= NBD_MAX_STRING);
        this.#expect = buffered ? Expect.optionData : Expect.optionSkip;
        return true;
      }
      case Expect.optionData: {
        if (q.length < this.#optionLeft) return false;
        const data = q.take(this.#optionLeft);
        this.#optionLeft = 0;
        this.#expect = Expect.optionHeader;
        this.#handle(data);
        return true;
      }
      case Expect.optionSkip: {
        this.#optionLeft -= q.discard(this.#optionLeft);
        if (this.#optionLeft > 0) return false;
        this.#expect = Expect.optionHeader;
        this.#handle(undefined);
        return true;
      }
    }
  }

  /** The transmission flags of the export (§ "Transmission flags"). */
  transmissionFlags(): number {
    // CAN_MULTI_CONN: one device and one cache behind every connection.
    let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
    if (this.#out.structured) f |= NBD_FLAG_SEND_DF;
    // Read-only: the commands that change data are not advertised (as qemu-nbd -r does); a client
    // that sends them anyway gets NBD_EPERM.
    if (this.#ctx.readOnly) f |= NBD_FLAG_READ_ONLY;
    else f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    return f;
  }

  /** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT (`data` undefined: over MAX_META_DATA). */
  #metaContext(opt: number, data: Buffer | undefined): void {
    const set = opt === NBD_OPT_SET_META_CONTEXT;
    // § NBD_OPT_SET_META_CONTEXT: the new selection replaces the old one, even when this fails
    if (set) this.#out.allocationContext = 0;
    if (data === undefined) {
      this.#error(NBD_REP_ERR_TOO_BIG, `${nbdOptName(opt)} data over ${MAX_META_DATA} bytes`);
      return;
    }
    const req = decodeMetaContextRequest(data);
    if (req === undefined) {
      this.#error(NBD_REP_ERR_INVALID, `malformed ${nbdOptName(opt)} data`);
      return;
    }
    if (set && !this.#out.structured) {
      this.#error(NBD_REP_ERR_INVALID, `${nbdOptName(opt)} needs structured replies first`);
      return;
    }
    if (!this.#ctx.exp.matches(req.name)) {
      this.#error(NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
      return;
    }
    const matches = (q: string) => q === NBD_META_BASE_ALLOCATION || (!set && q === 'base:');
    if (set ? req.queries.some(matches) : req.queries.length === 0 || req.queries.some(matches)) {
      const id = set ? ALLOCATION_CONTEXT_ID : 0; // LIST: the id is reserved, SHOULD be zero
      this.#reply(NBD_REP_META_CONTEXT, encodeRepMetaContext(id, NBD_META_BASE_ALLOCATION));
      if (set) this.#out.allocationContext = ALLOCATION_CONTEXT_ID;
    }
    this.#reply(NBD_REP_ACK);
  }

  #reply(type: number, data?: Uint8Array): void {
    this.#out.option(this.#option, type, data);
  }

  #error(type: number, message: string): void {
    this.#out.optionError(this.#option, type, message);
  }

  /** Handles the current option; `data` is undefined when its data was skipped (too long or not needed). */
  #handle(data: Buffer | undefined): void {
    const exp = this.#ctx.exp;
    const opt = this.#option;
    if (this.#ctx.shuttingDown && opt !== NBD_OPT_ABORT) {
      if (opt === NBD_OPT_EXPORT_NAME)
        this.#host.violation('shutting down (NBD_OPT_EXPORT_NAME cannot fail)');
      else this.#error(NBD_REP_ERR_SHUTDOWN, 'the server is shutting down');
      return;
    }
    switch (opt) {
      case NBD_OPT_EXPORT_NAME: {
        // No error reply is possible: an unknown export ends the session (§ NBD_OPT_EXPORT_NAME).
        const name = data === undefined ? undefined : decodeString(data);
        if (name === undefined || !exp.matches(name)) {
          this.#host.violation(`unknown export "${name === undefined ? '?' : printable(name)}"`);
          return;
        }
        this.#out.send(encodeExportNameReply(exp.size, this.transmissionFlags(), this.#noZeroes));
        this.#host.enterTransmission();
        return;
      }
      case NBD_OPT_ABORT:
        // § NBD_OPT_ABORT: the server MUST reply NBD_REP_ACK (data is ignored); the client then closes.
        this.#reply(NBD_REP_ACK);
        this.#host.clientAborted();
        return;
      case NBD_OPT_LIST:
        if (this.#optionLength !== 0) {
          this.#error(NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return;
        }
        this.#reply(NBD_REP_SERVER, encodeRepServer(exp.name, exp.description));
        this.#reply(NBD_REP_ACK);
        return;
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        const req = data === undefined ? undefined : decodeInfoRequest(data);
        if (req === undefined) {
          this.#error(NBD_REP_ERR_INVALID, `malformed ${nbdOptName(opt)} data`);
          return;
        }
        if (!exp.matches(req.name)) {
          this.#ctx.log(`nbd: ${nbdOptName(opt)} for unknown export "${printable(req.name)}"`);
          this.#error(NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
          return;
        }
        this.#reply(NBD_REP_INFO, encodeInfoExport(exp.size, this.transmissionFlags()));
        // Sent even when not requested (allowed: § NBD_OPT_INFO), as our minimum block size is not 1.
        this.#reply(
          NBD_REP_INFO,
          encodeInfoBlockSize(exp.minBlockSize, exp.preferredBlockSize, exp.maxBlockSize),
        );
        if (req.requests.includes(NBD_INFO_NAME))
          this.#reply(NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, exp.name));
        if (req.requests.includes(NBD_INFO_DESCRIPTION)) {
          this.#reply(NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, exp.description));
        }
        this.#reply(NBD_REP_ACK);
        if (opt === NBD_OPT_GO) this.#host.enterTransmission();
        return;
      }
      case NBD_OPT_STRUCTURED_REPLY:
        if (this.#optionLength !== 0) {
          this.#error(NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          return;
        }
        if (this.#out.structured) {
          this.#error(NBD_REP_ERR_INVALID, 'structured replies already negotiated');
          return;
        }
        this.#out.structured = true;
        this.#reply(NBD_REP_ACK);
        return;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.#metaContext(opt, data);
        return;
      default:
        // STARTTLS (NOTLS mode may answer UNSUP), extended headers, unknown.
        this.#error(NBD_REP_ERR_UNSUP, `${nbdOptName(opt)} is not supported`);
        return;
    }
  }
}
