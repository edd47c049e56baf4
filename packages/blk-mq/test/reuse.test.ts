// Objects the model keeps and hands out again instead of allocating per I/O, as the kernel's
// mempools, on-stack structures and completion queue slots are reused: each must come back
// with none of its previous user's state, and a late use of a freed one must not pass silently.
import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { BlockDevice, IoBuffer } from '../src/bdev.js';
import {
  BIO_CHAIN,
  BIO_CLONED,
  BIO_META_KIND,
  BIO_STRUCT_SIZE,
  BIO_VEC_SIZE,
  type Bio,
  bioAddPage,
  bioAlloc,
  bioEndio,
  bioPut,
  bioReuse,
  REQ_OP_READ,
  REQ_OP_WRITE,
} from '../src/bio.js';
import {
  blkFinishPlug,
  blkMqAllocDisk,
  blkMqAllocTagSet,
  blkMqEndRequest,
  blkMqStartRequest,
  blkStartPlug,
  blkStartPlugOn,
  submitBio,
} from '../src/blk-mq.js';
import { QueueLimits } from '../src/blk-settings.js';
import { BLK_STS_INVAL, BLK_STS_IOERR, BLK_STS_OK, type BlkStatus } from '../src/blk-status.js';
import { type BlkMqQueueData, BlkMqTagSet, type Request, setCapacity } from '../src/blkdev.js';
import { NVME_CMD_WRITE, NvmeCommand, type NvmeCompletion } from '../src/nvme.js';
import { allocIoBuffer, createNullBlkRig, createNvmeRig } from '../src/testing/index.js';
import { pattern, sameBytes } from './helpers.js';

/** What the driver saw of one bio when its request was queued. */
interface SeenBio {
  bio: Bio;
  vcnt: number;
  flags: number;
  status: BlkStatus;
  sector: number;
  size: number;
  idx: number;
  done: number;
  firstPage: number;
}

/** Wraps a tag set's `queueRq` to record every bio of every request it is given, split fronts aside. */
function spyBios(set: BlkMqTagSet): SeenBio[] {
  const seen: SeenBio[] = [];
  const ops = set.ops as { queueRq: (h: never, bd: BlkMqQueueData) => BlkStatus };
  const orig = ops.queueRq;
  ops.queueRq = (h, bd) => {
    for (let b = bd.rq.bio; b !== null; b = b.biNext) {
      if ((b.biFlags & BIO_CLONED) !== 0) continue;
      seen.push({
        bio: b,
        vcnt: b.biVcnt,
        flags: b.biFlags,
        status: b.biStatus,
        sector: b.biIter.biSector,
        size: b.biIter.biSize,
        idx: b.biIter.biIdx,
        done: b.biIter.biBvecDone,
        firstPage: b.biIoVec[b.biIter.biIdx]?.page ?? 0,
      });
    }
    return orig(h, bd);
  };
  return seen;
}

describe('BlockDevice: a finished I/O and its bio serve the next I/O (blkdev_dio from its bio_set)', () => {
  it('the reused bio carries nothing of the I/O before; failures do not stick; the ledger balances', () => {
    const r = createNullBlkRig({ queueDepth: 1 });
    const m = r.machine;
    const seen = spyBios(r.nullb.tagSet);
    const bio0 = m.counters.meta.get(BIO_META_KIND)?.allocs ?? 0;
    const results: BlkStatus[] = [];
    const run = (op: 'read' | 'write', sector: number, buf: IoBuffer) => {
      r.bdev.submit(op, sector, buf, (x) => results.push(x.status));
      r.bdev.drain();
    };
    // 300 scattered pages: the dio's own bio (256 bvecs) and one more
    const big = allocIoBuffer(m, 300 * 4096, 'scattered');
    const bigData = pattern(300 * 4096, 3);
    big.buf.write(m, bigData);
    run('write', 0, big.buf);
    expect(r.bdev.stats.bios).toBe(2);
    // the queue limits split both: what reaches the driver last of each is the bio itself
    expect(seen.map((x) => x.vcnt)).toEqual([256, 44]);
    const first = seen[0]!;
    // a one-page write next: the same bio object, with one bvec and a fresh iterator
    const small = allocIoBuffer(m, 4096, 'contiguous');
    small.buf.write(m, pattern(4096, 9));
    seen.length = 0;
    run('write', 8192, small.buf);
    expect(seen).toHaveLength(1);
    const again = seen[0]!;
    expect(again.bio).toBe(first.bio);
    expect(again).toMatchObject({ vcnt: 1, flags: 0, status: BLK_STS_OK, sector: 8192, size: 4096 });
    expect(again).toMatchObject({ idx: 0, done: 0, firstPage: small.buf.segments[0]!.phys });
    // an I/O the block layer fails (past the end of the disk), then one that must succeed
    run('read', r.bdev.capacity - 4, small.buf);
    run('read', 8192, small.buf);
    expect(results).toEqual([BLK_STS_OK, BLK_STS_OK, BLK_STS_IOERR, BLK_STS_OK]);
    expect(sameBytes(small.buf.read(m), pattern(4096, 9))).toBe(true);
    // a misaligned I/O fails before any bio is built; the next one is whole
    r.bdev.submit('write', 1, new IoBuffer([{ phys: small.buf.segments[0]!.phys, len: 100 }]), (x) =>
      results.push(x.status),
    );
    const back = allocIoBuffer(m, 300 * 4096, 'contiguous');
    run('read', 0, back.buf);
    expect(results.slice(4)).toEqual([BLK_STS_INVAL, BLK_STS_OK]);
    expect(sameBytes(back.buf.read(m), bigData)).toBe(true);
    // every bio built (and every split front) was counted once and freed once
    const stat = m.counters.meta.get(BIO_META_KIND)!;
    expect(stat.allocs - bio0).toBe(r.bdev.stats.bios + r.nullb.queue.stats.splits);
    expect(stat.frees).toBe(stat.allocs);
    expect(stat.liveBytes).toBe(0);
    big.free();
    small.free();
    back.free();
    r.teardown();
  });

  it('a bio completed again after its I/O finished throws instead of ending a later I/O', () => {
    const m = createTestMachine();
    const held: Request[] = [];
    const set = new BlkMqTagSet(m, {
      ops: {
        queueRq: (_h, bd) => {
          blkMqStartRequest(bd.rq);
          held.push(bd.rq);
          return BLK_STS_OK;
        },
      },
      nrHwQueues: 1,
      queueDepth: 4,
    });
    expect(blkMqAllocTagSet(set)).toBe(0);
    const disk = blkMqAllocDisk(set, QueueLimits.of({}), null, 'held0');
    setCapacity(disk, 1 << 20);
    const bdev = new BlockDevice(disk);
    const page = m.pages.allocPages(0);
    const done: BlkStatus[] = [];
    bdev.submit('write', 0, new IoBuffer([{ phys: page, len: 4096 }]), (x) => done.push(x.status));
    const rq = held[0]!;
    const bio = rq.bio!;
    blkMqEndRequest(rq, BLK_STS_OK);
    expect(done).toEqual([BLK_STS_OK]);
    expect(() => bioEndio(bio)).toThrow(/completed after its I\/O had finished/);
    expect(done).toEqual([BLK_STS_OK]);
  });

  it('completions that submit again from inside the dispatch (inline null_blk, two tags) all land', () => {
    // irqmode none completes inside queueRq: the completion starts the next I/O while the plug
    // of the one before is still being flushed, and waiting bios are dispatched from inside
    // queueRq; each level must keep its own plug, batch and queue data.
    const r = createNullBlkRig({ nullb: { irqmode: 'none', hwQueueDepth: 2 }, queueDepth: 5 });
    const m = r.machine;
    const ops = r.nullb.tagSet.ops as { queueRq: (h: never, bd: BlkMqQueueData) => BlkStatus };
    const orig = ops.queueRq;
    let nested = 0;
    let depth = 0;
    ops.queueRq = (h, bd) => {
      const rq = bd.rq;
      const last = bd.last;
      if (depth > 0) nested++;
      depth++;
      const ret = orig(h, bd);
      depth--;
      expect(bd.rq).toBe(rq);
      expect(bd.last).toBe(last);
      return ret;
    };
    const n = 24;
    const bufs = Array.from({ length: n }, (_, i) =>
      allocIoBuffer(m, 8192, i % 2 ? 'scattered' : 'contiguous'),
    );
    for (let i = 0; i < n; i++) bufs[i]!.buf.write(m, pattern(8192, i));
    const statuses: BlkStatus[] = [];
    let next = 0;
    const submitNext = () => {
      const i = next++;
      if (i >= n) return;
      r.bdev.submit('write', i * 16, bufs[i]!.buf, (x) => {
        statuses.push(x.status);
        submitNext();
      });
    };
    for (let k = 0; k < 5; k++) submitNext();
    r.bdev.drain();
    expect(statuses).toEqual(new Array(n).fill(BLK_STS_OK));
    expect(nested).toBeGreaterThan(0);
    for (let i = 0; i < n; i++) {
      const back = allocIoBuffer(m, 8192, 'contiguous');
      r.bdev.submit('read', i * 16, back.buf, () => {});
      r.bdev.drain();
      expect(sameBytes(back.buf.read(m), pattern(8192, i))).toBe(true);
      back.free();
    }
    for (const b of bufs) b.free();
    r.teardown();
  });
});

describe('bioReuse (bio_alloc_bioset from a mempool, then bio_init)', () => {
  it('refuses a bio that was not put, and resets every field of one that was', () => {
    const m = createTestMachine();
    const bio = bioAlloc(m, 4, REQ_OP_WRITE);
    expect(bioAddPage(bio, 0x10000, 4096, 0)).toBe(4096);
    expect(bioAddPage(bio, 0x30000, 512, 512)).toBe(512);
    bio.biIter.biSector = 77;
    bio.biStatus = BLK_STS_IOERR;
    bio.biFlags |= BIO_CHAIN;
    bio.remaining = 3;
    bio.biBvecGapBit = 10;
    bio.biEndIo = () => {};
    bio.biPrivate = {};
    expect(() => bioReuse(bio, m, 4, REQ_OP_READ)).toThrow(/still in use/);
    const slot0 = bio.biIoVec[0]!;
    bioPut(bio);
    const before = { ...m.counters.meta.get(BIO_META_KIND)! };
    expect(() => bioReuse(bio, m, 257, REQ_OP_READ)).toThrow(/257 vecs/);
    expect(bioReuse(bio, m, 2, REQ_OP_READ)).toBe(bio);
    expect(bio).toMatchObject({
      biNext: null,
      biOpf: REQ_OP_READ,
      biFlags: 0,
      biStatus: BLK_STS_OK,
      biVcnt: 0,
      biMaxVecs: 2,
      biEndIo: null,
      biPrivate: null,
      biBvecGapBit: 0,
      remaining: 1,
      metaBytes: BIO_STRUCT_SIZE + 2 * BIO_VEC_SIZE,
      biPool: m,
    });
    expect({ ...bio.biIter }).toEqual({ biSector: 0, biSize: 0, biIdx: 0, biBvecDone: 0 });
    const after = m.counters.meta.get(BIO_META_KIND)!;
    expect(after.allocs - before.allocs).toBe(1);
    expect(after.liveBytes - before.liveBytes).toBe(BIO_STRUCT_SIZE + 2 * BIO_VEC_SIZE);
    // the table's slots are refilled in place, and only up to the new capacity
    expect(bioAddPage(bio, 0x50000, 1024, 0)).toBe(1024);
    expect(bio.biIoVec[0]).toBe(slot0);
    expect({ ...slot0 }).toEqual({ page: 0x50000, len: 1024, offset: 0 });
    expect(bioAddPage(bio, 0x70000, 1024, 0)).toBe(1024);
    expect(bioAddPage(bio, 0x90000, 1024, 0)).toBe(0);
    expect(bio.biIter.biSize).toBe(2048);
    bioPut(bio);
    expect(m.counters.meta.get(BIO_META_KIND)!.liveBytes).toBe(0);
  });
});

describe('blkStartPlugOn (blk_start_plug on a kept plug)', () => {
  it('refuses a plug that still holds requests, and starts a finished one afresh', () => {
    const m = createTestMachine();
    const queued: Request[] = [];
    const set = new BlkMqTagSet(m, {
      ops: {
        queueRq: (_h, bd) => {
          queued.push(bd.rq);
          return BLK_STS_OK;
        },
      },
      nrHwQueues: 1,
      queueDepth: 4,
    });
    expect(blkMqAllocTagSet(set)).toBe(0);
    const disk = blkMqAllocDisk(set, QueueLimits.of({}), null, 'plug0');
    setCapacity(disk, 1 << 20);
    const plug = blkStartPlug();
    const bio = bioAlloc(m, 1, REQ_OP_WRITE);
    bioAddPage(bio, m.pages.allocPages(0), 4096, 0);
    submitBio(disk, bio, plug);
    expect(plug.mqList).toHaveLength(1);
    expect(() => blkStartPlugOn(plug)).toThrow(/still holds 1 request/);
    blkFinishPlug(plug);
    expect(queued).toHaveLength(1);
    plug.multipleQueues = true;
    expect(blkStartPlugOn(plug)).toBe(plug);
    expect(plug.multipleQueues).toBe(false);
    expect(plug.mqList).toHaveLength(0);
  });
});

describe('NvmeHw completion entries and data ranges (kept by the controller)', () => {
  it('reuses its completion entries: each interrupt sees its own command, none is lost', () => {
    const r = createNvmeRig({ kind: 'strict' });
    const hw = r.nvme.hw;
    const driverIrq = hw.irq;
    const got: Array<[number, number]> = [];
    const entries = new Set<NvmeCompletion>();
    hw.irq = (cqe) => {
      got.push([cqe.sqId, cqe.commandId]);
      entries.add(cqe);
    };
    const sent: Array<[number, number]> = [];
    for (let round = 0; round < 3; round++) {
      for (let k = 0; k < 5; k++) {
        const cmd = new NvmeCommand();
        cmd.opcode = 0; // flush: no data
        cmd.commandId = round * 100 + k;
        hw.submit(1 + (k % 2), cmd);
        sent.push([1 + (k % 2), cmd.commandId]);
      }
      r.machine.clock.advance(hw.latencyNs);
    }
    expect(got).toEqual(sent);
    // five in flight at most: the later rounds used the first round's entries
    expect(entries.size).toBe(5);
    hw.irq = driverIrq;
    r.teardown();
  });

  it('reads and writes through more ranges than the range buffer first holds', async () => {
    // no IOMMU and no opt-size clamp: 256 scattered pages are 256 PRP ranges in one command
    const r = createNvmeRig({ kind: 'none', nvme: { clampToOptMappingSize: false } });
    const m = r.machine;
    const bytes = 256 * 4096;
    const src = allocIoBuffer(m, bytes, 'scattered', 512);
    const dst = allocIoBuffer(m, bytes, 'scattered');
    const data = pattern(bytes, 5);
    src.buf.write(m, data);
    const ranges0 = r.nvme.hw.stats.dataRanges;
    expect((await r.bdev.write(64, src.buf)).status).toBe(BLK_STS_OK);
    expect(r.nvme.hw.stats.dataRanges - ranges0).toBeGreaterThan(64);
    expect((await r.bdev.read(64, dst.buf)).status).toBe(BLK_STS_OK);
    expect(sameBytes(dst.buf.read(m), data)).toBe(true);
    // the public face still appends to the caller's array
    const cmd = new NvmeCommand();
    cmd.opcode = NVME_CMD_WRITE;
    cmd.prp1 = 0x1000;
    const out = [7, 7];
    expect(r.nvme.hw.dataRanges(cmd, 4096, out)).toBe(0);
    expect(out).toEqual([7, 7, 0x1000, 4096]);
    src.free();
    dst.free();
    r.teardown();
  });
});
