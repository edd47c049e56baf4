/**
 * Fixtures for tests and for the layers above (CLI, NBD server, integration tests): a ready
 * NVMe device on a DMA rig in any device kind and driver version, a null_blk device, caller
 * buffers in physical memory, exact bios and requests for crafted segment layouts, and a leak
 * check over the block layer's metadata. Exported as `@iovalink/blk-mq/testing`.
 */
import { type Device, type DeviceOptions, dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { createDmaRig, createKindDevice, type DeviceKind, type DmaRig } from '@iovalink/dma-api/testing';
import { Machine, type MachineOptions } from '@iovalink/iommu';
import { allocIoPages, BlockDevice, type IoBuffer } from '../bdev.js';
import { Bio } from '../bio.js';
import { blkMqAllocRequest, blkRqAppendBio } from '../blk-mq.js';
import type { Gendisk, Request, RequestQueue } from '../blkdev.js';
import { BioVec } from '../bvec.js';
import { BlkError } from '../errors.js';
import { type NullBlk, type NullBlkOptions, nullAddDev, nullDelDev } from '../null-blk.js';
import { type NvmeDev, type NvmeOptions, nvmeProbe, nvmeRemove } from '../nvme-pci.js';

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

/** Live bytes of the per-I/O metadata kinds, one line per kind that is not back to zero. */
export function blkLeakReport(machine: Machine): string[] {
  const out: string[] = [];
  for (const k of BLK_IO_META_KINDS) {
    const s = machine.counters.meta.get(k);
    if (s !== undefined && s.liveBytes !== 0)
      out.push(`${k}: ${s.liveBytes} bytes live (${s.allocs} allocs, ${s.frees} frees)`);
  }
  return out;
}

/** Throws a `BlkError` listing leaked per-I/O metadata, if any. */
export function assertNoBlkLeaks(machine: Machine): void {
  const leaks = blkLeakReport(machine);
  if (leaks.length > 0) {
    throw new BlkError(`block layer metadata leaked: ${leaks.join('; ')}`, { rule: 'blk: metadata leak' });
  }
}

/** A ready NVMe device on a DMA rig. */
export interface NvmeRig {
  rig: DmaRig;
  machine: Machine;
  /** The PCI function. */
  dev: Device;
  nvme: NvmeDev;
  disk: Gendisk;
  bdev: BlockDevice;
  /** Removes the driver and checks that nothing leaked (dma-debug and the block ledger); throws otherwise. */
  teardown(): void;
}

/** Options of `createNvmeRig`. */
export interface NvmeRigOptions {
  /** Device kind (default 'strict'). */
  kind?: DeviceKind;
  /** Extra device options (e.g. `{ debug: false }` for benchmarks). */
  device?: DeviceOptions;
  /** Driver and controller options. */
  nvme?: NvmeOptions;
  /** An existing rig to add the device to. */
  rig?: DmaRig;
  /** Machine options for a new rig (default 256 MiB, 2 CPUs). */
  machine?: MachineOptions;
  /** Queue depth of the block-device face. */
  queueDepth?: number;
}

/** Builds a machine with an IOMMU, a device of `kind`, and an NVMe controller bound to the driver. */
export function createNvmeRig(options: NvmeRigOptions = {}): NvmeRig {
  const rig = options.rig ?? createDmaRig(options.machine === undefined ? {} : { machine: options.machine });
  const dev = createKindDevice(rig, options.kind ?? 'strict', {
    name: `nvme-${options.kind ?? 'strict'}`,
    ...options.device,
  });
  const nvme = nvmeProbe(dev, options.nvme);
  const bdev = new BlockDevice(
    nvme.disk,
    options.queueDepth === undefined ? {} : { queueDepth: options.queueDepth },
  );
  return {
    rig,
    machine: rig.machine,
    dev,
    nvme,
    disk: nvme.disk,
    bdev,
    teardown() {
      bdev.drain();
      nvmeRemove(nvme);
      dmaDebugDeviceTeardown(dev);
      assertNoBlkLeaks(rig.machine);
    },
  };
}

/** A null_blk device with its face. */
export interface NullBlkRig {
  machine: Machine;
  nullb: NullBlk;
  bdev: BlockDevice;
  teardown(): void;
}

/** Builds a machine (default 256 MiB) with a null_blk device (memory-backed unless told otherwise). */
export function createNullBlkRig(
  options: {
    machine?: MachineOptions;
    nullb?: NullBlkOptions;
    queueDepth?: number;
    machineInstance?: Machine;
  } = {},
): NullBlkRig {
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
 * Allocates a buffer of `bytes` starting `offset` bytes into its first page: physically
 * contiguous (one block of pages), or scattered (one page at a time, never two adjacent).
 */
export function allocIoBuffer(
  machine: Machine,
  bytes: number,
  layout: 'contiguous' | 'scattered',
  offset = 0,
): AllocatedBuffer {
  const io = allocIoPages(machine, bytes, layout, offset);
  if (io === null) throw new BlkError('allocIoBuffer: out of memory', { rule: 'testing: alloc' });
  return {
    buf: io.buf,
    free: () => {
      for (const [p, o] of io.allocs) machine.pages.freePages(p, o);
    },
  };
}

/**
 * A bio with exactly the given bvecs `[page, len, offset]` (no merging), for crafted layouts.
 * Not counted in the ledger.
 */
export function makeBio(
  opf: number,
  sector: number,
  bvecs: ReadonlyArray<readonly [number, number, number]>,
): Bio {
  const bio = new Bio(Math.max(bvecs.length, 1), opf);
  for (const [page, len, offset] of bvecs) {
    bio.biIoVec.push(new BioVec(page, len, offset));
    bio.biIter.biSize += len;
  }
  bio.biVcnt = bvecs.length;
  bio.biIter.biSector = sector;
  return bio;
}

/**
 * A request on `q` carrying the given bios, built as `blk_rq_append_bio` would (segment count,
 * gap bit, limits checked). Throws when no tag is free or a bio does not fit without a split.
 */
export function makeRequest(q: RequestQueue, opf: number, bios: readonly Bio[]): Request {
  const rq = blkMqAllocRequest(q, opf);
  if (rq === null) throw new BlkError('makeRequest: no free tag', { rule: 'testing: no tag' });
  for (const bio of bios) {
    const ret = blkRqAppendBio(rq, bio);
    if (ret !== 0)
      throw new BlkError(`makeRequest: blk_rq_append_bio returned ${ret}`, {
        rule: 'testing: append',
        errno: ret,
      });
  }
  return rq;
}
