import { describe, expect, it } from 'vitest';
import { PACK_MAX, ReplyBatch, SLAB_BYTES } from '../src/nbd/nbd-reply-batch.js';

/** Packs `n` bytes of value `v`; returns the slab they went to. */
function pack(b: ReplyBatch, n: number, v: number): Buffer {
  const at = b.reserve(n);
  b.buf.fill(v, at, at + n);
  return b.buf;
}

/** A sink that records each write and completes it when told. */
function recorder() {
  const writes: Array<{ bytes: Uint8Array; copy: Buffer; done: () => void }> = [];
  const sink = (bytes: Uint8Array, written: () => void) => {
    writes.push({ bytes, copy: Buffer.from(bytes), done: written });
  };
  return { writes, sink };
}

describe('ReplyBatch', () => {
  it('packs replies side by side and hands them to the socket as one write, in order', () => {
    const { writes, sink } = recorder();
    const b = new ReplyBatch(sink);
    pack(b, 16, 1);
    pack(b, 4096, 2);
    pack(b, 16, 3);
    expect(b.packedBytes).toBe(16 + 4096 + 16);
    expect(writes).toHaveLength(0);
    b.flush();
    expect(b.packedBytes).toBe(0);
    expect(writes).toHaveLength(1);
    const w = writes[0]!.copy;
    expect(w.length).toBe(16 + 4096 + 16);
    expect(w[0]).toBe(1);
    expect(w[16]).toBe(2);
    expect(w[16 + 4095]).toBe(2);
    expect(w[16 + 4096]).toBe(3);
    b.flush(); // nothing packed: no empty write
    expect(writes).toHaveLength(1);
  });

  it('writes what it holds before switching to a fresh slab when a reply does not fit', () => {
    const { writes, sink } = recorder();
    const b = new ReplyBatch(sink);
    const n = Math.floor(SLAB_BYTES / PACK_MAX);
    for (let i = 0; i < n; i++) pack(b, PACK_MAX, i);
    expect(writes).toHaveLength(0);
    pack(b, PACK_MAX, 0xee); // one more than fits
    expect(writes).toHaveLength(1);
    expect(writes[0]!.bytes.length).toBe(n * PACK_MAX);
    b.flush();
    expect(writes).toHaveLength(2);
    expect(writes[1]!.copy.every((x) => x === 0xee)).toBe(true);
    // the first slab's bytes are still intact: its write has not completed
    expect(Buffer.from(writes[0]!.bytes).equals(writes[0]!.copy)).toBe(true);
  });

  it('reuses a slab only after every write from it completed, so steady traffic allocates nothing', () => {
    const { writes, sink } = recorder();
    const b = new ReplyBatch(sink);
    const slabs = new Set<ArrayBufferLike>();
    const fillSlab = (v: number) => {
      for (let i = 0; i < SLAB_BYTES / PACK_MAX; i++) {
        slabs.add(pack(b, PACK_MAX, v).buffer);
      }
    };
    fillSlab(1); // slab A
    fillSlab(2); // A written (in flight), slab B
    expect(slabs.size).toBe(2);
    fillSlab(3); // B written; A still in flight: a third slab
    expect(slabs.size).toBe(3);
    const inFlightA = writes[0]!;
    expect(Buffer.from(inFlightA.bytes).equals(inFlightA.copy)).toBe(true);
    // complete every write: the retired slabs become spares and are reused from now on
    const completeAll = () => {
      while (writes.length > 0) writes.shift()!.done();
    };
    completeAll();
    for (let k = 0; k < 20; k++) {
      fillSlab(10 + k);
      completeAll();
    }
    expect(slabs.size).toBe(3);
  });
});
