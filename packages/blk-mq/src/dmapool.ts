/**
 * DMA pools: small fixed-size blocks of coherent DMA memory carved from pages, as in Linux
 * `mm/dmapool.c` (`dma_pool_create`, `dma_pool_alloc`, `dma_pool_free`, `dma_pool_destroy`).
 * NVMe takes its PRP lists and SGL descriptor lists from two of them (256-byte and 4 KiB blocks).
 * A block has a CPU view (its physical address here, written through a DataView on the frame)
 * and a bus address the device reads it at.
 * Differs on purpose: the kernel backs pools with `dma_alloc_coherent`, which dma-api does not
 * model; each pool page is mapped once with `dmaMapPhys(DMA_BIDIRECTIONAL)` when the pool grows
 * and unmapped when the pool is destroyed (so dma-debug sees the pool pages as live mappings until
 * then). No boundary-crossing rule, no poisoning. Fault point `dma_pool` fails an allocation
 * (GFP_ATOMIC exhaustion).
 */
import { type Device, DMA_BIDIRECTIONAL, dmaMapPhys, dmaMappingError, dmaUnmapPhys } from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import { alignUp, hex, isPowerOf2 } from '@iovalink/iommu/internal';
import { BlkError } from './errors.js';

/** Fault point consulted by `dmaPoolAlloc`. */
export const DMA_POOL_FAULT = 'dma_pool';

/** One block of a pool: `vaddr` is its physical address (the kernel's CPU pointer), `dma` its bus address. */
export class DmaPoolBlock {
  /** Physical address of the block (the kernel returns a kernel virtual address). */
  readonly vaddr: number;
  /** Bus address the device uses. */
  readonly dma: number;
  /** Little-endian view of the block's bytes in physical memory. */
  readonly view: DataView;
  /** The pool it belongs to. */
  readonly pool: DmaPool;
  /** In use. */
  busy = false;

  constructor(pool: DmaPool, vaddr: number, dma: number, view: DataView) {
    this.pool = pool;
    this.vaddr = vaddr;
    this.dma = dma;
    this.view = view;
  }
}

/** A pool of equal blocks (kernel: `struct dma_pool`). */
export class DmaPool {
  /** Name, for messages (kernel: `name`). */
  readonly name: string;
  /** The device the blocks are mapped for. */
  readonly dev: Device;
  /** Block size in bytes (kernel: `size`). */
  readonly size: number;
  /** Pages mapped for the pool: [phys, dma]. */
  readonly pages: Array<[number, number]> = [];
  readonly #free: DmaPoolBlock[] = [];
  /** Blocks handed out and not freed. */
  nrActive = 0;
  destroyed = false;

  constructor(name: string, dev: Device, size: number) {
    this.name = name;
    this.dev = dev;
    this.size = size;
  }

  /** Free blocks (taken LIFO). */
  get freeBlocks(): DmaPoolBlock[] {
    return this.#free;
  }
}

/**
 * Creates a pool of `size`-byte blocks aligned to `align` (kernel: `dma_pool_create`). Blocks never
 * cross a page. Returns the pool, or null for a size/alignment it cannot serve (kernel: NULL).
 */
export function dmaPoolCreate(name: string, dev: Device, size: number, align: number): DmaPool | null {
  if (!(Number.isInteger(size) && size >= 1 && size <= PAGE_SIZE)) return null;
  if (!isPowerOf2(align)) return null;
  const blk = alignUp(size, align);
  if (blk > PAGE_SIZE) return null;
  return new DmaPool(name, dev, blk);
}

/** Adds one mapped page of blocks to the pool (kernel: `pool_alloc_page`); false when memory or mapping fails. */
function poolAllocPage(pool: DmaPool): boolean {
  const machine = pool.dev.machine;
  const phys = machine.pages.allocPages(0);
  if (phys === 0) return false;
  machine.phys.fill(phys, PAGE_SIZE, 0);
  const dma = dmaMapPhys(pool.dev, phys, PAGE_SIZE, DMA_BIDIRECTIONAL);
  if (dmaMappingError(pool.dev, dma)) {
    machine.pages.freePages(phys, 0);
    return false;
  }
  pool.pages.push([phys, dma]);
  const frame = machine.phys.frame(phys / PAGE_SIZE);
  const n = Math.floor(PAGE_SIZE / pool.size);
  for (let i = n - 1; i >= 0; i--) {
    const off = i * pool.size;
    const view = new DataView(frame.buffer, frame.byteOffset + off, pool.size);
    pool.freeBlocks.push(new DmaPoolBlock(pool, phys + off, dma + off, view));
  }
  return true;
}

/**
 * Takes a block (kernel: `dma_pool_alloc` with GFP_ATOMIC), growing the pool by a page when
 * empty. Returns null when the `dma_pool` fault point fires or no page can be had.
 */
export function dmaPoolAlloc(pool: DmaPool): DmaPoolBlock | null {
  if (pool.destroyed) {
    throw new BlkError(`dma_pool_alloc: ${pool.name} was destroyed`, {
      rule: 'dma_pool_alloc: destroyed pool',
    });
  }
  if (pool.dev.machine.faults.shouldFail(DMA_POOL_FAULT)) return null;
  if (pool.freeBlocks.length === 0 && !poolAllocPage(pool)) return null;
  const b = pool.freeBlocks.pop()!;
  b.busy = true;
  pool.nrActive++;
  return b;
}

/** Returns a block (kernel: `dma_pool_free`); throws on a block that is not in use (double free). */
export function dmaPoolFree(pool: DmaPool, block: DmaPoolBlock): void {
  if (block.pool !== pool || !block.busy) {
    throw new BlkError(
      `dma_pool_free: ${pool.name}: block ${hex(block.vaddr)} is not allocated from this pool`,
      {
        rule: 'dma_pool_free: not allocated',
      },
    );
  }
  block.busy = false;
  pool.nrActive--;
  pool.freeBlocks.push(block);
}

/**
 * Destroys a pool, unmapping and freeing its pages (kernel: `dma_pool_destroy`). Throws while
 * blocks are still in use (the kernel reports the pool busy and leaks it).
 */
export function dmaPoolDestroy(pool: DmaPool): void {
  if (pool.nrActive > 0) {
    throw new BlkError(`dma_pool_destroy: ${pool.name} is busy: ${pool.nrActive} block(s) still in use`, {
      rule: 'dma_pool_destroy: busy',
    });
  }
  const machine = pool.dev.machine;
  for (const [phys, dma] of pool.pages) {
    dmaUnmapPhys(pool.dev, dma, PAGE_SIZE, DMA_BIDIRECTIONAL);
    machine.pages.freePages(phys, 0);
  }
  pool.pages.length = 0;
  pool.freeBlocks.length = 0;
  pool.destroyed = true;
}
