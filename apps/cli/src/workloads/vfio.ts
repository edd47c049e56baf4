/**
 * VFIO workload for the demo: a live migration of an mlx5-style VF from a source to a target
 * device on one machine, driven as a VMM drives it (`vfioMigrate`: target RESUMING; source
 * PRE_COPY with a few pre-copy passes while the device keeps running; STOP_COPY; target STOP →
 * RUNNING; source STOP), then the target's registers, queue contexts and device memory compared
 * byte for byte with the source's. Kernel counterparts: drivers/vfio/vfio_main.c and
 * drivers/vfio/pci/mlx5/ as modelled by `@iovalink/vfio-migration`.
 *
 * The two paths are the two kernel shapes of the mlx5 migration data buffers:
 * - `'sg'` (≤ v6.15): pages appended to an `sg_append_table`, mapped with `dma_map_sgtable`, the
 *   memory key's MTT built from the DMA segments in a transient `create_mkey_in`;
 * - `'iova'` (v6.16+): a page-pointer array, `dma_iova_try_alloc` of the whole buffer,
 *   `dma_iova_link` per page, one `dma_iova_sync`, the MTT kept for the buffer's life.
 *
 * Setting: physical memory is fragmented first (every other page held, as on a long-running host)
 * so buffer pages do not merge into larger scatterlist entries; without that, 'sg' tables collapse
 * to a few entries and say little. No guest memory is migrated: its copy (by DMA dirty logging)
 * is the same on both paths and would only dilute the data-buffer figures.
 *
 * Measures: one op = one migration (so every per-op figure is a whole migration's cost, and
 * `bytesPerOp` is the device state size). The counter window and the simulator time cover
 * `vfioMigrate` and one flush-queue timeout of virtual time afterwards (so lazy domains' deferred
 * IOTLB flushes are counted); the device's warm-up activity, fragmentation and teardown are
 * outside. Both paths first run twice untimed at 2 MiB of state, so the path measured first does not
 * also pay for JIT compilation; then each path migrates once per measured round (VFIO_ROUNDS
 * migrations, the paths alternating), and simulator time per op is the median migration.
 * `keptMetaBytes` is the live data-buffer metadata (buffer structs,
 * page lists, kept MTTs, scatterlists) when the stop-copy phase starts — the point where the
 * source's pre-copy and stop-copy buffers and the target's resume buffers are all allocated and
 * mapped — and `pages` the pages of those buffers (record-header buffers included).
 */
import { dmaDebugDeviceTeardown, IOVA_DEFAULT_FQ_TIMEOUT } from '@iovalink/dma-api';
import {
  COUNTER_NAMES,
  type CounterSnapshot,
  diffCounters,
  fragmentMemory,
  PAGE_SIZE,
} from '@iovalink/iommu';
import { alignUp } from '@iovalink/iommu/internal';
import {
  MLX5_META_KINDS,
  type Mlx5VfMigrationFile,
  type Mlx5Vhca,
  type Mlx5VhcaDataBuffer,
  mlx5vfPciCloseDevice,
  mlx5vfPciCreateDevice,
  vfioMigrate,
} from '@iovalink/vfio-migration';
import type { DmaPath } from '../results.js';
import { bothPathsWorkload, type ChunkTime, createPathRig, fnv1a, type PathSession } from './both-paths.js';
import type { Workload, WorkloadContext } from './types.js';

/** Metadata kinds of the data buffers on both paths (what `keptMetaBytes` sums). */
const BUFFER_META_KINDS: readonly string[] = [...MLX5_META_KINDS, 'scatterlist', 'sg_pool'];

/** Size of one VFIO run (no kernel counterpart). */
export interface VfioWorkloadSize {
  /** Bytes of device memory in the migrated state (a multiple of 4 KiB). */
  stateBytes: number;
  /** Pre-copy passes (the device runs `stepsPerIteration` operations after each). */
  precopyIterations: number;
  /** Device operations between pre-copy passes (and before the migration starts). */
  stepsPerIteration: number;
}

/** Sizes of the demo run: quick (8 MiB of device state) and full (64 MiB). */
export const VFIO_SIZES: { quick: VfioWorkloadSize; full: VfioWorkloadSize } = {
  quick: { stateBytes: 8 << 20, precopyIterations: 3, stepsPerIteration: 2_000 },
  full: { stateBytes: 64 << 20, precopyIterations: 3, stepsPerIteration: 10_000 },
};

/** Measured rounds (one migration per path each): a whole migration is long enough to time alone. */
export const VFIO_ROUNDS = 6;

/** Size of the untimed warm-up runs of both paths before measuring. */
const VFIO_WARMUP: VfioWorkloadSize = { stateBytes: 2 << 20, precopyIterations: 3, stepsPerIteration: 1_000 };

/** What one path's run did, besides its PathResult (for tests and reports). */
export interface VfioRunStats {
  precopyIterations: number;
  /** Stream bytes moved during pre-copy and after STOP_COPY. */
  precopyBytes: number;
  stopCopyBytes: number;
  /** Pages of the data buffers allocated when stop-copy starts (= `pages`). */
  bufferPages: number;
  /** Live data-buffer metadata at that point (= `keptMetaBytes`). */
  bufferMetaBytes: number;
  /** IOVA allocations and IOTLB invalidations in the counter window. */
  iovaAllocs: number;
  iotlbInvalidations: number;
  /** FNV-1a digest of the target's device state after the migration (equal on both paths). */
  digest: string;
}

/** Digest of a device's migratable state: registers, queue contexts, device memory. */
function stateDigest(v: Mlx5Vhca): string {
  let h = fnv1a(new Uint8Array(v.regs.buffer, v.regs.byteOffset, v.regs.byteLength));
  h = fnv1a(v.queues, h);
  h = fnv1a(v.memory, h);
  return h.toString(16).padStart(8, '0');
}

/** Pages of every buffer a migration file holds (prepared, header, queued and reusable). */
function migfBufferPages(migf: Mlx5VfMigrationFile | null): number {
  if (migf === null) return 0;
  const seen = new Set<Mlx5VhcaDataBuffer>();
  for (const b of [...migf.buf, ...migf.bufHeader, ...migf.bufList, ...migf.availList]) {
    if (b !== null && !b.freed) seen.add(b);
  }
  let pages = 0;
  for (const b of seen) pages += b.npages;
  return pages;
}

/** One migration's outcome: its simulator time (model, and harness apart), counter diff and stats. */
interface VfioMigration {
  simNs: number;
  /** Simulator time of the final state comparison (the harness's check, not the model). */
  harnessNs: number;
  counters: CounterSnapshot;
  stats: VfioRunStats;
}

/**
 * Runs one migration of one path on a fresh rig (models a VMM live-migrating an assigned mlx5 VF
 * with pre-copy and stop-copy: QEMU hw/vfio/migration.c over drivers/vfio/pci/mlx5/, data buffers
 * per cmd.c ≤ v6.15 (`'sg'`) or v6.16+ (`'iova'`)). Throws if the migration fails or the target's
 * state differs from the source's.
 */
function vfioMigrateOnce(path: DmaPath, ctx: WorkloadContext, size: VfioWorkloadSize): VfioMigration {
  const statePages = Math.ceil(size.stateBytes / PAGE_SIZE);
  const rig = createPathRig(ctx, path, 4 * 2 ** 30);
  const machine = rig.machine;
  // enough isolated free pages for every buffer of the run (source pre-copy and stop-copy,
  // target resume buffers, each a little over the state size), as the package's benchmark does
  const held = fragmentMemory(machine, 3 * Math.ceil(statePages * 1.1) + 2048);
  const sourcePf = rig.device(`mlx5-pf-src-${path}`);
  const targetPf = rig.device(`mlx5-pf-dst-${path}`);
  const source = mlx5vfPciCreateDevice({
    name: 'vf-src',
    pf: sourcePf,
    memorySize: statePages * PAGE_SIZE,
    mapping: path,
  });
  const target = mlx5vfPciCreateDevice({
    name: 'vf-dst',
    pf: targetPf,
    memorySize: statePages * PAGE_SIZE,
    mapping: path,
    randomize: false,
  });
  source.run(size.stepsPerIteration);

  let bufferPages = 0;
  let bufferMetaBytes = 0;
  const before = machine.counters.snapshot();
  const now = ctx.clock ?? (() => performance.now());
  /** When the migration reached 'done': what follows in vfioMigrate is the state comparison. */
  let tDone = Number.NaN;
  const t0 = now();
  const r = vfioMigrate(source, target, {
    maxPrecopyIterations: size.precopyIterations,
    stepsPerIteration: size.stepsPerIteration,
    onPhase: (phase) => {
      if (phase === 'stop-copy') {
        bufferPages = migfBufferPages(source.savingMigf) + migfBufferPages(target.resumingMigf);
        bufferMetaBytes = machine.counters.metaTotals(BUFFER_META_KINDS).liveBytes;
      } else if (phase === 'done') {
        tDone = now();
      }
    },
  });
  // the harness's check: comparing the target's device state with the source's (8 MiB)
  const harnessNs = Number.isNaN(tDone) ? 0 : (now() - tDone) * 1e6;
  machine.clock.advance(IOVA_DEFAULT_FQ_TIMEOUT * 1e6); // lazy domains: the flush-queue timer fires
  const simNs = (now() - t0) * 1e6 - harnessNs;
  const d = diffCounters(before, machine.counters.snapshot());
  if (r.ret !== 0) {
    throw new Error(`VFIO migration (${path}, ${ctx.iommu}): failed at ${r.failedAt} (${r.ret})`);
  }
  if (!r.equal) {
    throw new Error(`VFIO migration (${path}, ${ctx.iommu}): target state differs from the source's`);
  }
  const stats: VfioRunStats = {
    precopyIterations: r.precopyIterations,
    precopyBytes: r.precopyBytes,
    stopCopyBytes: r.stopCopyBytes,
    bufferPages,
    bufferMetaBytes,
    iovaAllocs: d.events.iovaAllocs,
    iotlbInvalidations: d.events.iotlbInvRange + d.events.iotlbInvAll,
    digest: stateDigest(target.vhca),
  };

  mlx5vfPciCloseDevice(source);
  mlx5vfPciCloseDevice(target);
  dmaDebugDeviceTeardown(sourcePf); // a no-op unless dma-debug is on
  dmaDebugDeviceTeardown(targetPf);
  for (const pa of held) machine.pages.freePages(pa, 0);
  return { simNs, harnessNs, counters: d, stats };
}

/** `a + b` for every counter and metadata stat (peak bytes: the larger). */
function addCounters(a: CounterSnapshot, b: CounterSnapshot): CounterSnapshot {
  const events = { ...a.events };
  for (const name of COUNTER_NAMES) events[name] += b.events[name];
  const meta = { ...a.meta };
  for (const [k, s] of Object.entries(b.meta)) {
    const m = meta[k];
    meta[k] =
      m === undefined
        ? { ...s }
        : {
            allocs: m.allocs + s.allocs,
            frees: m.frees + s.frees,
            bytes: m.bytes + s.bytes,
            liveBytes: m.liveBytes + s.liveBytes,
            peakBytes: Math.max(m.peakBytes, s.peakBytes),
          };
  }
  return { events, meta };
}

/**
 * Opens one path of the VFIO workload: one unit = one whole migration on a fresh rig (same seed,
 * so every migration of a path does the same work); counters add up over the migrations, the
 * per-migration buffer figures and digest are the last migration's. Harness time: the final
 * comparison of the target's device state with the source's, timed apart from the model.
 */
export function openVfioPath(
  path: DmaPath,
  ctx: WorkloadContext,
  size: VfioWorkloadSize,
): PathSession<VfioRunStats> {
  let total: CounterSnapshot | undefined;
  let last: VfioRunStats | undefined;
  let ops = 0;
  return {
    step(units: number): ChunkTime {
      let modelNs = 0;
      let harnessNs = 0;
      for (let i = 0; i < units; i++) {
        const m = vfioMigrateOnce(path, ctx, size);
        harnessNs += m.harnessNs;
        if (last !== undefined && m.stats.digest !== last.digest) {
          throw new Error(`VFIO migration (${path}): two migrations of one seed left different states`);
        }
        modelNs += m.simNs;
        total = total === undefined ? m.counters : addCounters(total, m.counters);
        last = m.stats;
        ops++;
      }
      return { ops: units, modelNs, harnessNs };
    },
    finish() {
      if (total === undefined || last === undefined) throw new Error(`VFIO (${path}): no migration ran`);
      return {
        ops,
        counters: total,
        pages: last.bufferPages,
        keptMetaBytes: last.bufferMetaBytes,
        verified: true,
        stats: last,
      };
    },
  };
}

/**
 * The demo's VFIO workload (models a live migration with pre-copy and stop-copy of an mlx5 VF,
 * drivers/vfio/pci/mlx5/cmd.c data buffers ≤ v6.15 sg_append_table vs v6.16+ DMA link API): both
 * paths on fresh machines, same seed, same device activity; one op = one migration. See the file
 * header.
 */
export function vfioWorkload(
  sizes: { quick: VfioWorkloadSize; full: VfioWorkloadSize } = VFIO_SIZES,
): Workload {
  return bothPathsWorkload('VFIO live migration: pre-copy + stop-copy', 'vfio', (ctx) => {
    const size = ctx.quick ? sizes.quick : sizes.full;
    return {
      open: openVfioPath,
      sizes: { measured: size, units: VFIO_ROUNDS, rounds: VFIO_ROUNDS, warmup: VFIO_WARMUP, warmupUnits: 1 },
      mismatch: 'VFIO: the two paths migrated different device states',
      bytesPerOp: () => alignUp(size.stateBytes, PAGE_SIZE),
    };
  });
}
