/**
 * The frames of one fork family and their reference counts. Kernel counterparts: `struct page` /
 * `struct folio` (include/linux/mm_types.h) with `get_page` / `put_page` (include/linux/mm.h,
 * mm/swap.c) and the `mem_map` array, v6.x.
 *
 * Deliberate differences: only the frames this family uses have metadata (a map, not an array
 * over all of memory); a frame is one 4 KiB page of the machine's page allocator.
 */
import { type Machine, PAGE_SIZE } from '@iovalink/iommu';
import { OdpError } from './errors.js';
import type { MmFile } from './filemap.js';

/** Metadata of one frame (kernel: `struct page` / `struct folio`: refcount, mapping, index, dirty). */
export class StructPage {
  readonly pfn: number;
  /** References: page-table entries plus the page cache's own (kernel: `_refcount`). */
  refcount = 1;
  /** The file whose page cache holds the page (kernel: `folio->mapping`). */
  mapping: MmFile | undefined;
  /** Page offset in that file (kernel: `folio->index`). */
  index = 0;
  /** Modified since last written back (kernel: `PG_dirty`). */
  dirty = false;

  constructor(pfn: number) {
    this.pfn = pfn;
  }
}

/**
 * The frames one fork family uses, with their refcounts (kernel: `mem_map`, the `struct page`
 * array). Shared by a parent and its forked children, so a copy-on-write frame is freed when its
 * last user drops it.
 */
export class MemMap {
  readonly machine: Machine;
  readonly #pages = new Map<number, StructPage>();
  /** Address spaces of the family still alive; files are dropped when the last one exits. */
  liveMms = 0;
  /** Files created in this family. */
  readonly files = new Set<MmFile>();

  constructor(machine: Machine) {
    this.machine = machine;
  }

  /** Allocates a zeroed frame with refcount 1 (kernel: `alloc_page` + `clear_page`); undefined when out of memory. */
  allocPage(): StructPage | undefined {
    const phys = this.machine.pages.allocPages(0);
    if (phys === 0) return undefined;
    this.machine.phys.fill(phys, PAGE_SIZE, 0);
    const page = new StructPage(phys / PAGE_SIZE);
    this.#pages.set(page.pfn, page);
    return page;
  }

  /** The metadata of a frame this family owns. */
  page(pfn: number): StructPage | undefined {
    return this.#pages.get(pfn);
  }

  /** Takes a reference (kernel: `get_page`). */
  getPage(page: StructPage): void {
    page.refcount++;
  }

  /** Drops a reference; the last one frees the frame (kernel: `put_page`). */
  putPage(page: StructPage): void {
    if (page.refcount <= 0) {
      throw new OdpError(`put_page: pfn 0x${page.pfn.toString(16)} has no references left`, {
        rule: 'put_page: refcount underflow',
      });
    }
    page.refcount--;
    if (page.refcount === 0) {
      this.#pages.delete(page.pfn);
      this.machine.pages.freePages(page.pfn * PAGE_SIZE, 0);
    }
  }

  /** Marks a page dirty (kernel: `set_page_dirty`). */
  setPageDirty(pfn: number): void {
    const p = this.#pages.get(pfn);
    if (p !== undefined) p.dirty = true;
  }

  /** Frames currently owned. */
  get nrPages(): number {
    return this.#pages.size;
  }
}
