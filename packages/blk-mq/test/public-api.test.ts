// The public entry's key signatures (checked by `tsc` over this file: `pnpm typecheck`) and what
// it must not export (checked at run time). The full surface is in api/index.api.md.
import type { Device, DmaIovaState, Scatterlist } from '@iovalink/dma-api';
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../src/index.js';

describe('@iovalink/blk-mq public API', () => {
  it('blk_rq_dma_map_iter entry points and blk_rq_map_sg', () => {
    expectTypeOf(api.blkRqDmaMapIterStart).parameters.toEqualTypeOf<
      [api.Request, Device, DmaIovaState, api.BlkDmaIter]
    >();
    expectTypeOf(api.blkRqDmaMapIterStart).returns.toEqualTypeOf<boolean>();
    expectTypeOf(api.blkRqDmaMapIterNext).returns.toEqualTypeOf<boolean>();
    expectTypeOf(api.blkRqDmaUnmap).parameters.toEqualTypeOf<[api.Request, Device, DmaIovaState, number]>();
    expectTypeOf(api.blkRqMapSg).parameters.toEqualTypeOf<[api.Request, Scatterlist]>();
    expectTypeOf(api.blkRqMapSg).returns.toEqualTypeOf<number>(); // segments
    expectTypeOf<api.BlkDmaIter['addr']>().toEqualTypeOf<number>();
    expectTypeOf<api.BlkDmaIter['status']>().toEqualTypeOf<api.BlkStatus>();
  });

  it('the system builder and the block-device face', () => {
    expectTypeOf(api.createNvmeSystem).returns.toEqualTypeOf<api.NvmeSystem>();
    expectTypeOf<api.NvmeSystem['bdev']>().toEqualTypeOf<api.BlockDevice>();
    expectTypeOf(api.allocIoBuffer).returns.toEqualTypeOf<api.AllocatedBuffer>();
    expectTypeOf(api.blkLeakReport).returns.toEqualTypeOf<string[]>();
  });

  it('keeps merge internals, wire-format constants and le64 helpers out of the main entry', () => {
    const names = Object.keys(api);
    for (const n of [
      '__bvecGapToPrev',
      'getLe64',
      'putLe64',
      'dmaPoolAlloc',
      'NVME_CMD_READ',
      'nvmeMapData',
      'SparseStore',
    ]) {
      expect(names, n).not.toContain(n);
    }
  });
});
