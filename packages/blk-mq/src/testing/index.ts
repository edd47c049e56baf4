/**
 * Fixtures for tests of this package and the layers above: the main entry's ready systems under
 * their fixture names (`createNvmeRig`, `createNullBlkRig`), and exact bios and requests for
 * crafted segment layouts. Exported as `@iovalink/blk-mq/testing`; applications use
 * `createNvmeSystem` / `createNullBlkSystem` / `allocIoBuffer` from the main entry.
 */
import type { DeviceKind, DeviceOptions } from '@iovalink/dma-api';
import type { DmaRig } from '@iovalink/dma-api/testing';
import type { MachineOptions } from '@iovalink/iommu';
import { Bio } from '../bio.js';
import { blkMqAllocRequest, blkRqAppendBio } from '../blk-mq.js';
import type { Request, RequestQueue } from '../blkdev.js';
import { BioVec } from '../bvec.js';
import { BlkError } from '../errors.js';
import type { NvmeOptions } from '../nvme-pci.js';
import {
  createNullBlkSystem,
  createNvmeSystem,
  type NullBlkSystem,
  type NvmeSystem,
} from '../nvme-system.js';

export {
  type AllocatedBuffer,
  allocIoBuffer,
  assertNoBlkLeaks,
  BLK_IO_META_KINDS,
  blkLeakReport,
} from '../nvme-system.js';

/** A ready NVMe device on a DMA rig (`NvmeSystem`, with the DMA system also under `rig`). */
export interface NvmeRig extends NvmeSystem {
  rig: DmaRig;
}

/** Options of `createNvmeRig` (`NvmeSystemOptions`, with the DMA system to reuse under `rig`). */
export interface NvmeRigOptions {
  kind?: DeviceKind;
  device?: DeviceOptions;
  nvme?: NvmeOptions;
  rig?: DmaRig;
  machine?: MachineOptions;
  queueDepth?: number;
}

/** `createNvmeSystem` under its fixture name. */
export function createNvmeRig(options: NvmeRigOptions = {}): NvmeRig {
  const { rig, ...rest } = options;
  const s = createNvmeSystem(rig === undefined ? rest : { ...rest, dma: rig });
  return { ...s, rig: s.dma };
}

/** A null_blk device with its face (`NullBlkSystem`). */
export type NullBlkRig = NullBlkSystem;

/** `createNullBlkSystem` under its fixture name. */
export const createNullBlkRig: typeof createNullBlkSystem = createNullBlkSystem;

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
