// The README example, kept runnable.
import { createDmaRig, createKindDevice } from '@iovalink/dma-api/testing';
import { PAGE_SIZE } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  IB_ACCESS_LOCAL_WRITE,
  IB_ACCESS_ON_DEMAND,
  IB_ACCESS_REMOTE_READ,
  IB_ACCESS_REMOTE_WRITE,
  ibAllocPd,
  ibDeregMr,
  ibRegUserMr,
} from '../src/ib-verbs.js';
import type { Mlx5IbMr } from '../src/mlx5-ib.js';
import { mlx5IbAdd } from '../src/mlx5-main.js';
import { Mm } from '../src/mm.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../src/mm-types.js';

describe('ib_reg_user_mr (README example)', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    it(`${mode}: registers, faults, migrates, re-faults, deregisters`, () => {
      const rig = createDmaRig();
      const ibdev = mlx5IbAdd(createKindDevice(rig, 'strict'), { mode });
      const mm = new Mm(rig.machine);
      const pd = ibAllocPd(ibdev, mm);
      const addr = mm.mmap(0, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const access =
        IB_ACCESS_LOCAL_WRITE | IB_ACCESS_REMOTE_WRITE | IB_ACCESS_REMOTE_READ | IB_ACCESS_ON_DEMAND;
      const mr = ibRegUserMr(pd, addr, 16 * PAGE_SIZE, addr, access) as Mlx5IbMr;
      ibdev.nic.rdmaWrite(mr.rkey, addr + 100, new Uint8Array([1, 2, 3]));
      expect(mm.read(addr + 100, 3)).toEqual(new Uint8Array([1, 2, 3]));
      mm.migratePages(addr, PAGE_SIZE);
      expect(ibdev.nic.rdmaRead(mr.rkey, addr + 100, 3).data).toEqual(new Uint8Array([1, 2, 3]));
      expect(ibDeregMr(mr)).toBe(0);
    });
  }
});
