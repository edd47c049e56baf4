/**
 * Reads of an accepted socket into buffers the reader picks, read by read: Node's `onread` socket
 * option (`new net.Socket({ onread: { buffer, callback } })`), where `buffer` may be a function
 * called after every delivery to give the buffer of the next read. With it a server receives a
 * write payload straight into the pages that will be DMA-mapped, as a real server's `recv` into
 * its pinned I/O buffer does, and reads everything else into one reused buffer: no allocation and
 * no copy per read. No kernel counterpart.
 *
 * `net.Server` offers no `onread` for the sockets it accepts, so `adoptSocket` moves the accepted
 * socket's handle into a new `Socket` built with the option (the `handle` constructor option,
 * which Node itself uses for sockets passed between processes). The server must accept with
 * `pauseOnConnect: true`, so nothing is read before the handle moves.
 */
import { Socket } from 'node:net';

/** The reader of an adopted socket. */
export interface SocketReader {
  /** The buffer the next read fills (called once at adoption, then after every delivery). */
  nextBuffer(): Uint8Array;
  /** `n` bytes arrived at the start of `buf`, the buffer `nextBuffer` returned last. */
  onRead(n: number, buf: Uint8Array): void;
}

interface HandleOwner {
  _handle: { readStart?: unknown } | null;
}

/** True if `raw` still has the handle `adoptSocket` needs (a connected socket of `net.Server`). */
export function canAdopt(raw: Socket): boolean {
  const h = (raw as unknown as HandleOwner)._handle;
  return h !== null && typeof h === 'object' && typeof h.readStart === 'function';
}

/**
 * A socket on `raw`'s connection whose reads go where `reader` says. `raw` (accepted paused)
 * gives up its handle and is destroyed when the new socket closes, so the server's connection
 * count stays right. Throws if `raw` has no handle (check `canAdopt` first).
 */
export function adoptSocket(raw: Socket, reader: SocketReader, allowHalfOpen: boolean): Socket {
  if (!canAdopt(raw)) throw new Error('adoptSocket: the socket has no handle to adopt');
  const owner = raw as unknown as HandleOwner;
  const handle = owner._handle;
  owner._handle = null;
  const sock = new Socket({
    handle,
    allowHalfOpen,
    onread: {
      buffer: () => reader.nextBuffer(),
      callback: (n: number, buf: Uint8Array) => {
        reader.onRead(n, buf);
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
  sock.once('close', () => raw.destroy());
  return sock;
}
