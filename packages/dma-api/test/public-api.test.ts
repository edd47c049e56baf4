// The public entry's key signatures (checked by `tsc` over this file: `pnpm typecheck`) and what
// it must not export (checked at run time). The full surface is in api/index.api.md.
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../src/index.js';

describe('@iovalink/dma-api public API', () => {
  it('the two-step IOVA API', () => {
    expectTypeOf(api.dmaIovaTryAlloc).parameters.toEqualTypeOf<
      [api.Device, api.DmaIovaState, number, number]
    >();
    expectTypeOf(api.dmaIovaTryAlloc).returns.toEqualTypeOf<boolean>();
    expectTypeOf(api.dmaIovaLink).parameters.toEqualTypeOf<
      [api.Device, api.DmaIovaState, number, number, number, api.DmaDataDirection, (number | undefined)?]
    >();
    expectTypeOf(api.dmaIovaLink).returns.toEqualTypeOf<number>(); // 0 or -errno
    expectTypeOf(api.dmaIovaSync).returns.toEqualTypeOf<number>();
    expectTypeOf(api.dmaIovaDestroy).returns.toEqualTypeOf<void>();
    expectTypeOf<api.DmaIovaState['addr']>().toEqualTypeOf<number>();
  });

  it('the streaming API and the system builder', () => {
    expectTypeOf(api.dmaMapPhys).returns.toEqualTypeOf<number>(); // bus address or DMA_MAPPING_ERROR
    expectTypeOf(api.dmaMappingError).returns.toEqualTypeOf<boolean>();
    expectTypeOf(api.createDmaSystem).returns.toEqualTypeOf<api.DmaSystem>();
    expectTypeOf(api.createKindDevice).parameter(1).toEqualTypeOf<api.DeviceKind>();
    expectTypeOf(api.createKindDevice).returns.toEqualTypeOf<api.Device>();
    expectTypeOf<api.DeviceKind>().toEqualTypeOf<'strict' | 'lazy' | 'identity' | 'none' | 'untrusted'>();
  });

  it('keeps dma-direct and scatterlist internals out of the main entry', () => {
    const names = Object.keys(api);
    for (const n of [
      'dmaDirectMapPhys',
      'dmaInfoToProt',
      'sgChain',
      'SG_META_KIND',
      'SG_POOL_FAULT',
      'MSI_RANGE_START',
    ]) {
      expect(names, n).not.toContain(n);
    }
    expect(api.DEVICE_KINDS).toEqual(['strict', 'lazy', 'identity', 'none', 'untrusted']);
  });
});
