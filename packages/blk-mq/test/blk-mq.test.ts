import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { BlockDevice } from '../src/bdev.js';
import { type Bio, bioAddPage, bioAlloc, bioPut, REQ_NOWAIT, REQ_OP_READ, REQ_OP_WRITE } from '../src/bio.js';
import {
  blkFinishPlug,
  blkMqAllocDisk,
  blkMqAllocTagSet,
  blkMqEndRequest,
  blkMqFreeTagSet,
  blkMqStartRequest,
  blkQueueNextEventNs,
  blkStartPlug,
  submitBio,
} from '../src/blk-mq.js';
import { BLK_MQ_NO_TAG, BlkMqTags } from '../src/blk-mq-tag.js';
import { QueueLimits } from '../src/blk-settings.js';
import {
  BLK_STS_AGAIN,
  BLK_STS_OK,
  BLK_STS_RESOURCE,
  blkStatusToErrno,
  blkStatusToStr,
  errnoToBlkStatus,
} from '../src/blk-status.js';
import { BlkMqTagSet, type Request, STAT_WRITE, setCapacity } from '../src/blkdev.js';
import { allocIoBuffer, createNullBlkRig, createNvmeRig } from '../src/testing/index.js';

/** A disk whose driver holds every request until the test ends it, or answers with `answer`. */
function heldDisk(limits: Partial<QueueLimits> = {}, depth = 4, answer = BLK_STS_OK) {
  const m = createTestMachine();
  const held: Request[] = [];
  const set = new BlkMqTagSet(m, {
    ops: {
      queueRq: (_h, bd) => {
        if (answer !== BLK_STS_OK) return answer;
        blkMqStartRequest(bd.rq);
        held.push(bd.rq);
        return BLK_STS_OK;
      },
    },
    nrHwQueues: 1,
    queueDepth: depth,
  });
  expect(blkMqAllocTagSet(set)).toBe(0);
  const disk = blkMqAllocDisk(set, QueueLimits.of(limits), null, 'held0');
  setCapacity(disk, 1 << 20);
  return { m, disk, held, set };
}

function writeBio(
  m: ReturnType<typeof createTestMachine>,
  sector: number,
  phys: number,
  len: number,
  done: number[],
): Bio {
  const bio = bioAlloc(m, 4, REQ_OP_WRITE);
  bio.biIter.biSector = sector;
  bioAddPage(bio, phys - (phys % 4096), len, phys % 4096);
  bio.biEndIo = (b) => {
    done.push(b.biStatus);
    bioPut(b);
  };
  return bio;
}

describe('blk_mq_get_tag', () => {
  it('hands out each tag once and takes it back', () => {
    const t = new BlkMqTags(3);
    expect([t.get(), t.get(), t.get(), t.get()]).toEqual([0, 1, 2, BLK_MQ_NO_TAG]);
    t.put(1);
    expect(t.get()).toBe(1);
    expect(() => t.put(7)).toThrow(/not in use/);
  });
});

describe('blk_attempt_plug_merge', () => {
  it('merges sequential bios under a plug into one request and dispatches at finish', () => {
    const { m, disk, held } = heldDisk({ maxHwSectors: 2048 });
    const done: number[] = [];
    const base = m.pages.allocPages(4);
    const plug = blkStartPlug();
    for (let i = 0; i < 8; i++) submitBio(disk, writeBio(m, i * 8, base + i * 4096, 4096, done), plug);
    expect(held).toHaveLength(0);
    blkFinishPlug(plug);
    expect(held).toHaveLength(1);
    expect([held[0]!.dataLen, held[0]!.nrPhysSegments]).toEqual([32768, 8]);
    expect(disk.stats.merges[STAT_WRITE]).toBe(7);
    blkMqEndRequest(held[0]!, BLK_STS_OK);
    expect(done).toEqual(new Array(8).fill(BLK_STS_OK));
    expect(disk.stats.ios[STAT_WRITE]).toBe(1);
    expect(disk.stats.sectors[STAT_WRITE]).toBe(64);
  });
});

describe('bio_split_to_limits', () => {
  it('splits a bio at max_sectors and completes the original once every part is done', () => {
    const { m, disk, held } = heldDisk({ maxHwSectors: 64 });
    const done: number[] = [];
    const base = m.pages.allocPages(5);
    const bio = bioAlloc(m, 1, REQ_OP_WRITE);
    bioAddPage(bio, base, 100 * 1024, 0);
    bio.biEndIo = (b) => {
      done.push(b.biStatus);
      bioPut(b);
    };
    submitBio(disk, bio);
    expect(held.map((r) => r.dataLen)).toEqual([32768, 32768, 32768, 4096]);
    expect(held.map((r) => r.sector)).toEqual([0, 64, 128, 192]);
    expect(disk.queue.stats.splits).toBe(3);
    for (const r of held.slice(0, 3)) blkMqEndRequest(r, BLK_STS_OK);
    expect(done).toEqual([]);
    blkMqEndRequest(held[3]!, BLK_STS_OK);
    expect(done).toEqual([BLK_STS_OK]);
    expect(m.counters.meta.get('bio')!.liveBytes).toBe(0);
  });
});

describe('blk_mq_submit_bio without a free tag', () => {
  it('waits in arrival order and goes when a tag frees; REQ_NOWAIT fails with BLK_STS_AGAIN', () => {
    const { m, disk, held } = heldDisk({}, 2);
    const done: number[] = [];
    const p = m.pages.allocPages(0);
    for (let i = 0; i < 4; i++) submitBio(disk, writeBio(m, i * 64, p, 4096, done));
    expect(held).toHaveLength(2);
    expect(disk.queue.waiting).toHaveLength(2);
    const nowait = writeBio(m, 999, p, 4096, done);
    nowait.biOpf |= REQ_NOWAIT;
    blkMqEndRequest(held.shift()!, BLK_STS_OK);
    expect(held.map((r) => r.sector)).toEqual([64, 128]);
    blkMqEndRequest(held.shift()!, BLK_STS_OK);
    blkMqEndRequest(held.shift()!, BLK_STS_OK);
    expect(held.map((r) => r.sector)).toEqual([192]);
    submitBio(disk, writeBio(m, 300, p, 4096, done));
    submitBio(disk, nowait);
    expect(done[done.length - 1]).toBe(BLK_STS_AGAIN);
    expect(disk.queue.stats.tagWaits).toBe(2);
  });
});

describe('blk_mq_requeue_request', () => {
  it('retries a BLK_STS_RESOURCE request after the delay, then fails it', () => {
    const { m, disk } = heldDisk({}, 2, BLK_STS_RESOURCE);
    disk.queue.resourceRetries = 2;
    const done: number[] = [];
    submitBio(disk, writeBio(m, 0, m.pages.allocPages(0), 4096, done));
    expect(done).toEqual([]);
    expect(blkQueueNextEventNs(disk.queue)).toBe(3_000_000);
    m.clock.advance(3_000_000);
    m.clock.advance(3_000_000);
    expect(done).toEqual([BLK_STS_RESOURCE]);
    expect(disk.queue.stats.requeued).toBe(2);
  });

  it('blk_mq_free_tag_set refuses while requests are in flight', () => {
    const { m, disk, set, held } = heldDisk();
    submitBio(disk, writeBio(m, 0, m.pages.allocPages(0), 4096, []));
    expect(() => blkMqFreeTagSet(set)).toThrow(/in flight/);
    blkMqEndRequest(held[0]!, BLK_STS_OK);
    blkMqFreeTagSet(set);
  });
});

describe('errno_to_blk_status', () => {
  it('maps errnos as blk-core does', () => {
    expect(errnoToBlkStatus(-12)).toBe(BLK_STS_RESOURCE);
    expect(errnoToBlkStatus(-22)).toBe(19);
    expect(errnoToBlkStatus(-5)).toBe(10);
    expect(errnoToBlkStatus(-9999)).toBe(10);
    expect(blkStatusToErrno(BLK_STS_AGAIN)).toBe(-11);
    expect(blkStatusToStr(BLK_STS_RESOURCE)).toBe('kernel resource');
  });
});

describe('BlockDevice', () => {
  it('keeps at most queueDepth I/Os in flight and accounts them', async () => {
    const r = createNvmeRig({ kind: 'lazy', queueDepth: 3 });
    const bufs = Array.from({ length: 8 }, () => allocIoBuffer(r.machine, 8192, 'scattered'));
    const results = await Promise.all(bufs.map((b, i) => r.bdev.write(i * 16, b.buf)));
    expect(results.every((x) => x.status === BLK_STS_OK)).toBe(true);
    expect(r.bdev.stats.maxInFlight).toBe(3);
    expect(r.bdev.stats.ios.write).toBe(8);
    expect(r.bdev.stats.bytes.write).toBe(8 * 8192);
    expect(results[7]!.latencyNs).toBeGreaterThan(results[0]!.latencyNs);
    expect((await r.bdev.flush()).status).toBe(BLK_STS_OK);
    expect((await r.bdev.discard(0, 64)).status).toBe(BLK_STS_OK);
    expect(r.disk.stats.ios).toEqual([0, 8, 1, 1]);
    expect(r.bdev.stats.ios).toEqual({ read: 0, write: 8, flush: 1, discard: 1 });
    expect(r.bdev.stats.bytes).toEqual({ read: 0, write: 8 * 8192, flush: 0, discard: 64 * 512 });
    expect(r.bdev.stats.latencyNs.flush).toBeGreaterThan(0);
    for (const b of bufs) b.free();
    r.teardown();
  });

  it('runs callback-style submissions synchronously with drain()', () => {
    const r = createNullBlkRig({ nullb: { irqmode: 'timer', completionNsec: 5000 } });
    const b = allocIoBuffer(r.machine, 4096, 'contiguous');
    const seen: number[] = [];
    r.bdev.submit('write', 0, b.buf, (x) => seen.push(x.status));
    r.bdev.submit('read', 0, b.buf, (x) => seen.push(x.status));
    expect(seen).toEqual([]);
    r.bdev.drain();
    expect(seen).toEqual([BLK_STS_OK, BLK_STS_OK]);
    expect(r.machine.clock.nowNs).toBe(5000);
    b.free();
    r.teardown();
  });

  it('rejects a zero queue depth', () => {
    const r = createNullBlkRig();
    expect(() => new BlockDevice(r.nullb.disk, { queueDepth: 0 })).toThrow(/queue depth/);
    r.teardown();
  });

  it('returns zeros for never-written and discarded sectors', async () => {
    const r = createNullBlkRig({ nullb: { discard: true, irqmode: 'none' } });
    const b = allocIoBuffer(r.machine, 4096, 'contiguous');
    b.buf.write(r.machine, new Uint8Array(4096).fill(7));
    await r.bdev.write(8, b.buf);
    await r.bdev.discard(8, 8);
    b.buf.write(r.machine, new Uint8Array(4096).fill(1));
    await r.bdev.read(8, b.buf);
    expect(b.buf.read(r.machine).every((x) => x === 0)).toBe(true);
    b.free();
    r.teardown();
  });
});

describe('REQ_OP_READ on a read request', () => {
  it('has the read direction', async () => {
    const r = createNvmeRig();
    const b = allocIoBuffer(r.machine, 4096, 'contiguous');
    expect((await r.bdev.read(0, b.buf)).status).toBe(BLK_STS_OK);
    expect(REQ_OP_READ).toBe(0);
    b.free();
    r.teardown();
  });
});
