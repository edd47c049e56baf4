/**
 * A ready block device: a DMA system (machine, IOMMU, swiotlb), a PCI function in the chosen
 * translation mode with the NVMe driver bound to it (kernel: `nvme_probe`,
 * drivers/nvme/host/pci.c, v6.17) or a null_blk device (drivers/block/null_blk/main.c), and the
 * block-device face on its disk; caller buffers in physical memory; and the leak check over the
 * block layer's per-I/O metadata that teardown runs. This is the documented way into
 * `@iovalink/blk-mq`; the `./testing` fixtures are built on it.
 *
 * Deliberate differences: probe, attach and the disk's appearance are one synchronous call; the
 * leak check has no kernel counterpart (the kernel's kmemleak is not a per-kind ledger).
 */
import {
  createDmaSystem,
  createKindDevice,
  type Device,
  type DeviceKind,
  type DeviceOptions,
  type DmaSystem,
  dmaDebugDeviceTeardown,
} from '@iovalink/dma-api';
import { Machine, type MachineOptions } from '@iovalink/iommu';
import { allocIoPages, BlockDevice, type IoBuffer } from './bdev.js';
import type { Gendisk } from './blkdev.js';
import { BlkError } from './errors.js';
import { type NullBlk, type NullBlkOptions, nullAddDev, nullDelDev } from './null-blk.js';
import { type NvmeDev, type NvmeOptions, nvmeProbe, nvmeRemove } from './nvme-pci.js';

/** Metadata kinds the block layer and its drivers count per I/O; all must be back to zero when idle. */
export const BLK_IO_META_KINDS: readonly string[] = [
  'bio',
  'prp_list',
  'sgl_desc',
  'dma_addr_array',
  'scatterlist',
  'sg_pool',
  'nvme_dsm_range',
];

/**
 * Live bytes of the per-I/O metadata kinds, one line per kind that is not back to zero (empty when
 * nothing leaked). No kernel counterpart: a model-only ledger over `machine.counters.meta`.
 */
export function blkLeakReport(machine: Machine): string[] {
  const out: string[] = [];
  for (const k of BLK_IO_META_KINDS) {
    const s = machine.counters.meta.get(k);
    if (s !== undefined && s.liveBytes !== 0)
      out.push(`${k}: ${s.liveBytes} bytes live (${s.allocs} allocs, ${s.frees} frees)`);
  }
  return out;
}

/** Throws a `BlkError` listing leaked per-I/O metadata, if any (see `blkLeakReport`). */
export function assertNoBlkLeaks(machine: Machine): void {
  const leaks = blkLeakReport(machine);
  if (leaks.length > 0) {
    throw new BlkError(`block layer metadata leaked: ${leaks.join('; ')}; expected none once idle`, {
      rule: 'blk: metadata leak',
    });
  }
}

/** A ready NVMe device on a DMA system. */
export interface NvmeSystem {
  /** The machine, IOMMU and swiotlb pool. */
  dma: DmaSystem;
  machine: Machine;
  /** The PCI function. */
  dev: Device;
  nvme: NvmeDev;
  disk: Gendisk;
  bdev: BlockDevice;
  /** Removes the driver and checks that nothing leaked (dma-debug and the block ledger); throws otherwise. */
  teardown(): void;
}

/** Options of `createNvmeSystem`. */
export interface NvmeSystemOptions {
  /** Device kind (default 'strict'). */
  kind?: DeviceKind;
  /** Extra device options (e.g. `{ debug: false }` for benchmarks). */
  device?: DeviceOptions;
  /** Driver and controller options (`mapping: 'sg' | 'iova'`, queue depth, SGL support, ...). */
  nvme?: NvmeOptions;
  /** An existing DMA system to add the device to. */
  dma?: DmaSystem;
  /** Machine options for a new DMA system (default 256 MiB). */
  machine?: MachineOptions;
  /** Queue depth of the block-device face. */
  queueDepth?: number;
}

/**
 * Builds a machine with an IOMMU, a PCI function of `kind`, an NVMe controller bound to the
 * driver (kernel: `nvme_probe`) and the block-device face on its disk.
 */
export function createNvmeSystem(options: NvmeSystemOptions = {}): NvmeSystem {
  const dma =
    options.dma ?? createDmaSystem(options.machine === undefined ? {} : { machine: options.machine });
  const kind = options.kind ?? 'strict';
  const dev = createKindDevice(dma, kind, { name: `nvme-${kind}`, ...options.device });
  const nvme = nvmeProbe(dev, options.nvme);
  const bdev = new BlockDevice(
    nvme.disk,
    options.queueDepth === undefined ? {} : { queueDepth: options.queueDepth },
  );
  return {
    dma,
    machine: dma.machine,
    dev,
    nvme,
    disk: nvme.disk,
    bdev,
    teardown() {
      bdev.drain();
      nvmeRemove(nvme);
      dmaDebugDeviceTeardown(dev);
      assertNoBlkLeaks(dma.machine);
    },
  };
}

/** A null_blk device with its block-device face. */
export interface NullBlkSystem {
  machine: Machine;
  nullb: NullBlk;
  bdev: BlockDevice;
  /** Removes the device and checks the block ledger; throws on a leak. */
  teardown(): void;
}

/** Options of `createNullBlkSystem`. */
export interface NullBlkSystemOptions {
  /** Machine options for a new machine (default 256 MiB). */
  machine?: MachineOptions;
  /** null_blk options (memory-backed unless told otherwise). */
  nullb?: NullBlkOptions;
  /** Queue depth of the block-device face. */
  queueDepth?: number;
  /** An existing machine to add the device to. */
  machineInstance?: Machine;
}

/** Builds a machine (default 256 MiB) with a null_blk device (kernel: `null_add_dev`), memory-backed unless told otherwise. */
export function createNullBlkSystem(options: NullBlkSystemOptions = {}): NullBlkSystem {
  const machine = options.machineInstance ?? new Machine({ memSize: 256 << 20, ...options.machine });
  const nullb = nullAddDev(machine, { memoryBacked: true, ...options.nullb });
  const bdev = new BlockDevice(
    nullb.disk,
    options.queueDepth === undefined ? {} : { queueDepth: options.queueDepth },
  );
  return {
    machine,
    nullb,
    bdev,
    teardown() {
      bdev.drain();
      nullDelDev(nullb);
      assertNoBlkLeaks(machine);
    },
  };
}

/** A caller buffer and its release. */
export interface AllocatedBuffer {
  buf: IoBuffer;
  /** Frees the pages. */
  free(): void;
}

/**
 * Allocates a caller buffer of `bytes` starting `offset` bytes into its first page: physically
 * contiguous (one block of pages), or scattered (one page at a time, never two adjacent). Throws a
 * `BlkError` when memory runs out. No kernel counterpart: it stands in for a user's pinned pages.
 */
export function allocIoBuffer(
  machine: Machine,
  bytes: number,
  layout: 'contiguous' | 'scattered',
  offset = 0,
): AllocatedBuffer {
  const io = allocIoPages(machine, bytes, layout, offset);
  if (io === null) {
    throw new BlkError(
      `allocIoBuffer: no free pages for a ${bytes}-byte ${layout} buffer; expected a smaller buffer or more memory`,
      {
        rule: 'blk: buffer alloc',
      },
    );
  }
  return {
    buf: io.buf,
    free: () => {
      for (const [p, o] of io.allocs) machine.pages.freePages(p, o);
    },
  };
}
