/**
 * A file's page cache: read-in on fault, write-back, eviction. Kernel counterpart: the
 * `struct address_space` of an inode and mm/filemap.c (`filemap_fault`, `filemap_read_folio`),
 * with `pageout` from mm/vmscan.c and `invalidate_mapping_pages` from mm/truncate.c, v6.x.
 *
 * Deliberate differences: the "disk" is a map of page-sized byte arrays; files exist only inside
 * one fork family (created with `mm.createFile`).
 */
import { PAGE_SIZE } from '@iovalink/iommu';
import type { MemMap, StructPage } from './mem-map.js';

/**
 * A file (or shmem object) with a page cache: bytes live in `backing` (the "disk"), pages being
 * used sit in the cache. Kernel counterpart: `struct address_space` of an inode, reduced to
 * read-in, write-back and eviction. Created with `mm.createFile`.
 */
export class MmFile {
  readonly name: string;
  readonly memMap: MemMap;
  /** Size in bytes. */
  size: number;
  /** Page offset → frame in the page cache (kernel: `i_pages`). */
  readonly cache = new Map<number, StructPage>();
  /** Page offset → contents on "disk". */
  readonly backing = new Map<number, Uint8Array>();
  /** Pages written back so far. */
  writebacks = 0;

  constructor(memMap: MemMap, name: string, size: number) {
    this.memMap = memMap;
    this.name = name;
    this.size = size;
  }

  /** Reads bytes of the file as stored on "disk" (cache not consulted). */
  readBacking(pgoff: number): Uint8Array {
    return this.backing.get(pgoff) ?? new Uint8Array(PAGE_SIZE);
  }

  /**
   * The cached page at `pgoff`, reading it in when absent (kernel: `filemap_fault` →
   * `filemap_read_folio`). The cache holds one reference. Undefined when out of memory.
   */
  getCachePage(pgoff: number): StructPage | undefined {
    let page = this.cache.get(pgoff);
    if (page !== undefined) return page;
    page = this.memMap.allocPage();
    if (page === undefined) return undefined;
    const data = this.backing.get(pgoff);
    if (data !== undefined) this.memMap.machine.phys.write(page.pfn * PAGE_SIZE, data);
    page.mapping = this;
    page.index = pgoff;
    this.cache.set(pgoff, page);
    return page;
  }

  /** Writes a dirty cached page back to "disk" (kernel: `pageout` → `writepage`). */
  writeback(page: StructPage): void {
    if (!page.dirty) return;
    this.backing.set(page.index, this.memMap.machine.phys.read(page.pfn * PAGE_SIZE, PAGE_SIZE));
    page.dirty = false;
    this.writebacks++;
  }

  /** Writes back and drops every cached page that no mapping uses (kernel: `invalidate_mapping_pages`). */
  evictUnmapped(): number {
    let n = 0;
    for (const [pgoff, page] of [...this.cache]) {
      if (page.refcount !== 1) continue;
      this.writeback(page);
      this.cache.delete(pgoff);
      this.memMap.putPage(page);
      n++;
    }
    return n;
  }
}
