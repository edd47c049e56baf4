/**
 * A minimal NBD client over a Unix socket or TCP: the fixed newstyle handshake step by step (so a
 * test can send any option, well-formed or not) and pipelined transmission requests matched to
 * simple or structured replies by handle, block status included. For tests and tools; not a full
 * client (no TLS). Protocol: `doc/proto.md` of the NetworkBlockDevice project. Kernel counterpart:
 * the client of `drivers/block/nbd.c` (its handshake lives in user space, `nbd-client`).
 *
 * `NbdClient` is about 360 lines because it is one connection: the handshake steps and the
 * pipelined requests read the same socket through the same buffer and reply matcher.
 */
import { connect, type Socket } from 'node:net';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdError,
} from './nbd-proto.js';
import { readU16, readU32, readU64 } from './nbd-proto-fields.js';
import {
  decodeOptionReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  type OptionReply,
} from './nbd-proto-handshake.js';
import { encodeRequest } from './nbd-proto-transmission.js';

/** Where to connect. */
export type NbdClientAddress = { path: string } | { host: string; port: number };

/** The outcome of one transmission request. */
export interface NbdReply {
  /** 0 or the NBD error value. */
  error: number;
  /** Read data (zero-filled where the server sent holes); empty for other commands. */
  data: Buffer;
  /** Structured chunks received (0 for a simple reply). */
  chunks: number;
  /** Error message of a structured error chunk. */
  message?: string;
  /** NBD_REPLY_TYPE_BLOCK_STATUS chunks: context id and `(length, flags)` descriptor pairs. */
  status?: Array<{ id: number; desc: number[] }>;
}

/** A metadata context the server named in an NBD_REP_META_CONTEXT reply. */
export interface NbdMetaContext {
  id: number;
  name: string;
}

/** What NBD_OPT_GO told about the export. */
export interface NbdExportInfo {
  /** Export size in bytes (NBD_INFO_EXPORT). */
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  /** Block size constraints, when the server sent NBD_INFO_BLOCK_SIZE. */
  blockSize?: { min: number; preferred: number; max: number };
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  data: Buffer | undefined;
  chunks: number;
  error: number;
  message: string | undefined;
  status: Array<{ id: number; desc: number[] }> | undefined;
  resolve: (r: NbdReply) => void;
  reject: (e: Error) => void;
}

/** A client connection. */
export class NbdClient {
  /** The connection (tests may write raw bytes or destroy it). */
  readonly socket: Socket;
  #buf: Buffer = Buffer.alloc(0);
  /** Chunks received after `#buf`, joined to it only once `#need` bytes are there (no O(n²) copying). */
  #later: Buffer[] = [];
  #laterBytes = 0;
  /** Bytes the parser waits for (0: any). */
  #need = 0;
  #waiter: (() => void) | undefined;
  #ended = false;
  #error: Error | undefined;
  #transmission = false;
  #structured = false;
  readonly #pending = new Map<number, Pending>();
  #nextHandle = 1;
  /** Resolves when the server has closed the connection. */
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.#ended = true;
        this.#failPending(new NbdError('connection closed', { rule: 'nbd client: closed' }));
        this.#wake();
        resolve();
      }),
    );
    socket.on('data', (b: Buffer) => {
      this.#later.push(b);
      this.#laterBytes += b.length;
      if (this.#buf.length + this.#laterBytes < this.#need) return;
      this.#buf =
        this.#buf.length === 0 && this.#later.length === 1 ? b : Buffer.concat([this.#buf, ...this.#later]);
      this.#later = [];
      this.#laterBytes = 0;
      this.#need = 0;
      if (this.#transmission) this.#parseReplies();
      this.#wake();
    });
    socket.on('end', () => {
      this.#ended = true;
      this.#failPending(new NbdError('server closed the connection', { rule: 'nbd client: eof' }));
      this.#wake();
    });
    socket.on('error', (e) => {
      this.#error = e;
      this.#failPending(e);
      this.#wake();
    });
  }

  /** Connects and resolves once the socket is open (the greeting is not read yet). */
  static connect(addr: NbdClientAddress): Promise<NbdClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in addr ? connect(addr.path) : connect(addr.port, addr.host);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new NbdClient(s));
      });
      s.once('error', reject);
    });
  }

  /** Connects, performs the handshake and NBD_OPT_GO (optionally structured replies first). */
  static async open(
    addr: NbdClientAddress,
    o: { structured?: boolean; name?: string; meta?: readonly string[] } = {},
  ): Promise<{ client: NbdClient; info: NbdExportInfo; contexts: NbdMetaContext[] }> {
    const c = await NbdClient.connect(addr);
    await c.greeting();
    c.sendClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (o.structured) {
      const r = await c.option(NBD_OPT_STRUCTURED_REPLY);
      if (r.at(-1)?.type !== NBD_REP_ACK)
        throw new NbdError('structured replies refused', { rule: 'nbd client' });
      c.setStructured(true);
    }
    const contexts = o.meta === undefined ? [] : await c.setMetaContext(o.name ?? '', o.meta);
    const info = await c.go(o.name ?? '', [NBD_INFO_BLOCK_SIZE]);
    return { client: c, info, contexts };
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** Sends raw bytes. */
  send(b: Uint8Array): void {
    this.socket.write(b);
  }

  /** Reads exactly `n` bytes (handshake phase); rejects if the server closes first. */
  async readExactly(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      this.#need = n;
      if (this.#ended || this.#error !== undefined) {
        throw (
          this.#error ??
          new NbdError(`server closed the connection (wanted ${n} bytes)`, { rule: 'nbd client: eof' })
        );
      }
      await new Promise<void>((r) => {
        this.#waiter = r;
      });
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Reads the 18-byte greeting; returns the handshake flags (throws on a bad magic). */
  async greeting(): Promise<number> {
    const g = await this.readExactly(18);
    if (g.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT')
      throw new NbdError('bad greeting', { rule: 'nbd client' });
    return readU16(g, 16);
  }

  /** Sends the 32-bit client flags. */
  sendClientFlags(flags: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags >>> 0);
    this.send(b);
  }

  /** Reads one option reply. */
  async readOptionReply(): Promise<OptionReply> {
    const h = await this.readExactly(20);
    const len = readU32(h, 16);
    const data = await this.readExactly(len);
    const d = decodeOptionReply(Buffer.concat([h, data]));
    return d!.reply;
  }

  /** Sends an option and reads replies up to the final one (NBD_REP_ACK or an error). */
  async option(opt: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.send(encodeOption(opt, data));
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === NBD_REP_ACK || r.type >= NBD_REP_FLAG_ERROR) return out;
    }
  }

  /**
   * NBD_OPT_SET_META_CONTEXT (or, with `list`, NBD_OPT_LIST_META_CONTEXT): the contexts the server
   * named; throws when the final reply is an error (its type is in the message).
   */
  async setMetaContext(name: string, queries: readonly string[], list = false): Promise<NbdMetaContext[]> {
    const opt = list ? NBD_OPT_LIST_META_CONTEXT : NBD_OPT_SET_META_CONTEXT;
    const replies = await this.option(opt, encodeMetaContextRequest(name, queries));
    const last = replies.at(-1)!;
    if (last.type !== NBD_REP_ACK) {
      throw new NbdError(`meta context option failed: reply type 0x${last.type.toString(16)}`, {
        rule: 'nbd client: meta context',
      });
    }
    return replies
      .filter((r) => r.type === NBD_REP_META_CONTEXT)
      .map((r) => ({ id: readU32(r.data, 0), name: Buffer.from(r.data).toString('utf8', 4) }));
  }

  /** NBD_OPT_GO; on success enters transmission and returns the export's size, flags and block sizes. */
  async go(name = '', infos: readonly number[] = []): Promise<NbdExportInfo> {
    const replies = await this.option(NBD_OPT_GO, encodeInfoRequest(name, infos));
    const last = replies.at(-1)!;
    if (last.type !== NBD_REP_ACK) {
      throw new NbdError(`NBD_OPT_GO failed: reply type 0x${last.type.toString(16)}`, {
        rule: 'nbd client: go',
      });
    }
    const info = parseInfoReplies(replies);
    this.enterTransmission(this.#structured);
    return info;
  }

  /** Marks structured replies as negotiated (call after an NBD_REP_ACK to NBD_OPT_STRUCTURED_REPLY). */
  setStructured(on: boolean): void {
    this.#structured = on;
  }

  /** Switches to transmission: replies are parsed and matched to requests from now on. */
  enterTransmission(structured = this.#structured): void {
    this.#structured = structured;
    this.#transmission = true;
    this.#parseReplies();
  }

  /** Sends one request (with its write payload) and resolves with its reply. */
  request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Uint8Array,
  ): Promise<NbdReply> {
    const handle = this.#nextHandle++;
    const p = new Promise<NbdReply>((resolve, reject) => {
      this.#pending.set(handle, {
        type,
        offset,
        length,
        data: undefined,
        chunks: 0,
        error: 0,
        message: undefined,
        status: undefined,
        resolve,
        reject,
      });
    });
    const hdr = encodeRequest(type, flags, 0x1234_5678, handle, offset, length);
    this.send(payload === undefined ? hdr : Buffer.concat([hdr, payload]));
    if (this.#ended || this.#error !== undefined)
      this.#failPending(new NbdError('closed', { rule: 'nbd client' }));
    return p;
  }

  /** NBD_CMD_READ. */
  read(offset: number, length: number, flags = 0): Promise<NbdReply> {
    return this.request(NBD_CMD_READ, flags, offset, length);
  }

  /** NBD_CMD_WRITE (with NBD_CMD_FLAG_FUA when `fua`). */
  write(offset: number, data: Uint8Array, fua = false): Promise<NbdReply> {
    return this.request(NBD_CMD_WRITE, fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, data);
  }

  /** NBD_CMD_FLUSH. */
  flush(): Promise<NbdReply> {
    return this.request(NBD_CMD_FLUSH, 0, 0, 0);
  }

  /** NBD_CMD_TRIM. */
  trim(offset: number, length: number): Promise<NbdReply> {
    return this.request(NBD_CMD_TRIM, 0, offset, length);
  }

  /** NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_* `flags` (NO_HOLE, FAST_ZERO, FUA). */
  writeZeroes(offset: number, length: number, flags = 0): Promise<NbdReply> {
    return this.request(NBD_CMD_WRITE_ZEROES, flags, offset, length);
  }

  /** NBD_CMD_BLOCK_STATUS (flags: NBD_CMD_FLAG_REQ_ONE); the descriptors are in `status`. */
  blockStatus(offset: number, length: number, flags = 0): Promise<NbdReply> {
    return this.request(NBD_CMD_BLOCK_STATUS, flags, offset, length);
  }

  /** NBD_CMD_DISC, then waits for the server to close. */
  async disconnect(): Promise<void> {
    this.send(encodeRequest(NBD_CMD_DISC, 0, 0, 0, 0, 0));
    this.socket.end();
    await this.closed;
  }

  /** Requests sent and not yet answered. */
  get pending(): number {
    return this.#pending.size;
  }

  #failPending(e: Error): void {
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }

  #parseReplies(): void {
    for (;;) {
      const b = this.#buf;
      if (b.length < 4) return;
      const magic = readU32(b, 0);
      if (magic === NBD_SIMPLE_REPLY_MAGIC) {
        if (b.length < 16) return;
        const handle = readU32(b, 12);
        const p = this.#pending.get(handle);
        if (p === undefined) {
          this.#protocolError(`simple reply for unknown handle ${handle}`);
          return;
        }
        const error = readU32(b, 4);
        const dataLen = p.type === NBD_CMD_READ && error === 0 ? p.length : 0;
        if (b.length < 16 + dataLen) {
          this.#need = 16 + dataLen;
          return;
        }
        this.#buf = b.subarray(16 + dataLen);
        this.#pending.delete(handle);
        p.resolve({ error, data: Buffer.from(b.subarray(16, 16 + dataLen)), chunks: 0 });
      } else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
        if (b.length < 20) return;
        const len = readU32(b, 16);
        if (b.length < 20 + len) {
          this.#need = 20 + len;
          return;
        }
        const flags = readU16(b, 4);
        const type = readU16(b, 6);
        const handle = readU32(b, 12);
        const p = this.#pending.get(handle);
        if (p === undefined) {
          this.#protocolError(`structured reply for unknown handle ${handle}`);
          return;
        }
        const payload = b.subarray(20, 20 + len);
        this.#buf = b.subarray(20 + len);
        p.chunks++;
        if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
          const off = readU64(payload, 0);
          p.data ??= Buffer.alloc(p.length);
          payload.copy(p.data, off - p.offset, 8);
        } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
          p.data ??= Buffer.alloc(p.length);
        } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
          const desc: number[] = [];
          for (let i = 4; i + 4 <= payload.length; i += 4) desc.push(readU32(payload, i));
          p.status ??= [];
          p.status.push({ id: readU32(payload, 0), desc });
        } else if ((type & NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
          p.error = readU32(payload, 0);
          const ml = readU16(payload, 4);
          p.message = payload.toString('utf8', 6, 6 + ml);
        }
        if ((flags & NBD_REPLY_FLAG_DONE) !== 0) {
          this.#pending.delete(handle);
          const data =
            p.error === 0 && p.type === NBD_CMD_READ ? (p.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
          p.resolve({
            error: p.error,
            data,
            chunks: p.chunks,
            ...(p.message === undefined ? {} : { message: p.message }),
            ...(p.status === undefined ? {} : { status: p.status }),
          });
        }
      } else {
        this.#protocolError(`bad reply magic 0x${magic.toString(16)}`);
        return;
      }
    }
  }

  #protocolError(why: string): void {
    this.#error = new NbdError(why, { rule: 'nbd client: protocol' });
    this.#failPending(this.#error);
    this.socket.destroy();
  }

  /** Closes the socket without a protocol-level goodbye. */
  destroy(): void {
    this.socket.destroy();
  }
}

/** Extracts NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE from NBD_REP_INFO replies. */
export function parseInfoReplies(replies: readonly OptionReply[]): NbdExportInfo {
  const info: NbdExportInfo = { size: -1, flags: 0 };
  for (const r of replies) {
    if (r.type !== NBD_REP_INFO || r.data.length < 2) continue;
    const t = readU16(r.data, 0);
    if (t === NBD_INFO_EXPORT && r.data.length === 12) {
      info.size = readU64(r.data, 2);
      info.flags = readU16(r.data, 10);
    } else if (t === NBD_INFO_BLOCK_SIZE && r.data.length === 14) {
      info.blockSize = { min: readU32(r.data, 2), preferred: readU32(r.data, 6), max: readU32(r.data, 10) };
    }
  }
  return info;
}
