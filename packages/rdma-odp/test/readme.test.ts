// The README example, kept runnable: the main entry's createOdpSystem, and ibRegUserMr's ERR_PTR
// result narrowed with isErr (no cast).
import { PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { isErr } from '../src/errors.js';
import { IB_ACCESS_LOCAL_WRITE, ibDeregMr, ibRegUserMr } from '../src/ib-verbs.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm-types.js';
import { createOdpSystem, ODP_ACCESS_RW } from '../src/odp-system.js';

describe('ib_reg_user_mr (README example)', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    it(`${mode}: registers, faults, migrates, re-faults, deregisters`, () => {
      const { ibdev, mm, pd } = createOdpSystem({ kind: 'strict', mode });
      const addr = mm.mmap(0, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const mr = ibRegUserMr(pd, addr, 16 * PAGE_SIZE, addr, ODP_ACCESS_RW);
      if (isErr(mr)) throw new Error(`ib_reg_user_mr failed: ${mr}`);
      ibdev.nic.rdmaWrite(mr.rkey, addr + 100, new Uint8Array([1, 2, 3]));
      expect(mm.read(addr + 100, 3)).toEqual(new Uint8Array([1, 2, 3]));
      mm.migratePages(addr, PAGE_SIZE);
      expect(ibdev.nic.rdmaRead(mr.rkey, addr + 100, 3).data).toEqual(new Uint8Array([1, 2, 3]));
      expect(ibDeregMr(mr)).toBe(0);
    });
  }

  it('a registration the kernel refuses comes back as a negative errno that isErr recognises', () => {
    const { mm, pd } = createOdpSystem();
    const addr = mm.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    // ib_check_mr_access: remote write without local write is -EINVAL (22)
    const REMOTE_WRITE_ONLY = ODP_ACCESS_RW & ~IB_ACCESS_LOCAL_WRITE;
    const r = ibRegUserMr(pd, addr, PAGE_SIZE, addr, REMOTE_WRITE_ONLY);
    expect(isErr(r)).toBe(true);
    expect(r).toBe(-22);
  });
});
