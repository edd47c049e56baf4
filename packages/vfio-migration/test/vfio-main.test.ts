// The migration v2 state machine and the VFIO_DEVICE_FEATURE ioctl of drivers/vfio/vfio_main.c.
import { Errno } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import { vfioPciCoreIoctlReset } from '../src/mlx5-main.js';
import { createMigrationRig, teardownMigrationRig } from '../src/testing/index.js';
import {
  LOG_MAX_RANGES,
  type VfioDataFile,
  type VfioDevice,
  vfioCheckFeature,
  vfioCombineIovaRanges,
  vfioIoctlDeviceFeature,
  vfioMigGetNextState,
  vfioMigStateSupported,
  vfioRequiredArcs,
} from '../src/vfio-main.js';
import {
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_DEVICE_STATES,
  VFIO_MIGRATION_FLAG_SETS,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_PRE_COPY,
  VFIO_MIGRATION_STOP_COPY,
  type VfioDeviceFeatureMigState,
  type VfioDeviceMigState,
  vfioDeviceStateName,
} from '../src/vfio-uapi.js';

const EINVAL = -Errno.EINVAL;
const [E, S, R, SC, RS, RP, PC, PP] = [
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING_P2P,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
] as const;

function bare(flags: number): VfioDevice {
  return { name: 'bare', migrationFlags: flags, migOps: undefined, logOps: undefined, warnCount: 0 };
}

const flagName = (f: number): string =>
  ['STOP_COPY', f & VFIO_MIGRATION_P2P ? 'P2P' : '', f & VFIO_MIGRATION_PRE_COPY ? 'PRE_COPY' : '']
    .filter(Boolean)
    .join('|');

/** Iterates vfioMigGetNextState from cur to new: the path, or -EINVAL with the path so far. */
function walk(dev: VfioDevice, cur: number, to: number): { path: number[]; ret: number } {
  const path = [cur];
  let s = cur;
  for (let i = 0; i < 8 && s !== to; i++) {
    const next = vfioMigGetNextState(dev, s, to);
    if (next < 0) return { path, ret: next };
    path.push(next);
    s = next;
  }
  return { path, ret: s === to ? 0 : -1 };
}

/** Combination paths the kernel comment lists for a device with P2P and PRE_COPY. */
const KERNEL_COMBINATIONS: number[][] = [
  [PC, PP, SC],
  [PC, R, RP],
  [PC, R, RP, S],
  [PC, R, RP, S, RS],
  [PP, RP, R],
  [PP, RP, S],
  [PP, RP, S, RS],
  [RS, S, RP],
  [RS, S, RP, PP],
  [RS, S, RP, R],
  [RS, S, RP, R, PC],
  [RS, S, SC],
  [R, RP, PP],
  [R, RP, S],
  [R, RP, S, RS],
  [R, RP, S, SC],
  [RP, R, PC],
  [RP, S, RS],
  [RP, S, SC],
  [S, RP, PP],
  [S, RP, R],
  [S, RP, R, PC],
  [SC, S, RS],
  [SC, S, RP],
  [SC, S, RP, R],
];

describe('vfio_mig_get_next_state', () => {
  describe.each(VFIO_MIGRATION_FLAG_SETS.map((f) => [flagName(f), f] as const))(
    'flags %s',
    (_name, flags) => {
      it('every (cur, new) pair reaches new through supported states, or is refused with -EINVAL', () => {
        const dev = bare(flags);
        for (const cur of VFIO_DEVICE_STATES) {
          if (!vfioMigStateSupported(dev, cur)) continue;
          for (const to of VFIO_DEVICE_STATES) {
            const { path, ret } = walk(dev, cur, to);
            const blocked = cur === SC && (to === PC || to === PP);
            if (!vfioMigStateSupported(dev, to) || blocked) {
              expect(ret, `${vfioDeviceStateName(cur)} -> ${vfioDeviceStateName(to)}`).toBe(EINVAL);
              expect(path).toEqual([cur]);
            } else {
              expect(ret, `${vfioDeviceStateName(cur)} -> ${vfioDeviceStateName(to)}`).toBe(0);
              expect(path[path.length - 1]).toBe(to);
              for (const s of path) expect(vfioMigStateSupported(dev, s)).toBe(true);
              // saving-group states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) are never passed through,
              // except between two of them
              const group = [PC, PP, SC] as number[];
              if (!(group.includes(cur) && group.includes(to))) {
                for (const s of path.slice(1, -1)) expect(group).not.toContain(s);
              }
            }
          }
        }
        expect(dev.warnCount).toBe(0);
      });

      it('uses exactly the arcs a driver must implement for these flags', () => {
        const dev = bare(flags);
        const used = new Set<string>();
        for (const cur of VFIO_DEVICE_STATES) {
          if (!vfioMigStateSupported(dev, cur)) continue;
          for (const to of VFIO_DEVICE_STATES) {
            if (cur === to) continue;
            const next = vfioMigGetNextState(dev, cur, to);
            if (next >= 0) used.add(`${cur}>${next}`);
          }
        }
        const required = new Set(vfioRequiredArcs(flags).map(([a, b]) => `${a}>${b}`));
        expect([...used].sort()).toEqual([...required].sort());
      });

      it('terminates STOP_COPY -> PRE_COPY / PRE_COPY_P2P with -EINVAL (the kernel loop spins there)', () => {
        const dev = bare(flags);
        expect(vfioMigGetNextState(dev, SC, PC)).toBe(EINVAL);
        expect(vfioMigGetNextState(dev, SC, PP)).toBe(EINVAL);
        expect(dev.warnCount).toBe(0);
      });
    },
  );

  it('with P2P and PRE_COPY takes exactly the combination paths the kernel lists, every other pair in one arc', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY);
    const listed = new Map(KERNEL_COMBINATIONS.map((p) => [`${p[0]}>${p[p.length - 1]}`, p]));
    for (const cur of VFIO_DEVICE_STATES) {
      for (const to of VFIO_DEVICE_STATES) {
        if (cur === E || to === E || cur === to || (cur === SC && (to === PC || to === PP))) continue;
        const { path, ret } = walk(dev, cur, to);
        expect(ret).toBe(0);
        expect(path).toEqual(listed.get(`${cur}>${to}`) ?? [cur, to]);
      }
    }
  });

  it('STOP_COPY only: RUNNING and STOP are one arc apart, the rest goes through STOP', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY);
    expect(vfioMigGetNextState(dev, R, S)).toBe(S);
    expect(vfioMigGetNextState(dev, S, R)).toBe(R);
    expect(vfioMigGetNextState(dev, R, SC)).toBe(S);
    expect(vfioMigGetNextState(dev, R, RS)).toBe(S);
    expect(vfioMigGetNextState(dev, SC, R)).toBe(S);
    expect(vfioMigGetNextState(dev, RS, R)).toBe(S);
    expect(vfioMigGetNextState(dev, R, RP)).toBe(EINVAL);
    expect(vfioMigGetNextState(dev, R, PC)).toBe(EINVAL);
  });

  it('STOP_COPY|PRE_COPY: PRE_COPY_P2P and RUNNING_P2P are skipped', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY);
    expect(vfioMigGetNextState(dev, R, S)).toBe(S);
    expect(vfioMigGetNextState(dev, S, PC)).toBe(R);
    expect(vfioMigGetNextState(dev, PC, SC)).toBe(SC);
    expect(vfioMigGetNextState(dev, PC, S)).toBe(R);
    expect(vfioMigGetNextState(dev, PC, PP)).toBe(EINVAL);
  });

  it('returns -EINVAL and WARNs for a current state that is invalid or unsupported', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY);
    for (const cur of [E, RP, PC, PP, 8, -1, 1.5, Number.NaN]) {
      expect(vfioMigGetNextState(dev, cur, S)).toBe(EINVAL);
    }
    expect(dev.warnCount).toBe(8);
  });

  it('returns -EINVAL without a warning for a requested state that is invalid, unsupported or ERROR', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P);
    for (const to of [E, PC, PP, 8, -1, 2.5]) expect(vfioMigGetNextState(dev, R, to)).toBe(EINVAL);
    expect(dev.warnCount).toBe(0);
  });
});

/** Feeds a complete stop-copy stream of a fresh source into `target` (which must be in RESUMING). */
function feedStream(fd: VfioDataFile, m: ReturnType<typeof createMigrationRig>): void {
  const src = m.source.setState(SC);
  if (src === null || typeof src === 'number') throw new Error(`source STOP_COPY: ${String(src)}`);
  const buf = new Uint8Array(1 << 16);
  for (;;) {
    const n = src.read(buf);
    if (n <= 0) break;
    expect(fd.write(buf.subarray(0, n))).toBe(n);
  }
  src.release();
  expect(m.source.setState(R)).toBe(null);
}

describe('mlx5vf_pci_set_device_state', () => {
  describe.each(VFIO_MIGRATION_FLAG_SETS.map((f) => [flagName(f), f] as const))(
    'flags %s',
    (_name, flags) => {
      it('drives a real device between every pair of states, or refuses with the state unchanged', () => {
        const m = createMigrationRig({ migrationFlags: flags, memorySize: 16 << 10, guestSize: 0 });
        const dev = m.target;
        for (const cur of VFIO_DEVICE_STATES) {
          if (cur === E || !vfioMigStateSupported(dev, cur)) continue;
          for (const to of VFIO_DEVICE_STATES) {
            expect(vfioPciCoreIoctlReset(dev)).toBe(0);
            expect(dev.getState()).toBe(R);
            const fd = dev.setState(cur);
            expect(typeof fd).not.toBe('number');
            if (cur === RS) feedStream(fd as VfioDataFile, m);
            expect(dev.getState()).toBe(cur);
            const res = dev.setState(to);
            const supported = vfioMigStateSupported(dev, to) && !(cur === SC && (to === PC || to === PP));
            if (!supported) {
              expect(res, `${vfioDeviceStateName(cur)} -> ${vfioDeviceStateName(to)}`).toBe(EINVAL);
              expect(dev.getState()).toBe(cur);
            } else {
              expect(typeof res, `${vfioDeviceStateName(cur)} -> ${vfioDeviceStateName(to)}`).not.toBe(
                'number',
              );
              expect(dev.getState()).toBe(to);
            }
            if (fd !== null && typeof fd !== 'number') fd.release();
            if (res !== null && typeof res !== 'number') res.release();
          }
        }
        expect(dev.warnCount).toBe(0);
        expect(dev.setState(R)).toBeNull();
        teardownMigrationRig(m);
      });
    },
  );
});

describe('vfio_check_feature', () => {
  it('accepts supported GET/SET, answers PROBE with 0, rejects the rest with -EINVAL', () => {
    expect(vfioCheckFeature(VFIO_DEVICE_FEATURE_GET, 8, VFIO_DEVICE_FEATURE_GET, 8)).toBe(1);
    expect(vfioCheckFeature(VFIO_DEVICE_FEATURE_SET, 8, VFIO_DEVICE_FEATURE_GET, 8)).toBe(EINVAL);
    expect(
      vfioCheckFeature(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET, 0, VFIO_DEVICE_FEATURE_GET, 8),
    ).toBe(0);
    expect(vfioCheckFeature(0, 8, VFIO_DEVICE_FEATURE_GET, 8)).toBe(EINVAL);
    expect(vfioCheckFeature(VFIO_DEVICE_FEATURE_GET, 4, VFIO_DEVICE_FEATURE_GET, 8)).toBe(EINVAL);
  });
});

describe('vfio_ioctl_device_feature', () => {
  it('rejects unknown flag bits, GET with SET outside PROBE, and unknown features', () => {
    const m = createMigrationRig({ guestSize: 0 });
    const dev = m.source;
    const flagsOut = { flags: 0 };
    expect(
      vfioIoctlDeviceFeature(
        dev,
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION | (1 << 20),
        flagsOut,
      ),
    ).toBe(EINVAL);
    expect(
      vfioIoctlDeviceFeature(
        dev,
        VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION,
        flagsOut,
      ),
    ).toBe(EINVAL);
    expect(vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | 42, flagsOut)).toBe(EINVAL);
    teardownMigrationRig(m);
  });

  it('VFIO_DEVICE_FEATURE_MIGRATION: GET returns the flags, SET is refused, PROBE answers 0', () => {
    const m = createMigrationRig({ guestSize: 0 });
    const out = { flags: 0 };
    expect(
      vfioIoctlDeviceFeature(m.source, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, out),
    ).toBe(0);
    expect(out.flags).toBe(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY);
    expect(
      vfioIoctlDeviceFeature(m.source, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION, out),
    ).toBe(EINVAL);
    expect(
      vfioIoctlDeviceFeature(
        m.source,
        VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
        out,
      ),
    ).toBe(0);
    expect(
      vfioIoctlDeviceFeature(m.source, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, out, 4),
    ).toBe(EINVAL);
    teardownMigrationRig(m);
  });

  it('returns -ENOTTY for migration and logging features of a device without the ops', () => {
    const dev = bare(VFIO_MIGRATION_STOP_COPY);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, { flags: 0 }),
    ).toBe(-Errno.ENOTTY);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, {
        deviceState: 0,
        dataFd: null,
      }),
    ).toBe(-Errno.ENOTTY);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, undefined),
    ).toBe(-Errno.ENOTTY);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, {
        stopCopyLength: 0,
      }),
    ).toBe(-Errno.ENOTTY);
  });

  it('VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: GET the state, SET returns a data fd or -1, errors keep the state', () => {
    const m = createMigrationRig({ guestSize: 0 });
    const dev = m.source;
    const mig: VfioDeviceFeatureMigState<VfioDataFile> = { deviceState: 0, dataFd: null };
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(0);
    expect(mig.deviceState).toBe(R);
    mig.deviceState = S;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(0);
    expect(mig.dataFd).toBeNull();
    mig.deviceState = SC;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(0);
    expect(mig.dataFd).not.toBeNull();
    mig.dataFd?.release();
    mig.deviceState = PC;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(EINVAL);
    expect(mig.dataFd).toBeNull();
    mig.deviceState = E;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(EINVAL);
    mig.deviceState = 99;
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, mig),
    ).toBe(EINVAL);
    expect(dev.getState()).toBe(SC);
    expect(dev.setState(R)).toBeNull();
    teardownMigrationRig(m);
  });

  it('VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: the full image size in any state', () => {
    const m = createMigrationRig({ memorySize: 64 << 10, guestSize: 0 });
    const out = { stopCopyLength: 0 };
    for (const state of [R, S, R] as VfioDeviceMigState[]) {
      expect(m.source.setState(state)).toBeNull();
      expect(
        vfioIoctlDeviceFeature(m.source, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, out),
      ).toBe(0);
      expect(out.stopCopyLength).toBe(m.source.vhca.fullImageBytes);
    }
    // header page (32 bytes + 4 per page, rounded up) + 17 state pages
    expect(out.stopCopyLength).toBe(4096 + 17 * 4096);
    teardownMigrationRig(m);
  });

  it('DMA logging start: checks ranges as the kernel does', () => {
    const m = createMigrationRig();
    const dev = m.source;
    const start = (pageSize: number, ranges: Array<{ iova: number; length: number }>) =>
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, {
        pageSize,
        ranges,
      });
    expect(start(4096, [])).toBe(EINVAL);
    expect(
      start(
        4096,
        Array.from({ length: LOG_MAX_RANGES + 1 }, (_, i) => ({ iova: i * 8192, length: 4096 })),
      ),
    ).toBe(-Errno.E2BIG);
    expect(start(4096, [{ iova: 100, length: 4096 }])).toBe(EINVAL);
    expect(start(4096, [{ iova: 0, length: 4000 }])).toBe(EINVAL);
    expect(start(4096, [{ iova: 2 ** 53 - 4096, length: 8192 }])).toBe(-Errno.EOVERFLOW);
    expect(
      start(4096, [
        { iova: 0, length: 8192 },
        { iova: 4096, length: 8192 },
      ]),
    ).toBe(EINVAL);
    const control = { pageSize: 1024, ranges: [{ iova: 0, length: 64 << 10 }] };
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, control),
    ).toBe(0);
    expect(control.pageSize).toBe(4096);
    // a second start while logging is refused by the driver
    expect(start(4096, [{ iova: 0, length: 4096 }])).toBe(EINVAL);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, undefined),
    ).toBe(0);
    teardownMigrationRig(m);
  });

  it('DMA logging report: page size, overflow, short bitmap and logging-off errors', () => {
    const m = createMigrationRig();
    const dev = m.source;
    const report = (pageSize: number, length: number, bitmap = new Uint8Array(64)) =>
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, {
        iova: 0,
        length,
        pageSize,
        bitmap,
      });
    expect(report(4096, 4096)).toBe(EINVAL); // logging not started
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, {
        pageSize: 4096,
        ranges: [{ iova: 0, length: 256 << 10 }],
      }),
    ).toBe(0);
    expect(report(2048, 4096)).toBe(EINVAL);
    expect(report(12288, 4096)).toBe(EINVAL);
    expect(report(4096, 2 ** 53)).toBe(-Errno.EOVERFLOW);
    expect(report(4096, 256 << 10, new Uint8Array(4))).toBe(-Errno.EFAULT);
    expect(report(4096, 256 << 10)).toBe(0);
    expect(
      vfioIoctlDeviceFeature(dev, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, undefined),
    ).toBe(0);
    teardownMigrationRig(m);
  });
});

describe('vfio_combine_iova_ranges', () => {
  it('joins the ranges with the smallest gaps first, or everything into one', () => {
    const ranges = () => [
      { start: 0, last: 0xfff },
      { start: 0x2000, last: 0x2fff },
      { start: 0x10000, last: 0x10fff },
      { start: 0x11000 + 0x100, last: 0x11fff },
    ];
    expect(vfioCombineIovaRanges(ranges(), 2)).toEqual([
      { start: 0, last: 0x2fff },
      { start: 0x10000, last: 0x11fff },
    ]);
    expect(vfioCombineIovaRanges(ranges(), 1)).toEqual([{ start: 0, last: 0x11fff }]);
    expect(vfioCombineIovaRanges(ranges(), 4)).toEqual(ranges());
  });
});
