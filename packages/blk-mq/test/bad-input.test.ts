import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { allocScatteredPages } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { IoBuffer } from '../src/bdev.js';
import { type Bio, bioAddPage, bioAlloc, bioPut, REQ_OP_READ, REQ_OP_WRITE } from '../src/bio.js';
import { blkExecuteRqNowait, blkMqFreeRequest, submitBio } from '../src/blk-mq.js';
import {
  BLK_STS_INVAL,
  BLK_STS_IOERR,
  BLK_STS_NOTSUPP,
  BLK_STS_OK,
  BLK_STS_RESOURCE,
  BLK_STS_TARGET,
} from '../src/blk-status.js';
import { blkMqRqToPdu } from '../src/blkdev.js';
import { NVME_DMA_FAULT } from '../src/nvme-hw.js';
import { NVME_MEMPOOL_FAULT, type NvmeIod } from '../src/nvme-pci.js';
import {
  allocIoBuffer,
  createNullBlkRig,
  createNvmeRig,
  makeBio,
  makeRequest,
} from '../src/testing/index.js';
import { pattern, sameBytes } from './helpers.js';

describe('submit_bio checks', () => {
  it('fails I/O beyond the end of the device with BLK_STS_IOERR', async () => {
    const r = createNvmeRig({ nvme: { nsze: 1024 } });
    const b = allocIoBuffer(r.machine, 8192, 'scattered');
    expect((await r.bdev.write(1020, b.buf)).status).toBe(BLK_STS_IOERR);
    expect((await r.bdev.read(1024, b.buf)).status).toBe(BLK_STS_IOERR);
    expect((await r.bdev.write(1008, b.buf)).status).toBe(BLK_STS_OK);
    b.free();
    r.teardown();
  });

  it('rejects misaligned positions, lengths and buffers with BLK_STS_INVAL at the face', async () => {
    const r = createNvmeRig({ nvme: { lbaShift: 12 } });
    const b = allocIoBuffer(r.machine, 8192, 'contiguous');
    expect((await r.bdev.write(1, b.buf)).status).toBe(BLK_STS_INVAL);
    const short = new IoBuffer([{ phys: b.buf.segments[0]!.phys, len: 4096 + 512 }]);
    expect((await r.bdev.write(8, short)).status).toBe(BLK_STS_INVAL);
    const odd = new IoBuffer([{ phys: b.buf.segments[0]!.phys + 2, len: 4096 }]);
    expect((await r.bdev.write(8, odd)).status).toBe(BLK_STS_INVAL);
    expect((await r.bdev.discard(3, 8)).status).toBe(BLK_STS_INVAL);
    expect(r.bdev.stats.errors).toEqual({ invalid: 4 });
    b.free();
    r.teardown();
  });

  it('ends a bio whose size is not a logical-block multiple with BLK_STS_IOERR in the block layer', () => {
    const r = createNvmeRig({ nvme: { lbaShift: 12 } });
    const [p] = allocScatteredPages(r.machine, 1) as [number];
    const bio = bioAlloc(r.machine, 1, REQ_OP_WRITE);
    bioAddPage(bio, p, 2048, 0);
    let status = -1;
    bio.biEndIo = (b: Bio) => {
      status = b.biStatus;
      bioPut(b);
    };
    submitBio(r.disk, bio);
    expect(status).toBe(BLK_STS_IOERR);
    r.teardown();
  });

  it('fails a discard on a device without discard support with BLK_STS_NOTSUPP', async () => {
    const r = createNullBlkRig({ nullb: { discard: false } });
    expect((await r.bdev.discard(0, 8)).status).toBe(BLK_STS_NOTSUPP);
    r.teardown();
  });
});

describe('nvme_queue_rq failures', () => {
  it('completes with BLK_STS_IOERR when the device faults mid-request, and leaks nothing', async () => {
    for (const mapping of ['iova', 'sg'] as const) {
      for (const kind of ['strict', 'none', 'untrusted'] as const) {
        const r = createNvmeRig({ kind, nvme: { mapping } });
        const b = allocIoBuffer(r.machine, 32768, 'scattered');
        // the controller mis-addresses the third data range of the next command
        r.machine.faults.failNth(NVME_DMA_FAULT, 3);
        expect((await r.bdev.write(64, b.buf)).status).toBe(BLK_STS_IOERR);
        expect((await r.bdev.read(64, b.buf)).status).toBe(BLK_STS_OK);
        expect(r.disk.stats.errors).toBe(1);
        b.free();
        r.teardown();
      }
    }
  });

  it('requeues on BLK_STS_RESOURCE and succeeds once memory is back', async () => {
    for (const mapping of ['iova', 'sg'] as const) {
      const r = createNvmeRig({ kind: 'none', nvme: { mapping } });
      const b = allocIoBuffer(r.machine, 65536, 'scattered');
      const data = pattern(65536, 4);
      b.buf.write(r.machine, data);
      // the dma_vecs / sg mempool and the PRP list pool each fail once
      r.machine.faults.failNth(NVME_MEMPOOL_FAULT, 1);
      r.machine.faults.failNth('dma_pool', 1);
      expect((await r.bdev.write(0, b.buf)).status).toBe(BLK_STS_OK);
      expect(r.nvme.queue.stats.requeued).toBeGreaterThanOrEqual(1);
      const c = allocIoBuffer(r.machine, 65536, 'scattered');
      expect((await r.bdev.read(0, c.buf)).status).toBe(BLK_STS_OK);
      expect(sameBytes(c.buf.read(r.machine), data)).toBe(true);
      b.free();
      c.free();
      r.teardown();
    }
  });

  it('fails with BLK_STS_RESOURCE after the retries, leaving nothing mapped (IOVA mode, PRP list pool empty)', async () => {
    const r = createNvmeRig({ kind: 'strict', nvme: { resourceRetries: 1 } });
    const b = allocIoBuffer(r.machine, 65536, 'scattered');
    r.machine.faults.failAlways('dma_pool');
    expect((await r.bdev.write(0, b.buf)).status).toBe(BLK_STS_RESOURCE);
    r.machine.faults.clear();
    expect(r.nvme.stats.iovaCoalesced).toBe(2);
    b.free();
    r.teardown();
  });

  it('maps LBA-range errors of a hand-built request to BLK_STS_TARGET', () => {
    const r = createNvmeRig({ nvme: { nsze: 64 } });
    const [p] = allocScatteredPages(r.machine, 1) as [number];
    const rq = makeRequest(r.nvme.queue, REQ_OP_READ, [makeBio(REQ_OP_READ, 200, [[p, 4096, 0]])]);
    let status = -1;
    rq.endIo = (done, s) => {
      status = s;
      blkMqFreeRequest(done); // passthrough-style requests are freed by their owner
    };
    blkExecuteRqNowait(rq);
    expect(blkMqRqToPdu<NvmeIod>(rq).cmd.slba).toBe(200);
    r.machine.clock.advance(20_000);
    expect(status).toBe(BLK_STS_TARGET);
    r.teardown();
  });
});

describe('dma-debug at teardown', () => {
  it('reports a driver that forgets to unmap', async () => {
    const r = createNvmeRig({ kind: 'strict' });
    const b = allocIoBuffer(r.machine, 4096, 'contiguous');
    expect((await r.bdev.write(0, b.buf)).status).toBe(BLK_STS_OK);
    // leak a mapping behind the driver's back
    const { dmaMapPhys, dmaMappingError } = await import('@iovalink/dma-api');
    const a = dmaMapPhys(r.dev, b.buf.segments[0]!.phys, 4096, 1);
    dmaMappingError(r.dev, a);
    expect(() => r.teardown()).toThrow(/pending DMA allocations/);
    expect(() => dmaDebugDeviceTeardown(r.dev)).toThrow();
  });
});
