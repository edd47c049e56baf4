/**
 * The NBD server's listener: accepts connections on a Unix socket or loopback TCP only, refuses
 * them beyond `maxConnections`, hands each to an `NbdConnection` (`nbd-connection.ts`) on the
 * one shared export (`nbd-export.ts`), and on `close` shuts everything down in order. Protocol:
 * `doc/proto.md` of the NetworkBlockDevice project. Kernel counterpart: none on the server side;
 * the Linux client is `drivers/block/nbd.c`.
 *
 * The server is split by protocol phase: `input-queue.ts` (received bytes), `nbd-negotiation.ts`
 * (the handshake), `nbd-transmission.ts` (commands), `nbd-replies.ts` (the output side),
 * `nbd-flow-control.ts` (queue depth, buffer budget, unread replies), `nbd-connection.ts` (the
 * socket and the lifecycle) and this file (listening, limits, counters, shutdown).
 *
 * Limits against clients that hold resources without using them, as qemu-nbd has them
 * (CVE-2024-7409): a client must reach the transmission phase within `handshakeLimitMs` (default
 * 10 s, qemu-nbd's `--handshake-limit` default) and at most `maxConnections` (default 64) are open
 * at once (qemu-nbd: `--shared`, default 1). Each connection holds at most `queueDepth` commands
 * and 48 MiB of replies its client has not read; the export's buffer budget bounds the request
 * data of all connections together.
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, isIP, type Server } from 'node:net';
import { NbdConnection } from './nbd-connection.js';
import { type NbdServerStats, type NbdTimers, nodeTimers, printable, type ServerCtx } from './nbd-context.js';
import { NbdExport } from './nbd-export.js';
import type { NbdExportOptions, NbdExportStats } from './nbd-export-options.js';
import { NbdError } from './nbd-proto.js';

export type { NbdServerStats, NbdTimers } from './nbd-context.js';

/** Options of `startNbdServer`: where to listen, plus the export's options. */
export interface NbdServerOptions extends NbdExportOptions {
  /** Listen on this Unix socket path (exclusive with `port`). */
  socket?: string;
  /** Listen on this loopback TCP port (0 = any free port). */
  port?: number;
  /** Loopback address for `port` (default 127.0.0.1; other hosts are refused). */
  host?: string;
  /**
   * How long a client gets to disconnect once the server has ended its connection, or once the
   * server is shutting down and the connection has nothing in flight (default 2 s). Commands in
   * flight are always waited for.
   */
  shutdownGraceMs?: number;
  /** Concurrent connections at most; more are refused (default 64). */
  maxConnections?: number;
  /**
   * Milliseconds a client may take from connecting to the transmission phase before it is
   * dropped (default 10 000, qemu-nbd's default; 0 = no limit).
   */
  handshakeLimitMs?: number;
  /** Serve reads only: NBD_FLAG_READ_ONLY, and NBD_EPERM on WRITE and TRIM (default false). */
  readOnly?: boolean;
  /** The clock of the time limits (default Node's timers; tests pass one they drive). */
  timers?: NbdTimers;
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

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses. */
export function isLoopbackAddress(addr: string): boolean {
  const a = addr.startsWith('::ffff:') ? addr.slice(7) : addr;
  if (isIP(a) === 4) return a.startsWith('127.');
  return a === '::1' || a === '0:0:0:0:0:0:0:1';
}

/** Defaults of the limits (see the header). */
export const DEFAULT_MAX_CONNECTIONS = 64;
export const DEFAULT_HANDSHAKE_LIMIT_MS = 10_000;
export const DEFAULT_GRACE_MS = 2000;

/** Throws `NbdError` unless `value` (when given) is a safe integer of at least `min`. */
function checkLimit(name: string, value: number | undefined, min: number): void {
  if (value === undefined || (Number.isSafeInteger(value) && value >= min)) return;
  throw new NbdError(`${name} must be an integer of at least ${min}, got ${value}`, {
    rule: `nbd serve: ${name}`,
  });
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
      handshakeTimeouts: 0,
      aborted: 0,
      open: 0,
      maxConcurrent: 0,
    },
    options: {},
    commands: {},
    errors: {},
    bytes: { read: 0, written: 0, trimmed: 0, zeroed: 0 },
    zeroes: { deallocated: 0, written: 0, fastRefused: 0 },
    blockStatus: { replies: 0, descriptors: 0, bytes: 0 },
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
  checkLimit('maxConnections', options.maxConnections, 1);
  checkLimit('handshakeLimitMs', options.handshakeLimitMs, 0);
  checkLimit('shutdownGraceMs', options.shutdownGraceMs, 0);
  if (options.socket !== undefined) await clearStaleSocket(options.socket);

  const exp = await NbdExport.open(options);
  const log = options.log ?? (() => {});
  const started = performance.now();
  const stats = emptyStats(exp.stats());
  const conns = new Map<number, NbdConnection>();
  let nextId = 1;
  let onAllDone: (() => void) | undefined;
  const ctx: ServerCtx = {
    exp,
    stats,
    shuttingDown: false,
    graceMs: options.shutdownGraceMs ?? DEFAULT_GRACE_MS,
    handshakeLimitMs: options.handshakeLimitMs ?? DEFAULT_HANDSHAKE_LIMIT_MS,
    readOnly: options.readOnly ?? false,
    timers: options.timers ?? nodeTimers,
    log,
    count(table, key) {
      table[key] = (table[key] ?? 0) + 1;
    },
    onDone(id) {
      conns.delete(id);
      if (conns.size === 0) onAllDone?.();
    },
  };
  exp.onInternalError = (e) => {
    ctx.count(stats.errors, 'internal');
    log(`nbd: internal error: ${(e as Error).stack ?? String(e)}`);
  };
  const maxConns = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;

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
    conns.set(c.id, c);
    if (conns.size > stats.connections.maxConcurrent) stats.connections.maxConcurrent = conns.size;
    log(`nbd[${c.id}]: connected${remote === undefined ? '' : ` from ${printable(remote)}`}`);
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
      for (const c of conns.values()) c.shutdown();
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
