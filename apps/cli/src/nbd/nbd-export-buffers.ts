/**
 * The request buffers of an NBD export: a byte budget that connections reserve before they take a
 * request's data (first come first served, so large requests do not starve), and the pages of the
 * machine that hold one piece of a request, laid out as one block or as single pages none adjacent.
 * Freed contiguous pieces are kept, block and all, for the next piece of their size (at most
 * `PIECE_CACHE_BYTES`), as a server keeps its pinned I/O buffers instead of asking the kernel for
 * pages per request; a piece carries its own completion, so a block request allocates none.
 * Kernel counterpart: none as source; the buffers stand for the memory a user-space server on Linux
 * reads into and writes from with O_DIRECT (`block/fops.c`), whose pages the NVMe driver
 * (`drivers/nvme/host/pci.c`) DMA-maps, and the budget for the bound such a server (qemu-nbd,
 * nbdkit) keeps on it.
 */
import type { IoSegment } from '@iovalink/blk-mq';
import { PAGE_SIZE } from '@iovalink/iommu';
import type { BufferPages } from './nbd-device.js';
import { NbdError } from './nbd-proto.js';

/** The operation a piece's block request belongs to, told when it completes. */
export interface PieceOwner {
  /** The block request on `p` completed with `status` (a `BLK_STS_*`). */
  pieceDone(p: PieceBuf, status: number): void;
}

/**
 * Pages of one piece: the caller buffer and how to free it, and the state of its block request.
 * A contiguous piece's object stays with its block while the block is kept for reuse, so the
 * common piece costs no allocation (as a kernel driver keeps per-request state with its tag).
 */
export class PieceBuf {
  segs: IoSegment[];
  /** [phys, order] pairs to free. */
  readonly allocs: number[];
  bytes: number;
  /** The operation whose block request is on the piece (set at submission, cleared at completion). */
  owner: PieceOwner | undefined = undefined;
  /** The next piece of the same operation, in order (the operation's list). */
  next: PieceBuf | undefined = undefined;
  /** Allocated and not yet freed. */
  live = true;
  /** The completion of the piece's block request: hands its status to `owner` (made once per object). */
  readonly endIo = (status: number): void => {
    const o = this.owner;
    if (o === undefined) {
      throw new NbdError('nbd buffers: completion of a piece with no block request in flight', {
        rule: 'nbd buffers: piece completion',
      });
    }
    this.owner = undefined;
    o.pieceDone(this, status);
  };

  constructor(segs: IoSegment[], allocs: number[], bytes: number) {
    this.segs = segs;
    this.allocs = allocs;
    this.bytes = bytes;
  }
}

/**
 * Bytes of freed contiguous blocks an export keeps for reuse; they go back to the machine when it
 * runs short of pages (`allocPiece`) and when the export closes (`drainCache`).
 */
export const PIECE_CACHE_BYTES = 8 * 2 ** 20;

/** The buffer budget of an export and the pages of its pieces. */
export class NbdBufferPool {
  readonly #pages: BufferPages;
  readonly #layout: 'contiguous' | 'scattered';
  readonly #budget: number;
  /** Runs a grant callback, counting and reporting what it throws (the export's guard). */
  readonly #guard: (fn: () => void) => void;
  #reserved = 0;
  #liveBufs = 0;
  readonly #memWaiters: Array<{ bytes: number; granted: () => void }> = [];
  #memoryWaits = 0;
  /** Pieces of freed contiguous blocks by order, reused last in, first out. */
  readonly #cache: PieceBuf[][] = [];
  #cachedBytes = 0;

  constructor(
    pages: BufferPages,
    layout: 'contiguous' | 'scattered',
    budget: number,
    guard: (fn: () => void) => void,
  ) {
    this.#pages = pages;
    this.#layout = layout;
    this.#budget = budget;
    this.#guard = guard;
  }

  /** Bytes of the budget reserved now. */
  get reserved(): number {
    return this.#reserved;
  }

  /** Reservations queued now. */
  get waiting(): number {
    return this.#memWaiters.length;
  }

  /** Times a reservation was queued. */
  get memoryWaits(): number {
    return this.#memoryWaits;
  }

  /** Pieces allocated and not yet freed. */
  get liveBufs(): number {
    return this.#liveBufs;
  }

  /** See `NbdExport.tryReserve`. */
  tryReserve(bytes: number): boolean {
    if (this.#memWaiters.length > 0 || !this.#fits(bytes)) return false;
    this.#reserved += bytes;
    return true;
  }

  /** See `NbdExport.release`. */
  release(bytes: number): void {
    this.#reserved -= bytes;
    while (this.#memWaiters.length > 0 && this.#fits(this.#memWaiters[0]!.bytes)) {
      const w = this.#memWaiters.shift()!;
      this.#reserved += w.bytes;
      this.#guard(w.granted);
    }
  }

  /** See `NbdExport.waitForMemory`. */
  waitForMemory(bytes: number, granted: () => void): () => boolean {
    this.#memoryWaits++;
    const w = { bytes, granted };
    this.#memWaiters.push(w);
    return () => {
      const i = this.#memWaiters.indexOf(w);
      if (i < 0) return false;
      this.#memWaiters.splice(i, 1);
      // the head may have been the one holding the others back
      this.release(0);
      return true;
    };
  }

  #fits(bytes: number): boolean {
    return this.#reserved === 0 || this.#reserved + bytes <= this.#budget;
  }

  /** Pages for a piece of `bytes` in the pool's layout, or `undefined` when the machine has none. */
  allocPiece(bytes: number): PieceBuf | undefined {
    const p = this.#layout === 'contiguous' ? this.#contiguous(bytes) : this.#scattered(bytes);
    if (p !== undefined) this.#liveBufs++;
    return p;
  }

  /** One block: a kept piece of its order (its segment fitted to `bytes`), else a new one. */
  #contiguous(bytes: number): PieceBuf | undefined {
    // the order of the smallest block of at least bytes/PAGE_SIZE pages: ceil(log2(pages))
    const order = 32 - Math.clz32(Math.ceil(bytes / PAGE_SIZE) - 1);
    const c = this.#cache[order];
    if (c !== undefined && c.length > 0) {
      const p = c.pop()!;
      this.#cachedBytes -= PAGE_SIZE << order;
      if (p.bytes !== bytes) {
        p.bytes = bytes;
        p.segs[0] = { phys: p.allocs[0]!, len: bytes };
      }
      p.live = true;
      return p;
    }
    const phys = this.#allocBlock(order);
    if (phys === 0) return undefined;
    return new PieceBuf([{ phys, len: bytes }], [phys, order], bytes);
  }

  /** Single pages, none adjacent: a page, then a hole kept until the piece is complete. */
  #scattered(bytes: number): PieceBuf | undefined {
    const pages = Math.ceil(bytes / PAGE_SIZE);
    const mp = this.#pages;
    const allocs: number[] = [];
    const segs: IoSegment[] = [];
    const holes: number[] = [];
    let left = bytes;
    let ok = true;
    for (let p = 0; p < pages; p++) {
      const phys = mp.allocPages(0);
      const hole = mp.allocPages(0);
      if (hole !== 0) holes.push(hole);
      if (phys === 0) {
        ok = false;
        break;
      }
      allocs.push(phys, 0);
      const n = Math.min(PAGE_SIZE, left);
      segs.push({ phys, len: n });
      left -= n;
    }
    for (const h of holes) mp.freePages(h, 0);
    if (!ok) {
      for (let i = 0; i < allocs.length; i += 2) mp.freePages(allocs[i]!, 0);
      return undefined;
    }
    return new PieceBuf(segs, allocs, bytes);
  }

  /**
   * Frees a piece's pages (a contiguous block is kept, with its piece, for reuse while the cache
   * has room). Freeing a piece twice throws: its pages could otherwise be handed out twice.
   */
  freePiece(p: PieceBuf): void {
    if (!p.live) {
      throw new NbdError('nbd buffers: a piece was freed twice', { rule: 'nbd buffers: double free' });
    }
    p.live = false;
    p.owner = undefined;
    p.next = undefined;
    this.#liveBufs--;
    const a = p.allocs;
    if (this.#layout === 'contiguous' && a.length === 2) {
      const order = a[1]!;
      const bytes = PAGE_SIZE << order;
      if (this.#cachedBytes + bytes <= PIECE_CACHE_BYTES) {
        this.#cachedBytes += bytes;
        let c = this.#cache[order];
        if (c === undefined) {
          c = [];
          this.#cache[order] = c;
        }
        c.push(p);
        return;
      }
    }
    const mp = this.#pages;
    for (let i = 0; i < a.length; i += 2) mp.freePages(a[i]!, a[i + 1]!);
  }

  /** Bytes of freed blocks kept for reuse. */
  get cachedBytes(): number {
    return this.#cachedBytes;
  }

  /** Gives every kept block back to the machine. */
  drainCache(): void {
    const mp = this.#pages;
    for (let order = 0; order < this.#cache.length; order++) {
      const c = this.#cache[order];
      if (c === undefined) continue;
      for (const p of c) mp.freePages(p.allocs[0]!, order);
      c.length = 0;
    }
    this.#cachedBytes = 0;
  }

  /** A block of 2^order pages from the machine (all kept ones are returned first when it has none). */
  #allocBlock(order: number): number {
    const phys = this.#pages.allocPages(order);
    if (phys !== 0 || this.#cachedBytes === 0) return phys;
    this.drainCache();
    return this.#pages.allocPages(order);
  }
}
