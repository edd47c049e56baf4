/**
 * `@iovalink/iommu/internal`: the small helpers the sibling `@iovalink/*` layers share with this
 * one (bit and alignment arithmetic on safe-integer addresses, little-endian 64-bit fields, the
 * hex formatting of error messages, the IOVA rcache size classes and the page-table page free
 * that the flush queue defers, the scattered-page picker behind `fragmentMemory`). Not part of the public API: names and signatures here may change
 * in any release. Kernel counterparts are named on each definition.
 */
export {
  alignDown,
  alignUp,
  getLe64,
  INV_TWO32,
  isAligned,
  isAlignedPow2,
  isPowerOf2,
  lo32,
  modPow2,
  putLe64,
  roundupPowOfTwo,
  TWO32,
} from './bits.js';
export { hex } from './errors.js';
export { freeTablePage } from './io-pgtable.js';
export { iovaRcacheRange } from './iova-rcache.js';
export { allocScatteredPageList } from './page-alloc.js';
