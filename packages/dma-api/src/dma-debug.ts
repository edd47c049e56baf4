/**
 * dma-debug: tracks every live mapping of a device and reports misuse as a `DmaDebugError` naming
 * the rule, before the operation changes anything. Kernel counterpart: kernel/dma/debug.c
 * (CONFIG_DMA_API_DEBUG): `check_unmap`, `check_sync`, `debug_dma_mapping_error`, the leak report
 * of `dma_debug_device_change`. Differs on purpose: errors are thrown (the kernel prints), and the
 * two-step IOVA API is tracked too (links per state), which the kernel's dma-debug does not do.
 */
import { hex } from '@iovalink/iommu/internal';
import type { Device } from './device.js';
import { DMA_BIDIRECTIONAL, type DmaDataDirection, dmaDirectionName } from './dma-direction.js';
import { DmaDebugError } from './errors.js';
import type { Scatterlist } from './scatterlist.js';

/** A tracked single (map_phys/map_page) mapping. */
interface SingleEntry {
  devAddr: number;
  phys: number;
  size: number;
  dir: DmaDataDirection;
  checked: boolean;
}

/** A tracked scatterlist mapping. */
interface SgEntry {
  nents: number;
  mappedEnts: number;
  dir: DmaDataDirection;
  /** DMA segments [addr, len] for sync checks. */
  segments: Array<[number, number]>;
}

/** A tracked two-step IOVA state: its size and linked [offset, end) ranges. */
interface IovaEntry {
  size: number;
  granule: number;
  pad: number;
  links: Array<[number, number]>;
}

/** Remembers this many recent unmaps to tell a double unmap from a never-mapped address. */
const RECENT = 64;

/** The per-device dma-debug tracker. */
export class DmaDebug {
  readonly dev: Device;
  /** Report unmaps of mappings whose `dmaMappingError` was never called (kernel: same check). */
  checkMappingErrors = true;
  readonly #single = new Map<number, SingleEntry[]>();
  readonly #sg = new Map<Scatterlist, SgEntry>();
  readonly #iova = new Map<object, IovaEntry>();
  readonly #recent: number[] = [];

  constructor(dev: Device) {
    this.dev = dev;
  }

  #fail(rule: string, detail: string): never {
    throw new DmaDebugError(`DMA-API: ${this.dev.name}: ${detail} [${rule}]`, { rule });
  }

  // ---- single mappings -------------------------------------------------------------------

  /**
   * Records a new single mapping (kernel: `debug_dma_map_phys`). Several live mappings may share a
   * bus address (the same page mapped twice on a direct device): like the kernel's hash buckets,
   * every one is kept.
   */
  addSingle(devAddr: number, phys: number, size: number, dir: DmaDataDirection): void {
    const e: SingleEntry = { devAddr, phys, size, dir, checked: false };
    const list = this.#single.get(devAddr);
    if (list === undefined) this.#single.set(devAddr, [e]);
    else list.push(e);
  }

  /** Marks a mapping's error check done (kernel: `debug_dma_mapping_error`). */
  mappingErrorChecked(devAddr: number): void {
    const list = this.#single.get(devAddr);
    if (list === undefined) return;
    const e = list.find((x) => !x.checked);
    if (e !== undefined) e.checked = true;
  }

  /** The entry an unmap refers to: the best match at that address (kernel: `bucket_find_exact` + best fit). */
  #matchSingle(devAddr: number, size: number, dir: DmaDataDirection): SingleEntry | undefined {
    const list = this.#single.get(devAddr);
    if (list === undefined || list.length === 0) return undefined;
    return (
      list.find((x) => x.size === size && x.dir === dir && x.checked) ??
      list.find((x) => x.size === size && x.dir === dir) ??
      list.find((x) => x.size === size) ??
      list[0]
    );
  }

  /** Checks an unmap without changing anything (kernel: `check_unmap`). */
  checkUnmapSingle(devAddr: number, size: number, dir: DmaDataDirection): void {
    const e = this.#matchSingle(devAddr, size, dir);
    if (e === undefined) {
      if (this.#recent.includes(devAddr)) {
        this.#fail('dma_unmap: double unmap', `device driver unmaps ${hex(devAddr)} a second time`);
      }
      this.#fail(
        'dma_unmap: not mapped',
        `device driver frees DMA memory it has not allocated [${hex(devAddr)}]`,
      );
    }
    if (e.size !== size) {
      this.#fail(
        'dma_unmap: wrong size',
        `device driver frees DMA memory with different size [${hex(devAddr)}] [map size=${e.size}] [unmap size=${size}]`,
      );
    }
    if (e.dir !== dir) {
      this.#fail(
        'dma_unmap: wrong direction',
        `device driver frees DMA memory with different direction [${hex(devAddr)}] [map ${dmaDirectionName(e.dir)}] [unmap ${dmaDirectionName(dir)}]`,
      );
    }
    if (this.checkMappingErrors && !e.checked) {
      this.#fail(
        'dma_unmap: mapping error not checked',
        `device driver failed to check map error [${hex(devAddr)}] [size=${size}]: call dmaMappingError() after mapping`,
      );
    }
  }

  /** Forgets the single mapping a checked unmap referred to. */
  removeSingle(devAddr: number, size: number, dir: DmaDataDirection): void {
    const e = this.#matchSingle(devAddr, size, dir);
    const list = this.#single.get(devAddr);
    if (e === undefined || list === undefined) return;
    list.splice(list.indexOf(e), 1);
    if (list.length === 0) {
      this.#single.delete(devAddr);
      this.#recent.push(devAddr);
      if (this.#recent.length > RECENT) this.#recent.shift();
    }
  }

  /** All live single mappings. */
  *#singles(): IterableIterator<SingleEntry> {
    for (const list of this.#single.values()) yield* list;
  }

  // ---- scatterlists -----------------------------------------------------------------------

  /** Records a mapped list (kernel: `debug_dma_map_sg`). */
  addSg(
    sgl: Scatterlist,
    nents: number,
    mappedEnts: number,
    dir: DmaDataDirection,
    segments: Array<[number, number]>,
  ): void {
    this.#sg.set(sgl, { nents, mappedEnts, dir, segments });
  }

  /** Checks an sg unmap (kernel: `debug_dma_unmap_sg` → `check_unmap`). */
  checkUnmapSg(sgl: Scatterlist, nents: number, dir: DmaDataDirection): void {
    const e = this.#sg.get(sgl);
    if (e === undefined)
      this.#fail('dma_unmap_sg: not mapped', 'device driver unmaps a scatterlist it has not mapped');
    if (e.nents !== nents) {
      this.#fail(
        'dma_unmap_sg: wrong nents',
        `device driver unmaps a scatterlist with ${nents} entries, mapped with ${e.nents} (pass the original nents, not the returned count)`,
      );
    }
    if (e.dir !== dir) {
      this.#fail(
        'dma_unmap: wrong direction',
        `device driver unmaps a scatterlist with ${dmaDirectionName(dir)}, mapped ${dmaDirectionName(e.dir)}`,
      );
    }
  }

  /** Forgets a list after a checked unmap. */
  removeSg(sgl: Scatterlist): void {
    this.#sg.delete(sgl);
  }

  // ---- syncs -------------------------------------------------------------------------------

  /** Checks a sync of `[devAddr, devAddr + size)` (kernel: `check_sync`). */
  checkSync(devAddr: number, size: number, dir: DmaDataDirection): void {
    let mapDir: DmaDataDirection | undefined;
    for (const e of this.#singles()) {
      if (devAddr >= e.devAddr && devAddr + size <= e.devAddr + e.size) {
        mapDir = e.dir;
        break;
      }
    }
    if (mapDir === undefined) {
      outer: for (const e of this.#sg.values()) {
        for (const [a, l] of e.segments) {
          if (devAddr >= a && devAddr + size <= a + l) {
            mapDir = e.dir;
            break outer;
          }
        }
      }
    }
    if (mapDir === undefined) {
      this.#fail(
        'dma_sync: outside a mapping',
        `device driver syncs [${hex(devAddr)}, +${size}) that is not (wholly) mapped`,
      );
    }
    if (mapDir !== DMA_BIDIRECTIONAL && mapDir !== dir) {
      this.#fail(
        'dma_sync: wrong direction',
        `device driver syncs DMA memory with different direction [${hex(devAddr)}] [mapped ${dmaDirectionName(mapDir)}] [synced ${dmaDirectionName(dir)}]`,
      );
    }
  }

  // ---- two-step IOVA API ------------------------------------------------------------------

  /** Records a successful `dma_iova_try_alloc`. */
  iovaAlloc(state: object, size: number, granule: number, pad: number): void {
    this.#iova.set(state, { size, granule, pad, links: [] });
  }

  #iovaEntry(state: object, what: string): IovaEntry {
    const e = this.#iova.get(state);
    if (e === undefined)
      this.#fail(`${what}: no IOVA allocated`, `${what} on a state without a live IOVA allocation`);
    return e;
  }

  /** Checks a link before it maps anything. */
  checkLink(state: object, offset: number, size: number): void {
    const e = this.#iovaEntry(state, 'dma_iova_link');
    const end = offset + size;
    for (const [s, t] of e.links) {
      if (offset < t && s < end) {
        this.#fail(
          'dma_iova_link: over a linked range',
          `link [${hex(offset)}, ${hex(end)}) overlaps linked [${hex(s)}, ${hex(t)})`,
        );
      }
      // a link that ends inside a granule must be the last one
      if ((e.pad + t) % e.granule !== 0 && t !== e.size && offset >= t) {
        this.#fail(
          'dma_iova_link: link after an unaligned end',
          `link at ${hex(offset)} follows [${hex(s)}, ${hex(t)}), which does not end on the merge boundary`,
        );
      }
    }
  }

  /** Records a link. */
  addLink(state: object, offset: number, size: number): void {
    this.#iova.get(state)?.links.push([offset, offset + size]);
  }

  /** Checks an unlink: `[offset, offset + size)` must be covered by links. */
  checkUnlink(state: object, offset: number, size: number): void {
    const e = this.#iovaEntry(state, 'dma_iova_unlink');
    if (coveredBytes(e.links, offset, offset + size) !== size) {
      this.#fail(
        'dma_iova_unlink: not linked',
        `unlink of [${hex(offset)}, +${hex(size)}) which is not (wholly) linked`,
      );
    }
  }

  /** Removes `[offset, offset + size)` from the links. */
  removeLinks(state: object, offset: number, size: number): void {
    const e = this.#iova.get(state);
    if (e === undefined) return;
    const end = offset + size;
    const out: Array<[number, number]> = [];
    for (const [s, t] of e.links) {
      if (t <= offset || s >= end) out.push([s, t]);
      else {
        if (s < offset) out.push([s, offset]);
        if (t > end) out.push([end, t]);
      }
    }
    e.links = out;
  }

  /** Checks a free: nothing may be linked. */
  checkFree(state: object): void {
    const e = this.#iovaEntry(state, 'dma_iova_free');
    if (e.links.length > 0) {
      const [s, t] = e.links[0]!;
      this.#fail(
        'dma_iova_free: links left',
        `IOVA freed with ${e.links.length} range(s) still linked, e.g. [${hex(s)}, ${hex(t)}): unlink first`,
      );
    }
  }

  /** Checks a destroy: the linked ranges must be exactly `[0, mappedLen)`. */
  checkDestroy(state: object, mappedLen: number): void {
    const e = this.#iovaEntry(state, 'dma_iova_destroy');
    let total = 0;
    for (const [s, t] of e.links) total += t - s;
    if (total !== mappedLen || coveredBytes(e.links, 0, mappedLen) !== mappedLen) {
      this.#fail(
        'dma_iova_destroy: linked range is not [0, mapped_len)',
        `destroy with mapped_len ${hex(mappedLen)} but ${hex(total)} bytes linked`,
      );
    }
  }

  /** Forgets a state after free/destroy. */
  iovaRelease(state: object): void {
    this.#iova.delete(state);
  }

  // ---- leaks --------------------------------------------------------------------------------

  /** Live mappings, one line each (kernel: the pending-allocations report). */
  leaks(): string[] {
    const out: string[] = [];
    for (const e of this.#singles()) {
      out.push(`single [${hex(e.devAddr)}] size ${e.size} ${dmaDirectionName(e.dir)}`);
    }
    for (const e of this.#sg.values()) out.push(`scatterlist nents ${e.nents} ${dmaDirectionName(e.dir)}`);
    for (const e of this.#iova.values()) out.push(`iova state size ${e.size} with ${e.links.length} link(s)`);
    return out;
  }

  /** Number of live tracked mappings. */
  get liveCount(): number {
    let singles = 0;
    for (const list of this.#single.values()) singles += list.length;
    return singles + this.#sg.size + this.#iova.size;
  }
}

/** Bytes of `[lo, hi)` covered by the (non-overlapping) ranges. */
function coveredBytes(links: ReadonlyArray<[number, number]>, lo: number, hi: number): number {
  let n = 0;
  for (const [s, t] of links) n += Math.max(0, Math.min(t, hi) - Math.max(s, lo));
  return n;
}

/**
 * Reports leaks when a device goes away (kernel: `dma_debug_device_change` on driver unbind):
 * throws a `DmaDebugError` listing every live mapping; does nothing when there is none or
 * dma-debug is off.
 */
export function dmaDebugDeviceTeardown(dev: Device): void {
  const d = dev.debug;
  if (d === undefined) return;
  const leaks = d.leaks();
  if (leaks.length > 0) {
    throw new DmaDebugError(
      `DMA-API: ${dev.name}: device driver has pending DMA allocations while released from device [count=${leaks.length}]: ${leaks.slice(0, 8).join('; ')}`,
      { rule: 'dma-debug: leak at teardown' },
    );
  }
}
