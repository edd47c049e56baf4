// VFIO live migration across iommu + dma-api + vfio-migration: the same seeded device activity and
// migration (pre-copy passes while the device runs, stop-copy, resume on the target, guest memory
// copied by DMA dirty logging) with the mlx5 data buffers mapped the ≤ v6.15 way ('sg':
// sg_append_table + dma_map_sgtable) and the v6.16+ way ('iova': dma_iova_try_alloc + link per
// page). Physical memory is fragmented first so buffer pages do not merge into large sg entries.
//
// The counter claims are checked on the packages directly (dma-debug on, leak checks at
// teardown); the CLI's `vfioWorkload` then gets an end-to-end smoke run through both paths.
import { IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import { diffCounters, PAGE_SIZE } from '@iovalink/iommu';
import { type Mlx5Vhca, type Mlx5vfMapping, vfioMigrate } from '@iovalink/vfio-migration';
import {
  createMigrationRig,
  type DeviceKind,
  migrationMetaLiveBytes,
  teardownMigrationRig,
} from '@iovalink/vfio-migration/testing';
import { VFIO_ROUNDS, vfioWorkload } from 'iovalink/workloads';
import { describe, expect, it } from 'vitest';
import { digest, withoutSimTime, workloadCtx } from './helpers.js';

const STATE = 1 << 20;

function stateDigest(v: Mlx5Vhca): number {
  let h = digest(new Uint8Array(v.regs.buffer, v.regs.byteOffset, v.regs.byteLength));
  h = digest(v.queues, h);
  return digest(v.memory, h);
}

/** One seeded migration; counters from the start of `vfioMigrate` to one flush-queue timeout after it. */
function migrate(mapping: Mlx5vfMapping, kind: DeviceKind, seed: number) {
  const pages = STATE / PAGE_SIZE;
  const m = createMigrationRig({
    mapping,
    kind,
    memorySize: STATE,
    guestSize: 256 << 10,
    debug: true,
    machine: { memSize: 256 << 20, seed },
    fragmentPages: 3 * Math.ceil(pages * 1.1) + 512,
  });
  m.source.run(800);
  const sourceBefore = stateDigest(m.source.vhca);
  let liveAtStopCopy = 0;
  const before = m.machine.counters.snapshot();
  const r = vfioMigrate(m.source, m.target, {
    maxPrecopyIterations: 3,
    stepsPerIteration: 400,
    guest: { source: m.sourceGuest!, target: m.targetGuest! },
    onPhase: (phase) => {
      if (phase === 'stop-copy') liveAtStopCopy = migrationMetaLiveBytes(m.machine);
    },
  });
  m.machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6);
  const d = diffCounters(before, m.machine.counters.snapshot());
  const out = {
    ret: r.ret,
    equal: r.equal,
    guestEqual: r.guestEqual,
    precopyIterations: r.precopyIterations,
    bytes: [r.precopyBytes, r.stopCopyBytes],
    sourceBefore,
    target: stateDigest(m.target.vhca),
    liveAtStopCopy,
    sgBytes: (d.meta.scatterlist?.bytes ?? 0) + (d.meta.sg_pool?.bytes ?? 0),
    iovaAllocs: d.events.iovaAllocs,
    iotlbInvalidations: d.events.iotlbInvRange + d.events.iotlbInvAll,
    iommuFaults: d.events.iommuFaults,
  };
  teardownMigrationRig(m); // throws on leaked mappings, memory keys or metadata
  return out;
}

describe("VFIO migration with 'sg' vs 'iova' data buffers (iommu + dma-api + vfio-migration)", () => {
  for (const kind of ['strict', 'lazy'] as const) {
    for (const seed of [1, 2]) {
      it(`${kind}, seed ${seed}: same state bytes on the target; no scatterlists on 'iova'; IOVA allocations and IOTLB invalidations fewer or equal`, () => {
        const sg = migrate('sg', kind, seed);
        const iova = migrate('iova', kind, seed);
        for (const x of [sg, iova]) {
          expect(x.ret).toBe(0);
          expect(x.equal).toBe(true);
          expect(x.guestEqual).toBe(true);
          expect(x.precopyIterations).toBe(3);
          expect(x.iommuFaults).toBe(0);
        }
        // the same device activity and the same stream: the same bytes land on the target
        expect(iova.sourceBefore).toBe(sg.sourceBefore);
        expect(iova.bytes).toEqual(sg.bytes);
        expect(iova.target).toBe(sg.target);
        // scatterlists only on the old path
        expect(sg.sgBytes).toBeGreaterThan(0);
        expect(iova.sgBytes).toBe(0);
        // live buffer metadata while everything is mapped: page list + kept MTT < sg table
        expect(iova.liveAtStopCopy).toBeLessThan(sg.liveAtStopCopy);
        expect(iova.iovaAllocs).toBeLessThanOrEqual(sg.iovaAllocs);
        expect(iova.iotlbInvalidations).toBeLessThanOrEqual(sg.iotlbInvalidations);
        expect(iova.iovaAllocs).toBeGreaterThan(0);
      });
    }
  }

  it("none (no IOMMU): 'iova' falls back to per-page mapping; same bytes, no IOVA allocations", () => {
    const sg = migrate('sg', 'none', 3);
    const iova = migrate('iova', 'none', 3);
    expect(sg.equal && iova.equal).toBe(true);
    expect(iova.target).toBe(sg.target);
    expect(sg.iovaAllocs + iova.iovaAllocs).toBe(0);
    expect(iova.sgBytes).toBe(0);
    expect(sg.sgBytes).toBeGreaterThan(0);
  });
});

describe('iovalink vfioWorkload (end to end, both paths)', () => {
  const size = { stateBytes: 1 << 20, precopyIterations: 2, stepsPerIteration: 500 };
  const small = vfioWorkload({ quick: size, full: size });

  it.each(['strict', 'lazy'] as const)('%s: verified; the table shows the VFIO claims', async (iommu) => {
    const progress: number[] = [];
    const r = await small.run({ ...workloadCtx(iommu), onProgress: (done) => progress.push(done) });
    expect(r.subsystem).toBe('vfio');
    expect(r.bytesPerOp).toBe(1 << 20);
    const sg = r.paths.find((p) => p.path === 'sg')!;
    const iova = r.paths.find((p) => p.path === 'iova')!;
    expect(sg.verified && iova.verified).toBe(true);
    // one op = one migration, one per measured round
    expect(sg.ops).toBe(VFIO_ROUNDS);
    expect(iova.ops).toBe(VFIO_ROUNDS);
    expect(sg.sgBytesPerOp).toBeGreaterThan(0);
    expect(iova.sgBytesPerOp).toBe(0);
    expect(iova.iovaAllocsPerOp).toBeLessThanOrEqual(sg.iovaAllocsPerOp);
    expect(iova.iotlbInvalidationsPerOp).toBeLessThanOrEqual(sg.iotlbInvalidationsPerOp);
    expect(iova.metaBytesPerPage).toBeLessThan(sg.metaBytesPerPage);
    expect(iova.metaBytesPerPage).toBeGreaterThan(0);
    expect(progress.at(-1)).toBe(2 * VFIO_ROUNDS);
  });

  it('is deterministic for a seed (everything but simulator time)', async () => {
    expect(withoutSimTime(await small.run(workloadCtx('strict', 9)))).toEqual(
      withoutSimTime(await small.run(workloadCtx('strict', 9))),
    );
  });
});
