/**
 * What the server thread and the device thread of an export share (`nbd-device-remote.ts`,
 * `nbd-device-worker.ts`): the worker's start data and the record format of the rings. A
 * submission record is `[op, id, offset, length, nsegs, (phys, len) × nsegs]` (op an index into
 * `RING_OPS`; offset and length in bytes); a completion record is `[id, status]` (a `BLK_STS_*`).
 * No kernel counterpart (it plays the NVMe submission and completion queue entries).
 */
import type { MessagePort } from 'node:worker_threads';
import type { BlkIoOp } from '@iovalink/blk-mq';
import type { NbdDeviceInfo, NbdDeviceOptions } from './nbd-device.js';

/** Operation codes of submission records. */
export const RING_OPS: readonly BlkIoOp[] = ['read', 'write', 'flush', 'discard'];

/** What the server thread hands the device thread. */
export interface DeviceWorkerData {
  options: NbdDeviceOptions;
  /** Bytes of the buffer pool to set aside and share. */
  poolBytes: number;
  /** Submission ring (`WordRing`), server → device. */
  sq: SharedArrayBuffer;
  /** Completion ring, device → server. */
  cq: SharedArrayBuffer;
  /** One int32 the server thread waits on for an answer on `port`. */
  rpc: SharedArrayBuffer;
  /** Requests (`stats`, `close`) in, answers out. */
  port: MessagePort;
}

/** The device thread's first message. */
export interface DeviceReady {
  t: 'ready';
  info: NbdDeviceInfo;
  /** Physical address of the buffer pool in the device machine's RAM. */
  poolBase: number;
  /** The pool's bytes. */
  pool: SharedArrayBuffer;
  /** RAM size of the device machine. */
  memSize: number;
}
