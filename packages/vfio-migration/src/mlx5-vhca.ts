/**
 * The migratable device itself: a virtual HCA function (what mlx5 calls a VHCA) with real
 * internal state — 64 registers, 16 queue contexts and a device memory of configurable size —
 * that keeps changing while it runs, and the firmware commands the mlx5 vfio driver issues
 * against it: QUERY_VHCA_MIGRATION_STATE, SAVE_VHCA_STATE (full or incremental, optionally
 * starting dirty tracking), LOAD_VHCA_STATE, SUSPEND_VHCA / RESUME_VHCA (initiator or
 * responder), CREATE/DESTROY_MKEY. The device reaches host memory only through a DMA engine: it
 * writes saved images into, and reads images out of, the driver's data buffers at the bus
 * addresses of the memory key's translation table (MTT), through the PF's IOMMU domain; while
 * running it DMA-writes completions into guest memory through the guest's domain.
 *
 * Kernel counterpart: none as source — this is the hardware/firmware side. The command set and
 * their fields follow include/linux/mlx5/mlx5_ifc.h (save_vhca_state_in/out,
 * load_vhca_state_in, query_vhca_migration_state_in/out, suspend/resume_vhca_in op_mod) as the
 * driver drivers/vfio/pci/mlx5/cmd.c (v6.17) uses them.
 *
 * Differs on purpose: the real image format is opaque firmware data; ours is documented here so
 * the target can check it — a header page (magic, version, flags FULL/INCREMENTAL/FINAL, page
 * counts, a sequence number, a CRC-32 over header, index and data) and an index of 4-byte state
 * page numbers, padded to whole pages, then the state pages. The target refuses images that are
 * corrupt, out of sequence, not starting with a full image, or arriving after the final one,
 * and records whether a final image was loaded so that leaving RESUMING can reject a truncated
 * stream. Commands complete synchronously (the driver's async SAVE callback runs at once).
 *
 * `Mlx5Vhca` is about 400 lines: it is one device (its state, its run loop and the firmware
 * commands that save and load that state share the image format and the DMA engine), the way
 * rp2040js keeps one peripheral in one class.
 */
import type { Device } from '@iovalink/dma-api';
import { DmaEngine, Errno, type IommuDomain, type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { crc32 } from './crc32.js';
import { VfioError } from './errors.js';

/** Number of 32-bit registers of the model VHCA (model device; no kernel counterpart). */
export const MLX5_VHCA_NUM_REGS = 64;
/** Number of queues whose contexts are part of the state (model device; no kernel counterpart). */
export const MLX5_VHCA_NUM_QUEUES = 16;
/**
 * Bytes of one queue context: producer/consumer index, ring size, state, scratch (model device; no
 * kernel counterpart).
 */
export const MLX5_VHCA_QUEUE_CTX_SIZE = 64;
/** Bytes of a completion entry the device DMA-writes into guest memory (as an mlx5 CQE64; model device). */
export const MLX5_VHCA_CQE_SIZE = 64;

/** Magic of a saved image header, "VMIG" little-endian (model firmware format; mlx5's is opaque). */
export const MLX5_VHCA_IMAGE_MAGIC = 0x47494d56;
/** Version of the image format (model firmware format). */
export const MLX5_VHCA_IMAGE_VERSION = 1;
/** Image flag: every state page is present (model firmware format; SAVE_VHCA_STATE with incremental=0). */
export const MLX5_VHCA_IMAGE_FULL = 1 << 0;
/**
 * Image flag: only pages changed since the previous image (model firmware format; SAVE_VHCA_STATE
 * incremental=1).
 */
export const MLX5_VHCA_IMAGE_INCREMENTAL = 1 << 1;
/** Image flag: saved while suspended — after loading it the state is complete (model firmware format). */
export const MLX5_VHCA_IMAGE_FINAL = 1 << 2;
/** Bytes of the fixed image header before the page index (model firmware format). */
export const MLX5_VHCA_IMAGE_HEADER_SIZE = 32;

/**
 * SUSPEND_VHCA/RESUME_VHCA op_mod: stop/start initiating DMA (kernel:
 * `MLX5_SUSPEND_VHCA_IN_OP_MOD_SUSPEND_INITIATOR`).
 */
export const MLX5_VHCA_OP_MOD_INITIATOR = 0;
/**
 * SUSPEND_VHCA/RESUME_VHCA op_mod: stop/start everything (kernel:
 * `MLX5_SUSPEND_VHCA_IN_OP_MOD_SUSPEND_RESPONDER`).
 */
export const MLX5_VHCA_OP_MOD_RESPONDER = 1;

/**
 * Bytes of the header area (fixed header + index) of an image of `nrPages` pages, in whole pages
 * (model firmware format).
 */
export function mlx5VhcaImageHeaderBytes(nrPages: number): number {
  return Math.ceil((MLX5_VHCA_IMAGE_HEADER_SIZE + 4 * nrPages) / PAGE_SIZE) * PAGE_SIZE;
}

/**
 * Bytes of an image holding `nrPages` state pages — what QUERY_VHCA_MIGRATION_STATE reports as
 * `required_umem_size` (model firmware).
 */
export function mlx5VhcaImageBytes(nrPages: number): number {
  return mlx5VhcaImageHeaderBytes(nrPages) + nrPages * PAGE_SIZE;
}

/**
 * Where the guest-facing side of the device DMAs: the VF's IOMMU domain and its mapped size (kernel:
 * the VFIO-owned domain of drivers/vfio/vfio_iommu_type1.c).
 */
export interface Mlx5VhcaGuest {
  /** The domain guest memory is mapped in (IOVA = guest physical address). */
  domain: IommuDomain;
  /** Bytes of guest memory mapped from IOVA 0. */
  size: number;
}

/** Options of a model VHCA. */
export interface Mlx5VhcaOptions {
  /** Name for DMA faults and messages. */
  name?: string;
  /** Bytes of device memory (a multiple of 4 KiB, may be 0). */
  memorySize: number;
  /** The PF device whose DMA engine saves and loads images (kernel: `mdev->device`). */
  pf: Device;
  /** Guest memory the running device writes completions into; omit for none. */
  guest?: Mlx5VhcaGuest;
  /** Called for every DMA write the device makes into guest memory (for tests). */
  onGuestWrite?: (iova: number, length: number) => void;
}

/**
 * Result of QUERY_VHCA_MIGRATION_STATE (kernel: `query_vhca_migration_state_out`,
 * include/linux/mlx5/mlx5_ifc.h).
 */
export interface Mlx5VhcaQuery {
  /** Bytes the next SAVE needs (kernel: `required_umem_size`). */
  requiredUmemSize: number;
  /**
   * Bytes of the whole remaining state (kernel: `remaining_total_size`; without chunk mode = required
   * size).
   */
  remainingTotalSize: number;
}

/** Result of SAVE_VHCA_STATE (kernel: `save_vhca_state_out`, include/linux/mlx5/mlx5_ifc.h). */
export interface Mlx5VhcaSaveOut {
  /** 0, or -errno as `mlx5_cmd_exec` would return it. */
  status: number;
  /** Bytes written into the buffer (kernel: `actual_image_size`). */
  actualImageSize: number;
}

/** A 32-bit little-endian read. */
function getU32(b: Uint8Array, o: number): number {
  return (
    ((b[o] as number) |
      ((b[o + 1] as number) << 8) |
      ((b[o + 2] as number) << 16) |
      ((b[o + 3] as number) << 24)) >>>
    0
  );
}

/** A 32-bit little-endian write. */
function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

/** The model device (a VF's VHCA and the firmware serving its migration commands). */
export class Mlx5Vhca {
  readonly machine: Machine;
  readonly name: string;
  /** The PF device used for SAVE/LOAD DMA. */
  readonly pf: Device;
  /** Registers. */
  readonly regs = new Uint32Array(MLX5_VHCA_NUM_REGS);
  /** Queue contexts, `MLX5_VHCA_QUEUE_CTX_SIZE` bytes each. */
  readonly queues = new Uint8Array(MLX5_VHCA_NUM_QUEUES * MLX5_VHCA_QUEUE_CTX_SIZE);
  /** Device memory. */
  readonly memory: Uint8Array;
  /** The guest-facing DMA engine, when guest memory is attached. */
  readonly engine: DmaEngine | undefined;
  readonly guestSize: number;
  readonly onGuestWrite: ((iova: number, length: number) => void) | undefined;
  /** SUSPEND_VHCA(initiator): no DMA is initiated. */
  initiatorSuspended = false;
  /** SUSPEND_VHCA(responder): the device is fully stopped. */
  responderSuspended = false;
  /** Dirty tracking of internal state is on (started by a SAVE with `set_track`). */
  tracking = false;
  /** One byte per state page: changed since the last image. */
  readonly dirty: Uint8Array;
  #dirtyCount = 0;
  /** Sequence number of the next saved image. */
  #saveSeq = 0;
  /** Sequence number the next loaded image must carry. */
  #loadSeq = 0;
  /** A FINAL image has been loaded since the last reset. */
  loadedFinal = false;
  /** Images loaded since the last reset. */
  loadedImages = 0;
  readonly #mkeys = new Map<number, Float64Array>();
  #nextMkey = 0x100;
  readonly #page = new Uint8Array(PAGE_SIZE);
  readonly #ctl = new Uint8Array(PAGE_SIZE);

  constructor(machine: Machine, options: Mlx5VhcaOptions) {
    const size = options.memorySize;
    if (!(Number.isSafeInteger(size) && size >= 0 && size % PAGE_SIZE === 0)) {
      throw new VfioError(`mlx5 vhca: memorySize ${size} must be a non-negative multiple of ${PAGE_SIZE}`, {
        rule: 'mlx5 vhca: memory size',
      });
    }
    this.machine = machine;
    this.name = options.name ?? 'mlx5-vf';
    this.pf = options.pf;
    this.memory = new Uint8Array(size);
    this.dirty = new Uint8Array(1 + size / PAGE_SIZE);
    this.guestSize = options.guest?.size ?? 0;
    this.engine =
      options.guest === undefined ? undefined : new DmaEngine(machine, this.name, options.guest.domain);
    this.onGuestWrite = options.onGuestWrite;
    for (let q = 0; q < MLX5_VHCA_NUM_QUEUES; q++) {
      // ring entries log2 and state "ready"
      putU32(this.queues, q * MLX5_VHCA_QUEUE_CTX_SIZE + 16, 6);
      putU32(this.queues, q * MLX5_VHCA_QUEUE_CTX_SIZE + 20, 1);
    }
  }

  /** State pages: the control page (registers and queue contexts) then the memory pages. */
  get statePages(): number {
    return this.dirty.length;
  }

  /** Bytes of a full image. */
  get fullImageBytes(): number {
    return mlx5VhcaImageBytes(this.statePages);
  }

  /** State pages changed since the last image (counted while tracking). */
  get dirtyPages(): number {
    return this.#dirtyCount;
  }

  /** Fills device memory from the machine's PRNG (a fresh device's contents). */
  randomize(): void {
    let x = this.machine.rng.u32() | 1;
    const m = this.memory;
    const words = new Uint32Array(m.buffer, m.byteOffset, m.length >>> 2);
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
    for (let i = 0; i < MLX5_VHCA_NUM_REGS; i++) this.regs[i] = this.machine.rng.u32();
    this.#markAllDirty();
  }

  #markDirty(page: number): void {
    if (this.dirty[page] === 0) {
      this.dirty[page] = 1;
      this.#dirtyCount++;
    }
  }

  #markAllDirty(): void {
    this.dirty.fill(1);
    this.#dirtyCount = this.dirty.length;
  }

  #clearDirty(): void {
    this.dirty.fill(0);
    this.#dirtyCount = 0;
  }

  /** True while the device may change its internal state. */
  get running(): boolean {
    return !this.responderSuspended;
  }

  /**
   * Advances the running device by `steps` operations drawn from the machine's PRNG: register
   * writes, queue doorbells (each DMA-writing a completion into guest memory unless the device
   * is suspended as an initiator), and device memory writes. A suspended device does nothing.
   * Returns the steps executed.
   */
  run(steps: number): number {
    if (!this.running) return 0;
    const rng = this.machine.rng;
    const memPages = this.memory.length / PAGE_SIZE;
    for (let s = 0; s < steps; s++) {
      const r = rng.u32() % 100;
      if (r < 25 || (memPages === 0 && r >= 45)) {
        this.regs[rng.u32() % MLX5_VHCA_NUM_REGS] = rng.u32();
        this.#markDirty(0);
      } else if (r < 45) {
        this.#doorbell(rng.u32() % MLX5_VHCA_NUM_QUEUES);
      } else {
        const off = rng.u32() % this.memory.length;
        const len = Math.min(1 + (rng.u32() % 256), this.memory.length - off);
        let x = rng.u32() | 1;
        for (let i = 0; i < len; i++) {
          x ^= x << 13;
          x ^= x >>> 17;
          x ^= x << 5;
          this.memory[off + i] = x & 0xff;
        }
        const first = Math.floor(off / PAGE_SIZE);
        const last = Math.floor((off + len - 1) / PAGE_SIZE);
        for (let p = first; p <= last; p++) this.#markDirty(1 + p);
      }
    }
    return steps;
  }

  /** A doorbell on queue `q`: producer index +1 and, when allowed, a completion DMA'd to guest memory. */
  #doorbell(q: number): void {
    const base = q * MLX5_VHCA_QUEUE_CTX_SIZE;
    const pi = (getU32(this.queues, base) + 1) >>> 0;
    putU32(this.queues, base, pi);
    this.#markDirty(0);
    const engine = this.engine;
    if (engine === undefined || this.initiatorSuspended || this.guestSize < PAGE_SIZE) return;
    const rng = this.machine.rng;
    const guestPages = Math.floor(this.guestSize / PAGE_SIZE);
    const iova =
      (rng.u32() % guestPages) * PAGE_SIZE +
      (rng.u32() % (PAGE_SIZE / MLX5_VHCA_CQE_SIZE)) * MLX5_VHCA_CQE_SIZE;
    const cqe = new Uint8Array(MLX5_VHCA_CQE_SIZE);
    putU32(cqe, 0, q);
    putU32(cqe, 4, pi);
    putU32(cqe, 8, rng.u32());
    putU32(cqe, 12, this.regs[q] as number);
    if (engine.write(iova, cqe) === 0) {
      putU32(this.queues, base + 4, pi);
      this.onGuestWrite?.(iova, MLX5_VHCA_CQE_SIZE);
    }
  }

  /**
   * QUERY_VHCA_MIGRATION_STATE: the size the next SAVE needs (incremental: changed pages only; 0 if
   * none and not final).
   */
  queryMigrationState(incremental: boolean, final: boolean): Mlx5VhcaQuery {
    let size: number;
    if (!incremental || !this.tracking) size = this.fullImageBytes;
    else if (this.#dirtyCount === 0 && !final) size = 0;
    else size = mlx5VhcaImageBytes(this.#dirtyCount);
    return { requiredUmemSize: size, remainingTotalSize: size };
  }

  /** CREATE_MKEY: registers a translation table of one bus address per 4 KiB page; returns the key. */
  createMkey(mtt: Float64Array): number {
    const key = this.#nextMkey++;
    this.#mkeys.set(key, mtt.slice());
    return key;
  }

  /** DESTROY_MKEY. Returns 0, or -EINVAL for an unknown key. */
  destroyMkey(mkey: number): number {
    return this.#mkeys.delete(mkey) ? 0 : -Errno.EINVAL;
  }

  /** The bus addresses a memory key translates (a copy; undefined for an unknown key). Model only, for tests. */
  mkeyTable(mkey: number): Float64Array | undefined {
    return this.#mkeys.get(mkey)?.slice();
  }

  /** Live memory keys (for leak checks). */
  get liveMkeys(): number {
    return this.#mkeys.size;
  }

  /** SUSPEND_VHCA. */
  suspend(opMod: number): number {
    if (opMod === MLX5_VHCA_OP_MOD_RESPONDER) {
      this.initiatorSuspended = true;
      this.responderSuspended = true;
    } else {
      this.initiatorSuspended = true;
    }
    return 0;
  }

  /** RESUME_VHCA. */
  resume(opMod: number): number {
    if (opMod === MLX5_VHCA_OP_MOD_RESPONDER) {
      this.responderSuspended = false;
    } else {
      this.responderSuspended = false;
      this.initiatorSuspended = false;
    }
    return 0;
  }

  /** Stops dirty tracking without saving (the pre-copy cleanup SAVE). */
  stopTracking(): void {
    this.tracking = false;
  }

  /** The control page as it is saved: registers then queue contexts, zero padded. */
  #controlPage(): Uint8Array {
    const c = this.#ctl;
    c.fill(0);
    c.set(new Uint8Array(this.regs.buffer, this.regs.byteOffset, this.regs.byteLength), 0);
    c.set(this.queues, MLX5_VHCA_NUM_REGS * 4);
    return c;
  }

  /** The bytes of state page `p` (a view; the control page is rebuilt). */
  #statePage(p: number): Uint8Array {
    if (p === 0) return this.#controlPage();
    const off = (p - 1) * PAGE_SIZE;
    return this.memory.subarray(off, off + PAGE_SIZE);
  }

  /**
   * SAVE_VHCA_STATE into the memory key `mkey` of `size` bytes: a full image, or with
   * `incremental` only the pages changed since the last image (which needs tracking). `setTrack`
   * starts (or keeps) dirty tracking; without it tracking stops after this save. The image is
   * FINAL when the device is suspended as a responder. Returns the status and the image size;
   * an image larger than `size`, a missing key, or a DMA fault fail the command.
   */
  saveVhcaState(mkey: number, size: number, incremental: boolean, setTrack: boolean): Mlx5VhcaSaveOut {
    const mtt = this.#mkeys.get(mkey);
    if (mtt === undefined) return { status: -Errno.EINVAL, actualImageSize: 0 };
    if (incremental && !this.tracking) return { status: -Errno.EINVAL, actualImageSize: 0 };
    // a full image while not tracking opens a new save session: its sequence starts again
    if (!incremental && !this.tracking) this.#saveSeq = 0;
    const pages: number[] = [];
    for (let p = 0; p < this.statePages; p++) if (!incremental || this.dirty[p] !== 0) pages.push(p);
    const n = pages.length;
    const hdrBytes = mlx5VhcaImageHeaderBytes(n);
    const total = hdrBytes + n * PAGE_SIZE;
    if (total > size || total > mtt.length * PAGE_SIZE) return { status: -Errno.EINVAL, actualImageSize: 0 };
    const engine = this.pf.engine;
    const hdr = new Uint8Array(hdrBytes);
    let flags = incremental ? MLX5_VHCA_IMAGE_INCREMENTAL : MLX5_VHCA_IMAGE_FULL;
    if (this.responderSuspended) flags |= MLX5_VHCA_IMAGE_FINAL;
    putU32(hdr, 0, MLX5_VHCA_IMAGE_MAGIC);
    putU32(hdr, 4, MLX5_VHCA_IMAGE_VERSION | (flags << 16));
    putU32(hdr, 8, n);
    putU32(hdr, 12, this.statePages);
    putU32(hdr, 16, this.#saveSeq);
    putU32(hdr, 24, hdrBytes);
    for (let i = 0; i < n; i++) putU32(hdr, MLX5_VHCA_IMAGE_HEADER_SIZE + 4 * i, pages[i] as number);
    // the CRC covers the header (with its CRC field zero), the index and the pages
    let crc = crc32(0, hdr);
    let bufPage = hdrBytes / PAGE_SIZE;
    for (const p of pages) {
      const data = this.#statePage(p);
      crc = crc32(crc, data);
      if (engine.write(mtt[bufPage] as number, data) !== 0) return { status: -Errno.EIO, actualImageSize: 0 };
      bufPage++;
    }
    putU32(hdr, 20, crc);
    for (let i = 0; i < hdrBytes / PAGE_SIZE; i++) {
      if (engine.write(mtt[i] as number, hdr.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)) !== 0) {
        return { status: -Errno.EIO, actualImageSize: 0 };
      }
    }
    this.#saveSeq++;
    if (incremental || setTrack) this.#clearDirty();
    this.tracking = setTrack;
    return { status: 0, actualImageSize: total };
  }

  /**
   * LOAD_VHCA_STATE from the memory key `mkey`, `size` bytes. The whole image is read and
   * checked (magic, version, sizes, sequence, first image full, nothing after a final image,
   * index in range and increasing, CRC) before any of it is applied, so a bad image leaves the
   * state as it was. Returns 0, -EINVAL for a bad image (firmware BAD_PARAM), or -EIO when a DMA
   * read faults.
   */
  loadVhcaState(mkey: number, size: number): number {
    const mtt = this.#mkeys.get(mkey);
    if (mtt === undefined) return -Errno.EINVAL;
    if (size < PAGE_SIZE || size % PAGE_SIZE !== 0 || size > mtt.length * PAGE_SIZE) return -Errno.EINVAL;
    const engine = this.pf.engine;
    const first = new Uint8Array(PAGE_SIZE);
    if (engine.read(mtt[0] as number, first) !== 0) return -Errno.EIO;
    if (getU32(first, 0) !== MLX5_VHCA_IMAGE_MAGIC) return -Errno.EINVAL;
    const verFlags = getU32(first, 4);
    const flags = verFlags >>> 16;
    const n = getU32(first, 8);
    const hdrBytes = getU32(first, 24);
    if ((verFlags & 0xffff) !== MLX5_VHCA_IMAGE_VERSION) return -Errno.EINVAL;
    if (getU32(first, 12) !== this.statePages || n > this.statePages) return -Errno.EINVAL;
    if (hdrBytes !== mlx5VhcaImageHeaderBytes(n) || size !== hdrBytes + n * PAGE_SIZE) return -Errno.EINVAL;
    const full = (flags & MLX5_VHCA_IMAGE_FULL) !== 0;
    if (full === ((flags & MLX5_VHCA_IMAGE_INCREMENTAL) !== 0)) return -Errno.EINVAL;
    if (full && n !== this.statePages) return -Errno.EINVAL;
    if (getU32(first, 16) !== this.#loadSeq || (this.#loadSeq === 0 && !full) || this.loadedFinal) {
      return -Errno.EINVAL;
    }
    const hdr = new Uint8Array(hdrBytes);
    hdr.set(first);
    for (let i = 1; i < hdrBytes / PAGE_SIZE; i++) {
      if (engine.read(mtt[i] as number, hdr.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)) !== 0)
        return -Errno.EIO;
    }
    const index: number[] = [];
    let prev = -1;
    for (let i = 0; i < n; i++) {
      const p = getU32(hdr, MLX5_VHCA_IMAGE_HEADER_SIZE + 4 * i);
      if (p <= prev || p >= this.statePages) return -Errno.EINVAL;
      index.push(p);
      prev = p;
    }
    // pass 1: checksum without applying (the header is summed with its CRC field zero)
    const want = getU32(hdr, 20);
    putU32(hdr, 20, 0);
    let crc = crc32(0, hdr);
    const page = this.#page;
    const base = hdrBytes / PAGE_SIZE;
    for (let i = 0; i < n; i++) {
      if (engine.read(mtt[base + i] as number, page) !== 0) return -Errno.EIO;
      crc = crc32(crc, page);
    }
    if (crc !== want) return -Errno.EINVAL;
    // pass 2: apply
    for (let i = 0; i < n; i++) {
      const p = index[i] as number;
      if (p === 0) {
        if (engine.read(mtt[base + i] as number, page) !== 0) return -Errno.EIO;
        this.#applyControlPage(page);
      } else {
        const off = (p - 1) * PAGE_SIZE;
        if (engine.read(mtt[base + i] as number, this.memory.subarray(off, off + PAGE_SIZE)) !== 0)
          return -Errno.EIO;
      }
    }
    this.#loadSeq++;
    this.loadedImages++;
    if ((flags & MLX5_VHCA_IMAGE_FINAL) !== 0) this.loadedFinal = true;
    return 0;
  }

  #applyControlPage(page: Uint8Array): void {
    for (let i = 0; i < MLX5_VHCA_NUM_REGS; i++) this.regs[i] = getU32(page, 4 * i);
    this.queues.set(page.subarray(MLX5_VHCA_NUM_REGS * 4, MLX5_VHCA_NUM_REGS * 4 + this.queues.length));
  }

  /** Prepares to receive a new stream (the driver's STOP → RESUMING): sequence and final flag reset. */
  beginLoad(): void {
    this.#loadSeq = 0;
    this.loadedFinal = false;
    this.loadedImages = 0;
  }

  /**
   * Function-level reset: registers, queue contexts and memory cleared, running, no tracking,
   * no memory keys held by migration (kernel counterpart: what FLR does to the function).
   */
  reset(): void {
    this.regs.fill(0);
    this.queues.fill(0);
    this.memory.fill(0);
    this.initiatorSuspended = false;
    this.responderSuspended = false;
    this.tracking = false;
    this.#clearDirty();
    this.#saveSeq = 0;
    this.beginLoad();
  }
}

/**
 * True if two devices hold byte-equal state: registers, queue contexts and device memory (the
 * migration helper's final check; no kernel counterpart — a VMM cannot look inside the device).
 */
export function mlx5VhcaStateEqual(a: Mlx5Vhca, b: Mlx5Vhca): boolean {
  if (a.memory.length !== b.memory.length) return false;
  for (let i = 0; i < MLX5_VHCA_NUM_REGS; i++) if (a.regs[i] !== b.regs[i]) return false;
  for (let i = 0; i < a.queues.length; i++) if (a.queues[i] !== b.queues[i]) return false;
  const am = a.memory;
  const bm = b.memory;
  const aw = new Uint32Array(am.buffer, am.byteOffset, am.length >>> 2);
  const bw = new Uint32Array(bm.buffer, bm.byteOffset, bm.length >>> 2);
  for (let i = 0; i < aw.length; i++) if (aw[i] !== bw[i]) return false;
  return true;
}
