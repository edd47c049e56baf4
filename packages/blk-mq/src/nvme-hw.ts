/**
 * An NVMe controller as hardware: it takes commands from the driver's submission queues, walks
 * their data pointers (PRP1/PRP2 and PRP lists, or SGL data and last-segment descriptors) by
 * reading host memory through the device's DMA engine — so through the IOMMU when there is one —
 * moves the data between host memory and a sparse backing store, and posts a completion on the
 * virtual clock after `latencyNs`. No kernel file: this is the device side the kernel driver talks
 * to (compare QEMU's hw/nvme), following the NVM Express Base Specification 2.0 rules the
 * driver relies on (PRP entries after the first must be page aligned, a full PRP list page ends
 * in a pointer to the next, SGL lengths must add up to the transfer).
 * Differs on purpose: commands arrive as objects (not fetched from host memory), one namespace,
 * no metadata, no queue arbitration; every status carries DNR. Fault point `nvme_dma_fault`:
 * when it fires for a data range, the controller uses a bus address 2^46 away, so the access
 * faults in the IOMMU (or beyond RAM) and the command fails with a data transfer error.
 */
import type { Device } from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import { getLe64 } from '@iovalink/iommu/internal';
import { chunkRun, SparseStore } from './backing-store.js';
import {
  NVME_CMD_DSM,
  NVME_CMD_FLUSH,
  NVME_CMD_READ,
  NVME_CMD_WRITE,
  NVME_CTRL_PAGE_SIZE,
  NVME_DSM_RANGE_SIZE,
  NVME_DSMGMT_AD,
  NVME_SC_DATA_XFER_ERROR,
  NVME_SC_INVALID_FIELD,
  NVME_SC_INVALID_OPCODE,
  NVME_SC_LBA_RANGE,
  NVME_SC_PRP_INVALID_OFFSET,
  NVME_SC_SGL_INVALID_DATA,
  NVME_SC_SGL_INVALID_TYPE,
  NVME_SC_SUCCESS,
  NVME_SGL_DESC_SIZE,
  NVME_SGL_FMT_DATA_DESC,
  NVME_SGL_FMT_LAST_SEG_DESC,
  NVME_STATUS_DNR,
  type NvmeCommand,
  type NvmeCompletion,
  nvmePciCmdUseSgl,
} from './nvme.js';

/** Fault point: the controller mis-addresses one data range of a command. */
export const NVME_DMA_FAULT = 'nvme_dma_fault';

/** Options of the controller model. */
export interface NvmeHwOptions {
  /** Namespace size in logical blocks (default 2^21 × 512 B = 1 GiB). */
  nsze?: number;
  /** log2 of the logical block size (default 9). */
  lbaShift?: number;
  /** Virtual nanoseconds from doorbell to completion (default 10 µs). */
  latencyNs?: number;
  /** The controller accepts SGLs for I/O commands (Identify Controller SGLS; default false). */
  sglSupported?: boolean;
}

/** A completion waiting for its virtual time: a slot of the completion queue the controller fills. */
interface PendingCqe {
  atNs: number;
  readonly cqe: NvmeCompletion;
}

/** Statistics of the controller. */
export class NvmeHwStats {
  /** Commands executed. */
  commands = 0;
  /** PRP list pages read by DMA. */
  prpListReads = 0;
  /** SGL segments read by DMA. */
  sglSegmentReads = 0;
  /** Data ranges moved. */
  dataRanges = 0;
  /** Commands failed. */
  errors = 0;
}

/** The NVMe controller model. */
export class NvmeHw {
  /** The PCI function's DMA side (engine, IOMMU domain). */
  readonly dev: Device;
  /** Namespace size in logical blocks. */
  readonly nsze: number;
  /** log2 of the logical block size. */
  readonly lbaShift: number;
  /** Bytes of a logical block (`2 ** lbaShift`, computed once: `**` on a variable is a libm call per use). */
  readonly #lbaSize: number;
  /** Completion latency. */
  latencyNs: number;
  /** SGL support. */
  readonly sglSupported: boolean;
  /** The namespace's data. */
  readonly store = new SparseStore();
  readonly stats = new NvmeHwStats();
  /**
   * The driver's interrupt handler, called with each completion. The entry is valid only during
   * the call: the controller reuses it for a later completion (as it reuses a completion queue
   * slot once the driver's head has moved past it).
   */
  irq: ((cqe: NvmeCompletion) => void) | null = null;
  readonly #pending: PendingCqe[] = [];
  /** Delivered entries, for later completions (the completion queue's slots). */
  readonly #freeCqes: PendingCqe[] = [];
  #timerArmed = false;
  /** The timer callback, made once. */
  readonly #fireFn = (): void => this.#fire();
  readonly #scratch = new DataView(new ArrayBuffer(PAGE_SIZE));
  /** The view `#fetch` last made over the scratch page, reused while the length is the same. */
  #fetchView = new Uint8Array(this.#scratch.buffer, 0, 0);
  /** The current command's `[bus, len, …]` data ranges; `#nRanges` numbers are in use (reused). */
  #ranges = new Float64Array(64);
  #nRanges = 0;

  constructor(dev: Device, options: NvmeHwOptions = {}) {
    this.dev = dev;
    this.nsze = options.nsze ?? 1 << 21;
    this.lbaShift = options.lbaShift ?? 9;
    this.#lbaSize = 2 ** this.lbaShift;
    this.latencyNs = options.latencyNs ?? 10_000;
    this.sglSupported = options.sglSupported ?? false;
  }

  /** Virtual time of the next completion, or undefined. */
  nextEventNs(): number | undefined {
    return this.#pending[0]?.atNs;
  }

  /** Completions not yet delivered. */
  get pendingCompletions(): number {
    return this.#pending.length;
  }

  /** A doorbell write: the controller fetches and executes `cmd` from queue `sqId`. */
  submit(sqId: number, cmd: NvmeCommand): void {
    const status = this.execute(cmd);
    const clock = this.dev.machine.clock;
    const atNs = clock.nowNs + this.latencyNs;
    const slot = this.#freeCqes.pop();
    if (slot === undefined) {
      this.#pending.push({ atNs, cqe: { sqId, commandId: cmd.commandId, status } });
    } else {
      slot.atNs = atNs;
      slot.cqe.sqId = sqId;
      slot.cqe.commandId = cmd.commandId;
      slot.cqe.status = status;
      this.#pending.push(slot);
    }
    if (!this.#timerArmed) this.#arm();
  }

  #arm(): void {
    const head = this.#pending[0];
    if (head === undefined) return;
    const clock = this.dev.machine.clock;
    this.#timerArmed = true;
    clock.setTimer(Math.max(0, head.atNs - clock.nowNs), this.#fireFn);
  }

  #fire(): void {
    this.#timerArmed = false;
    const now = this.dev.machine.clock.nowNs;
    while (this.#pending.length > 0 && this.#pending[0]!.atNs <= now) {
      const slot = this.#pending.shift()!;
      this.irq?.(slot.cqe);
      this.#freeCqes.push(slot);
    }
    if (!this.#timerArmed) this.#arm();
  }

  /** Executes one command now; returns the NVMe status. */
  execute(cmd: NvmeCommand): number {
    this.stats.commands++;
    const st = this.#execute(cmd);
    if (st !== NVME_SC_SUCCESS) {
      this.stats.errors++;
      return st | NVME_STATUS_DNR;
    }
    return st;
  }

  #execute(cmd: NvmeCommand): number {
    switch (cmd.opcode) {
      case NVME_CMD_FLUSH:
        return NVME_SC_SUCCESS;
      case NVME_CMD_READ:
      case NVME_CMD_WRITE:
        return this.#rw(cmd);
      case NVME_CMD_DSM:
        return this.#dsm(cmd);
      default:
        return NVME_SC_INVALID_OPCODE;
    }
  }

  /**
   * A read or write: the controller moves the data between host memory (by DMA, through the
   * IOMMU) and its media directly, a store chunk at a time, with no staging buffer. Data ranges
   * that continue each other on the bus (PRP entries of an IOVA-contiguous buffer) go as one
   * burst. A fault stops the command at the faulting page; for a write the blocks before it may
   * already hold the new data, which the NVM Command Set allows (a write is atomic only up to the
   * Atomic Write Unit, AWUN/AWUPF; the model's unit is one logical block).
   */
  #rw(cmd: NvmeCommand): number {
    const nlb = cmd.length + 1;
    if (cmd.slba + nlb > this.nsze) return NVME_SC_LBA_RANGE;
    const bytes = nlb * this.#lbaSize;
    const st = this.#dataRanges(cmd, bytes);
    if (st !== NVME_SC_SUCCESS) return st;
    const ranges = this.#ranges;
    const n = this.#nRanges;
    const write = cmd.opcode === NVME_CMD_WRITE;
    let pos = cmd.slba * this.#lbaSize;
    let runBus = 0;
    let runLen = 0;
    for (let i = 0; i < n; i += 2) {
      const bus = this.#busFor(ranges[i]!);
      const len = ranges[i + 1]!;
      this.stats.dataRanges++;
      if (runLen > 0 && bus === runBus + runLen) {
        runLen += len;
        continue;
      }
      if (runLen > 0 && !this.#burst(runBus, runLen, pos, write)) return NVME_SC_DATA_XFER_ERROR;
      pos += runLen;
      runBus = bus;
      runLen = len;
    }
    if (runLen > 0 && !this.#burst(runBus, runLen, pos, write)) return NVME_SC_DATA_XFER_ERROR;
    return NVME_SC_SUCCESS;
  }

  /** Moves `len` bytes between bus address `bus` and media offset `pos`; false on a DMA fault. */
  #burst(bus: number, len: number, pos: number, write: boolean): boolean {
    const engine = this.dev.engine;
    const store = this.store;
    for (let done = 0; done < len; ) {
      const at = pos + done;
      const n = chunkRun(at, len - done);
      const r = write
        ? engine.read(bus + done, store.spanForWrite(at, n))
        : engine.write(bus + done, store.spanForRead(at, n));
      if (r !== 0) return false;
      done += n;
    }
    return true;
  }

  #dsm(cmd: NvmeCommand): number {
    const nr = cmd.dsmNr + 1;
    const bytes = nr * NVME_DSM_RANGE_SIZE;
    const st = this.#dataRanges(cmd, bytes);
    if (st !== NVME_SC_SUCCESS) return st;
    const ranges = this.#ranges;
    const n = this.#nRanges;
    const buf = new Uint8Array(bytes);
    let off = 0;
    for (let i = 0; i < n; i += 2) {
      if (this.dev.engine.read(this.#busFor(ranges[i]!), buf.subarray(off, off + ranges[i + 1]!)) !== 0) {
        return NVME_SC_DATA_XFER_ERROR;
      }
      off += ranges[i + 1]!;
    }
    if ((cmd.dsmAttributes & NVME_DSMGMT_AD) === 0) return NVME_SC_SUCCESS;
    const v = new DataView(buf.buffer);
    for (let r = 0; r < nr; r++) {
      const nlb = v.getUint32(r * 16 + 4, true);
      const slba = getLe64(v, r * 16 + 8);
      if (slba + nlb > this.nsze) return NVME_SC_LBA_RANGE;
      this.store.zero(slba * 2 ** this.lbaShift, nlb * 2 ** this.lbaShift);
    }
    return NVME_SC_SUCCESS;
  }

  #busFor(bus: number): number {
    return this.dev.machine.faults.shouldFail(NVME_DMA_FAULT) ? bus + 2 ** 46 : bus;
  }

  /** Reads `len` bytes at bus address `bus` into the scratch view; false on a DMA fault. */
  #fetch(bus: number, len: number): boolean {
    let dst = this.#fetchView;
    if (dst.length !== len) {
      dst = new Uint8Array(this.#scratch.buffer, 0, len);
      this.#fetchView = dst;
    }
    return this.dev.engine.read(bus, dst) === 0;
  }

  /**
   * Resolves a command's data pointer into `[bus, len, …]` ranges covering `bytes` (what the
   * controller's DMA unit does): PRPs or SGL. Appends them to `out`; returns an NVMe status.
   */
  dataRanges(cmd: NvmeCommand, bytes: number, out: number[]): number {
    const st = this.#dataRanges(cmd, bytes);
    const ranges = this.#ranges;
    for (let i = 0; i < this.#nRanges; i++) out.push(ranges[i]!);
    return st;
  }

  /** `dataRanges` into the controller's own range buffer (`#ranges`, `#nRanges` numbers). */
  #dataRanges(cmd: NvmeCommand, bytes: number): number {
    this.#nRanges = 0;
    if (nvmePciCmdUseSgl(cmd)) return this.#sglRanges(cmd, bytes);
    return this.#prpRanges(cmd, bytes);
  }

  /** Appends one `[bus, len]` range, growing the buffer when full. */
  #put(bus: number, len: number): void {
    let r = this.#ranges;
    const n = this.#nRanges;
    if (n + 2 > r.length) {
      const grown = new Float64Array(r.length * 2);
      grown.set(r);
      this.#ranges = grown;
      r = grown;
    }
    r[n] = bus;
    r[n + 1] = len;
    this.#nRanges = n + 2;
  }

  #prpRanges(cmd: NvmeCommand, bytes: number): number {
    const ps = NVME_CTRL_PAGE_SIZE;
    const first = Math.min(bytes, ps - (cmd.prp1 % ps));
    this.#put(cmd.prp1, first);
    let left = bytes - first;
    if (left === 0) return NVME_SC_SUCCESS;
    if (left <= ps) {
      if (cmd.prp2 % ps !== 0) return NVME_SC_PRP_INVALID_OFFSET;
      this.#put(cmd.prp2, left);
      return NVME_SC_SUCCESS;
    }
    // PRP2 points to a list; entries run to the end of its page, the last one chaining on
    let list = cmd.prp2;
    if (list % 8 !== 0) return NVME_SC_PRP_INVALID_OFFSET;
    for (;;) {
      // The entries left in the list's page; the controller fetches only those it will use (the
      // data pages still needed, or the whole rest of the page when it ends in a chain pointer).
      const slots = Math.min((ps - (list % ps)) / 8, Math.ceil(left / ps));
      if (!this.#fetch(list, slots * 8)) return NVME_SC_DATA_XFER_ERROR;
      this.stats.prpListReads++;
      const v = this.#scratch;
      let i = 0;
      for (; i < slots; i++) {
        const e = getLe64(v, i * 8);
        if (i === slots - 1 && left > ps) {
          list = e;
          break;
        }
        if (e % ps !== 0) return NVME_SC_PRP_INVALID_OFFSET;
        const n = Math.min(left, ps);
        this.#put(e, n);
        left -= n;
        if (left === 0) return NVME_SC_SUCCESS;
      }
      if (i === slots) return NVME_SC_PRP_INVALID_OFFSET;
      if (list % ps !== 0) return NVME_SC_PRP_INVALID_OFFSET;
    }
  }

  #sglRanges(cmd: NvmeCommand, bytes: number): number {
    if (!this.sglSupported) return NVME_SC_INVALID_FIELD;
    const type = cmd.sglType >> 4;
    let total = 0;
    if (type === NVME_SGL_FMT_DATA_DESC) {
      this.#put(cmd.prp1, cmd.sglLength);
      total = cmd.sglLength;
    } else if (type === NVME_SGL_FMT_LAST_SEG_DESC) {
      const n = cmd.sglLength / NVME_SGL_DESC_SIZE;
      if (!Number.isInteger(n) || n < 1 || cmd.sglLength > PAGE_SIZE) return NVME_SC_SGL_INVALID_DATA;
      if (!this.#fetch(cmd.prp1, cmd.sglLength)) return NVME_SC_DATA_XFER_ERROR;
      this.stats.sglSegmentReads++;
      const v = this.#scratch;
      for (let i = 0; i < n; i++) {
        const o = i * NVME_SGL_DESC_SIZE;
        if (v.getUint8(o + 15) >> 4 !== NVME_SGL_FMT_DATA_DESC) return NVME_SC_SGL_INVALID_TYPE;
        const addr = getLe64(v, o);
        const len = v.getUint32(o + 8, true);
        this.#put(addr, len);
        total += len;
      }
    } else {
      return NVME_SC_SGL_INVALID_TYPE;
    }
    return total === bytes ? NVME_SC_SUCCESS : NVME_SC_SGL_INVALID_DATA;
  }
}
