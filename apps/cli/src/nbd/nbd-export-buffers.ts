/**
 * The request buffers of an NBD export: a byte budget that connections reserve before they take a
 * request's data (first come first served, so large requests do not starve), and the pages of the
 * machine that hold one piece of a request, laid out as one block or as single pages none adjacent.
 * Kernel counterpart: none as source; the buffers stand for the memory a user-space server on Linux
 * reads into and writes from with O_DIRECT (`block/fops.c`), whose pages the NVMe driver
 * (`drivers/nvme/host/pci.c`) DMA-maps, and the budget for the bound such a server (qemu-nbd,
 * nbdkit) keeps on it.
 */
import type { IoSegment } from '@iovalink/blk-mq';
import { PAGE_SIZE } from '@iovalink/iommu';
import type { BufferPages } from './nbd-device.js';

/** Pages of one piece: the caller buffer and how to free it. */
export interface PieceBuf {
  segs: IoSegment[];
  /** [phys, order] pairs to free. */
  allocs: number[];
  bytes: number;
}

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
    const pages = Math.ceil(bytes / PAGE_SIZE);
    const mp = this.#pages;
    const allocs: number[] = [];
    const segs: IoSegment[] = [];
    if (this.#layout === 'contiguous') {
      const order = Math.ceil(Math.log2(pages));
      const phys = mp.allocPages(order);
      if (phys === 0) return undefined;
      allocs.push(phys, order);
      segs.push({ phys, len: bytes });
    } else {
      // a page, then a hole kept until the piece is complete, so no two of its pages are adjacent
      const holes: number[] = [];
      let left = bytes;
      let ok = true;
      for (let p = 0; p < pages && ok; p++) {
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
    }
    this.#liveBufs++;
    return { segs, allocs, bytes };
  }

  /** Frees a piece's pages. */
  freePiece(p: PieceBuf): void {
    const mp = this.#pages;
    for (let i = 0; i < p.allocs.length; i += 2) mp.freePages(p.allocs[i]!, p.allocs[i + 1]!);
    this.#liveBufs--;
  }
}
