import { PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import type { BufferPages } from '../src/nbd/nbd-device.js';
import { NbdBufferPool, PIECE_CACHE_BYTES } from '../src/nbd/nbd-export-buffers.js';

/** Pages from a counter; `limit` blocks at most out at once. */
function pages(limit = Number.POSITIVE_INFINITY) {
  let next = PAGE_SIZE;
  const out = new Map<number, number>();
  const p: BufferPages & { out: Map<number, number>; allocs: number } = {
    out,
    allocs: 0,
    allocPages(order) {
      if (out.size >= limit) return 0;
      const phys = next;
      next += PAGE_SIZE << order;
      out.set(phys, order);
      p.allocs++;
      return phys;
    },
    freePages(phys, order) {
      expect(out.get(phys)).toBe(order);
      out.delete(phys);
    },
  };
  return p;
}

describe('NbdBufferPool piece cache', () => {
  it('reuses the block of a freed contiguous piece of the same order', () => {
    const mp = pages();
    const pool = new NbdBufferPool(mp, 'contiguous', 2 ** 25, (fn) => fn());
    const a = pool.allocPiece(3 * PAGE_SIZE)!;
    pool.freePiece(a);
    expect(pool.liveBufs).toBe(0);
    expect(pool.cachedBytes).toBe(4 * PAGE_SIZE);
    const b = pool.allocPiece(4 * PAGE_SIZE)!;
    expect(b.segs).toEqual([{ phys: a.segs[0]!.phys, len: 4 * PAGE_SIZE }]);
    expect(mp.allocs).toBe(1);
    expect(pool.cachedBytes).toBe(0);
    pool.freePiece(b);
    pool.drainCache();
    expect(mp.out.size).toBe(0);
  });

  it('keeps at most PIECE_CACHE_BYTES and gives blocks back when the machine runs short', () => {
    const mp = pages(PIECE_CACHE_BYTES / (64 * 1024) + 1);
    const pool = new NbdBufferPool(mp, 'contiguous', 2 ** 25, (fn) => fn());
    const held = [];
    for (let i = 0; i <= PIECE_CACHE_BYTES / (64 * 1024); i++) held.push(pool.allocPiece(64 * 1024)!);
    for (const p of held) pool.freePiece(p);
    expect(pool.cachedBytes).toBe(PIECE_CACHE_BYTES);
    expect(mp.out.size).toBe(PIECE_CACHE_BYTES / (64 * 1024));
    // another order: the machine is out of blocks, so the kept ones go back first
    mp.out.set(1, 0); // one more block out: at the limit
    const big = pool.allocPiece(128 * 1024);
    expect(big).toBeDefined();
    expect(pool.cachedBytes).toBe(0);
  });

  it('does not keep scattered pages', () => {
    const mp = pages();
    const pool = new NbdBufferPool(mp, 'scattered', 2 ** 25, (fn) => fn());
    pool.freePiece(pool.allocPiece(2 * PAGE_SIZE)!);
    expect(pool.cachedBytes).toBe(0);
    expect(mp.out.size).toBe(0);
  });
});

describe('NbdBufferPool pieces kept with their blocks', () => {
  it('hands a freed contiguous piece to the next piece of its order with none of its old state', () => {
    const mp = pages();
    const pool = new NbdBufferPool(mp, 'contiguous', 2 ** 25, (fn) => fn());
    const a = pool.allocPiece(3 * PAGE_SIZE)!;
    const other = pool.allocPiece(PAGE_SIZE)!;
    const owner = { pieceDone: () => {} };
    a.owner = owner;
    a.next = other;
    const oldSeg = a.segs[0]!;
    pool.freePiece(a);
    expect(a.live).toBe(false);
    const b = pool.allocPiece(4 * PAGE_SIZE)!;
    expect(b).toBe(a); // the same object, as the kernel reuses per-tag request state
    expect(b.live).toBe(true);
    expect(b.owner).toBeUndefined();
    expect(b.next).toBeUndefined();
    expect(b.bytes).toBe(4 * PAGE_SIZE);
    expect(b.segs).toEqual([{ phys: oldSeg.phys, len: 4 * PAGE_SIZE }]);
    expect(oldSeg.len).toBe(3 * PAGE_SIZE); // a segment handed out before is never changed
    expect(pool.liveBufs).toBe(2);
    pool.freePiece(b);
    pool.freePiece(other);
    pool.drainCache();
    expect(mp.out.size).toBe(0);
  });

  it('refuses to free a piece twice, kept or not, so its pages are never handed out twice', () => {
    for (const layout of ['contiguous', 'scattered'] as const) {
      const mp = pages();
      const pool = new NbdBufferPool(mp, layout, 2 ** 25, (fn) => fn());
      const a = pool.allocPiece(2 * PAGE_SIZE)!;
      pool.freePiece(a);
      expect(() => pool.freePiece(a)).toThrow(/freed twice/);
      expect(pool.liveBufs).toBe(0);
      const b = pool.allocPiece(2 * PAGE_SIZE)!;
      const c = pool.allocPiece(2 * PAGE_SIZE)!;
      expect(c).not.toBe(b);
      expect(c.segs[0]!.phys).not.toBe(b.segs[0]!.phys);
      pool.freePiece(b);
      pool.freePiece(c);
      pool.drainCache();
      expect(mp.out.size).toBe(0);
    }
  });

  it("runs a piece's completion once per block request: a second completion throws", () => {
    const pool = new NbdBufferPool(pages(), 'contiguous', 2 ** 25, (fn) => fn());
    const p = pool.allocPiece(PAGE_SIZE)!;
    const seen: number[] = [];
    p.owner = { pieceDone: (q, status) => seen.push(q === p ? status : -1) };
    p.endIo(7);
    expect(seen).toEqual([7]);
    expect(p.owner).toBeUndefined();
    expect(() => p.endIo(0)).toThrow(/no block request in flight/);
    expect(seen).toEqual([7]);
  });
});
