/**
 * What the connections of one NBD server share: the export, the counters, the log, the timers
 * and the server's own state (accepting or shutting down), plus the server's counter types. No
 * kernel counterpart (the server side of `drivers/block/nbd.c`'s peer).
 */
import type { NbdExport } from './nbd-export.js';
import type { NbdExportStats } from './nbd-export-options.js';

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
    /** Connections dropped for not finishing the handshake within the handshake limit. */
    handshakeTimeouts: number;
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
  /** Bytes of successful commands (payloads; the ranges of trims and zero writes). */
  bytes: { read: number; written: number; trimmed: number; zeroed: number };
  /**
   * NBD_CMD_WRITE_ZEROES by how it was done: bytes deallocated (a hole was allowed), bytes
   * written from the zero page (NBD_CMD_FLAG_NO_HOLE), and requests refused with NBD_ENOTSUP
   * (NBD_CMD_FLAG_FAST_ZERO with NO_HOLE: writing zeroes is not faster than NBD_CMD_WRITE).
   */
  zeroes: { deallocated: number; written: number; fastRefused: number };
  /** NBD_CMD_BLOCK_STATUS replies sent, the descriptors in them, and the bytes they described. */
  blockStatus: { replies: number; descriptors: number; bytes: number };
  /** Most commands in flight on one connection. */
  maxInFlight: number;
  /** The device side. */
  device: NbdExportStats;
}

/** A one-shot timer: the server's clock, injectable so that tests drive time themselves. */
export interface NbdTimers {
  /** Runs `fn` after `ms` milliseconds; the handle goes to `clear`. Must not keep the process alive. */
  set(fn: () => void, ms: number): unknown;
  /** Cancels a timer that has not run (no effect once it has). */
  clear(handle: unknown): void;
}

/** Node's timers, unreferenced (a pending timeout does not keep the process alive). */
export const nodeTimers: NbdTimers = {
  set(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clear(handle) {
    clearTimeout(handle as NodeJS.Timeout);
  },
};

/** State shared by the connections of one server. */
export interface ServerCtx {
  readonly exp: NbdExport;
  readonly stats: NbdServerStats;
  /** The server no longer takes options or requests (set once by `close`). */
  shuttingDown: boolean;
  /** How long a client gets to close after the server ends the connection (ms). */
  readonly graceMs: number;
  /** How long a client may take from connecting to the transmission phase (ms; 0 = no limit). */
  readonly handshakeLimitMs: number;
  /** Serve reads only: NBD_FLAG_READ_ONLY, and EPERM on every command that would change data. */
  readonly readOnly: boolean;
  readonly timers: NbdTimers;
  readonly log: (line: string) => void;
  count(table: Record<string, number>, key: string): void;
  /** The connection with this id is closed and nothing of it is in flight. */
  onDone(id: number): void;
}

/**
 * `s` made safe to print on one log line: control characters (newlines, escape sequences, C1
 * controls, bidirectional overrides) become `\xNN`/`\uNNNN`, and anything past `max` characters
 * is cut and marked. For client-supplied text (export names) logged with `-v`.
 */
export function printable(s: string, max = 256): string {
  const cut = s.length > max ? s.slice(0, max) : s;
  let out = '';
  for (const ch of cut) {
    const code = ch.codePointAt(0)!;
    const control =
      code < 0x20 ||
      (code >= 0x7f && code <= 0x9f) ||
      code === 0x2028 ||
      code === 0x2029 ||
      (code >= 0x202a && code <= 0x202e) ||
      (code >= 0x2066 && code <= 0x2069);
    if (ch === '\\') out += '\\\\';
    else if (!control) out += ch;
    else if (code < 0x100) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += `\\u${code.toString(16).padStart(4, '0')}`;
  }
  return s.length > max ? `${out}…(${s.length} chars)` : out;
}
