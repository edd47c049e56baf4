import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { OdpError } from '../src/errors.js';
import { Mm } from '../src/mm.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../src/mm-types.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  type MmuNotifierRange,
  mmuIntervalNotifierInsert,
  mmuIntervalSetSeq,
} from '../src/mmu-notifier.js';
import { mmapAnon, odpPattern } from '../src/testing/index.js';

const RW = PROT_READ | PROT_WRITE;

interface Seen {
  event: number;
  start: number;
  end: number;
  /** For each page of the range that was mapped at callback time: its frame and whether it was still allocated. */
  frames: Array<{ va: number; phys: number; allocated: boolean }>;
}

/** Subscribes to the whole space and records, at callback time, what the mm still maps. */
function watch(mm: Mm): Seen[] {
  const seen: Seen[] = [];
  const sub = new MmuIntervalNotifier();
  mmuIntervalNotifierInsert(sub, mm, 0, 2 ** 47, {
    invalidate(s, range: MmuNotifierRange, seq) {
      mmuIntervalSetSeq(s, seq);
      const frames: Seen['frames'] = [];
      const end = Math.min(range.end, 2 ** 47);
      for (const v of mm.vmas) {
        for (let va = Math.max(v.vmStart, range.start); va < Math.min(v.vmEnd, end); va += PAGE_SIZE) {
          const p = mm.followPte(va);
          if (p !== undefined)
            frames.push({ va, phys: p.phys, allocated: mm.machine.pages.orderOf(p.phys) === 0 });
        }
      }
      seen.push({ event: range.event, start: range.start, end: range.end, frames });
      return true;
    },
  });
  return seen;
}

describe('handle_mm_fault', () => {
  it('populates zeroed pages on first touch and keeps CPU stores', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, 4 * PAGE_SIZE);
    expect(mm.nrPtes).toBe(0);
    expect(mm.read(a + 100, 8)).toEqual(new Uint8Array(8));
    expect(mm.nrPtes).toBe(1);
    const data = odpPattern(2 * PAGE_SIZE, 1);
    mm.write(a + PAGE_SIZE + 10, data);
    expect(mm.read(a + PAGE_SIZE + 10, data.length)).toEqual(data);
    expect(mm.stats.faults).toBe(4);
  });

  it('delivers SIGSEGV outside a VMA and for writes to a read-only VMA', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE, PROT_READ);
    expect(() => mm.read(a + PAGE_SIZE, 1)).toThrow(OdpError);
    expect(() => mm.write(a, new Uint8Array(1))).toThrow(/SIGSEGV/);
    expect(mm.read(a, 1)).toEqual(new Uint8Array(1));
  });

  it('runs out of memory as -ENOMEM, not a crash', () => {
    const m = createTestMachine();
    const mm = new Mm(m);
    const a = mmapAnon(mm, PAGE_SIZE);
    m.faults.failNth('page_alloc', 1);
    expect(mm.handleMmFault(mm.findVma(a)!, a, true)).toBe(-Errno.ENOMEM);
  });
});

describe('mmap', () => {
  it('rejects bad flags and MAP_FIXED replaces what was mapped (with an UNMAP invalidation)', () => {
    const mm = new Mm(createTestMachine());
    expect(mm.mmap(0, PAGE_SIZE, RW, MAP_ANONYMOUS)).toBe(-Errno.EINVAL);
    expect(mm.mmap(0, 0, RW, MAP_PRIVATE | MAP_ANONYMOUS)).toBe(-Errno.EINVAL);
    const a = mmapAnon(mm, 2 * PAGE_SIZE);
    mm.write(a, new Uint8Array([7]));
    const seen = watch(mm);
    expect(mm.mmap(a, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)).toBe(a);
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_UNMAP]);
    expect(mm.read(a, 1)).toEqual(new Uint8Array([0]));
    expect(mm.vmas.length).toBe(2);
  });
});

describe('munmap', () => {
  it('runs the notifiers first, while the frames are still mapped and allocated, and frees them after', () => {
    const m = createTestMachine();
    const mm = new Mm(m);
    const a = mmapAnon(mm, 4 * PAGE_SIZE);
    mm.write(a, new Uint8Array(4 * PAGE_SIZE).fill(1));
    const frames = [0, 1, 2, 3].map((i) => mm.followPte(a + i * PAGE_SIZE)!.phys);
    const seen = watch(mm);
    expect(mm.munmap(a + PAGE_SIZE, 2 * PAGE_SIZE)).toBe(0);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.event).toBe(MMU_NOTIFY_UNMAP);
    expect(seen[0]!.frames.map((f) => f.phys)).toEqual([frames[1], frames[2]]);
    expect(seen[0]!.frames.every((f) => f.allocated)).toBe(true);
    expect(m.pages.orderOf(frames[1]!)).toBe(-1);
    expect(m.pages.orderOf(frames[0]!)).toBe(0);
    expect(mm.vmas.map((v) => [v.vmStart, v.vmEnd])).toEqual([
      [a, a + PAGE_SIZE],
      [a + 3 * PAGE_SIZE, a + 4 * PAGE_SIZE],
    ]);
    expect(() => mm.read(a + PAGE_SIZE, 1)).toThrow(OdpError);
  });
});

describe('migrate_pages', () => {
  it('moves each page to a new frame with its contents, notifying before the old frame is freed', () => {
    const m = createTestMachine();
    const mm = new Mm(m);
    const a = mmapAnon(mm, 2 * PAGE_SIZE);
    const data = odpPattern(2 * PAGE_SIZE, 3);
    mm.write(a, data);
    const before = [mm.followPte(a)!.phys, mm.followPte(a + PAGE_SIZE)!.phys];
    const seen = watch(mm);
    expect(mm.migratePages(a, 2 * PAGE_SIZE)).toBe(2);
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_CLEAR, MMU_NOTIFY_CLEAR]);
    expect(seen.map((s) => s.frames[0]!.phys)).toEqual(before);
    expect(seen.every((s) => s.frames[0]!.allocated)).toBe(true);
    const after = [mm.followPte(a)!.phys, mm.followPte(a + PAGE_SIZE)!.phys];
    expect(after[0]).not.toBe(before[0]);
    expect(after[1]).not.toBe(before[1]);
    // each old frame was freed (it may be reused at once: the page allocator is LIFO, so page 1's
    // new frame can be the one page 0 just left)
    for (const old of before) expect(m.pages.orderOf(old) === -1 || after.includes(old)).toBe(true);
    expect(mm.read(a, data.length)).toEqual(data);
    expect(mm.stats.migrations).toBe(2);
  });

  it('skips pages shared with a forked child (no cross-process rmap here)', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    const child = mm.fork();
    expect(mm.migratePages(a, PAGE_SIZE)).toBe(0);
    child.exit();
    expect(mm.migratePages(a, PAGE_SIZE)).toBe(1);
  });
});

describe('reclaim', () => {
  it('swaps anonymous pages out and back in with their contents', () => {
    const m = createTestMachine();
    const mm = new Mm(m);
    const a = mmapAnon(mm, 3 * PAGE_SIZE);
    const data = odpPattern(3 * PAGE_SIZE, 9);
    mm.write(a, data);
    const free = m.pages.nrFreePages;
    const seen = watch(mm);
    expect(mm.reclaim(a, 3 * PAGE_SIZE)).toBe(3);
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_CLEAR, MMU_NOTIFY_CLEAR, MMU_NOTIFY_CLEAR]);
    expect(m.pages.nrFreePages).toBe(free + 3);
    expect(mm.followPte(a)).toBeUndefined();
    expect(mm.read(a, data.length)).toEqual(data);
    expect(mm.stats.swapOuts).toBe(3);
    expect(mm.stats.swapIns).toBe(3);
  });

  it('writes dirty shared file pages back and reads them again after eviction', () => {
    const mm = new Mm(createTestMachine());
    const f = mm.createFile('data', 2 * PAGE_SIZE);
    const a = mm.mmap(0, 2 * PAGE_SIZE, RW, MAP_SHARED, f);
    mm.write(a + 5, new Uint8Array([1, 2, 3]));
    expect(mm.reclaim(a, 2 * PAGE_SIZE)).toBe(1);
    expect(f.writebacks).toBe(1);
    expect(f.readBacking(0).subarray(5, 8)).toEqual(new Uint8Array([1, 2, 3]));
    expect(f.cache.size).toBe(0);
    expect(mm.read(a + 5, 3)).toEqual(new Uint8Array([1, 2, 3]));
  });
});

describe('mprotect', () => {
  it('invalidates populated pages with PROTECTION_VMA and takes write permission away', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, 2 * PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    const seen = watch(mm);
    expect(mm.mprotect(a, 2 * PAGE_SIZE, PROT_READ)).toBe(0);
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_PROTECTION_VMA]);
    expect(mm.followPte(a)!.write).toBe(false);
    expect(() => mm.write(a, new Uint8Array([2]))).toThrow(/SIGSEGV/);
    expect(mm.read(a, 1)).toEqual(new Uint8Array([1]));
    expect(mm.mprotect(a + 3 * PAGE_SIZE, PAGE_SIZE, PROT_READ)).toBe(-Errno.ENOMEM);
  });
});

describe('fork', () => {
  it('write-protects the parent with PROTECTION_PAGE; a later write copies the page (COW), the child keeps the old', () => {
    const m = createTestMachine();
    const mm = new Mm(m);
    const a = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    const old = mm.followPte(a)!.phys;
    const seen = watch(mm);
    const child = mm.fork();
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_PROTECTION_PAGE]);
    expect(mm.followPte(a)!.write).toBe(false);
    expect(child.followPte(a)!.phys).toBe(old);
    mm.write(a, new Uint8Array([2]));
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_PROTECTION_PAGE, MMU_NOTIFY_CLEAR]);
    expect(seen[1]!.frames[0]!.phys).toBe(old);
    expect(mm.followPte(a)!.phys).not.toBe(old);
    expect(child.read(a, 1)).toEqual(new Uint8Array([1]));
    expect(mm.read(a, 1)).toEqual(new Uint8Array([2]));
    expect(mm.stats.cowBreaks).toBe(1);
    child.exit();
    expect(m.pages.orderOf(old)).toBe(-1);
  });

  it('a page left exclusive after the child exits is reused on write without a notifier', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    const old = mm.followPte(a)!.phys;
    mm.fork().exit();
    const seen = watch(mm);
    mm.write(a, new Uint8Array([3]));
    expect(seen).toEqual([]);
    expect(mm.followPte(a)!.phys).toBe(old);
  });
});

describe('exit_mmap', () => {
  it('sends RELEASE over the whole space first, then frees every frame', () => {
    const m = createTestMachine();
    const free = m.pages.nrFreePages;
    const mm = new Mm(m);
    const a = mmapAnon(mm, 8 * PAGE_SIZE);
    mm.write(a, new Uint8Array(8 * PAGE_SIZE).fill(4));
    const seen = watch(mm);
    mm.exit();
    expect(seen.map((s) => s.event)).toEqual([MMU_NOTIFY_RELEASE]);
    expect(seen[0]!.frames).toHaveLength(8);
    expect(seen[0]!.frames.every((f) => f.allocated)).toBe(true);
    expect(m.pages.nrFreePages).toBe(free);
    expect(mm.memMap.nrPages).toBe(0);
    expect(mm.mmUsers).toBe(0);
    expect(() => mm.read(a, 1)).toThrow(OdpError);
  });
});

describe('__oom_reap_task_mm', () => {
  it('reaps VMAs whose subscribers can skip blocking and keeps the others', () => {
    const mm = new Mm(createTestMachine());
    const a = mmapAnon(mm, PAGE_SIZE);
    const b = mmapAnon(mm, PAGE_SIZE);
    mm.write(a, new Uint8Array([1]));
    mm.write(b, new Uint8Array([2]));
    mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, b, PAGE_SIZE, {
      invalidate: (_s, r) => (r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0,
    });
    expect(mm.oomReap()).toEqual({ reaped: 1, skipped: 1 });
    expect(mm.followPte(a)).toBeUndefined();
    expect(mm.read(b, 1)).toEqual(new Uint8Array([2]));
  });
});
