// Shared helpers for blk-mq tests: a bare request queue with a recording driver, the two-step
// DMA walk of a request, aligned page blocks, and byte patterns.
import { type Device, DmaIovaState } from '@iovalink/dma-api';
import type { Machine } from '@iovalink/iommu';
import { blkMqAllocQueue, blkMqAllocTagSet } from '../src/blk-mq.js';
import { BlkDmaIter, blkRqDmaMapIterNext, blkRqDmaMapIterStart } from '../src/blk-mq-dma.js';
import { QueueLimits } from '../src/blk-settings.js';
import { BLK_STS_OK } from '../src/blk-status.js';
import { type BlkMqQueueData, BlkMqTagSet, type Request, type RequestQueue } from '../src/blkdev.js';

/** A queue whose driver only records what it is given (requests stay in flight until ended). */
export function makeQueue(
  machine: Machine,
  limits: Partial<QueueLimits> = {},
  depth = 16,
): { q: RequestQueue; queued: Request[] } {
  const queued: Request[] = [];
  const set = new BlkMqTagSet(machine, {
    ops: {
      queueRq: (_h, bd: BlkMqQueueData) => {
        queued.push(bd.rq);
        return BLK_STS_OK;
      },
    },
    nrHwQueues: 1,
    queueDepth: depth,
  });
  if (blkMqAllocTagSet(set) !== 0) throw new Error('tag set');
  return { q: blkMqAllocQueue(set, QueueLimits.of(limits)), queued };
}

/** Maps a request with the two-step iterator to the end; returns the state, the iterator and every `[addr, len]` segment. */
export function dmaMapAll(
  rq: Request,
  dev: Device,
): { state: DmaIovaState; iter: BlkDmaIter; segs: Array<[number, number]> } {
  const state = new DmaIovaState();
  const iter = new BlkDmaIter();
  const segs: Array<[number, number]> = [];
  let ok = blkRqDmaMapIterStart(rq, dev, state, iter);
  while (ok) {
    segs.push([iter.addr, iter.len]);
    ok = blkRqDmaMapIterNext(rq, dev, state, iter);
  }
  return { state, iter, segs };
}

/** A physically contiguous, naturally aligned block of 2^order pages. */
export function alignedBlock(machine: Machine, order: number): number {
  const p = machine.pages.allocPages(order);
  if (p === 0) throw new Error('out of memory');
  return p;
}

/** Deterministic bytes. */
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (seed * 29 + i * 13 + (i >> 10)) & 0xff;
  return out;
}

/** Fast byte-array equality (vitest's deep equality is slow on megabytes). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  );
}
