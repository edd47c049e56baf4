/**
 * The RDMA NIC as hardware: memory keys (mkeys) with their translation tables — an MTT of one
 * entry per page (DMA address | READ | WRITE, 0 = no translation) for ordinary MRs, a KSM table
 * of child mkeys per fixed-size granule for implicit MRs — written by the driver with UMR
 * operations, and the responder side of RDMA READ and RDMA WRITE requests from a remote peer:
 * each page of the request is translated through the mkey; a missing translation or a missing
 * write permission raises a page-fault event to the driver, which resolves it and resumes the
 * request; the data moves only through the device's DMA engine at bus addresses, i.e. through
 * the IOMMU. Kernel counterpart: what a ConnectX HCA does for mlx5 ODP (mkey contexts, MTT/KSM
 * translation, UMR WQEs, page-fault EQEs and `PAGE_FAULT_RESUME`), as programmed by
 * drivers/infiniband/hw/mlx5/{umr.c,odp.c}; constants from drivers/infiniband/hw/mlx5/mlx5_ib.h
 * and include/linux/mlx5/mlx5_ifc.h.
 *
 * Deliberate differences: one request at a time, faults handled synchronously (the EQ handler
 * runs before the request continues, like a resumed QP); the whole remaining request range is
 * reported in the fault (mlx5 reports the packet and prefetches the rest); no on-NIC translation
 * cache, so a zapped entry is gone at once; a request that keeps faulting after
 * `maxRefaults` resumes completes with an error (hardware would retry until a transport timeout).
 */
import { type Device, DMA_MAPPING_ERROR } from '@iovalink/dma-api';
import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { alignDown } from '@iovalink/iommu/internal';
import { OdpError } from './errors.js';
import { IB_ACCESS_REMOTE_READ, IB_ACCESS_REMOTE_WRITE } from './ib-verbs.js';

/** MTT entry: the page may be read (kernel: `MLX5_IB_MTT_READ`). */
export const MLX5_IB_MTT_READ = 1 << 0;
/** MTT entry: the page may be written (kernel: `MLX5_IB_MTT_WRITE`). */
export const MLX5_IB_MTT_WRITE = 1 << 1;
/** Mkey translates through an MTT (kernel: `MLX5_MKC_ACCESS_MODE_MTT`). */
export const MLX5_MKC_ACCESS_MODE_MTT = 0x1;
/** Mkey translates through a KSM table of child mkeys (kernel: `MLX5_MKC_ACCESS_MODE_KSM`). */
export const MLX5_MKC_ACCESS_MODE_KSM = 0x3;

/** UMR: write zero entries (kernel: `MLX5_IB_UPD_XLT_ZAP`). */
export const MLX5_IB_UPD_XLT_ZAP = 1 << 0;
/** UMR: enable the mkey (kernel: `MLX5_IB_UPD_XLT_ENABLE`). */
export const MLX5_IB_UPD_XLT_ENABLE = 1 << 1;
/** UMR: post atomically w.r.t. in-flight requests (kernel: `MLX5_IB_UPD_XLT_ATOMIC`). */
export const MLX5_IB_UPD_XLT_ATOMIC = 1 << 2;
/** UMR: the table is a KSM of child mkeys (kernel: `MLX5_IB_UPD_XLT_INDIRECT`). */
export const MLX5_IB_UPD_XLT_INDIRECT = 1 << 6;
/** UMR: write read-only entries (kernel: `MLX5_IB_UPD_XLT_DOWNGRADE`). */
export const MLX5_IB_UPD_XLT_DOWNGRADE = 1 << 7;

/** Work-completion status (kernel: `enum ib_wc_status`). */
export type IbWcStatus =
  | 'IB_WC_SUCCESS'
  | 'IB_WC_LOC_PROT_ERR'
  | 'IB_WC_REM_ACCESS_ERR'
  | 'IB_WC_REM_INV_REQ_ERR';

/** One mkey context (kernel: the mkey context in HCA memory, `struct mlx5_mkey_seg` + its translation). */
export class NicMkey {
  readonly key: number;
  readonly accessMode: number;
  /** First device-visible address (kernel: `start_addr`). */
  readonly start: number;
  /** Bytes covered (kernel: `len`). */
  readonly length: number;
  /** `IB_ACCESS_*` flags. */
  readonly access: number;
  /** log2 of the page (MTT) or granule (KSM) size (kernel: `log_page_size`). */
  readonly pageShift: number;
  enabled = false;
  /** MTT: entry per page, DMA address + READ/WRITE bits, 0 = none. */
  readonly mtt: Float64Array;
  /** KSM: granule index → child mkey (0 or missing: the null mkey, which faults). */
  readonly ksm = new Map<number, number>();
  /** KSM: number of granules. */
  readonly ksmEntries: number;
  /** Page-fault events raised for this mkey. */
  faults = 0;

  constructor(
    key: number,
    accessMode: number,
    start: number,
    length: number,
    access: number,
    pageShift: number,
    entries: number,
  ) {
    this.key = key;
    this.accessMode = accessMode;
    this.start = start;
    this.length = length;
    this.access = access;
    this.pageShift = pageShift;
    this.mtt = new Float64Array(accessMode === MLX5_MKC_ACCESS_MODE_MTT ? entries : 0);
    this.ksmEntries = accessMode === MLX5_MKC_ACCESS_MODE_KSM ? entries : 0;
  }

  /** First address of MTT entry 0 (the page holding `start`). */
  get base(): number {
    const ps = 2 ** this.pageShift;
    return alignDown(this.start, ps);
  }
}

/** A page-fault event (kernel: `struct mlx5_pagefault`, RDMA responder subtype). */
export interface NicPageFault {
  /** Event token to resume (kernel: `token`). */
  readonly token: number;
  /** `rdma-read` or `rdma-write` (kernel: `MLX5_PFAULT_RDMA`, with `MLX5_PFAULT_WRITE`). */
  readonly type: 'rdma-read' | 'rdma-write';
  /** The rkey of the request (kernel: `rdma.r_key`). */
  readonly key: number;
  /** Faulting address (kernel: `rdma.rdma_va`). */
  readonly va: number;
  /** Bytes from `va` to the end of the request (kernel: `rdma.rdma_op_len`). */
  readonly bcnt: number;
  readonly write: boolean;
}

/** Completion of one request (kernel: `struct ib_wc`). */
export interface NicCompletion {
  status: IbWcStatus;
  /** Bytes moved before completion. */
  byteLen: number;
  /** Page-fault events this request raised. */
  pageFaults: number;
  /** For RDMA READ: the bytes read (valid up to `byteLen`). */
  data?: Uint8Array;
  /** The driver's error for a failed fault, or -EFAULT for an IOMMU fault. */
  errno?: number;
  /** Why it failed. */
  reason?: string;
}

/** NIC counters. */
export interface NicStats {
  pageFaultEvents: number;
  resumedOk: number;
  resumedError: number;
  umrOps: number;
  mttEntriesWritten: number;
  mttEntriesZapped: number;
  iommuFaults: number;
  readBytes: number;
  writeBytes: number;
  errorCompletions: number;
}

/** The driver's page-fault handler: resolves the fault and returns 0 or -errno (resume with error). */
export type NicPageFaultHandler = (pf: NicPageFault) => number;

/** Options of a NIC. */
export interface NicOptions {
  /** Resumes without progress before a request fails (default 8). */
  maxRefaults?: number;
}

type Translation = { kind: 'ok'; bus: number } | { kind: 'fault' } | { kind: 'error'; reason: string };

/** The HCA (kernel counterpart: the ConnectX device behind `struct mlx5_core_dev`). */
export class Nic {
  /** The PCI function doing DMA: its engine translates through the IOMMU. */
  readonly dev: Device;
  readonly mkeys = new Map<number, NicMkey>();
  pageFaultHandler: NicPageFaultHandler | undefined;
  readonly maxRefaults: number;
  readonly stats: NicStats = {
    pageFaultEvents: 0,
    resumedOk: 0,
    resumedError: 0,
    umrOps: 0,
    mttEntriesWritten: 0,
    mttEntriesZapped: 0,
    iommuFaults: 0,
    readBytes: 0,
    writeBytes: 0,
    errorCompletions: 0,
  };
  #nextKey = 0x100;
  #nextToken = 1;

  constructor(dev: Device, options: NicOptions = {}) {
    this.dev = dev;
    this.maxRefaults = options.maxRefaults ?? 8;
  }

  /** Creates a disabled mkey (kernel: `CREATE_MKEY` / an mkey from the MR cache). */
  createMkey(
    accessMode: number,
    start: number,
    length: number,
    access: number,
    pageShift: number,
    entries: number,
  ): NicMkey {
    const key = this.#nextKey;
    this.#nextKey += 0x100;
    const m = new NicMkey(key, accessMode, start, length, access, pageShift, entries);
    this.mkeys.set(key, m);
    return m;
  }

  /** Destroys an mkey: requests using it fail from now on (kernel: `DESTROY_MKEY` / revoke). */
  destroyMkey(key: number): void {
    if (!this.mkeys.delete(key)) {
      throw new OdpError(`nic: destroy of unknown mkey 0x${key.toString(16)}`, {
        rule: 'destroy_mkey: unknown key',
      });
    }
  }

  #mkey(key: number, what: string): NicMkey {
    const m = this.mkeys.get(key);
    if (m === undefined) {
      throw new OdpError(`nic: ${what} on unknown mkey 0x${key.toString(16)}`, {
        rule: `${what}: unknown mkey`,
      });
    }
    return m;
  }

  /**
   * UMR: writes MTT entries `[idx, idx + entries.length)` (kernel: a UMR WQE posted by
   * `mlx5r_umr_update_xlt`); all-zero `entries` zap. `enable` turns the mkey on.
   */
  umrUpdateMtt(key: number, idx: number, entries: ArrayLike<number>, enable = false): void {
    const m = this.#mkey(key, 'umr');
    if (m.accessMode !== MLX5_MKC_ACCESS_MODE_MTT || idx < 0 || idx + entries.length > m.mtt.length) {
      throw new OdpError(
        `nic: UMR of MTT [${idx}, ${idx + entries.length}) outside mkey 0x${key.toString(16)} (${m.mtt.length} entries)`,
        { rule: 'umr: MTT range' },
      );
    }
    this.stats.umrOps++;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (e === 0) {
        if (m.mtt[idx + i] !== 0) this.stats.mttEntriesZapped++;
      } else {
        this.stats.mttEntriesWritten++;
      }
      m.mtt[idx + i] = e;
    }
    if (enable) m.enabled = true;
  }

  /** UMR: writes KSM entries `[idx, idx + children.length)`; 0 = the null mkey (kernel: `populate_ksm`). */
  umrUpdateKsm(key: number, idx: number, children: readonly number[], enable = false): void {
    const m = this.#mkey(key, 'umr');
    if (m.accessMode !== MLX5_MKC_ACCESS_MODE_KSM || idx < 0 || idx + children.length > m.ksmEntries) {
      throw new OdpError(
        `nic: UMR of KSM [${idx}, ${idx + children.length}) outside mkey 0x${key.toString(16)}`,
        {
          rule: 'umr: KSM range',
        },
      );
    }
    this.stats.umrOps++;
    for (let i = 0; i < children.length; i++) {
      if (children[i] === 0) m.ksm.delete(idx + i);
      else m.ksm.set(idx + i, children[i]!);
    }
    if (enable) m.enabled = true;
  }

  /** Translates `va` through MTT mkey `m`; `write` needs the WRITE bit. */
  #translateMtt(m: NicMkey, va: number, write: boolean): Translation {
    const ps = 2 ** m.pageShift;
    const idx = Math.floor((va - m.base) / ps);
    if (idx < 0 || idx >= m.mtt.length)
      return { kind: 'error', reason: 'address outside the mkey translation' };
    const e = m.mtt[idx]!;
    const bits = e % 4;
    if (e === 0 || (bits & MLX5_IB_MTT_READ) === 0) return { kind: 'fault' };
    if (write && (bits & MLX5_IB_MTT_WRITE) === 0) return { kind: 'fault' };
    return { kind: 'ok', bus: e - bits + (va % ps) };
  }

  /** Translates one address of a request through mkey `key` (an MTT, or a KSM and its child). */
  #translate(key: number, va: number, write: boolean): Translation {
    const m = this.mkeys.get(key);
    if (m === undefined || !m.enabled) return { kind: 'error', reason: 'invalid or disabled rkey' };
    if (m.accessMode === MLX5_MKC_ACCESS_MODE_MTT) return this.#translateMtt(m, va, write);
    const idx = Math.floor(va / 2 ** m.pageShift);
    if (idx < 0 || idx >= m.ksmEntries) return { kind: 'error', reason: 'address outside the implicit MR' };
    const child = m.ksm.get(idx);
    if (child === undefined) return { kind: 'fault' };
    const c = this.mkeys.get(child);
    if (c === undefined || !c.enabled) return { kind: 'fault' };
    return this.#translateMtt(c, va, write);
  }

  /** Raises a page-fault event and resumes (kernel: EQE → `mlx5_ib_eq_pf_process` → `PAGE_FAULT_RESUME`). */
  #pageFault(m: NicMkey, key: number, va: number, bcnt: number, write: boolean): number {
    this.stats.pageFaultEvents++;
    m.faults++;
    const handler = this.pageFaultHandler;
    const pf: NicPageFault = {
      token: this.#nextToken++,
      type: write ? 'rdma-write' : 'rdma-read',
      key,
      va,
      bcnt,
      write,
    };
    const r = handler === undefined ? -Errno.EFAULT : handler(pf);
    if (r < 0) this.stats.resumedError++;
    else this.stats.resumedOk++;
    return r;
  }

  /** Runs one request: checks the rkey, then translates, faults and moves data page by page. */
  #request(key: number, va: number, buf: Uint8Array, write: boolean): NicCompletion {
    const len = buf.length;
    const c: NicCompletion = { status: 'IB_WC_SUCCESS', byteLen: 0, pageFaults: 0 };
    const fail = (status: IbWcStatus, reason: string, errno?: number): NicCompletion => {
      c.status = status;
      c.reason = reason;
      if (errno !== undefined) c.errno = errno;
      this.stats.errorCompletions++;
      return c;
    };
    const m = this.mkeys.get(key);
    if (m === undefined || !m.enabled) return fail('IB_WC_REM_ACCESS_ERR', 'invalid or disabled rkey');
    const need = write ? IB_ACCESS_REMOTE_WRITE : IB_ACCESS_REMOTE_READ;
    if ((m.access & need) === 0)
      return fail('IB_WC_REM_ACCESS_ERR', `mkey lacks ${write ? 'REMOTE_WRITE' : 'REMOTE_READ'}`);
    if (!(len > 0) || va < m.start || va + len > m.start + m.length) {
      return fail('IB_WC_REM_ACCESS_ERR', 'request outside the MR');
    }
    const engine = this.dev.engine;
    let done = 0;
    let refaults = 0;
    while (done < len) {
      const a = va + done;
      const n = Math.min(PAGE_SIZE - (a % PAGE_SIZE), len - done);
      const t = this.#translate(key, a, write);
      if (t.kind === 'error') return fail('IB_WC_REM_ACCESS_ERR', t.reason);
      if (t.kind === 'fault') {
        if (refaults >= this.maxRefaults)
          return fail('IB_WC_REM_ACCESS_ERR', 'page fault not resolved after resume');
        refaults++;
        c.pageFaults++;
        const r = this.#pageFault(m, key, a, len - done, write);
        if (r < 0) return fail('IB_WC_REM_ACCESS_ERR', 'page fault resolution failed', r);
        continue;
      }
      if (t.bus === DMA_MAPPING_ERROR) return fail('IB_WC_LOC_PROT_ERR', 'bad translation');
      const chunk = buf.subarray(done, done + n);
      const r = write ? engine.write(t.bus, chunk) : engine.read(t.bus, chunk);
      if (r !== 0) {
        this.stats.iommuFaults++;
        return fail(
          'IB_WC_LOC_PROT_ERR',
          `DMA ${write ? 'write' : 'read'} at bus 0x${t.bus.toString(16)} faulted in the IOMMU`,
          r,
        );
      }
      if (write) this.stats.writeBytes += n;
      else this.stats.readBytes += n;
      done += n;
      c.byteLen = done;
      refaults = 0;
    }
    return c;
  }

  /** The responder side of an RDMA WRITE: stores `data` at `va` of the MR with rkey `rkey`. */
  rdmaWrite(rkey: number, va: number, data: Uint8Array): NicCompletion {
    return this.#request(rkey, va, data, true);
  }

  /** The responder side of an RDMA READ: returns `len` bytes at `va` of the MR with rkey `rkey`. */
  rdmaRead(rkey: number, va: number, len: number): NicCompletion {
    const buf = new Uint8Array(Math.max(0, len));
    const c = this.#request(rkey, va, buf, false);
    c.data = buf;
    return c;
  }

  /** The bus address `va` translates to through `key` right now, or undefined (for checkers). */
  lookup(key: number, va: number, write = false): number | undefined {
    const t = this.#translate(key, va, write);
    return t.kind === 'ok' ? t.bus : undefined;
  }
}
