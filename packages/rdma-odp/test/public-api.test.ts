// The public entry's key signatures (checked by `tsc` over this file: `pnpm typecheck`) and what
// it must not export (checked at run time). The full surface is in api/index.api.md.
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../src/index.js';

describe('@iovalink/rdma-odp public API', () => {
  it('ibRegUserMr returns an ERR_PTR-style result that isErr narrows', () => {
    expectTypeOf(api.ibRegUserMr).returns.toEqualTypeOf<api.IbMr | number>();
    const r = {} as ReturnType<typeof api.ibRegUserMr>;
    if (api.isErr(r)) expectTypeOf(r).toEqualTypeOf<number>();
    else expectTypeOf(r).toEqualTypeOf<api.IbMr>();
    expectTypeOf(api.ibDeregMr).returns.toEqualTypeOf<number>();
  });

  it('hmm_range_fault, hmm_dma_map and the ODP umem map', () => {
    expectTypeOf(api.hmmRangeFault).parameters.toEqualTypeOf<[api.HmmRange]>();
    expectTypeOf(api.hmmRangeFault).returns.toEqualTypeOf<number>();
    expectTypeOf(api.hmmDmaMapPfn).returns.toEqualTypeOf<number>();
    expectTypeOf(api.ibUmemOdpMapDmaAndLock).parameters.toEqualTypeOf<
      [api.IbUmemOdp, number, number, number, boolean]
    >();
    expectTypeOf(api.createOdpSystem).returns.toEqualTypeOf<api.OdpSystem>();
    expectTypeOf<api.OdpMode>().toEqualTypeOf<'legacy' | 'hmm'>();
  });

  it('names what IMPLICIT_MR_LENGTH is, and keeps internals out', () => {
    expect(api.IMPLICIT_MR_LENGTH).toBe(Number.MAX_SAFE_INTEGER);
    const names = Object.keys(api);
    for (const n of ['U64_MAX', 'Mutex', 'mutexLock', 'newOdpUmemStats', 'pagefaultMr', 'mlx5IbRegUserMr']) {
      expect(names, n).not.toContain(n);
    }
  });
});
