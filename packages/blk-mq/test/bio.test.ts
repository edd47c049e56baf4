import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import {
  BIO_MAX_VECS,
  Bio,
  bioAddPage,
  bioAdvance,
  bioAlloc,
  bioChain,
  bioEndio,
  bioGetLastBvec,
  bioPhysRanges,
  bioPut,
  bioSectors,
  bioSplit,
  REQ_ATOMIC,
  REQ_OP_READ,
  REQ_OP_WRITE,
} from '../src/bio.js';
import { BLK_STS_IOERR, BLK_STS_OK } from '../src/blk-status.js';
import { BioVec, BvecIter, bvecIterAdvance, mpBvecIterBvec } from '../src/bvec.js';
import { BlkError } from '../src/errors.js';
import { alignedBlock } from './helpers.js';

describe('bio_add_page', () => {
  it('merges a physically contiguous page into the last bvec, making a multi-page bvec', () => {
    const m = createTestMachine();
    const base = alignedBlock(m, 2);
    const bio = new Bio(4, REQ_OP_WRITE);
    expect(bioAddPage(bio, base, 4096, 0)).toBe(4096);
    expect(bioAddPage(bio, base + 4096, 4096, 0)).toBe(4096);
    expect(bioAddPage(bio, base + 8192, 2048, 0)).toBe(2048);
    expect(bio.biVcnt).toBe(1);
    expect(bio.biIoVec[0]).toEqual(new BioVec(base, 10240, 0));
    expect(bio.biIter.biSize).toBe(10240);
  });

  it('starts a new bvec after a gap, and refuses when the table is full', () => {
    const m = createTestMachine();
    const a = alignedBlock(m, 0);
    const b = alignedBlock(m, 1) + 4096;
    const bio = new Bio(2, REQ_OP_WRITE);
    bioAddPage(bio, a, 512, 512);
    bioAddPage(bio, b, 4096, 0);
    expect(bio.biVcnt).toBe(2);
    expect(bioAddPage(bio, a, 512, 2048)).toBe(0);
    expect(bioPhysRanges(bio)).toEqual([
      [a + 512, 512],
      [b, 4096],
    ]);
  });

  it('throws on a misaligned page or a cloned bio', () => {
    const bio = new Bio(4, REQ_OP_WRITE);
    expect(() => bioAddPage(bio, 0x1001000 + 12, 4, 0)).toThrow(BlkError);
    const parent = new Bio(4, REQ_OP_WRITE);
    bioAddPage(parent, 0x1000000, 8192, 0);
    const clone = bioSplit(undefined, parent, 8);
    expect(() => bioAddPage(clone, 0x2000000, 4096, 0)).toThrow(/cloned/);
  });

  it('bio_alloc counts the bio in the ledger and bio_put returns it', () => {
    const m = createTestMachine();
    const bio = bioAlloc(m, BIO_MAX_VECS, REQ_OP_READ);
    expect(m.counters.meta.get('bio')!.liveBytes).toBe(128 + 16 * BIO_MAX_VECS);
    bioPut(bio);
    expect(m.counters.meta.get('bio')!.liveBytes).toBe(0);
  });
});

describe('bvec_iter_advance', () => {
  it('walks multi-page bvecs by bytes', () => {
    const bvecs = [new BioVec(0x10000, 6000, 100), new BioVec(0x40000, 3000, 0)];
    const it = new BvecIter();
    it.biSize = 9000;
    expect(bvecIterAdvance(bvecs, it, 5000)).toBe(true);
    expect(mpBvecIterBvec(bvecs, it)).toEqual(new BioVec(0x10000, 1000, 5100));
    expect(bvecIterAdvance(bvecs, it, 1500)).toBe(true);
    expect([it.biIdx, it.biBvecDone, it.biSize]).toEqual([1, 500, 2500]);
    expect(bvecIterAdvance(bvecs, it, 2501)).toBe(false);
  });
});

describe('bio_split', () => {
  it('clones the front over the same table and advances the original', () => {
    const bio = new Bio(4, REQ_OP_WRITE);
    bioAddPage(bio, 0x100000, 16384, 0);
    bio.biIter.biSector = 100;
    const front = bioSplit(undefined, bio, 8);
    expect(front.biIoVec).toBe(bio.biIoVec);
    expect([front.biIter.biSector, bioSectors(front)]).toEqual([100, 8]);
    expect([bio.biIter.biSector, bioSectors(bio)]).toEqual([108, 24]);
    expect(bioGetLastBvec(front)).toEqual(new BioVec(0x100000, 4096, 0));
  });

  it('refuses splits at 0 or past the end, and atomic writes', () => {
    const bio = new Bio(4, REQ_OP_WRITE | REQ_ATOMIC);
    bioAddPage(bio, 0x100000, 8192, 0);
    expect(() => bioSplit(undefined, bio, 0)).toThrow(BlkError);
    expect(() => bioSplit(undefined, bio, 16)).toThrow(BlkError);
    expect(() => bioSplit(undefined, bio, 8)).toThrow(/atomic/);
  });
});

describe('bio_chain', () => {
  it('completes the parent only after every chained child, carrying the first error', () => {
    const parent = new Bio(1, REQ_OP_WRITE);
    const done: number[] = [];
    parent.biEndIo = (b) => done.push(b.biStatus);
    const a = new Bio(1, REQ_OP_WRITE);
    const b = new Bio(1, REQ_OP_WRITE);
    bioChain(a, parent);
    bioChain(b, parent);
    a.biStatus = BLK_STS_IOERR;
    bioEndio(a);
    bioEndio(parent);
    expect(done).toEqual([]);
    bioEndio(b);
    expect(done).toEqual([BLK_STS_IOERR]);
    expect(BLK_STS_OK).toBe(0);
  });

  it('bio_advance refuses to run past the end', () => {
    const bio = new Bio(1, REQ_OP_READ);
    bioAddPage(bio, 0x100000, 4096, 0);
    expect(() => bioAdvance(bio, 4097)).toThrow(/past the end/);
  });
});
