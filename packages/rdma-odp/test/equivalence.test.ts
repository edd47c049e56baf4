// The same seeded workload of NIC accesses, CPU accesses, faults, invalidations (migration,
// reclaim, munmap/mmap, madvise, fork) and prefetches, run through both umem modes on every device
// kind: the data outcomes must be identical, no stale translation may appear, and destroying the MR
// must leave dma-debug and the ODP metadata empty.
import { dmaDebugDeviceTeardown } from '@iovalink/dma-api';
import { PAGE_SIZE, Prng } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import type { OdpError } from '../src/errors.js';
import {
  IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
  IB_UVERBS_ADVISE_MR_FLAG_FLUSH,
  ibAdviseMr,
  ibDeregMr,
} from '../src/ib-verbs.js';
import type { Mm } from '../src/mm.js';
import { PROT_READ, PROT_WRITE } from '../src/mm-types.js';
import {
  createOdpRig,
  findStaleTranslations,
  mmapAnon,
  odpMetaLiveBytes,
  odpPattern,
  regOdpMr,
} from '../src/testing/index.js';

const PAGES = 32;
const STEPS = 250;

function digest(b: Uint8Array): string {
  let h = 2166136261;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 16777619) >>> 0;
  return h.toString(16);
}

function runWorkload(
  mode: 'legacy' | 'hmm',
  kind: 'strict' | 'lazy' | 'none' | 'untrusted' | 'identity',
  seed: number,
) {
  const rig = createOdpRig({ mode, kind, memSize: 64 << 20 });
  const ops = new Prng(seed);
  const mm = rig.mm;
  const a = mmapAnon(mm, PAGES * PAGE_SIZE);
  const mr = regOdpMr(rig.pd, a, PAGES * PAGE_SIZE);
  const transcript: string[] = [];
  let child: Mm | undefined;
  const mapped = (p: number) => mm.findVma(a + p * PAGE_SIZE) !== undefined;
  for (let step = 0; step < STEPS; step++) {
    const op = ops.int(0, 11);
    const page = ops.int(0, PAGES - 1);
    const off = ops.int(0, PAGE_SIZE - 1);
    const len = ops.int(1, 3 * PAGE_SIZE);
    const n = ops.int(1, 3);
    const va = a + page * PAGE_SIZE + off;
    const clip = Math.min(len, a + PAGES * PAGE_SIZE - va);
    switch (op) {
      case 0:
      case 1: {
        const c = rig.nic.rdmaWrite(mr.rkey, va, odpPattern(clip, step));
        transcript.push(`W ${page}+${off} ${clip}: ${c.status} ${c.byteLen}`);
        break;
      }
      case 2:
      case 3: {
        const c = rig.nic.rdmaRead(mr.rkey, va, clip);
        transcript.push(
          `R ${page}+${off} ${clip}: ${c.status} ${c.byteLen} ${digest(c.data!.subarray(0, c.byteLen))}`,
        );
        break;
      }
      case 4:
        try {
          mm.write(va, odpPattern(Math.min(clip, 64), step + 1000));
          transcript.push(`cpu W ${page}`);
        } catch (e) {
          transcript.push(`cpu W ${page}: ${(e as OdpError).rule}`);
        }
        break;
      case 5:
        transcript.push(`migrate ${page}: ${mm.migratePages(a + page * PAGE_SIZE, n * PAGE_SIZE)}`);
        break;
      case 6:
        transcript.push(`reclaim ${page}: ${mm.reclaim(a + page * PAGE_SIZE, n * PAGE_SIZE)}`);
        break;
      case 7:
        transcript.push(
          `munmap ${page}: ${mm.munmap(a + page * PAGE_SIZE, Math.min(n, PAGES - page) * PAGE_SIZE)}`,
        );
        break;
      case 8:
        if (!mapped(page)) {
          mmapAnon(mm, PAGE_SIZE, PROT_READ | PROT_WRITE, a + page * PAGE_SIZE);
          transcript.push(`mmap ${page}`);
        }
        break;
      case 9:
        transcript.push(`dontneed ${page}: ${mm.madviseDontneed(a + page * PAGE_SIZE, PAGE_SIZE)}`);
        break;
      case 10: {
        const r = ibAdviseMr(rig.pd, IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH, IB_UVERBS_ADVISE_MR_FLAG_FLUSH, [
          { addr: va, length: clip, lkey: mr.lkey },
        ]);
        transcript.push(`prefetch ${page}: ${r}`);
        break;
      }
      case 11:
        if (child === undefined) {
          child = mm.fork();
          transcript.push('fork');
        } else {
          child.exit();
          child = undefined;
          transcript.push('child exit');
        }
        break;
    }
    const stale = findStaleTranslations(rig.ibdev, mm);
    if (stale.length > 0) throw new Error(`step ${step}: ${stale[0]}`);
  }
  for (let p = 0; p < PAGES; p++) {
    transcript.push(
      mapped(p) ? `page ${p}: ${digest(mm.read(a + p * PAGE_SIZE, PAGE_SIZE))}` : `page ${p}: unmapped`,
    );
  }
  child?.exit();
  expect(ibDeregMr(mr)).toBe(0);
  expect(() => dmaDebugDeviceTeardown(rig.dev)).not.toThrow();
  expect(odpMetaLiveBytes(rig.machine)).toBe(0);
  expect(rig.nic.stats.iommuFaults).toBe(0);
  mm.exit();
  expect(mm.memMap.nrPages).toBe(0);
  return { transcript, stats: rig.ibdev.stats, iovaAllocs: rig.machine.counters.iovaAllocs };
}

describe('ib_umem_odp legacy vs hmm_dma_map (seeded workload)', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: identical data outcomes in both modes on strict, lazy, none, untrusted and identity devices`, () => {
      const base = runWorkload('legacy', 'strict', seed);
      expect(base.stats.pageFaults).toBeGreaterThan(10);
      expect(base.stats.invalidations).toBeGreaterThan(10);
      for (const kind of ['strict', 'lazy', 'none', 'untrusted', 'identity'] as const) {
        for (const mode of ['legacy', 'hmm'] as const) {
          const r = runWorkload(mode, kind, seed);
          expect(r.transcript, `${mode} ${kind}`).toEqual(base.transcript);
          if (kind === 'strict' && mode === 'hmm') expect(r.iovaAllocs).toBeLessThan(base.iovaAllocs);
        }
      }
    });
  }
});
