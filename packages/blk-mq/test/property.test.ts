// Model-based properties: random request layouts through both mapping paths must move the same
// bytes and leave nothing mapped; random command sequences on two NVMe devices (two-step and
// scatterlist drivers) must agree with a plain byte-array model of the disk.
import { DMA_TO_DEVICE, dmaDebugDeviceTeardown, dmaUnmapPhys, sgArray, sgInitTable } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, DEVICE_KINDS } from '@iovalink/dma-api/testing';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BlockDevice } from '../src/bdev.js';
import { REQ_OP_WRITE } from '../src/bio.js';
import { blkMqAllocRequest, blkMqFreeRequest, blkRqAppendBio } from '../src/blk-mq.js';
import { blkRqDmaUnmap, blkRqMapSg } from '../src/blk-mq-dma.js';
import { BLK_STS_OK } from '../src/blk-status.js';
import { allocIoBuffer, createNvmeRig, makeBio, type NvmeRig } from '../src/testing/index.js';
import { dmaMapAll, makeQueue, pattern, sameBytes } from './helpers.js';

const bvecArb = fc.record({
  offset: fc.integer({ min: 0, max: 7 }).map((x) => x * 512),
  len: fc.integer({ min: 1, max: 24 }).map((x) => x * 512),
  contiguous: fc.boolean(),
});

describe('blk_rq_map_sg and blk_rq_dma_map_iter_start agree', () => {
  it('random layouts and limits: same bytes through the scatterlist and the two-step walk, nothing leaked', () => {
    fc.assert(
      fc.property(
        fc.array(bvecArb, { minLength: 1, maxLength: 10 }),
        fc.constantFrom(...DEVICE_KINDS),
        fc.constantFrom(8192, 16384, 65536),
        fc.constantFrom(0xffff, 0xffffffff),
        fc.boolean(),
        (layout, kind, maxSegmentSize, segBoundaryMask, virt) => {
          const rig = createDmaRig();
          const m = rig.machine;
          const dev = createKindDevice(rig, kind);
          const { q } = makeQueue(m, {
            maxSegmentSize: virt ? 0 : maxSegmentSize,
            segBoundaryMask,
            virtBoundaryMask: virt ? 4095 : 0,
            maxHwSectors: 4096,
            maxSegments: 64,
          });
          // lay the bvecs out in one big block, contiguous with the previous one when asked
          const block = m.pages.allocPages(8);
          let cursor = block;
          const bvecs: Array<[number, number, number]> = [];
          for (const b of layout) {
            let phys = b.contiguous && bvecs.length > 0 ? cursor : cursor + 8192 + b.offset;
            if (phys + b.len > block + (1 << 20)) phys = block + b.offset;
            const page = phys - (phys % 4096);
            bvecs.push([page, b.len, phys - page]);
            cursor = phys + b.len;
          }
          const total = bvecs.reduce((a, [, l]) => a + l, 0);
          const data = pattern(total, layout.length);
          let off = 0;
          for (const [p, l, o] of bvecs) {
            m.phys.write(p + o, data.subarray(off, off + l));
            off += l;
          }
          const rq = blkMqAllocRequest(q, REQ_OP_WRITE)!;
          if (blkRqAppendBio(rq, makeBio(REQ_OP_WRITE, 0, bvecs)) !== 0) {
            blkMqFreeRequest(rq);
            return; // this layout would have been split before reaching a driver
          }
          // legacy walk
          const n = rq.nrPhysSegments;
          const sgl = sgArray(n);
          sgInitTable(sgl[0]!, n);
          const count = blkRqMapSg(rq, sgl[0]!);
          const viaSg = new Uint8Array(total);
          off = 0;
          for (const s of sgl.slice(0, count)) {
            expect(s.length).toBeLessThanOrEqual(virt ? 0xffffffff : maxSegmentSize);
            m.phys.readInto(s.page + s.offset, viaSg.subarray(off, off + s.length));
            off += s.length;
          }
          expect(sameBytes(viaSg, data)).toBe(true);
          // two-step walk, read by the device
          const { state, iter, segs } = dmaMapAll(rq, dev);
          if (iter.status === BLK_STS_OK) {
            const viaDev = new Uint8Array(total);
            off = 0;
            for (const [a, l] of segs) {
              expect(dev.engine.read(a, viaDev.subarray(off, off + l))).toBe(0);
              off += l;
            }
            expect(sameBytes(viaDev, data)).toBe(true);
            if (!blkRqDmaUnmap(rq, dev, state, total))
              for (const [a, l] of segs) dmaUnmapPhys(dev, a, l, DMA_TO_DEVICE);
          }
          blkMqFreeRequest(rq);
          dmaDebugDeviceTeardown(dev);
        },
      ),
      { numRuns: 100, seed: 20251124 },
    );
  });
});

/** The devices under test and a byte-array model of the disk. */
interface World {
  devs: NvmeRig[];
  model: Uint8Array;
}

const SECTORS = 512; // a 256 KiB region

class WriteCmd implements fc.Command<{ model: Uint8Array }, World> {
  readonly sector: number;
  readonly nr: number;
  readonly layout: 'contiguous' | 'scattered';
  readonly offset: number;
  readonly seed: number;
  constructor(sector: number, nr: number, layout: 'contiguous' | 'scattered', offset: number, seed: number) {
    this.sector = sector;
    this.nr = nr;
    this.layout = layout;
    this.offset = offset;
    this.seed = seed;
  }
  check(): boolean {
    return true;
  }
  run(_m: { model: Uint8Array }, w: World): void {
    const data = pattern(this.nr * 512, this.seed);
    for (const r of w.devs) {
      const b = allocIoBuffer(r.machine, data.length, this.layout, this.offset);
      b.buf.write(r.machine, data);
      let st = -1;
      r.bdev.submit('write', this.sector, b.buf, (x) => {
        st = x.status;
      });
      r.bdev.drain();
      expect(st).toBe(BLK_STS_OK);
      b.free();
    }
    w.model.set(data, this.sector * 512);
  }
  toString(): string {
    return `write(${this.sector}, ${this.nr}, ${this.layout}+${this.offset})`;
  }
}

class ReadCmd implements fc.Command<{ model: Uint8Array }, World> {
  readonly sector: number;
  readonly nr: number;
  readonly layout: 'contiguous' | 'scattered';
  readonly offset: number;
  constructor(sector: number, nr: number, layout: 'contiguous' | 'scattered', offset: number) {
    this.sector = sector;
    this.nr = nr;
    this.layout = layout;
    this.offset = offset;
  }
  check(): boolean {
    return true;
  }
  run(_m: { model: Uint8Array }, w: World): void {
    const want = w.model.subarray(this.sector * 512, (this.sector + this.nr) * 512);
    for (const r of w.devs) {
      const b = allocIoBuffer(r.machine, this.nr * 512, this.layout, this.offset);
      let st = -1;
      r.bdev.submit('read', this.sector, b.buf, (x) => {
        st = x.status;
      });
      r.bdev.drain();
      expect(st).toBe(BLK_STS_OK);
      expect(sameBytes(b.buf.read(r.machine), want)).toBe(true);
      b.free();
    }
  }
  toString(): string {
    return `read(${this.sector}, ${this.nr}, ${this.layout}+${this.offset})`;
  }
}

class DiscardCmd implements fc.Command<{ model: Uint8Array }, World> {
  readonly sector: number;
  readonly nr: number;
  constructor(sector: number, nr: number) {
    this.sector = sector;
    this.nr = nr;
  }
  check(): boolean {
    return true;
  }
  run(_m: { model: Uint8Array }, w: World): void {
    for (const r of w.devs) {
      let st = -1;
      r.bdev.submit('discard', this.sector, this.nr, (x) => {
        st = x.status;
      });
      r.bdev.drain();
      expect(st).toBe(BLK_STS_OK);
    }
    w.model.fill(0, this.sector * 512, (this.sector + this.nr) * 512);
  }
  toString(): string {
    return `discard(${this.sector}, ${this.nr})`;
  }
}

const range = fc
  .tuple(fc.integer({ min: 0, max: SECTORS - 1 }), fc.integer({ min: 1, max: 80 }))
  .map(([s, n]) => [s, Math.min(n, SECTORS - s)] as const);
const layoutArb = fc.constantFrom('contiguous' as const, 'scattered' as const);
const offsetArb = fc.integer({ min: 0, max: 7 }).map((x) => x * 512);

describe('NVMe two-step and scatterlist drivers against a model disk (fc.commands)', () => {
  it('every read returns what the model holds, on every device kind, and nothing leaks', () => {
    const cmds = [
      fc
        .tuple(range, layoutArb, offsetArb, fc.integer({ min: 1, max: 1000 }))
        .map(([[s, n], l, o, seed]) => new WriteCmd(s, n, l, o, seed)),
      fc.tuple(range, layoutArb, offsetArb).map(([[s, n], l, o]) => new ReadCmd(s, n, l, o)),
      range.map(([s, n]) => new DiscardCmd(s, n)),
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...DEVICE_KINDS),
        fc.boolean(),
        fc.commands(cmds, { maxCommands: 25 }),
        (kind, sgl, commands) => {
          const nvme = { sglSupported: sgl, sglThreshold: 8192, latencyNs: 1000 };
          const devs = [
            createNvmeRig({ kind, nvme: { ...nvme, mapping: 'iova' } }),
            createNvmeRig({ kind, nvme: { ...nvme, mapping: 'sg' } }),
          ];
          const w: World = { devs, model: new Uint8Array(SECTORS * 512) };
          fc.modelRun(() => ({ model: { model: w.model }, real: w }), commands);
          for (const r of devs) {
            expect(r.bdev).toBeInstanceOf(BlockDevice);
            r.teardown();
          }
        },
      ),
      { numRuns: 60, seed: 4242 },
    );
  });
});
