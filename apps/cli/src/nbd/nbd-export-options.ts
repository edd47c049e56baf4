/**
 * The options and counters of an NBD export, and the checks that turn its options into what its
 * simulated NVMe device is built from (size, queue depth, the buffer budget, the machine's RAM).
 * Kernel counterpart: none as one file; the options stand for what a user-space server on Linux
 * chooses (the namespace it opens, its queue depth, its buffer memory) and the counters for what
 * it can observe of the NVMe driver (`drivers/nvme/host/pci.c`) beneath it.
 */
import { SECTOR_SIZE } from '@iovalink/blk-mq';
import type { IommuMode } from '../rig.js';
import type { NbdDeviceOptions, NbdDeviceStats } from './nbd-device.js';
import { NBD_MAX_PORTABLE_PAYLOAD, NbdError } from './nbd-proto.js';

/** Options of an export. */
export interface NbdExportOptions {
  /** Canonical export name (default `"iovalink"`); the empty name selects it too. */
  name?: string;
  /** Description sent with NBD_REP_SERVER and NBD_INFO_DESCRIPTION. */
  description?: string;
  /** Device size in bytes, a positive multiple of 512 (default 1 GiB). */
  size?: number;
  /** Driver version: `'sg'` (≤ v6.16 scatterlist) or `'iova'` (v6.17+ two-step). Default `'iova'`. */
  path?: 'sg' | 'iova';
  /** Device translation (default `'strict'`). */
  iommu?: IommuMode;
  /** Block requests in flight on the device, and NBD requests in flight per connection (default 64). */
  queueDepth?: number;
  /** Machine seed (default 1). */
  seed?: number;
  /** Check every mapping with dma-debug (slower; default off). */
  debug?: boolean;
  /** Layout of the pages holding request data: one block (default) or single pages, none adjacent. */
  buffers?: 'contiguous' | 'scattered';
  /** Bytes of request data the export holds in simulated RAM at once (default 128 MiB, at least 32 MiB). */
  memBudget?: number;
  /** Controller completion latency in virtual ns (default: the model's 10 µs). */
  latencyNs?: number;
  /** Run the device on a worker thread of its own (`NbdExport.open` only; default false). */
  deviceThread?: boolean;
}

/** Counters of an export: the device's, and the export's buffer waits. */
export interface NbdExportStats extends NbdDeviceStats {
  /** Driver version (mapping path). */
  path: 'sg' | 'iova';
  /** Device translation. */
  iommu: IommuMode;
  /** Export size in bytes. */
  size: number;
  /** Largest block request the server sends (bytes). */
  maxRequestBytes: number;
  /** Times a connection waited for buffer memory. */
  memoryWaits: number;
  /** Bytes of the buffer budget reserved now (zero once every connection is gone). */
  memReserved: number;
  /** Reservations queued for buffer memory now. */
  memWaiting: number;
  /** Whether the device ran on a thread of its own. */
  deviceThread: boolean;
}

const DEFAULT_SIZE = 2 ** 30;
const DEFAULT_QUEUE_DEPTH = 64;
const DEFAULT_BUDGET = 128 * 2 ** 20;

/** Checks an export's options and returns what its device is built from. */
export function deviceOptions(options: NbdExportOptions): NbdDeviceOptions & { budget: number } {
  const size = options.size ?? DEFAULT_SIZE;
  if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0) {
    throw new NbdError(`export size ${size} must be a positive multiple of ${SECTOR_SIZE} bytes`, {
      rule: 'nbd export: size',
    });
  }
  const qd = options.queueDepth ?? DEFAULT_QUEUE_DEPTH;
  if (!Number.isInteger(qd) || qd < 1 || qd > 1023) {
    throw new NbdError(`queue depth ${qd} must be an integer in 1..1023`, {
      rule: 'nbd export: queue depth',
    });
  }
  const budget = options.memBudget ?? DEFAULT_BUDGET;
  if (!Number.isSafeInteger(budget) || budget < NBD_MAX_PORTABLE_PAYLOAD) {
    throw new NbdError(`memory budget ${budget} must be at least ${NBD_MAX_PORTABLE_PAYLOAD} bytes`, {
      rule: 'nbd export: memory budget',
    });
  }
  return {
    size,
    path: options.path ?? 'iova',
    iommu: options.iommu ?? 'strict',
    queueDepth: qd,
    seed: options.seed ?? 1,
    budget,
    // RAM: the request buffers (at most twice the budget after rounding to page blocks), the
    // driver's pools and the page tables; lazily backed, so only what is touched costs memory.
    memSize: 2 ** Math.ceil(Math.log2(4 * budget + 256 * 2 ** 20)),
    ...(options.debug === undefined ? {} : { debug: options.debug }),
    ...(options.latencyNs === undefined ? {} : { latencyNs: options.latencyNs }),
  };
}
