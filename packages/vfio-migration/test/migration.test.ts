// Source → target migrations driven as a VMM does (QEMU hw/vfio/migration.c flow).
import { Errno } from '@iovalink/iommu';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type VfioMigrationPhase, vfioMigGetState, vfioMigrate, vfioMigSetState } from '../src/migration.js';
import { MLX5_META_KINDS } from '../src/mlx5-cmd.js';
import { mlx5VhcaStateEqual } from '../src/mlx5-vhca.js';
import { createMigrationRig, teardownMigrationRig } from '../src/testing/index.js';
import type { VfioDataFile } from '../src/vfio-main.js';
import {
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_FLAG_SETS,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_PRECOPY_INFO_SIZE,
} from '../src/vfio-uapi.js';

const KINDS = ['strict', 'lazy', 'none', 'untrusted'] as const;
const MAPPINGS = ['sg', 'iova'] as const;

describe('vfio_migration (QEMU hw/vfio/migration.c)', () => {
  describe.each(MAPPINGS)('%s buffers', (mapping) => {
    it.each(KINDS)(
      '%s PF: pre-copy iterations while the device runs, byte-equal state and guest memory',
      (kind) => {
        const m = createMigrationRig({ mapping, kind, memorySize: 512 << 10, fragmentPages: 512 });
        m.source.run(500);
        const phases: VfioMigrationPhase[] = [];
        const r = vfioMigrate(m.source, m.target, {
          stepsPerIteration: 150,
          maxPrecopyIterations: 5,
          chunkSize: 12345,
          guest: { source: m.sourceGuest!, target: m.targetGuest! },
          onPhase: (p) => phases.push(p),
        });
        expect(r.ret).toBe(0);
        expect(r.failedAt).toBeUndefined();
        expect(r.precopyIterations).toBe(5);
        expect(r.equal).toBe(true);
        expect(r.guestEqual).toBe(true);
        expect(phases).toEqual([
          'setup',
          'precopy-setup',
          'precopy',
          'stop-copy',
          'resume',
          'cleanup',
          'done',
        ]);
        // pre-copy moved most of the state: the downtime phase carries only the last changes
        expect(r.stopCopyBytes).toBeLessThan(m.source.vhca.fullImageBytes / 2);
        expect(vfioMigGetState(m.source)).toBe(1); // STOP
        expect(vfioMigGetState(m.target)).toBe(VFIO_DEVICE_STATE_RUNNING);
        // the target runs on from the migrated state
        expect(m.target.run(10)).toBe(10);
        teardownMigrationRig(m);
      },
    );
  });

  it.each(VFIO_MIGRATION_FLAG_SETS)('flags %i: migrates with the arcs the flags allow', (flags) => {
    const m = createMigrationRig({ migrationFlags: flags, memorySize: 64 << 10 });
    m.source.run(300);
    const r = vfioMigrate(m.source, m.target, { stepsPerIteration: 100, maxPrecopyIterations: 3 });
    expect(r.ret).toBe(0);
    expect(r.equal).toBe(true);
    expect(r.precopyIterations).toBe((flags & VFIO_MIGRATION_PRE_COPY) !== 0 ? 3 : 0);
    teardownMigrationRig(m);
  });

  it('without guest memory or pre-copy: one stop-copy image', () => {
    const m = createMigrationRig({ guestSize: 0, memorySize: 64 << 10 });
    m.source.run(300);
    const r = vfioMigrate(m.source, m.target, { precopy: false });
    expect(r.ret).toBe(0);
    expect(r.precopyBytes).toBe(0);
    expect(r.stopCopyBytes).toBe(24 + 16 + m.source.vhca.fullImageBytes);
    expect(r.equal).toBe(true);
    expect(r.guestEqual).toBeUndefined();
    teardownMigrationRig(m);
  });

  it('reports the failing step and keeps nothing mapped', () => {
    const m = createMigrationRig({ memorySize: 64 << 10 });
    // the target cannot get pages for its image buffer
    m.machine.faults.failNth('page_alloc', 30, 1_000_000);
    const r = vfioMigrate(m.source, m.target, { maxPrecopyIterations: 2 });
    m.machine.faults.clear();
    expect(r.ret).toBeLessThan(0);
    expect(r.failedAt).toBeDefined();
    expect(r.equal).toBe(false);
    teardownMigrationRig(m);
    expect(m.machine.counters.metaTotals([...MLX5_META_KINDS, 'scatterlist']).liveBytes).toBe(0);
  });

  it('property: any interleaving of device activity and pre-copy passes restores byte-equal', () => {
    type Op = { run: number } | { pass: number };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ run: fc.integer({ min: 0, max: 300 }) }),
      fc.record({ pass: fc.integer({ min: 1, max: 9000 }) }),
    );
    fc.assert(
      fc.property(
        fc.constantFrom(...MAPPINGS),
        fc.constantFrom(...VFIO_MIGRATION_FLAG_SETS),
        fc.array(op, { maxLength: 10 }),
        fc.integer({ min: 0, max: 300 }),
        fc.integer({ min: 1, max: 1 << 30 }),
        (mapping, flags, ops, last, seed) => {
          const m = createMigrationRig({
            mapping,
            migrationFlags: flags,
            memorySize: 32 << 10,
            guestSize: 64 << 10,
            machine: { memSize: 64 << 20, seed },
          });
          const pump = (src: VfioDataFile, dst: VfioDataFile, chunk: number, precopy: boolean) => {
            const buf = new Uint8Array(chunk);
            for (;;) {
              const n = src.read(buf);
              if (n === 0 || (precopy && n === -Errno.ENOMSG)) return;
              expect(n).toBeGreaterThan(0);
              expect(dst.write(buf.subarray(0, n))).toBe(n);
            }
          };
          const fd = (x: VfioDataFile | null | number): VfioDataFile => {
            if (x === null || typeof x === 'number') throw new Error(`no fd: ${String(x)}`);
            return x;
          };
          expect(vfioMigSetState(m.target, VFIO_DEVICE_STATE_STOP)).toBeNull();
          const dst = fd(vfioMigSetState(m.target, VFIO_DEVICE_STATE_RESUMING));
          const precopy = (flags & VFIO_MIGRATION_PRE_COPY) !== 0;
          let src: VfioDataFile | null = precopy
            ? fd(vfioMigSetState(m.source, VFIO_DEVICE_STATE_PRE_COPY))
            : null;
          const info = { argsz: VFIO_PRECOPY_INFO_SIZE, flags: 0, initialBytes: 0, dirtyBytes: 0 };
          for (const o of ops) {
            if ('run' in o) m.source.run(o.run);
            else if (src !== null) {
              expect(src.ioctl(VFIO_MIG_GET_PRECOPY_INFO, info)).toBe(0);
              pump(src, dst, o.pass, true);
            }
          }
          m.source.run(last);
          const r = vfioMigSetState(m.source, VFIO_DEVICE_STATE_STOP_COPY);
          if (r !== null) src = fd(r);
          pump(src as VfioDataFile, dst, 4096, false);
          expect(vfioMigSetState(m.source, VFIO_DEVICE_STATE_STOP)).toBeNull();
          expect(vfioMigSetState(m.target, VFIO_DEVICE_STATE_STOP)).toBeNull();
          expect(vfioMigSetState(m.target, VFIO_DEVICE_STATE_RUNNING)).toBeNull();
          expect(mlx5VhcaStateEqual(m.source.vhca, m.target.vhca)).toBe(true);
          src?.release();
          dst.release();
          teardownMigrationRig(m);
        },
      ),
      { numRuns: 40 },
    );
  });
});
