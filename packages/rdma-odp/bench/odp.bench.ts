// ODP page-fault handling, legacy (≤ v6.15: per-page dma_map_page + dma_list) vs hmm_dma_map
// (v6.16+: one IOVA range per umem, pfn list only), in one process so ratios are same-run figures.
// Times are SIMULATOR time (how fast this model runs on this host, performance.now), never modeled
// kernel time; counts per fault / per page / per event are what the kernel would spend.
// dma-debug is off (debug: false), as a production kernel has it.
import { diffCounters, PAGE_SIZE } from '@iovalink/iommu';
import type { Mlx5IbMr } from '../src/mlx5-ib.js';
import { IMPLICIT_MR_LENGTH } from '../src/mlx5-mr.js';
import { createOdpRig, mmapAnon, ODP_META_KINDS, type OdpRig, regOdpMr } from '../src/testing/index.js';

const MODES = ['legacy', 'hmm'] as const;
type Mode = (typeof MODES)[number];
type Kind = 'strict' | 'lazy' | 'none';

interface FaultRig {
  rig: OdpRig;
  a: number;
  mr: Mlx5IbMr;
  pages: number;
}

function faultRig(mode: Mode, kind: Kind, pages: number): FaultRig {
  const rig = createOdpRig({ mode, kind, debug: false, memSize: 512 << 20 });
  const a = mmapAnon(rig.mm, pages * PAGE_SIZE);
  rig.mm.write(a, new Uint8Array(pages * PAGE_SIZE).fill(1)); // pages present: measure the ODP path
  const mr = regOdpMr(rig.pd, a, pages * PAGE_SIZE);
  rig.mm.migratePages(a, pages * PAGE_SIZE); // drop the registration snapshot
  return { rig, a, mr, pages };
}

/**
 * One round: fault every page of the MR once through the NIC (timed), then invalidate them all by
 * migration (untimed; the counter diffs below include these invalidations' unmaps).
 */
function faultRound(f: FaultRig): number {
  const t0 = performance.now();
  for (let i = 0; i < f.pages; i++) {
    const c = f.rig.nic.rdmaRead(f.mr.rkey, f.a + i * PAGE_SIZE, 64);
    if (c.status !== 'IB_WC_SUCCESS' || c.pageFaults !== 1) throw new Error(`fault round: ${c.status}`);
  }
  const ms = performance.now() - t0;
  f.rig.mm.migratePages(f.a, f.pages * PAGE_SIZE);
  return ms;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function faultThroughput() {
  const PAGES = 256;
  const WARMUP = 10;
  const ROUNDS = 40;
  const KINDS = ['strict', 'lazy', 'none'] as const;
  const rows: Array<Record<string, string | number>> = [];
  const results: Record<string, Record<string, number>> = {};
  const rigs = new Map<string, FaultRig>();
  for (const kind of KINDS) for (const m of MODES) rigs.set(`${m} ${kind}`, faultRig(m, kind, PAGES));
  const keys = [...rigs.keys()];
  // warm every rig first, so the JIT has seen every shape before anything is measured
  for (let r = 0; r < WARMUP; r++) for (const k of keys) faultRound(rigs.get(k)!);
  const perRound = new Map<string, number[]>(keys.map((k) => [k, []]));
  const before = new Map(keys.map((k) => [k, rigs.get(k)!.rig.machine.counters.snapshot()]));
  const faults0 = new Map(keys.map((k) => [k, rigs.get(k)!.rig.ibdev.stats.pageFaults]));
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? keys : [...keys].reverse();
    for (const k of order) perRound.get(k)!.push((faultRound(rigs.get(k)!) * 1e6) / PAGES);
  }
  for (const k of keys) {
    const f = rigs.get(k)!;
    const d = diffCounters(before.get(k)!, f.rig.machine.counters.snapshot()).events;
    const faults = f.rig.ibdev.stats.pageFaults - faults0.get(k)!;
    const perFault = (x: number) => +(x / faults).toFixed(3);
    const ns = median(perRound.get(k)!);
    const r = {
      faults,
      'faults/s (simulator, median round)': Math.round(1e9 / ns),
      'ns/fault (simulator, median round)': Math.round(ns),
      'IOVA allocs/fault': perFault(d.iovaAllocs),
      'dma_map_page/fault': perFault(d.dmaMapCalls),
      'dma_iova_link/fault': perFault(d.dmaLinks),
      'PTE writes/fault': perFault(d.pteWrites),
    };
    results[k] = r;
    const [mode, device] = k.split(' ');
    rows.push({ mode: mode!, device: device!, ...r });
  }
  console.log(
    `\n### Page faults handled through the NIC (${PAGES} one-page faults a round, ${ROUNDS} rounds; pages present in the CPU page table)`,
  );
  console.table(rows);
  for (const kind of KINDS) {
    const l = results[`legacy ${kind}`]!;
    const h = results[`hmm ${kind}`]!;
    console.log(
      `${kind}: hmm / legacy faults per second (simulator) = ${(h['faults/s (simulator, median round)']! / l['faults/s (simulator, median round)']!).toFixed(2)}×`,
    );
  }
  return results;
}

function metadataPerPage() {
  const PAGES = 1024;
  const rows: Array<Record<string, string | number>> = [];
  const results: Record<string, Record<string, number>> = {};
  const cases: Array<{ kind: Kind | 'identity'; debug: boolean; label: string }> = [
    { kind: 'strict', debug: false, label: 'strict' },
    { kind: 'lazy', debug: false, label: 'lazy' },
    { kind: 'identity', debug: false, label: 'identity' },
    { kind: 'none', debug: false, label: 'none' },
    { kind: 'none', debug: true, label: 'none + dma-debug' },
  ];
  for (const c of cases) {
    for (const m of MODES) {
      const rig = createOdpRig({ mode: m, kind: c.kind, debug: c.debug, memSize: 512 << 20 });
      const a = mmapAnon(rig.mm, PAGES * PAGE_SIZE);
      const iova0 = rig.machine.counters.iovaAllocs;
      const mr = regOdpMr(rig.pd, a, PAGES * PAGE_SIZE);
      const atReg = rig.machine.counters.iovaAllocs - iova0;
      rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(PAGES * PAGE_SIZE));
      const meta = rig.machine.counters.metaTotals(ODP_META_KINDS);
      const r = {
        'metadata bytes/page': meta.liveBytes / PAGES,
        'IOVA allocs at registration': atReg,
        'IOVA allocs per umem (all pages faulted)': rig.machine.counters.iovaAllocs - iova0,
        'metadata allocations': meta.allocs,
      };
      results[`${m} ${c.label}`] = r;
      rows.push({ mode: m, device: c.label, ...r });
    }
  }
  // implicit ODP: one child per granule, created on first fault
  for (const m of MODES) {
    const rig = createOdpRig({ mode: m, kind: 'strict', debug: false, memSize: 512 << 20, imrMttShift: 24 });
    const a = mmapAnon(rig.mm, 64 << 20);
    const imr = regOdpMr(rig.pd, 0, IMPLICIT_MR_LENGTH, undefined, 0);
    const iova0 = rig.machine.counters.iovaAllocs;
    for (let off = 0; off < 64 << 20; off += 1 << 20) rig.nic.rdmaWrite(imr.rkey, a + off, new Uint8Array(8));
    const meta = rig.machine.counters.metaTotals(ODP_META_KINDS);
    const childPages = imr.implicitChildren.size * ((1 << 24) / PAGE_SIZE);
    const r = {
      'metadata bytes/page': meta.liveBytes / childPages,
      'IOVA allocs at registration': 0,
      'IOVA allocs per umem (all pages faulted)':
        (rig.machine.counters.iovaAllocs - iova0) / imr.implicitChildren.size,
      'metadata allocations': meta.allocs,
    };
    results[`${m} implicit 16 MiB children`] = r;
    rows.push({ mode: m, device: 'strict, implicit (16 MiB children, 16 pages faulted each)', ...r });
  }
  console.log(
    `\n### Mapping metadata per MR page and IOVA allocations per umem (${PAGES}-page MR, every page faulted)`,
  );
  console.table(rows);
  return results;
}

function iotlbPerEvent() {
  const PAGES = 64;
  const rows: Array<Record<string, string | number>> = [];
  const results: Record<string, Record<string, number>> = {};
  for (const kind of ['strict', 'lazy'] as const) {
    for (const m of MODES) {
      const r: Record<string, number> = {};
      for (const pages of [1, PAGES]) {
        const rig = createOdpRig({ mode: m, kind, debug: false });
        const a = mmapAnon(rig.mm, PAGES * PAGE_SIZE);
        const mr = regOdpMr(rig.pd, a, PAGES * PAGE_SIZE);
        const EVENTS = 16;
        let inv = 0;
        let deferred = 0;
        for (let e = 0; e < EVENTS; e++) {
          rig.nic.rdmaWrite(mr.rkey, a, new Uint8Array(pages * PAGE_SIZE));
          const c0 = rig.machine.counters.snapshot();
          rig.mm.madviseDontneed(a, pages * PAGE_SIZE); // one invalidation event
          const d = diffCounters(c0, rig.machine.counters.snapshot()).events;
          inv += d.iotlbInvRange + d.iotlbInvAll;
          const f0 = rig.machine.counters.iotlbInvAll;
          rig.machine.clock.advance(11e6); // let a flush queue time out
          deferred += rig.machine.counters.iotlbInvAll - f0;
        }
        r[`IOTLB inv/event, ${pages}-page event`] = inv / EVENTS;
        r[`deferred flush-all/event, ${pages}-page event`] = deferred / EVENTS;
      }
      results[`${m} ${kind}`] = r;
      rows.push({ mode: m, device: kind, ...r });
    }
  }
  console.log('\n### IOTLB invalidations per invalidation event (madvise(DONTNEED) of mapped MR pages)');
  console.table(rows);
  return results;
}

export async function runOdpBench() {
  const faults = faultThroughput();
  const metadata = metadataPerPage();
  const iotlb = iotlbPerEvent();
  return { faults, metadata, iotlb };
}
