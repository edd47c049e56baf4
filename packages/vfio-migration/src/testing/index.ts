/**
 * Fixtures for tests and benchmarks: a migration rig (one machine, one IOMMU, a source and a
 * target mlx5 VF with their PF DMA devices of a chosen kind and guest memory) and leak checks;
 * `fragmentMemory` (from `@iovalink/iommu`) and `createGuestMemory` (from the main entry) are
 * re-exported for the tests that used them from here. Exported as
 * `@iovalink/vfio-migration/testing`; applications use the main entries.
 */

import { type Device, dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, type DeviceKind, type DmaRig } from '@iovalink/dma-api/testing';
import {
  fragmentMemory,
  type IommuDeviceOptions,
  type Machine,
  type MachineOptions,
  PAGE_SIZE,
} from '@iovalink/iommu';
import { createGuestMemory } from '../guest-memory.js';
import { MLX5_META_KINDS, type Mlx5vfMapping, type Mlx5vfPciCoreDevice } from '../mlx5-cmd.js';
import { mlx5vfPciCloseDevice, mlx5vfPciCreateDevice } from '../mlx5-main.js';
import { type VfioIommu, vfioIommuType1Release } from '../vfio-iommu-type1.js';

export { createGuestMemory } from '../guest-memory.js';
export type { DeviceKind };
export { fragmentMemory };

/** Options of `createMigrationRig` (test fixture; no kernel counterpart). */
export interface MigrationRigOptions {
  /** Kind of the PF DMA devices that map the data buffers (default `'strict'`). */
  kind?: DeviceKind;
  /** Data buffer mapping (default `'iova'`). */
  mapping?: Mlx5vfMapping;
  /** Device memory bytes of each VF (default 64 KiB). */
  memorySize?: number;
  /** `VFIO_MIGRATION_*` flags of both VFs (default all three). */
  migrationFlags?: number;
  /** Guest memory bytes on each side (default 256 KiB; 0 for none, which disables DMA logging). */
  guestSize?: number;
  /** Machine options (default 256 MiB of RAM). */
  machine?: MachineOptions;
  /** IOMMU options. */
  iommu?: IommuDeviceOptions;
  /** dma-debug on the PF devices (default true). */
  debug?: boolean;
  /**
   * Scatter this many pages of free memory first, so buffer pages are not physically contiguous
   * (default 0).
   */
  fragmentPages?: number;
  /** PF DMA parameters (default PCI's). */
  maxSegmentSize?: number;
}

/** A source and a target VF on one machine (test fixture; no kernel counterpart). */
export interface MigrationRig {
  rig: DmaRig;
  machine: Machine;
  sourcePf: Device;
  targetPf: Device;
  source: Mlx5vfPciCoreDevice;
  target: Mlx5vfPciCoreDevice;
  sourceGuest: VfioIommu | undefined;
  targetGuest: VfioIommu | undefined;
  /** Guest page addresses the source device has DMA-written (cleared by the test at will). */
  guestWrites: Set<number>;
  /** Pages held by the fragmentation, if any. */
  heldPages: number[];
}

/**
 * Builds a migration rig (see `MigrationRigOptions`): the PF devices, guest memory and both VFs
 * created through `mlx5vfPciCreateDevice` (kernel: `mlx5vf_pci_probe` + open, drivers/vfio/pci/mlx5/main.c).
 */
export function createMigrationRig(options: MigrationRigOptions = {}): MigrationRig {
  const rig = createDmaRig({
    machine: { memSize: 256 << 20, ...options.machine },
    ...(options.iommu ? { iommu: options.iommu } : {}),
  });
  const machine = rig.machine;
  const heldPages = fragmentMemory(machine, options.fragmentPages ?? 0);
  const kind = options.kind ?? 'strict';
  const devOpts = {
    debug: options.debug ?? true,
    ...(options.maxSegmentSize === undefined ? {} : { dmaParms: { maxSegmentSize: options.maxSegmentSize } }),
  };
  const sourcePf = createKindDevice(rig, kind, { ...devOpts, name: `${kind}-pf-src` });
  const targetPf = createKindDevice(rig, kind, { ...devOpts, name: `${kind}-pf-dst` });
  const guestSize = options.guestSize ?? 256 << 10;
  const sourceGuest = guestSize > 0 ? createGuestMemory(rig, guestSize) : undefined;
  const targetGuest = guestSize > 0 ? createGuestMemory(rig, guestSize) : undefined;
  const guestWrites = new Set<number>();
  const memorySize = options.memorySize ?? 64 << 10;
  const common = {
    memorySize,
    mapping: options.mapping ?? 'iova',
    ...(options.migrationFlags === undefined ? {} : { migrationFlags: options.migrationFlags }),
  };
  const source = mlx5vfPciCreateDevice({
    ...common,
    name: 'vf-src',
    pf: sourcePf,
    ...(sourceGuest === undefined ? {} : { guest: sourceGuest }),
    onGuestWrite: (iova, len) => {
      for (let p = Math.floor(iova / PAGE_SIZE); p * PAGE_SIZE < iova + len; p++)
        guestWrites.add(p * PAGE_SIZE);
    },
  });
  const target = mlx5vfPciCreateDevice({
    ...common,
    name: 'vf-dst',
    pf: targetPf,
    randomize: false,
    ...(targetGuest === undefined ? {} : { guest: targetGuest }),
  });
  return {
    rig,
    machine,
    sourcePf,
    targetPf,
    source,
    target,
    sourceGuest,
    targetGuest,
    guestWrites,
    heldPages,
  };
}

/**
 * Live metadata bytes of the kinds this package counts plus scatterlists (model only: the slab usage
 * the kernel would have).
 */
export function migrationMetaLiveBytes(machine: Machine): number {
  return machine.counters.metaTotals([...MLX5_META_KINDS, 'scatterlist']).liveBytes;
}

/**
 * Closes both devices (kernel: `mlx5vf_pci_close_device`), releases guest memory and the held
 * pages, and checks nothing leaked (kernel: `dma_debug_device_change`'s leak report):
 * dma-debug has no live mapping on either PF, no memory key is left in the devices, and the
 * metadata of this package's kinds and scatterlists is back to zero live bytes. Throws on a leak.
 */
export function teardownMigrationRig(m: MigrationRig): void {
  mlx5vfPciCloseDevice(m.source);
  mlx5vfPciCloseDevice(m.target);
  dmaDebugDeviceTeardown(m.sourcePf);
  dmaDebugDeviceTeardown(m.targetPf);
  if (m.sourceGuest !== undefined) vfioIommuType1Release(m.sourceGuest);
  if (m.targetGuest !== undefined) vfioIommuType1Release(m.targetGuest);
  for (const pa of m.heldPages) m.machine.pages.freePages(pa, 0);
  m.heldPages.length = 0;
  const mkeys = m.source.vhca.liveMkeys + m.target.vhca.liveMkeys;
  if (mkeys !== 0) throw new Error(`teardownMigrationRig: ${mkeys} memory key(s) left`);
  const live = migrationMetaLiveBytes(m.machine);
  if (live !== 0) throw new Error(`teardownMigrationRig: ${live} bytes of metadata still live`);
}
