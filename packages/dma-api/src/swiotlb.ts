/**
 * swiotlb, the software IO TLB: bounce buffers for devices that cannot reach the original memory
 * or must not see the rest of its page. Models Linux `kernel/dma/swiotlb.c` and
 * `include/linux/swiotlb.h` (v6.17): 2 KiB slots grouped in 128-slot segments, per-CPU areas each
 * with its own search index and used count, per-slot `orig_addr` / `alloc_size` / `list` (free-run
 * length) / `pad_slots`, the min-align and alloc-align rules of `swiotlb_search_pool_area`, the
 * run merging of `swiotlb_release_slots`, and the bounce copies at map, sync and unmap.
 *
 * Differs on purpose: the pool comes from the machine's buddy allocator as blocks of at most
 * 4 MiB (the kernel's default pool is one contiguous memblock range); no dynamic or transient
 * pools (CONFIG_SWIOTLB_DYNAMIC), no restricted pools (CONFIG_DMA_RESTRICTED_POOL), no memory
 * encryption, no segment-boundary check in the slot search (no device is passed). The device's
 * `min_align_mask` and untrusted flag are parameters; the padding zeroing for untrusted devices,
 * which the kernel does in its caller (`iommu_dma_map_swiotlb`, drivers/iommu/dma-iommu.c), is
 * done here on request. Where the kernel WARNs or BUGs, a `DmaError` is thrown and nothing
 * changes.
 *
 * Size: about 720 lines in one file because it mirrors one kernel file, kernel/dma/swiotlb.c
 * (about 1,900 lines in v6.x: `swiotlb_map` runs through line 1,646), of which it models the
 * default pool, the slot search and release, and the bounce paths.
 */
import { MAX_PAGE_ORDER, type Machine, PAGE_SHIFT, PAGE_SIZE } from '@iovalink/iommu';
import { alignDown, alignUp, hex, lo32, roundupPowOfTwo, TWO32 } from '@iovalink/iommu/internal';
import {
  DMA_ATTR_SKIP_CPU_SYNC,
  DMA_BIDIRECTIONAL,
  DMA_FROM_DEVICE,
  DMA_MAPPING_ERROR,
  DMA_TO_DEVICE,
  type DmaDataDirection,
  dmaDirectionName,
  validDmaDirection,
} from './dma-direction.js';
import { DmaError } from './errors.js';

/** log2 of the slot size (include/linux/swiotlb.h `IO_TLB_SHIFT`). */
export const IO_TLB_SHIFT = 11;
/** Bytes in one slot, the unit of allocation (include/linux/swiotlb.h `IO_TLB_SIZE`). */
export const IO_TLB_SIZE = 1 << IO_TLB_SHIFT;
/**
 * Most contiguous slots one mapping may use; free runs never cross a segment of this many slots
 * (include/linux/swiotlb.h `IO_TLB_SEGSIZE`).
 */
export const IO_TLB_SEGSIZE = 128;
/** Default pool size, 64 MiB (include/linux/swiotlb.h `IO_TLB_DEFAULT_SIZE`). */
export const IO_TLB_DEFAULT_SIZE = 64 << 20;

/** Slots per CPU page (kernel/dma/swiotlb.c `SLABS_PER_PAGE`). */
const SLABS_PER_PAGE = 1 << (PAGE_SHIFT - IO_TLB_SHIFT);
/** `orig_addr` of a free slot (kernel/dma/swiotlb.c `INVALID_PHYS_ADDR`, `~0` there). */
const INVALID_PHYS_ADDR = -1;

/** One area: a slot range with its own lock in the kernel (kernel: `struct io_tlb_area`). */
export interface IoTlbArea {
  /** Slots of this area in use (`used`). */
  used: number;
  /** Area-relative slot index where the next search starts (`index`). */
  index: number;
}

/** A live bounce mapping, keyed by its bounce address in `IoTlbMem.mappings` (model bookkeeping). */
export interface SwiotlbMapping {
  /** Bounce address returned by `swiotlbTblMapSingle` (the byte that corresponds to `origAddr`). */
  readonly tlbAddr: number;
  /** Original buffer address. */
  readonly origAddr: number;
  /** Bytes requested at map time. */
  readonly mappingSize: number;
  /** First allocated slot (padding slots included). */
  readonly index: number;
  /** Slots allocated (padding slots included). */
  readonly nslots: number;
  /** Whole padding slots before the data (kernel: `pad_slots`). */
  readonly padSlots: number;
}

/** Options for `IoTlbMem.create`. */
export interface IoTlbMemOptions {
  /** Pool size in bytes (default `IO_TLB_DEFAULT_SIZE`); rounded up as described at `create`. */
  size?: number;
  /** Number of areas (default the machine's CPU count); 0 means 1, rounded up to a power of two. */
  nareas?: number;
  /** Which kernel's slot-search alignment rules the pool follows (default `'current'`). */
  slotSearch?: SwiotlbSlotSearch;
}

/**
 * The slot-search alignment rules of a pool. `'current'` (v6.9 and later, as modeled): every
 * candidate slot is checked against the allocation alignment and the min-align bits above it, and
 * an allocation of a page or more is page-aligned only when no other alignment is asked for.
 * `'v6.1'` (`swiotlb_do_find_slots` of v6.1, confirmed against a recorded Debian 6.1 kernel by
 * `iovalink kernel-diff`): only the min-align bits above the slot size are checked per candidate;
 * the search starts at the area index rounded up to the stride, where the stride is the slot count
 * of those bits, doubled for allocations of a page or more, and at least the allocation alignment's
 * slot count. With NVMe's 4 KiB - 1 `min_align_mask`, a page-sized bounce then starts on a
 * 4-slot boundary in v6.1 but a 2-slot boundary now.
 */
export type SwiotlbSlotSearch = 'current' | 'v6.1';

/**
 * A swiotlb pool (kernel: `struct io_tlb_mem` with its one `struct io_tlb_pool` and its
 * `struct io_tlb_area` array, kernel/dma/swiotlb.c and include/linux/swiotlb.h). Slot `i` lives
 * in block `floor(i / slotsPerBlock)`; blocks are buddy blocks, so a block is aligned to its size
 * and slot alignment rules hold as in one contiguous pool. Differs: several blocks instead of one
 * range (a mapping never crosses a block, since free runs never cross a 128-slot segment); no
 * dynamic pools; `alignOffset` per slot stands for the device's `min_align_mask`, which the
 * kernel reads from the device at sync and unmap time; `mappings` records the live mappings so
 * that misuse can be reported.
 */
export class IoTlbMem {
  /** The machine whose memory holds the pool. */
  readonly machine: Machine;
  /** Number of areas (power of two; kernel: `nareas`). */
  readonly nareas: number;
  /** The slot-search alignment rules (see `SwiotlbSlotSearch`). */
  readonly slotSearch: SwiotlbSlotSearch;
  /** Slots per area, a multiple of `IO_TLB_SEGSIZE` (kernel: `area_nslabs`). */
  readonly areaNslabs: number;
  /** The areas (kernel: `areas`). */
  readonly areas: readonly IoTlbArea[];
  /** Physical address of each block of the pool. */
  readonly blocks: readonly number[];
  /** Buddy order of every block (at most `MAX_PAGE_ORDER`, 4 MiB). */
  readonly blockOrder: number;
  /** Slots in one block. */
  readonly slotsPerBlock: number;
  /** Per slot: original address of the bytes bounced through it, -1 when free (`slots[].orig_addr`). */
  readonly origAddr: Float64Array;
  /**
   * Per slot: bytes from this slot's start (less the in-slot offset) to the end of its allocation
   * (kernel: `slots[].alloc_size`).
   */
  readonly allocSize: Int32Array;
  /** Per slot: free slots from here to the end of its segment, 0 when used (kernel: `slots[].list`). */
  readonly list: Uint16Array;
  /** Per slot: padding slots before the data, valid in the first data slot (`slots[].pad_slots`). */
  readonly padSlots: Uint16Array;
  /** Per slot: in-slot offset of the data (kernel: recomputed from the device's `min_align_mask`). */
  readonly alignOffset: Uint16Array;
  /** Live bounce mappings by bounce address. */
  readonly mappings: ReadonlyMap<number, SwiotlbMapping> = new Map();
  readonly #nslabs: number;
  readonly #blockIndex = new Map<number, number>();
  readonly #blockBytes: number;
  #destroyed = false;

  private constructor(
    machine: Machine,
    blocks: number[],
    order: number,
    nareas: number,
    slotSearch: SwiotlbSlotSearch,
  ) {
    this.machine = machine;
    this.slotSearch = slotSearch;
    this.blocks = blocks;
    this.blockOrder = order;
    this.slotsPerBlock = SLABS_PER_PAGE << order;
    this.#blockBytes = PAGE_SIZE * 2 ** order;
    this.#nslabs = blocks.length * this.slotsPerBlock;
    this.nareas = nareas;
    this.areaNslabs = this.#nslabs / nareas;
    const areas: IoTlbArea[] = [];
    for (let i = 0; i < nareas; i++) areas.push({ used: 0, index: 0 });
    this.areas = areas;
    const n = this.#nslabs;
    this.origAddr = new Float64Array(n).fill(INVALID_PHYS_ADDR);
    this.allocSize = new Int32Array(n);
    this.list = new Uint16Array(n);
    this.padSlots = new Uint16Array(n);
    this.alignOffset = new Uint16Array(n);
    for (let i = 0; i < n; i++) this.list[i] = Math.min(IO_TLB_SEGSIZE - ioTlbOffset(i), n - i);
    blocks.forEach((phys, i) => {
      this.#blockIndex.set(phys / this.#blockBytes, i);
    });
  }

  /**
   * Allocates and initialises a pool (kernel: `swiotlb_init_late` + `swiotlb_init_io_tlb_pool`,
   * kernel/dma/swiotlb.c). The size is rounded up to whole segments (256 KiB); a pool of at most
   * 4 MiB is one buddy block of the next power-of-two size, as `swiotlb_init_late` does; a larger
   * pool is a number of 4 MiB (order-10) blocks. Areas: `nareas` (default the CPU count), 0 → 1,
   * rounded up to a power of two (`swiotlb_adjust_nareas`), then limited so that each area holds a
   * whole number of segments (`limit_nareas`). The pool bytes are zeroed, as the kernel does.
   * Returns `undefined`, with every block taken given back, when a block cannot be had.
   * Differs: no retry with a smaller pool, no separate allocation of the slot array (not counted).
   */
  static create(machine: Machine, options: IoTlbMemOptions = {}): IoTlbMem | undefined {
    const size = options.size ?? IO_TLB_DEFAULT_SIZE;
    if (!(Number.isSafeInteger(size) && size > 0)) {
      throw new DmaError(`swiotlb_init_late: size ${size} is not a positive integer`, {
        rule: 'swiotlb_init: size',
      });
    }
    const slotSearch = options.slotSearch ?? 'current';
    if (slotSearch !== 'current' && slotSearch !== 'v6.1') {
      throw new DmaError(`swiotlb_init_late: slotSearch '${String(slotSearch)}' is not 'current' or 'v6.1'`, {
        rule: 'swiotlb_init: slotSearch',
      });
    }
    const want = options.nareas ?? machine.cpus;
    if (!(Number.isInteger(want) && want >= 0 && want <= 4096)) {
      throw new DmaError(`swiotlb_init_late: nareas ${want} outside 0..4096`, {
        rule: 'swiotlb_init: nareas',
      });
    }
    const nslabs0 = alignUp(Math.ceil(size / IO_TLB_SIZE), IO_TLB_SEGSIZE);
    const maxBlockSlots = SLABS_PER_PAGE << MAX_PAGE_ORDER;
    let order: number;
    let nblocks: number;
    if (nslabs0 <= maxBlockSlots) {
      order = getOrder(nslabs0 * IO_TLB_SIZE);
      nblocks = 1;
    } else {
      order = MAX_PAGE_ORDER;
      nblocks = Math.ceil(nslabs0 / maxBlockSlots);
    }
    const nslabs = nblocks * (SLABS_PER_PAGE << order);
    const segments = nslabs / IO_TLB_SEGSIZE;
    let nareas = roundupPowOfTwo(Math.max(want, 1));
    // limit_nareas, and keep every area a whole number of segments when nslabs is not a power of two
    while (segments % nareas !== 0) nareas /= 2;

    const blocks: number[] = [];
    for (let i = 0; i < nblocks; i++) {
      const phys = machine.pages.allocPages(order);
      if (phys === 0) {
        for (const b of blocks) machine.pages.freePages(b, order);
        return undefined;
      }
      blocks.push(phys);
    }
    for (const b of blocks) machine.phys.fill(b, PAGE_SIZE * 2 ** order, 0);
    return new IoTlbMem(machine, blocks, order, nareas, slotSearch);
  }

  /** Slots in the pool, 0 once destroyed (kernel: `nslabs`). */
  get nslabs(): number {
    return this.#destroyed ? 0 : this.#nslabs;
  }

  /** Slots in use over all areas (kernel: `mem_used`). */
  get usedSlots(): number {
    let used = 0;
    for (const a of this.areas) used += a.used;
    return used;
  }

  /** True once `destroy` has run. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Physical address of slot `index` (kernel: `slot_addr`). */
  slotAddr(index: number): number {
    const b = Math.floor(index / this.slotsPerBlock);
    return this.blocks[b]! + (index - b * this.slotsPerBlock) * IO_TLB_SIZE;
  }

  /** Index of the slot holding `paddr`, or -1 when `paddr` is not in the pool. */
  slotIndex(paddr: number): number {
    if (this.#destroyed || !(paddr >= 0)) return -1;
    const b = this.#blockIndex.get(Math.floor(paddr / this.#blockBytes));
    if (b === undefined) return -1;
    return b * this.slotsPerBlock + Math.floor((paddr - this.blocks[b]!) / IO_TLB_SIZE);
  }

  /**
   * Gives every block back to the page allocator (kernel: `swiotlb_exit`, kernel/dma/swiotlb.c).
   * Differs: throws `DmaError` (and frees nothing) while bounce mappings are live or when already
   * destroyed; the kernel frees regardless.
   */
  destroy(): void {
    if (this.#destroyed) {
      throw new DmaError('swiotlb_exit: pool already destroyed', { rule: 'swiotlb_exit: destroyed' });
    }
    if (this.mappings.size > 0) {
      throw new DmaError(`swiotlb_exit: ${this.mappings.size} bounce mappings still live`, {
        rule: 'swiotlb_exit: live mappings',
      });
    }
    for (const b of this.blocks) this.machine.pages.freePages(b, this.blockOrder);
    this.#destroyed = true;
  }
}

/**
 * Bounces `[origAddr, origAddr + mappingSize)` into swiotlb slots and returns the bounce address
 * (the byte that corresponds to `origAddr`), or `DMA_MAPPING_ERROR` when the pool is destroyed,
 * the `swiotlb` fault point fires, the padded size exceeds `IO_TLB_SEGSIZE * IO_TLB_SIZE`, or no
 * run of free slots fits (kernel: `swiotlb_tbl_map_single`, kernel/dma/swiotlb.c).
 *
 * - The bits of `origAddr` under `minAlignMask` below `allocAlignMask | (IO_TLB_SIZE - 1)` are kept
 *   as an offset into the allocation; whole slots of that offset become `pad_slots`; higher
 *   min-align bits are matched by choosing the slot (`swiotlb_search_pool_area`).
 * - The allocation starts at an address aligned to `allocAlignMask + 1` (at least a slot) and its
 *   size is a multiple of it; with both masks 0 an allocation of a page or more is page-aligned.
 * - The current CPU's area is searched first, then the others in turn (`swiotlb_find_slots`).
 * - The original bytes are copied into the bounce buffer for every direction, as the kernel does
 *   since v5.18 (so a device that writes only part of a DMA_FROM_DEVICE buffer does not expose or
 *   clobber stale bytes); `counters.bounceBytes` counts them.
 * - `untrusted`: zeroes the bytes around the data up to `allocAlignMask + 1` boundaries, i.e. the
 *   rest of the IOMMU granules the caller maps (kernel: `iommu_dma_map_swiotlb` in
 *   drivers/iommu/dma-iommu.c, the caller, does this memset; not counted as bounce bytes).
 *
 * `attrs` is accepted for the kernel's signature (it only silences the "buffer is full" warning
 * there). Throws `DmaError` for an invalid direction, size or mask, and `MachineError` when the
 * original range is outside RAM, before anything is allocated. Differs: no device (its
 * `min_align_mask` and untrusted flag are parameters), no segment-boundary rule, no dynamic pool
 * growth, no "alloc alignment" WARN for masks above a page.
 */
export function swiotlbTblMapSingle(
  mem: IoTlbMem,
  origAddr: number,
  mappingSize: number,
  allocAlignMask: number,
  minAlignMask: number,
  dir: DmaDataDirection,
  _attrs: number,
  untrusted = false,
): number {
  if (!validDmaDirection(dir)) {
    throw new DmaError(`swiotlb_tbl_map_single: ${dmaDirectionName(dir)} is not a mapping direction`, {
      rule: 'swiotlb_tbl_map_single: direction',
    });
  }
  if (!(Number.isSafeInteger(mappingSize) && mappingSize > 0)) {
    throw new DmaError(`swiotlb_tbl_map_single: size ${mappingSize} is not a positive integer`, {
      rule: 'swiotlb_tbl_map_single: size',
    });
  }
  checkMask(allocAlignMask, 'alloc_align_mask');
  checkMask(minAlignMask, 'min_align_mask');
  mem.machine.phys.check(origAddr, mappingSize);
  if (mem.nslabs === 0) return DMA_MAPPING_ERROR;
  if (mem.machine.faults.shouldFail('swiotlb')) return DMA_MAPPING_ERROR;

  let offset = swiotlbAlignOffset(minAlignMask, allocAlignMask, origAddr);
  const size = alignUp(mappingSize + offset, allocAlignMask + 1);
  const first = swiotlbFindSlots(mem, origAddr, size, allocAlignMask, minAlignMask);
  if (first === -1) return DMA_MAPPING_ERROR;

  const padSlots = Math.floor(offset / IO_TLB_SIZE);
  offset -= padSlots * IO_TLB_SIZE;
  const index = first + padSlots;
  mem.padSlots[index] = padSlots;
  const nslots = nrSlots(size);
  for (let i = 0; i < nslots - padSlots; i++) {
    mem.origAddr[index + i] = origAddr + i * IO_TLB_SIZE;
    mem.alignOffset[index + i] = offset;
  }
  const tlbAddr = mem.slotAddr(index) + offset;
  liveMappings(mem).set(tlbAddr, { tlbAddr, origAddr, mappingSize, index: first, nslots, padSlots });
  mem.machine.counters.bounceSlotsUsed += nslots;

  swiotlbBounce(mem, tlbAddr, mappingSize, DMA_TO_DEVICE);
  if (untrusted) {
    const granule = allocAlignMask + 1;
    const preStart = alignDown(tlbAddr, granule);
    mem.machine.phys.fill(preStart, tlbAddr - preStart, 0);
    const postStart = tlbAddr + mappingSize;
    mem.machine.phys.fill(postStart, alignUp(postStart, granule) - postStart, 0);
  }
  return tlbAddr;
}

/**
 * Ends a bounce mapping (kernel: `swiotlb_tbl_unmap_single` → `__swiotlb_tbl_unmap_single`,
 * include/linux/swiotlb.h and kernel/dma/swiotlb.c): copies the bounce buffer back to the original
 * for DMA_FROM_DEVICE and DMA_BIDIRECTIONAL unless `DMA_ATTR_SKIP_CPU_SYNC`, then releases the
 * slots, merging them with the free runs before and after inside their segment
 * (`swiotlb_release_slots`). Differs: an address that is not the start of a live bounce mapping
 * (the kernel's inline wrapper ignores addresses outside the pool and trusts the rest) throws
 * `DmaError` (rule `swiotlb_tbl_unmap_single: not mapped`), and a `mappingSize` beyond the
 * allocation (the kernel WARNs and truncates) throws, both changing nothing.
 */
export function swiotlbTblUnmapSingle(
  mem: IoTlbMem,
  tlbAddr: number,
  mappingSize: number,
  dir: DmaDataDirection,
  attrs: number,
): void {
  const m = mem.mappings.get(tlbAddr);
  if (m === undefined) {
    throw new DmaError(
      `swiotlb_tbl_unmap_single: ${hex(tlbAddr)} is not the start of a live bounce mapping`,
      {
        rule: 'swiotlb_tbl_unmap_single: not mapped',
      },
    );
  }
  if (!(Number.isSafeInteger(mappingSize) && mappingSize >= 0)) {
    throw new DmaError(`swiotlb_tbl_unmap_single: size ${mappingSize} is not a non-negative integer`, {
      rule: 'swiotlb_tbl_unmap_single: size',
    });
  }
  if (!(attrs & DMA_ATTR_SKIP_CPU_SYNC) && (dir === DMA_FROM_DEVICE || dir === DMA_BIDIRECTIONAL)) {
    swiotlbBounce(mem, tlbAddr, mappingSize, DMA_FROM_DEVICE);
  }
  const nslots = swiotlbReleaseSlots(mem, tlbAddr);
  liveMappings(mem).delete(tlbAddr);
  mem.machine.counters.bounceSlotsUsed -= nslots;
}

/**
 * Makes CPU writes to the original buffer visible in the bounce buffer: copies
 * `[tlbAddr, tlbAddr + size)` from the original for DMA_TO_DEVICE and DMA_BIDIRECTIONAL, nothing
 * for DMA_FROM_DEVICE (kernel: `swiotlb_sync_single_for_device` →
 * `__swiotlb_sync_single_for_device`, include/linux/swiotlb.h, kernel/dma/swiotlb.c). The range
 * may be any part of a mapping; the original address comes from the slot's `orig_addr` and the
 * offset of `tlbAddr` in its slot (`swiotlb_bounce`). An address outside the pool, or in a slot
 * with no original, is ignored, as in the kernel. DMA_NONE throws `DmaError` (kernel: BUG_ON), and
 * so does a range running past the allocation or starting before the data (kernel: WARN and
 * truncate / undetected).
 */
export function swiotlbSyncSingleForDevice(
  mem: IoTlbMem,
  tlbAddr: number,
  size: number,
  dir: DmaDataDirection,
): void {
  checkSyncArgs('swiotlb_sync_single_for_device', size, dir);
  if (!isSwiotlbBuffer(mem, tlbAddr)) return;
  if (dir === DMA_TO_DEVICE || dir === DMA_BIDIRECTIONAL) swiotlbBounce(mem, tlbAddr, size, DMA_TO_DEVICE);
}

/**
 * Makes device writes to the bounce buffer visible in the original: copies
 * `[tlbAddr, tlbAddr + size)` back for DMA_FROM_DEVICE and DMA_BIDIRECTIONAL, nothing for
 * DMA_TO_DEVICE (kernel: `swiotlb_sync_single_for_cpu` → `__swiotlb_sync_single_for_cpu`,
 * include/linux/swiotlb.h, kernel/dma/swiotlb.c). Partial ranges, ignored addresses and errors as
 * for `swiotlbSyncSingleForDevice`.
 */
export function swiotlbSyncSingleForCpu(
  mem: IoTlbMem,
  tlbAddr: number,
  size: number,
  dir: DmaDataDirection,
): void {
  checkSyncArgs('swiotlb_sync_single_for_cpu', size, dir);
  if (!isSwiotlbBuffer(mem, tlbAddr)) return;
  if (dir === DMA_FROM_DEVICE || dir === DMA_BIDIRECTIONAL)
    swiotlbBounce(mem, tlbAddr, size, DMA_FROM_DEVICE);
}

/**
 * True when `paddr` lies inside the pool (kernel: `is_swiotlb_buffer` / `swiotlb_find_pool`,
 * include/linux/swiotlb.h). False once the pool is destroyed. Differs: one pool per `IoTlbMem`,
 * no per-device transient pools.
 */
export function isSwiotlbBuffer(mem: IoTlbMem, paddr: number): boolean {
  return mem.slotIndex(paddr) >= 0;
}

/**
 * Largest mapping swiotlb can always bounce for a device with `minAlignMask`:
 * `IO_TLB_SIZE * IO_TLB_SEGSIZE` less the min-align mask rounded up to a slot (kernel:
 * `swiotlb_max_mapping_size`, kernel/dma/swiotlb.c). Differs: takes the mask, not the device.
 */
export function swiotlbMaxMappingSize(minAlignMask: number): number {
  checkMask(minAlignMask, 'min_align_mask');
  const minAlign = minAlignMask === 0 ? 0 : alignUp(minAlignMask, IO_TLB_SIZE);
  return IO_TLB_SIZE * IO_TLB_SEGSIZE - minAlign;
}

/**
 * The original address that the bounce byte at `tlbAddr` stands for, or `undefined` when
 * `tlbAddr` is not in a mapped slot or lies before a mapping's first byte. For tests and
 * dma-debug. Kernel counterpart: the address arithmetic of `swiotlb_bounce`
 * (kernel/dma/swiotlb.c); the kernel exports no such function.
 */
export function swiotlbOrigAddr(mem: IoTlbMem, tlbAddr: number): number | undefined {
  const index = mem.slotIndex(tlbAddr);
  if (index < 0) return undefined;
  const orig = mem.origAddr[index]!;
  if (orig === INVALID_PHYS_ADDR) return undefined;
  const tlbOffset = tlbAddr - mem.slotAddr(index) - mem.alignOffset[index]!;
  if (tlbOffset < 0 && isFirstDataSlot(mem, index)) return undefined;
  return orig + tlbOffset;
}

// ---------------------------------------------------------------------------------------------
// internals

/** The live-mapping map, writable (public face is a ReadonlyMap). */
function liveMappings(mem: IoTlbMem): Map<number, SwiotlbMapping> {
  return mem.mappings as Map<number, SwiotlbMapping>;
}

/** Slot index within its segment (kernel: `io_tlb_offset`). */
function ioTlbOffset(index: number): number {
  return index % IO_TLB_SEGSIZE;
}

/** Slots needed for `bytes` (kernel: `nr_slots`). */
function nrSlots(bytes: number): number {
  return Math.ceil(bytes / IO_TLB_SIZE);
}

/** `x & mask` for a mask of at most 32 bits and any non-negative safe integer `x`. */
function and32(x: number, mask: number): number {
  return (lo32(x) & mask) >>> 0;
}

/** `a | b` for masks of at most 32 bits. */
function or32(a: number, b: number): number {
  return (a | b) >>> 0;
}

/** Page order of a size in bytes (kernel: `get_order`). */
function getOrder(bytes: number): number {
  let order = 0;
  while (PAGE_SIZE * 2 ** order < bytes) order++;
  return order;
}

function checkMask(mask: number, name: string): void {
  if (!(Number.isInteger(mask) && mask >= 0 && mask < TWO32)) {
    throw new DmaError(`swiotlb: ${name} ${mask} is not a 32-bit mask`, { rule: `swiotlb: ${name}` });
  }
}

function checkSyncArgs(fn: string, size: number, dir: number): void {
  if (!validDmaDirection(dir)) {
    throw new DmaError(`${fn}: ${dmaDirectionName(dir)} is not a mapping direction`, {
      rule: `${fn}: direction`,
    });
  }
  if (!(Number.isSafeInteger(size) && size >= 0)) {
    throw new DmaError(`${fn}: size ${size} is not a non-negative integer`, { rule: `${fn}: size` });
  }
}

/**
 * Offset from the start of an allocation at which the data must begin (kernel:
 * `swiotlb_align_offset`): the address bits under the min-align mask, below the allocation
 * alignment or the slot size, whichever is larger.
 */
function swiotlbAlignOffset(minAlignMask: number, allocAlignMask: number, addr: number): number {
  return and32(addr, and32(minAlignMask, or32(allocAlignMask, IO_TLB_SIZE - 1)));
}

/** Slots to skip after an aligned slot that did not fit (kernel: `get_max_slots`). */
function getMaxSlots(mask: number): number {
  return Math.floor(mask / IO_TLB_SIZE) + 1;
}

/** Area-relative index wrapped to 0 at the area's end (kernel: `wrap_area_index`). */
function wrapAreaIndex(mem: IoTlbMem, index: number): number {
  return index >= mem.areaNslabs ? 0 : index;
}

/** True when slot `index` holds the first data byte of a live mapping. */
function isFirstDataSlot(mem: IoTlbMem, index: number): boolean {
  return mem.mappings.has(mem.slotAddr(index) + mem.alignOffset[index]!);
}

/**
 * Searches the areas for `allocSize` bytes of slots, the current CPU's area first (kernel:
 * `swiotlb_find_slots`, the !CONFIG_SWIOTLB_DYNAMIC variant, plus the size limit of the dynamic
 * variant). Returns the first slot's index or -1.
 */
function swiotlbFindSlots(
  mem: IoTlbMem,
  origAddr: number,
  allocSize: number,
  allocAlignMask: number,
  minAlignMask: number,
): number {
  if (allocSize > IO_TLB_SEGSIZE * IO_TLB_SIZE) return -1;
  const start = mem.machine.currentCpu & (mem.nareas - 1);
  let i = start;
  do {
    const index = swiotlbSearchPoolArea(mem, i, origAddr, allocSize, allocAlignMask, minAlignMask);
    if (index >= 0) return index;
    if (++i >= mem.nareas) i = 0;
  } while (i !== start);
  return -1;
}

/**
 * Finds and takes a run of slots in one area (kernel: `swiotlb_search_pool_area`): starting at the
 * area's search index, a candidate slot must satisfy the allocation alignment and match the
 * original's min-align bits above the alignment, and its free run (`list`) must hold `nslots`;
 * after an aligned candidate fails, the search jumps by the alignment stride. On success the slots
 * get `list = 0` and their `alloc_size`, the free run before them (inside the segment) is
 * renumbered, and the area's search index moves past them. Returns the first slot or -1.
 */
function swiotlbSearchPoolArea(
  mem: IoTlbMem,
  areaIndex: number,
  origAddr: number,
  allocSize: number,
  allocAlignMask: number,
  minAlignMask: number,
): number {
  const area = mem.areas[areaIndex]!;
  const nslots = nrSlots(allocSize);
  const offset = swiotlbAlignOffset(minAlignMask, 0, origAddr);
  let iotlbAlignMask = minAlignMask;
  let stride: number;
  let index = area.index;
  if (mem.slotSearch === 'v6.1') {
    // v6.1: the per-candidate check sees only the min-align bits above a slot; the allocation
    // alignment and the page rule act through the stride and the aligned starting index alone
    iotlbAlignMask = (minAlignMask & ~(IO_TLB_SIZE - 1)) >>> 0;
    stride = (iotlbAlignMask >>> IO_TLB_SHIFT) + 1;
    if (allocSize >= PAGE_SIZE) stride = Math.max(stride, stride * 2 ** (PAGE_SHIFT - IO_TLB_SHIFT));
    stride = Math.max(stride, Math.floor(allocAlignMask / IO_TLB_SIZE) + 1);
    allocAlignMask = 0;
    index = wrapAreaIndex(mem, alignUp(index, stride));
  } else {
    // allocations of a page or more stay page-aligned when nobody asked for an alignment
    if (allocAlignMask === 0 && iotlbAlignMask === 0 && allocSize >= PAGE_SIZE)
      allocAlignMask = PAGE_SIZE - 1;
    allocAlignMask = or32(allocAlignMask, IO_TLB_SIZE - 1);
    iotlbAlignMask = (iotlbAlignMask & ~allocAlignMask) >>> 0;
    stride = getMaxSlots(Math.max(allocAlignMask, iotlbAlignMask));
  }

  if (nslots > mem.areaNslabs - area.used) return -1;
  const slotBase = areaIndex * mem.areaNslabs;
  for (let checked = 0; checked < mem.areaNslabs; ) {
    const slotIndex = slotBase + index;
    const tlbAddr = mem.slotAddr(slotIndex);
    if (
      and32(tlbAddr, allocAlignMask) !== 0 ||
      (origAddr !== 0 && and32(tlbAddr, iotlbAlignMask) !== and32(origAddr, iotlbAlignMask))
    ) {
      index = wrapAreaIndex(mem, index + 1);
      checked++;
      continue;
    }
    if (mem.list[slotIndex]! >= nslots) {
      for (let i = slotIndex; i < slotIndex + nslots; i++) {
        mem.list[i] = 0;
        mem.allocSize[i] = allocSize - (offset + (i - slotIndex) * IO_TLB_SIZE);
      }
      let count = 0;
      for (let i = slotIndex - 1; i >= 0 && ioTlbOffset(i) !== IO_TLB_SEGSIZE - 1 && mem.list[i] !== 0; i--) {
        mem.list[i] = ++count;
      }
      area.index = wrapAreaIndex(mem, index + nslots);
      area.used += nslots;
      return slotIndex;
    }
    index = wrapAreaIndex(mem, index + stride);
    checked += stride;
  }
  return -1;
}

/**
 * Returns a mapping's slots to the free runs (kernel: `swiotlb_release_slots`): the slots take
 * run lengths counting on from the free run after them (if inside the same segment), then the
 * free slots before them in the segment are renumbered. Returns the number of slots released.
 */
function swiotlbReleaseSlots(mem: IoTlbMem, tlbAddr: number): number {
  const dataSlot = mem.slotIndex(tlbAddr);
  const offset = mem.alignOffset[dataSlot]!;
  const index = dataSlot - mem.padSlots[dataSlot]!;
  const nslots = nrSlots(mem.allocSize[index]! + offset);
  const area = mem.areas[Math.floor(index / mem.areaNslabs)]!;

  let count = 0;
  if (index + nslots < alignUp(index + 1, IO_TLB_SEGSIZE)) count = mem.list[index + nslots]!;
  for (let i = index + nslots - 1; i >= index; i--) {
    mem.list[i] = ++count;
    mem.origAddr[i] = INVALID_PHYS_ADDR;
    mem.allocSize[i] = 0;
    mem.padSlots[i] = 0;
    mem.alignOffset[i] = 0;
  }
  for (let i = index - 1; i >= 0 && ioTlbOffset(i) !== IO_TLB_SEGSIZE - 1 && mem.list[i] !== 0; i--) {
    mem.list[i] = ++count;
  }
  area.used -= nslots;
  return nslots;
}

/**
 * Copies between the bounce buffer at `tlbAddr` and the original it stands for (kernel:
 * `swiotlb_bounce`): DMA_TO_DEVICE copies original → bounce, DMA_FROM_DEVICE bounce → original.
 * A slot with no original is ignored, as in the kernel. A range running past the allocation
 * (kernel: WARN "Buffer overflow detected" and truncate) or starting before the mapping's first
 * byte (kernel: undetectable) throws `DmaError` before anything is copied.
 */
function swiotlbBounce(
  mem: IoTlbMem,
  tlbAddr: number,
  size: number,
  dir: typeof DMA_TO_DEVICE | typeof DMA_FROM_DEVICE,
): void {
  const index = mem.slotIndex(tlbAddr);
  const orig0 = mem.origAddr[index]!;
  if (orig0 === INVALID_PHYS_ADDR) return;
  const tlbOffset = tlbAddr - mem.slotAddr(index) - mem.alignOffset[index]!;
  if (tlbOffset < 0 && isFirstDataSlot(mem, index)) {
    throw new DmaError(`swiotlb_bounce: ${hex(tlbAddr)} lies before the first byte of its bounce mapping`, {
      rule: 'swiotlb_bounce: before mapping',
    });
  }
  const avail = mem.allocSize[index]! - tlbOffset;
  if (size > avail) {
    throw new DmaError(
      `swiotlb_bounce: buffer overflow at ${hex(tlbAddr)}: ${size} bytes, allocation has ${avail} left`,
      { rule: 'swiotlb_bounce: buffer overflow' },
    );
  }
  if (size === 0) return;
  const orig = orig0 + tlbOffset;
  if (dir === DMA_TO_DEVICE) mem.machine.phys.copy(tlbAddr, orig, size);
  else mem.machine.phys.copy(orig, tlbAddr, size);
  mem.machine.counters.bounceBytes += size;
}
