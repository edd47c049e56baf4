// Model-based property test: random interleavings of NIC accesses (RDMA READ/WRITE), CPU accesses,
// migrations, reclaim, munmap/mmap and prefetch against a reference of what each virtual page
// holds. After every step no MTT entry may reach a frame the process does not map there.
import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { PAGE_SIZE } from '@iovalink/iommu';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  ibAdviseMr,
  ibDeregMr,
} from '../src/ib-verbs.js';
import { PROT_READ, PROT_WRITE } from '../src/mm-types.js';
import {
  createOdpRig,
  findStaleTranslations,
  mmapAnon,
  odpMetaLiveBytes,
  odpPattern,
  regOdpMr,
} from '../src/testing/index.js';

const PAGES = 12;

type Op =
  | { t: 'nicWrite'; page: number; off: number; len: number; seed: number }
  | { t: 'nicRead'; page: number; off: number; len: number }
  | { t: 'cpuWrite'; page: number; off: number; len: number; seed: number }
  | { t: 'cpuRead'; page: number; off: number; len: number }
  | { t: 'migrate'; page: number; n: number }
  | { t: 'reclaim'; page: number; n: number }
  | { t: 'munmap'; page: number; n: number }
  | { t: 'mmap'; page: number; n: number }
  | { t: 'prefetch'; page: number; n: number; write: boolean };

const page = fc.integer({ min: 0, max: PAGES - 1 });
const n = fc.integer({ min: 1, max: 3 });
const inPage = fc
  .tuple(fc.integer({ min: 0, max: PAGE_SIZE - 1 }), fc.integer({ min: 1, max: PAGE_SIZE }))
  .map(([off, len]) => ({ off, len: Math.min(len, PAGE_SIZE - off) }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .record({ page, r: inPage, seed: fc.nat() })
      .map(({ page, r, seed }) => ({ t: 'nicWrite' as const, page, ...r, seed })),
  },
  {
    weight: 3,
    arbitrary: fc
      .record({
        page,
        off: fc.integer({ min: 0, max: PAGE_SIZE - 1 }),
        len: fc.integer({ min: 1, max: 2 * PAGE_SIZE }),
      })
      .map((o) => ({ t: 'nicRead' as const, ...o })),
  },
  {
    weight: 2,
    arbitrary: fc
      .record({ page, r: inPage, seed: fc.nat() })
      .map(({ page, r, seed }) => ({ t: 'cpuWrite' as const, page, ...r, seed })),
  },
  {
    weight: 1,
    arbitrary: fc.record({ page, r: inPage }).map(({ page, r }) => ({ t: 'cpuRead' as const, page, ...r })),
  },
  { weight: 2, arbitrary: fc.record({ page, n }).map((o) => ({ t: 'migrate' as const, ...o })) },
  { weight: 1, arbitrary: fc.record({ page, n }).map((o) => ({ t: 'reclaim' as const, ...o })) },
  { weight: 1, arbitrary: fc.record({ page, n }).map((o) => ({ t: 'munmap' as const, ...o })) },
  { weight: 1, arbitrary: fc.record({ page, n }).map((o) => ({ t: 'mmap' as const, ...o })) },
  {
    weight: 1,
    arbitrary: fc.record({ page, n, write: fc.boolean() }).map((o) => ({ t: 'prefetch' as const, ...o })),
  },
);

function run(mode: 'legacy' | 'hmm', kind: 'strict' | 'lazy' | 'none' | 'untrusted', ops: Op[]): void {
  const rig = createOdpRig({ mode, kind, memSize: 64 << 20 });
  const { mm, nic } = rig;
  const a = mmapAnon(mm, PAGES * PAGE_SIZE);
  const mr = regOdpMr(rig.pd, a, PAGES * PAGE_SIZE);
  // reference: page index → its bytes, for pages the process maps
  const ref = new Map<number, Uint8Array>();
  for (let p = 0; p < PAGES; p++) ref.set(p, new Uint8Array(PAGE_SIZE));
  const clampN = (p: number, k: number) => Math.min(k, PAGES - p);
  const allMapped = (from: number, to: number) => {
    for (let p = Math.floor(from / PAGE_SIZE); p <= Math.floor((to - 1) / PAGE_SIZE); p++)
      if (!ref.has(p)) return false;
    return true;
  };
  for (const [step, op] of ops.entries()) {
    const base = a + op.page * PAGE_SIZE;
    switch (op.t) {
      case 'nicWrite': {
        const data = odpPattern(op.len, op.seed);
        const c = nic.rdmaWrite(mr.rkey, base + op.off, data);
        if (ref.has(op.page)) {
          expect(c.status).toBe('IB_WC_SUCCESS');
          ref.get(op.page)!.set(data, op.off);
        } else {
          expect(c.status).toBe('IB_WC_REM_ACCESS_ERR');
        }
        break;
      }
      case 'nicRead': {
        const off = op.page * PAGE_SIZE + op.off;
        const len = Math.min(op.len, PAGES * PAGE_SIZE - off);
        const c = nic.rdmaRead(mr.rkey, a + off, len);
        if (allMapped(off, off + len)) {
          expect(c.status).toBe('IB_WC_SUCCESS');
          const want = new Uint8Array(len);
          for (let i = 0; i < len; i++)
            want[i] = ref.get(Math.floor((off + i) / PAGE_SIZE))![(off + i) % PAGE_SIZE]!;
          expect(c.data).toEqual(want);
        } else {
          expect(c.status).toBe('IB_WC_REM_ACCESS_ERR');
        }
        break;
      }
      case 'cpuWrite': {
        const data = odpPattern(op.len, op.seed + 7);
        if (ref.has(op.page)) {
          mm.write(base + op.off, data);
          ref.get(op.page)!.set(data, op.off);
        } else {
          expect(() => mm.write(base + op.off, data)).toThrow(/SIGSEGV/);
        }
        break;
      }
      case 'cpuRead':
        if (ref.has(op.page))
          expect(mm.read(base + op.off, op.len)).toEqual(ref.get(op.page)!.subarray(op.off, op.off + op.len));
        else expect(() => mm.read(base + op.off, op.len)).toThrow(/SIGSEGV/);
        break;
      case 'migrate':
        mm.migratePages(base, clampN(op.page, op.n) * PAGE_SIZE);
        break;
      case 'reclaim':
        mm.reclaim(base, clampN(op.page, op.n) * PAGE_SIZE);
        break;
      case 'munmap':
        expect(mm.munmap(base, clampN(op.page, op.n) * PAGE_SIZE)).toBe(0);
        for (let p = op.page; p < op.page + clampN(op.page, op.n); p++) ref.delete(p);
        break;
      case 'mmap':
        mmapAnon(mm, clampN(op.page, op.n) * PAGE_SIZE, PROT_READ | PROT_WRITE, base);
        for (let p = op.page; p < op.page + clampN(op.page, op.n); p++) ref.set(p, new Uint8Array(PAGE_SIZE));
        break;
      case 'prefetch': {
        const len = clampN(op.page, op.n) * PAGE_SIZE;
        const advice = op.write
          ? IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE
          : IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH;
        const r = ibAdviseMr(rig.pd, advice, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [
          { addr: base, length: len, lkey: mr.lkey },
        ]);
        expect(r).toBe(allMapped(op.page * PAGE_SIZE, op.page * PAGE_SIZE + len) ? 0 : -14);
        break;
      }
    }
    const stale = findStaleTranslations(rig.ibdev, mm);
    if (stale.length > 0) throw new Error(`after step ${step} (${op.t}): ${stale.join('; ')}`);
  }
  expect(nic.stats.iommuFaults).toBe(0);
  expect(ibDeregMr(mr)).toBe(0);
  dmaDebugDeviceTeardown(rig.dev);
  expect(odpMetaLiveBytes(rig.machine)).toBe(0);
}

describe('ODP against a reference of the address space (fast-check)', () => {
  for (const mode of ['legacy', 'hmm'] as const) {
    for (const kind of ['strict', 'lazy', 'none', 'untrusted'] as const) {
      it(`${mode} ${kind}: NIC and CPU always see what each virtual page holds`, () => {
        fc.assert(
          fc.property(fc.array(opArb, { minLength: 1, maxLength: 40 }), (ops) => {
            run(mode, kind, ops);
          }),
          { numRuns: 20, seed: 0x0d9 + kind.length + (mode === 'hmm' ? 100 : 0) },
        );
      });
    }
  }
});
