import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DmaEngine } from '../src/dma-engine.js';
import { Errno } from '../src/errno.js';
import {
  iommuDomainFree,
  iommuIotlbSync,
  iommuIovaToPhys,
  iommuMap,
  iommuMapNosync,
  iommuMapSg,
  iommuPgsize,
  iommuReadAndClearDirty,
  iommuSetDirtyTracking,
  iommuSyncMap,
  iommuUnmap,
  iommuUnmapFast,
} from '../src/iommu.js';
import { IommuDevice, SZ_1G, SZ_2M, SZ_4K } from '../src/iommu-device.js';
import {
  IOMMU_DOMAIN_BLOCKED,
  IOMMU_DOMAIN_DMA,
  IOMMU_DOMAIN_IDENTITY,
  IOMMU_DOMAIN_UNMANAGED,
  type IommuDomain,
} from '../src/iommu-domain.js';
import { iommuIotlbGatherInit } from '../src/iommu-gather.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu-prot.js';
import { Machine } from '../src/machine.js';

const RW = IOMMU_READ | IOMMU_WRITE;

function setup(opts: ConstructorParameters<typeof IommuDevice>[1] = {}, memSize = 64 << 20) {
  const machine = new Machine({ memSize });
  const iommu = new IommuDevice(machine, opts);
  const domain = iommu.domainAlloc(IOMMU_DOMAIN_UNMANAGED)!;
  return { machine, iommu, domain };
}

/** The run decomposition iommu_map would produce: [pgsize, count] per step. */
function runs(domain: IommuDomain, iova: number, paddr: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const c = { count: 0 };
  while (size > 0) {
    const pg = iommuPgsize(domain, iova, paddr, size, c);
    out.push([pg, c.count]);
    iova += pg * c.count;
    paddr += pg * c.count;
    size -= pg * c.count;
  }
  return out;
}

describe('iommu_pgsize', () => {
  const { domain } = setup();

  it('maps a 2 MiB-aligned 4 MiB range as two 2 MiB leaves', () => {
    expect(runs(domain, 0x40000000 + SZ_2M, 0x200000, 4 * 2 ** 20)).toEqual([[SZ_2M, 2]]);
  });

  it('forces 4 KiB pages when iova and paddr are not congruent modulo 2 MiB', () => {
    expect(runs(domain, 0x200000, 0x201000, 4 * 2 ** 20)).toEqual([[SZ_4K, 1024]]);
  });

  it('shortens the first run so the next can use a larger page (iova = paddr = 0x1000, 4 MiB)', () => {
    expect(runs(domain, 0x1000, 0x1000, 4 * 2 ** 20)).toEqual([
      [SZ_4K, 511],
      [SZ_2M, 1],
      [SZ_4K, 1],
    ]);
  });

  it('uses 1 GiB leaves where alignment and size allow, and respects a restricted bitmap', () => {
    expect(runs(domain, SZ_1G, 2 * SZ_1G, SZ_1G + SZ_2M)).toEqual([
      [SZ_1G, 1],
      [SZ_2M, 1],
    ]);
    const small = setup({ pgsizeBitmap: SZ_4K | SZ_2M }).domain;
    expect(runs(small, SZ_1G, 2 * SZ_1G, SZ_1G)).toEqual([[SZ_2M, 512]]);
  });

  it('agrees with a brute-force reference (largest aligned size that fits)', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 24 }),
        fc.integer({ min: 0, max: 2 ** 24 }),
        fc.integer({ min: 1, max: 2 ** 19 }),
        (ip, pp, pages) => {
          const iova = ip * SZ_4K;
          const paddr = pp * SZ_4K;
          const size = pages * SZ_4K;
          const pg = iommuPgsize(domain, iova, paddr, size, undefined);
          let best = SZ_4K;
          for (const s of [SZ_2M, SZ_1G]) if (s <= size && iova % s === 0 && paddr % s === 0) best = s;
          expect(pg).toBe(best);
        },
      ),
      { numRuns: 120 },
    );
  });
});

describe('iommu_map / iommu_unmap', () => {
  it('rejects misaligned iova, paddr or size with -EINVAL and maps nothing', () => {
    const { domain, machine } = setup();
    expect(iommuMap(domain, 0x1001, 0x200000, SZ_4K, RW)).toBe(-Errno.EINVAL);
    expect(iommuMap(domain, 0x1000, 0x200800, SZ_4K, RW)).toBe(-Errno.EINVAL);
    expect(iommuMap(domain, 0x1000, 0x200000, 100, RW)).toBe(-Errno.EINVAL);
    expect(machine.counters.pteWrites).toBe(0);
    expect(domain.pgtbl!.leafCount).toBe(0);
  });

  it('returns -EEXIST when mapping over a mapping and changes nothing', () => {
    const { domain } = setup();
    expect(iommuMap(domain, 0x10000, 0x200000, 4 * SZ_4K, RW)).toBe(0);
    expect(iommuMap(domain, 0x12000, 0x300000, 4 * SZ_4K, RW)).toBe(-Errno.EEXIST);
    // the two pages before the collision were rolled back; the original survives
    expect(iommuIovaToPhys(domain, 0x13000)).toBe(0x203000);
    expect(iommuIovaToPhys(domain, 0x14000)).toBe(0);
    expect(domain.pgtbl!.leafCount).toBe(4);
  });

  it('translates at every level: 4K, 2M and 1G leaves with the offset inside the leaf', () => {
    const { domain } = setup({}, 4 * 2 ** 30);
    expect(iommuMap(domain, SZ_1G, 2 * SZ_1G, SZ_1G, RW)).toBe(0);
    expect(iommuMap(domain, 4 * SZ_2M, 6 * SZ_2M, SZ_2M, RW)).toBe(0);
    expect(iommuMap(domain, 0x5000, 0x9000, SZ_4K, RW)).toBe(0);
    expect(iommuIovaToPhys(domain, SZ_1G + 0x12345678)).toBe(2 * SZ_1G + 0x12345678);
    expect(iommuIovaToPhys(domain, 4 * SZ_2M + 0x1abcd)).toBe(6 * SZ_2M + 0x1abcd);
    expect(iommuIovaToPhys(domain, 0x5042)).toBe(0x9042);
    expect(iommuIovaToPhys(domain, 0x6000)).toBe(0);
    expect(domain.pgtbl!.leafCount).toBe(3);
  });

  it('returns the bytes unmapped, stops at a hole, and never splits a leaf', () => {
    const { domain } = setup({}, 2 ** 30);
    expect(iommuMap(domain, 0, 0x400000, 2 * SZ_2M, RW)).toBe(0);
    // unmapping 4 KiB at the start of a 2 MiB leaf removes the whole leaf
    expect(iommuUnmap(domain, 0, SZ_4K)).toBe(SZ_2M);
    expect(iommuIovaToPhys(domain, SZ_2M)).toBe(0x400000 + SZ_2M);
    expect(iommuMap(domain, 4 * SZ_2M, 0x100000, 3 * SZ_4K, RW)).toBe(0);
    // a hole at the second page stops the unmap
    expect(iommuUnmap(domain, 4 * SZ_2M + SZ_4K, 2 * SZ_4K)).toBe(2 * SZ_4K);
    expect(iommuUnmap(domain, 4 * SZ_2M, 3 * SZ_4K)).toBe(SZ_4K);
    expect(iommuUnmap(domain, 4 * SZ_2M, SZ_4K)).toBe(0);
  });

  it('rolls back a partial map when a page-table page cannot be allocated, leaking nothing', () => {
    const { domain, machine } = setup();
    const free0 = machine.pages.nrFreePages;
    machine.faults.failNth('pgtable_page', 4);
    // 3 new tables for the first 2 MiB region, then the next region needs a new leaf table → fails
    const ret = iommuMap(domain, SZ_2M - 2 * SZ_4K, 0x300000, 4 * SZ_4K, RW);
    expect(ret).toBe(-Errno.ENOMEM);
    expect(domain.pgtbl!.leafCount).toBe(0);
    expect(iommuIovaToPhys(domain, SZ_2M - 2 * SZ_4K)).toBe(0);
    // the tables of the first region stay for reuse (kernel drivers keep them); a retry of the
    // same map needs only the one table that failed
    const allocated = machine.counters.pgtablePagesAllocated;
    expect(iommuMap(domain, SZ_2M - 2 * SZ_4K, 0x300000, 4 * SZ_4K, RW)).toBe(0);
    expect(machine.counters.pgtablePagesAllocated).toBe(allocated + 1);
    expect(iommuUnmap(domain, SZ_2M - 2 * SZ_4K, 4 * SZ_4K)).toBe(4 * SZ_4K);
    iommuDomainFree(domain);
    expect(machine.pages.nrFreePages).toBe(free0 + 1); // + the root, allocated before free0
  });

  it('keeps tables on a partial unmap, and frees a covered table only after the IOTLB sync', () => {
    const { domain, machine } = setup();
    expect(iommuMap(domain, 0x40000000, 0x200000, 8 * SZ_4K, RW)).toBe(0);
    expect(domain.pgtbl!.tablePages).toBe(4);
    expect(iommuUnmap(domain, 0x40000000, 8 * SZ_4K)).toBe(8 * SZ_4K);
    expect(domain.pgtbl!.tablePages).toBe(4); // not covering the 2 MiB table: kept for reuse
    const writes = machine.counters.pteWrites;
    expect(iommuMap(domain, 0x40000000, 0x200000, 8 * SZ_4K, RW)).toBe(0);
    expect(machine.counters.pteWrites - writes).toBe(8); // no table links written again
    expect(iommuMap(domain, 0x40000000 + 8 * SZ_4K, 0x208000, SZ_2M - 8 * SZ_4K, RW)).toBe(0);
    const gather = iommuIotlbGatherInit();
    expect(iommuUnmapFast(domain, 0x40000000, SZ_2M, gather)).toBe(SZ_2M);
    expect(gather.freelist.length).toBe(1); // the leaf table the unmap covered
    const freed = machine.counters.pgtablePagesFreed;
    expect(machine.counters.iotlbInvRange).toBe(1);
    iommuIotlbSync(domain, gather);
    expect(machine.counters.iotlbInvRange).toBe(2);
    expect(machine.counters.pgtablePagesFreed).toBe(freed + 1);
    expect(domain.pgtbl!.tablePages).toBe(3);
  });

  it('returns -EINVAL for map and 0 for unmap on non-paging domains', () => {
    const { iommu } = setup();
    const ident = iommu.domainAlloc(IOMMU_DOMAIN_IDENTITY)!;
    expect(iommuMap(ident, 0, 0x100000, SZ_4K, RW)).toBe(-Errno.EINVAL);
    expect(iommuUnmap(ident, 0, SZ_4K)).toBe(0);
    expect(iommuIovaToPhys(ident, 0x1234)).toBe(0x1234);
    expect(iommuIovaToPhys(iommu.domainAlloc(IOMMU_DOMAIN_BLOCKED)!, 0x1234)).toBe(0);
  });

  it('matches a reference under random map/unmap sequences', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            map: fc.boolean(),
            page: fc.integer({ min: 0, max: 1023 }),
            pages: fc.integer({ min: 1, max: 64 }),
            phys: fc.integer({ min: 256, max: 8000 }),
          }),
          { maxLength: 40 },
        ),
        (ops) => {
          const { domain, machine } = setup();
          const ref = new Map<number, number>();
          for (const op of ops) {
            const iova = 0x80000000 + op.page * SZ_4K;
            const len = op.pages * SZ_4K;
            if (op.map) {
              let clash = false;
              for (let i = 0; i < op.pages; i++) if (ref.has(op.page + i)) clash = true;
              const r = iommuMap(domain, iova, op.phys * SZ_4K, len, RW);
              expect(r).toBe(clash ? -Errno.EEXIST : 0);
              if (!clash) for (let i = 0; i < op.pages; i++) ref.set(op.page + i, (op.phys + i) * SZ_4K);
            } else {
              let expectBytes = 0;
              for (let i = 0; i < op.pages && ref.has(op.page + i); i++) expectBytes += SZ_4K;
              expect(iommuUnmap(domain, iova, len)).toBe(expectBytes);
              for (let i = 0; i < expectBytes / SZ_4K; i++) ref.delete(op.page + i);
            }
          }
          for (let p = 0; p < 1100; p++) {
            expect(iommuIovaToPhys(domain, 0x80000000 + p * SZ_4K + 7)).toBe(
              ref.has(p) ? ref.get(p)! + 7 : 0,
            );
          }
          for (const p of [...ref.keys()]) iommuUnmap(domain, 0x80000000 + p * SZ_4K, SZ_4K);
          expect(domain.pgtbl!.leafCount).toBe(0);
          iommuDomainFree(domain);
          expect(machine.counters.pgtablePagesAllocated).toBe(machine.counters.pgtablePagesFreed);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('iommu_map_sg', () => {
  it('coalesces physically contiguous entries into one map and syncs once', () => {
    const { domain, machine } = setup({ cachesNonPresent: true });
    const sg = [
      { page: 0x200000, offset: 0, length: SZ_4K, dmaFlags: 0 },
      { page: 0x201000, offset: 0, length: SZ_4K, dmaFlags: 0 },
      { page: 0x300000, offset: 0, length: 2 * SZ_4K, dmaFlags: 0 },
    ];
    expect(iommuMapSg(domain, 0x10000000, sg, RW)).toBe(4 * SZ_4K);
    expect(machine.counters.iommuMapCalls).toBe(2);
    expect(machine.counters.iotlbSyncMap).toBe(1);
    expect(iommuIovaToPhys(domain, 0x10002000)).toBe(0x300000);
  });

  it('unmaps everything it mapped when a later run fails', () => {
    const { domain } = setup();
    expect(iommuMap(domain, 0x10003000, 0x900000, SZ_4K, RW)).toBe(0);
    const sg = [
      { page: 0x200000, offset: 0, length: 2 * SZ_4K, dmaFlags: 0 },
      { page: 0x300000, offset: 0, length: 2 * SZ_4K, dmaFlags: 0 },
    ];
    expect(iommuMapSg(domain, 0x10000000, sg, RW)).toBe(-Errno.EEXIST);
    expect(iommuIovaToPhys(domain, 0x10000000)).toBe(0);
    expect(iommuIovaToPhys(domain, 0x10003000)).toBe(0x900000);
  });
});

describe('IOTLB and the DMA engine', () => {
  it('moves the right bytes through the page table and faults on unmapped IOVA', () => {
    const { machine, iommu } = setup();
    const domain = iommu.domainAlloc(IOMMU_DOMAIN_DMA)!;
    const faults: number[] = [];
    domain.faultHandler = (_d, f) => {
      faults.push(f.iova);
      return 0;
    };
    const src = machine.pages.allocPages(1);
    const dst = machine.pages.allocPages(1);
    const data = new Uint8Array(2 * SZ_4K).map((_, i) => (i * 13) & 0xff);
    machine.phys.write(src, data);
    expect(iommuMap(domain, 0x1000000, src, 2 * SZ_4K, IOMMU_READ)).toBe(0);
    expect(iommuMap(domain, 0x2000000, dst, 2 * SZ_4K, IOMMU_WRITE)).toBe(0);
    const eng = new DmaEngine(machine, 'nic0', domain);
    expect(eng.copy(0x2000000 + 100, 0x1000000 + 100, 5000)).toBe(0);
    expect(machine.phys.read(dst + 100, 5000)).toEqual(data.subarray(100, 5100));
    // permission: the read-only mapping cannot be written
    expect(eng.write(0x1000000, new Uint8Array(4))).toBe(-Errno.EFAULT);
    // not present
    expect(eng.read(0x3000000, new Uint8Array(4))).toBe(-Errno.EFAULT);
    expect(faults).toEqual([0x1000000, 0x3000000]);
    expect(domain.faults.map((f) => f.reason)).toEqual(['permission', 'not-present']);
    expect(machine.counters.iommuFaults).toBe(2);
  });

  it('keeps a stale translation usable after an unmap without invalidation, until the IOTLB sync', () => {
    const { machine, iommu } = setup();
    const domain = iommu.domainAlloc(IOMMU_DOMAIN_DMA)!;
    const page = machine.pages.allocPages(0);
    machine.phys.write(page, new Uint8Array([1, 2, 3, 4]));
    expect(iommuMap(domain, 0x5000000, page, SZ_4K, RW)).toBe(0);
    const eng = new DmaEngine(machine, 'dev', domain);
    const buf = new Uint8Array(4);
    expect(eng.read(0x5000000, buf)).toBe(0);
    const gather = iommuIotlbGatherInit(true); // queued: the driver skips the invalidation
    expect(iommuUnmapFast(domain, 0x5000000, SZ_4K, gather)).toBe(SZ_4K);
    expect(iommuIovaToPhys(domain, 0x5000000)).toBe(0);
    // the hazard lazy mode accepts: the device still reaches the old page
    expect(eng.read(0x5000000, buf)).toBe(0);
    expect(Array.from(buf)).toEqual([1, 2, 3, 4]);
    iommu.flushIotlbAll(domain);
    expect(eng.read(0x5000000, buf)).toBe(-Errno.EFAULT);
  });

  it('needs iotlb_sync_map on an IOMMU that caches non-present entries', () => {
    const { machine, iommu } = setup({ cachesNonPresent: true });
    const domain = iommu.domainAlloc(IOMMU_DOMAIN_DMA)!;
    const page = machine.pages.allocPages(0);
    const eng = new DmaEngine(machine, 'dev', domain);
    const buf = new Uint8Array(4);
    expect(eng.read(0x7000000, buf)).toBe(-Errno.EFAULT); // caches "not present"
    expect(iommuMapNosync(domain, 0x7000000, page, SZ_4K, RW)).toBe(0);
    expect(eng.read(0x7000000, buf)).toBe(-Errno.EFAULT); // stale negative entry
    expect(iommuSyncMap(domain, 0x7000000, SZ_4K)).toBe(0);
    expect(eng.read(0x7000000, buf)).toBe(0);
  });

  it('identity and blocked domains: 1:1 and always-fault', () => {
    const { machine, iommu } = setup();
    machine.phys.write(0x200000, new Uint8Array([9]));
    const buf = new Uint8Array(1);
    expect(new DmaEngine(machine, 'a', iommu.domainAlloc(IOMMU_DOMAIN_IDENTITY)!).read(0x200000, buf)).toBe(
      0,
    );
    expect(buf[0]).toBe(9);
    expect(new DmaEngine(machine, 'b', iommu.domainAlloc(IOMMU_DOMAIN_BLOCKED)!).read(0x200000, buf)).toBe(
      -Errno.EFAULT,
    );
    expect(new DmaEngine(machine, 'c').read(0x200000, buf)).toBe(0);
  });

  it('tracks dirty pages written by DMA when dirty tracking is on', () => {
    const { machine, domain } = setup();
    const p = machine.pages.allocPages(2);
    expect(iommuMap(domain, 0x100000, p, 4 * SZ_4K, RW)).toBe(0);
    expect(iommuSetDirtyTracking(domain, true)).toBe(0);
    const eng = new DmaEngine(machine, 'dev', domain);
    expect(eng.write(0x102000, new Uint8Array(10))).toBe(0);
    expect(eng.read(0x100000, new Uint8Array(10))).toBe(0);
    const dirty: number[] = [];
    expect(iommuReadAndClearDirty(domain, 0x100000, 4 * SZ_4K, false, (iova) => dirty.push(iova))).toBe(0);
    expect(dirty).toEqual([0x102000]);
    const again: number[] = [];
    iommuReadAndClearDirty(domain, 0x100000, 4 * SZ_4K, false, (iova) => again.push(iova));
    expect(again).toEqual([]);
  });
});
