// The mlx5 data fds, pre-copy info, arcs and error paths (drivers/vfio/pci/mlx5/main.c).
import { Errno } from '@iovalink/iommu';
import { describe, expect, it } from 'vitest';
import {
  MLX5_META_DATA_BUFFER,
  MLX5_VF_MIGRATION_HEADER_SIZE,
  MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE,
} from '../src/mlx5-cmd.js';
import { mlx5vfPciGetDataSize, vfioPciCoreIoctlReset } from '../src/mlx5-main.js';
import { mlx5VhcaImageBytes, mlx5VhcaStateEqual } from '../src/mlx5-vhca.js';
import { createMigrationRig, migrationMetaLiveBytes, teardownMigrationRig } from '../src/testing/index.js';
import type { VfioDataFile } from '../src/vfio-main.js';
import {
  VFIO_DEVICE_STATE_ERROR,
  VFIO_DEVICE_STATE_PRE_COPY,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RESUMING,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_DEVICE_STATE_STOP,
  VFIO_DEVICE_STATE_STOP_COPY,
  VFIO_MIG_GET_PRECOPY_INFO,
  VFIO_MIGRATION_P2P,
  VFIO_MIGRATION_STOP_COPY,
  VFIO_PRECOPY_INFO_SIZE,
  type VfioPrecopyInfo,
} from '../src/vfio-uapi.js';

const R = VFIO_DEVICE_STATE_RUNNING;
const S = VFIO_DEVICE_STATE_STOP;
const SC = VFIO_DEVICE_STATE_STOP_COPY;
const RS = VFIO_DEVICE_STATE_RESUMING;
const PC = VFIO_DEVICE_STATE_PRE_COPY;
const PP = VFIO_DEVICE_STATE_PRE_COPY_P2P;
const RECORDS = MLX5_VF_MIGRATION_HEADER_SIZE + MLX5_VF_MIGRATION_TAG_STOP_COPY_DATA_SIZE;

function fdOf(x: VfioDataFile | null | number): VfioDataFile {
  if (x === null || typeof x === 'number') throw new Error(`expected a data fd, got ${String(x)}`);
  return x;
}

/** Reads a stream to its end (or to the pre-copy temporary end); returns the bytes. */
function readAll(fd: VfioDataFile, chunk = 1 << 16): Uint8Array {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(chunk);
  for (;;) {
    const n = fd.read(buf);
    if (n === 0 || n === -Errno.ENOMSG) break;
    if (n < 0) throw new Error(`read: ${n}`);
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function info(fd: VfioDataFile): VfioPrecopyInfo & { ret: number } {
  const i: VfioPrecopyInfo = { argsz: VFIO_PRECOPY_INFO_SIZE, flags: 0, initialBytes: -1, dirtyBytes: -1 };
  const ret = fd.ioctl(VFIO_MIG_GET_PRECOPY_INFO, i);
  return { ...i, ret };
}

/** A complete stop-copy stream of the rig's source (RUNNING → STOP_COPY → STOP). */
function stopCopyStream(m: ReturnType<typeof createMigrationRig>): Uint8Array {
  const fd = fdOf(m.source.setState(SC));
  const data = readAll(fd);
  expect(fd.read(new Uint8Array(16))).toBe(0);
  fd.release();
  expect(m.source.setState(S)).toBeNull();
  return data;
}

describe('mlx5vf_save_read', () => {
  it('streams STOP_COPY size record, FW_DATA header and the image, then end of stream again and again', () => {
    const m = createMigrationRig({ guestSize: 0, memorySize: 32 << 10 });
    const fd = fdOf(m.source.setState(SC));
    const data = readAll(fd, 1000);
    const image = m.source.vhca.fullImageBytes;
    expect(data.length).toBe(RECORDS + MLX5_VF_MIGRATION_HEADER_SIZE + image);
    const v = new DataView(data.buffer);
    expect(v.getUint32(0, true)).toBe(8); // record size
    expect(v.getUint32(8, true)).toBe(1); // optional
    expect(v.getUint32(12, true)).toBe(1); // STOP_COPY_SIZE
    expect(v.getUint32(16, true)).toBe(image); // the stop-copy buffer size
    expect(v.getUint32(RECORDS, true)).toBe(image);
    expect(v.getUint32(RECORDS + 12, true)).toBe(0); // FW_DATA
    expect(fd.read(new Uint8Array(10))).toBe(0);
    expect(fd.read(new Uint8Array(10))).toBe(0);
    // stream fds have no position; a saving fd is read-only
    expect(fd.pread(new Uint8Array(10), 0)).toBe(-Errno.ESPIPE);
    expect(fd.pwrite(new Uint8Array(10), 0)).toBe(-Errno.ESPIPE);
    expect(fd.write(new Uint8Array(10))).toBe(-Errno.EBADF);
    expect(fd.ioctl(0x1234, { argsz: 24, flags: 0, initialBytes: 0, dirtyBytes: 0 })).toBe(-Errno.ENOTTY);
    // PRECOPY_INFO is for PRE_COPY states only
    expect(info(fd).ret).toBe(-Errno.EINVAL);
    // leaving STOP_COPY disables the fd
    expect(m.source.setState(S)).toBeNull();
    expect(fd.read(new Uint8Array(10))).toBe(-Errno.ENODEV);
    fd.release();
    expect(fd.read(new Uint8Array(10))).toBe(-Errno.EBADF);
    teardownMigrationRig(m);
  });

  it('the user may close the fd early: the device keeps its reference until it leaves the saving states', () => {
    const m = createMigrationRig({ guestSize: 0 });
    const fd = fdOf(m.source.setState(PC));
    fd.release();
    expect(m.source.savingMigf?.released).toBe(false);
    expect(m.source.setState(R)).toBeNull();
    expect(m.source.savingMigf).toBeNull();
    expect(migrationMetaLiveBytes(m.machine)).toBe(0);
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_precopy_ioctl', () => {
  it('reports initial bytes, then dirty bytes, and saves an increment into a reused buffer', () => {
    const m = createMigrationRig({ guestSize: 0, memorySize: 256 << 10 });
    const dev = m.source;
    const fd = fdOf(dev.setState(PC));
    const full = dev.vhca.fullImageBytes;
    let i = info(fd);
    expect(i.ret).toBe(0);
    expect(i.initialBytes).toBe(RECORDS + MLX5_VF_MIGRATION_HEADER_SIZE + full);
    expect(i.dirtyBytes).toBe(0);
    expect(fd.read(new Uint8Array(1000))).toBe(1000);
    expect(info(fd).initialBytes).toBe(i.initialBytes - 1000);
    readAll(fd);
    // everything read, nothing changed: the temporary end of stream
    i = info(fd);
    expect([i.initialBytes, i.dirtyBytes]).toEqual([0, 0]);
    expect(fd.read(new Uint8Array(10))).toBe(-Errno.ENOMSG);
    const c = m.machine.counters;
    const buffersBefore = c.snapshot().meta[MLX5_META_DATA_BUFFER]!.allocs;
    const iovaBefore = c.iovaAllocs;
    for (let round = 0; round < 4; round++) {
      dev.run(50);
      const dirtyPages = dev.vhca.dirtyPages;
      expect(dirtyPages).toBeGreaterThan(0);
      i = info(fd);
      expect(i.initialBytes).toBe(0);
      expect(i.dirtyBytes).toBe(mlx5VhcaImageBytes(dirtyPages));
      // the increment is now queued: header + image
      expect(info(fd).dirtyBytes).toBe(MLX5_VF_MIGRATION_HEADER_SIZE + mlx5VhcaImageBytes(dirtyPages));
      expect(readAll(fd).length).toBe(MLX5_VF_MIGRATION_HEADER_SIZE + mlx5VhcaImageBytes(dirtyPages));
    }
    // increments went into the buffers read out before: no new buffer, no new mapping
    expect(c.snapshot().meta[MLX5_META_DATA_BUFFER]!.allocs).toBe(buffersBefore);
    expect(c.iovaAllocs).toBe(iovaBefore);
    // PRE_COPY_P2P: no new save is started (the device cannot save while P2P-quiesced)
    dev.run(50);
    expect(dev.setState(PP)).toBeNull();
    i = info(fd);
    expect([i.initialBytes, i.dirtyBytes]).toEqual([0, 0]);
    expect(fd.ioctl(VFIO_MIG_GET_PRECOPY_INFO, { argsz: 16, flags: 0, initialBytes: 0, dirtyBytes: 0 })).toBe(
      -Errno.EINVAL,
    );
    // the final increment holds what changed since the last one
    const pending = dev.vhca.dirtyPages;
    expect(pending).toBeGreaterThan(0);
    expect(dev.setState(SC)).toBeNull();
    expect(readAll(fd).length).toBe(MLX5_VF_MIGRATION_HEADER_SIZE + mlx5VhcaImageBytes(pending));
    expect(fd.read(new Uint8Array(10))).toBe(0);
    fd.release();
    expect(dev.setState(R)).toBeNull();
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_resume_write', () => {
  it('loads a stream written in any segmentation; a resuming fd is write-only', () => {
    const m = createMigrationRig({ guestSize: 0 });
    m.source.run(300);
    const stream = stopCopyStream(m);
    expect(m.target.setState(S)).toBeNull();
    const fd = fdOf(m.target.setState(RS));
    expect(fd.read(new Uint8Array(4))).toBe(-Errno.EBADF);
    expect(fd.pwrite(new Uint8Array(4), 0)).toBe(-Errno.ESPIPE);
    expect(fd.ioctl(VFIO_MIG_GET_PRECOPY_INFO, { argsz: 24, flags: 0, initialBytes: 0, dirtyBytes: 0 })).toBe(
      -Errno.ENOTTY,
    );
    let off = 0;
    for (const n of [1, 7, 16, 23, 5000, 3]) {
      expect(fd.write(stream.subarray(off, off + n))).toBe(n);
      off += n;
    }
    expect(fd.write(stream.subarray(off))).toBe(stream.length - off);
    expect(m.target.setState(S)).toBeNull();
    expect(mlx5VhcaStateEqual(m.source.vhca, m.target.vhca)).toBe(true);
    // the fd is disabled once the device left RESUMING
    expect(fd.write(new Uint8Array(16))).toBe(-Errno.ENODEV);
    fd.release();
    expect(m.target.setState(R)).toBeNull();
    teardownMigrationRig(m);
  });

  describe.each(['sg', 'iova'] as const)('%s buffers', (mapping) => {
    function resumeWith(
      stream: Uint8Array,
      m: ReturnType<typeof createMigrationRig>,
    ): { writeRet: number; fd: VfioDataFile } {
      expect(m.target.setState(S)).toBeNull();
      const fd = fdOf(m.target.setState(RS));
      return { writeRet: fd.write(stream), fd };
    }

    it('a truncated stream is rejected when leaving RESUMING: ERROR, not a half-loaded RUNNING', () => {
      const m = createMigrationRig({ mapping, guestSize: 0 });
      const stream = stopCopyStream(m);
      for (const cut of [5, RECORDS + 10, stream.length - 100, stream.length - 1]) {
        const { writeRet, fd } = resumeWith(stream.subarray(0, cut), m);
        expect(writeRet).toBe(cut);
        expect(m.target.setState(R)).toBe(-Errno.EINVAL);
        expect(m.target.getState()).toBe(VFIO_DEVICE_STATE_ERROR);
        expect(fd.write(new Uint8Array(4))).toBe(-Errno.ENODEV);
        // an ERROR device refuses every request until reset
        expect(m.target.setState(R)).toBe(-Errno.EINVAL);
        fd.release();
        expect(vfioPciCoreIoctlReset(m.target)).toBe(0);
        expect(m.target.getState()).toBe(R);
      }
      expect(migrationMetaLiveBytes(m.machine)).toBe(0);
      teardownMigrationRig(m);
    });

    it('a stream cut at a record boundary before the final image is rejected too', () => {
      const m = createMigrationRig({ mapping, guestSize: 0 });
      const fd = fdOf(m.source.setState(PC));
      const precopy = readAll(fd);
      m.source.run(100);
      expect(m.source.setState(SC)).toBeNull();
      const rest = readAll(fd);
      expect(rest.length).toBeGreaterThan(0);
      fd.release();
      const { writeRet, fd: dst } = resumeWith(precopy, m);
      expect(writeRet).toBe(precopy.length);
      expect(m.target.setState(S)).toBe(-Errno.EINVAL);
      expect(m.target.getState()).toBe(VFIO_DEVICE_STATE_ERROR);
      dst.release();
      vfioPciCoreIoctlReset(m.target);
      // the whole stream loads
      const whole = new Uint8Array(precopy.length + rest.length);
      whole.set(precopy);
      whole.set(rest, precopy.length);
      const ok = resumeWith(whole, m);
      expect(ok.writeRet).toBe(whole.length);
      expect(m.target.setState(R)).toBeNull();
      expect(mlx5VhcaStateEqual(m.source.vhca, m.target.vhca)).toBe(true);
      ok.fd.release();
      expect(m.source.setState(R)).toBeNull();
      teardownMigrationRig(m);
    });

    it('a corrupted image, an unknown mandatory tag or an oversized record fail the write and end in ERROR', () => {
      const m = createMigrationRig({ mapping, guestSize: 0 });
      const stream = stopCopyStream(m);
      const imageAt = RECORDS + MLX5_VF_MIGRATION_HEADER_SIZE;
      // [what, byte offset, xor mask, expected write result]
      const cases: Array<[string, number, number, number]> = [
        ['image data byte', imageAt + 4096 + 100, 0x40, -Errno.EINVAL],
        ['image header flags', imageAt + 6, 0x04, -Errno.EINVAL],
        ['image page index', imageAt + 32, 0x01, -Errno.EINVAL],
        ['record tag', RECORDS + 12, 0x05, -Errno.EOPNOTSUPP],
        ['record size', RECORDS + 4, 0x01, -Errno.ENOMEM],
      ];
      for (const [what, at, mask, errno] of cases) {
        const bad = stream.slice();
        bad[at] = (bad[at] as number) ^ mask;
        const before = m.target.vhca.regs.slice();
        const { writeRet, fd } = resumeWith(bad, m);
        expect(writeRet, what).toBe(errno);
        // nothing of a refused image is applied
        expect(m.target.vhca.regs).toEqual(before);
        expect(fd.write(new Uint8Array(4)), what).toBe(-Errno.ENODEV);
        expect(m.target.setState(S), what).toBe(-Errno.EINVAL);
        expect(m.target.getState()).toBe(VFIO_DEVICE_STATE_ERROR);
        fd.release();
        vfioPciCoreIoctlReset(m.target);
      }
      teardownMigrationRig(m);
    });

    it('an optional record with an unknown tag is skipped', () => {
      const m = createMigrationRig({ mapping, guestSize: 0 });
      m.source.run(100);
      const stream = stopCopyStream(m);
      const extra = new Uint8Array(16 + 5000);
      const v = new DataView(extra.buffer);
      v.setUint32(0, 5000, true);
      v.setUint32(8, 1, true); // optional
      v.setUint32(12, 0x40, true); // unknown tag
      const joined = new Uint8Array(extra.length + stream.length);
      joined.set(extra);
      joined.set(stream, extra.length);
      const { writeRet, fd } = resumeWith(joined, m);
      expect(writeRet).toBe(joined.length);
      expect(m.target.setState(R)).toBeNull();
      expect(mlx5VhcaStateEqual(m.source.vhca, m.target.vhca)).toBe(true);
      fd.release();
      teardownMigrationRig(m);
    });
  });
});

describe('mlx5vf_pci_set_device_state', () => {
  it('a failing arc leaves the device in ERROR with nothing leaked; reset recovers it', () => {
    const m = createMigrationRig({ guestSize: 0, memorySize: 256 << 10 });
    m.machine.faults.failAlways('page_alloc');
    expect(m.source.setState(PC)).toBe(-Errno.ENOMEM);
    m.machine.faults.clear();
    expect(m.source.getState()).toBe(VFIO_DEVICE_STATE_ERROR);
    expect(m.source.savingMigf).toBeNull();
    expect(migrationMetaLiveBytes(m.machine)).toBe(0);
    expect(m.source.setState(S)).toBe(-Errno.EINVAL);
    expect(m.source.warnCount).toBe(1);
    expect(vfioPciCoreIoctlReset(m.source)).toBe(0);
    expect(m.source.getState()).toBe(R);
    expect(typeof m.source.setState(PC)).toBe('object');
    expect(m.source.setState(R)).toBeNull();
    teardownMigrationRig(m);
  });

  it('refuses states the flags do not support and the blocked STOP_COPY -> PRE_COPY, state unchanged', () => {
    const m = createMigrationRig({
      guestSize: 0,
      migrationFlags: VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
    });
    expect(m.source.setState(PC)).toBe(-Errno.EINVAL);
    expect(m.source.getState()).toBe(R);
    teardownMigrationRig(m);
    const m2 = createMigrationRig({ guestSize: 0 });
    const fd = fdOf(m2.source.setState(SC));
    expect(m2.source.setState(PC)).toBe(-Errno.EINVAL);
    expect(m2.source.setState(PP)).toBe(-Errno.EINVAL);
    expect(m2.source.getState()).toBe(SC);
    fd.release();
    expect(m2.source.setState(R)).toBeNull();
    teardownMigrationRig(m2);
  });

  it('a stopped device does not change; P2P quiesce stops its guest DMA', () => {
    const m = createMigrationRig({ memorySize: 16 << 10 });
    const before = m.source.vhca.memory.slice();
    expect(m.source.setState(S)).toBeNull();
    expect(m.source.run(100)).toBe(0);
    expect(m.source.vhca.memory).toEqual(before);
    expect(m.source.setState(VFIO_DEVICE_STATE_RUNNING)).toBeNull();
    expect(m.source.setState(5)).toBeNull(); // RUNNING_P2P
    m.guestWrites.clear();
    expect(m.source.run(200)).toBe(200);
    expect(m.guestWrites.size).toBe(0);
    expect(m.source.setState(R)).toBeNull();
    m.source.run(200);
    expect(m.guestWrites.size).toBeGreaterThan(0);
    teardownMigrationRig(m);
  });
});

describe('mlx5vf_pci_get_data_size', () => {
  it('estimates the stop-copy length as the full image', () => {
    const m = createMigrationRig({ guestSize: 0, memorySize: 40 << 10 });
    const out = { stopCopyLength: 0 };
    expect(mlx5vfPciGetDataSize(m.source, out)).toBe(0);
    expect(out.stopCopyLength).toBe(mlx5VhcaImageBytes(11));
    teardownMigrationRig(m);
  });
});
