// The public entry's key signatures (checked by `tsc` over this file: `pnpm typecheck`) and what
// it must not export (checked at run time). The full surface is in api/index.api.md.
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as api from '../src/index.js';

describe('@iovalink/vfio-migration public API', () => {
  it('migration state set/get through the uAPI', () => {
    expectTypeOf(api.vfioMigSetState).parameters.toEqualTypeOf<[api.VfioDevice, number]>();
    expectTypeOf(api.vfioMigSetState).returns.toEqualTypeOf<api.VfioDataFile | null | number>();
    expectTypeOf(api.vfioMigGetState).returns.toEqualTypeOf<number>();
    expectTypeOf<api.Mlx5vfPciCoreDevice['setState']>().returns.toEqualTypeOf<
      api.VfioDataFile | null | number
    >();
  });

  it('the VMM flow and its builders', () => {
    expectTypeOf(api.vfioMigrate).returns.toEqualTypeOf<api.VfioMigrationResult>();
    expectTypeOf(api.mlx5vfPciCreateDevice).parameters.toEqualTypeOf<[api.Mlx5vfPciDeviceOptions]>();
    expectTypeOf(api.createGuestMemory).returns.toEqualTypeOf<api.VfioIommu>();
  });

  it('keeps file-op internals, image constants and crc32 out of the main entry', () => {
    const names = Object.keys(api);
    for (const n of [
      'crc32',
      'UINT_MAX',
      'MLX5VF_SAVE_FOPS',
      'mlx5vfSaveRead',
      'MLX5_VHCA_IMAGE_MAGIC',
      'VFIO_BASE',
    ]) {
      expect(names, n).not.toContain(n);
    }
  });
});
