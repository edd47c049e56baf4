/**
 * What the demo's and `bench block`'s timed regions hold: the model, with each harness step (a
 * write's payload copy, a read's check, the VFIO state comparison) timed apart, and nothing else.
 * A clock that ticks 1 ms per read is injected, so the figures count clock reads and the test
 * does not depend on how fast the machine is.
 */
import { describe, expect, it } from 'vitest';
import { loadPreset } from '../src/cost-model.js';
import { type BlockCase, openBlockPath } from '../src/workloads/block.js';
import type { WorkloadContext } from '../src/workloads/types.js';
import { openVfioPath } from '../src/workloads/vfio.js';

/** A context whose simulator clock advances 1 ms per read. */
function tickingContext(seed: number): WorkloadContext {
  let ms = 0;
  return {
    iommu: 'strict',
    seed,
    quick: true,
    debug: false,
    costModel: loadPreset('arm-smmuv3'),
    clock: () => ms++,
  };
}

const fourK: BlockCase = {
  name: 'block 4 KiB random r/w (test)',
  blockSize: 4096,
  pattern: 'random',
  readMix: 0.5,
  buffers: 'contiguous',
  ios: 40,
  quickIos: 40,
};

describe('the timed region of a block session', () => {
  it.each(['sg', 'iova'] as const)(
    'times one harness step per I/O and nothing else besides the model (%s path)',
    (path) => {
      // Queue depth 1: every I/O a step issues also completes in it. Payloads are slices of a pool
      // built when the session opens, so a write's only harness step is its copy into the buffer
      // and a read's only one is its check: one interval (two clock reads, 1 tick) per I/O.
      const s = openBlockPath(fourK, path, tickingContext(11), 1);
      const ios = 40;
      const t = s.step(ios);
      const out = s.finish();
      expect(t.ops).toBe(ios);
      expect(out.stats.reads + out.stats.writes).toBe(ios);
      expect(out.stats.reads).toBeGreaterThan(0);
      expect(out.stats.writes).toBeGreaterThan(0);
      expect(t.harnessNs).toBe(ios * 1e6);
      // the step's two reads bracket 2 reads per harness interval: total 2·ios + 1 ticks, of which
      // the model gets ios + 1 (the gaps between intervals), so no other step reads the clock
      expect(t.modelNs + t.harnessNs).toBe((2 * ios + 1) * 1e6);
      expect(t.modelNs).toBe((ios + 1) * 1e6);
    },
  );

  it('keeps the same split over steps: each later step again times exactly its own I/Os', () => {
    const s = openBlockPath(fourK, 'iova', tickingContext(12), 1);
    for (const ios of [7, 13, 1]) {
      const t = s.step(ios);
      expect(t.ops).toBe(ios);
      expect(t.harnessNs).toBe(ios * 1e6);
      expect(t.modelNs).toBe((ios + 1) * 1e6);
    }
    expect(s.finish().verified).toBe(true);
  });
});

describe('the timed region of a VFIO migration', () => {
  it('times the final state comparison as harness, apart from the migration', () => {
    // one migration: t0, the 'done' mark, the end of the comparison, the end after the flush-queue
    // timer: the comparison is 1 tick of harness, the migration 2 ticks of model
    const s = openVfioPath('iova', tickingContext(13), {
      stateBytes: 256 << 10,
      precopyIterations: 1,
      stepsPerIteration: 50,
    });
    const t = s.step(1);
    expect(t.ops).toBe(1);
    expect(t.harnessNs).toBe(1e6);
    expect(t.modelNs).toBe(2e6);
    expect(s.finish().verified).toBe(true);
  });
});
