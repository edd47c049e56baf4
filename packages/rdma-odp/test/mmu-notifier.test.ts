import { Errno, PAGE_SIZE } from '@iovalink/iommu';
import { createTestMachine } from '@iovalink/iommu/testing';
import { describe, expect, it } from 'vitest';
import { OdpError } from '../src/errors.js';
import { Mm } from '../src/mm.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  type MmuNotifierRange,
  mmuIntervalCheckRetry,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierRangeInit,
} from '../src/mmu-notifier.js';

interface Call {
  start: number;
  end: number;
  event: number;
  seq: number;
}

/** A subscriber that records its calls and stores cur_seq like a driver. */
function recorder(opts: { setSeq?: boolean; refuseNonBlocking?: boolean } = {}): {
  ops: MmuIntervalNotifierOps;
  calls: Call[];
} {
  const calls: Call[] = [];
  return {
    calls,
    ops: {
      invalidate(sub, range: MmuNotifierRange, curSeq) {
        if (opts.refuseNonBlocking && (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) === 0) return false;
        calls.push({ start: range.start, end: range.end, event: range.event, seq: curSeq });
        if (opts.setSeq ?? true) mmuIntervalSetSeq(sub, curSeq);
        return true;
      },
    },
  };
}

const A = 0x10000000;

/** One blockable MMU_NOTIFY_CLEAR invalidation of the page at A, start to end. */
function invalidatePageAtA(mm: Mm): void {
  const range = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, A, A + PAGE_SIZE);
  mmuNotifierInvalidateRangeStart(range);
  mmuNotifierInvalidateRangeEnd(range);
}

/**
 * Subscribes `sub` to the page at A with a callback that runs `body`, invalidates that page once,
 * and returns what `body` threw inside the callback (undefined when nothing).
 */
function throwsDuringInvalidation(
  mm: Mm,
  sub: MmuIntervalNotifier,
  body: (s: MmuIntervalNotifier, seq: number) => void,
): unknown {
  let thrown: unknown;
  mmuIntervalNotifierInsert(sub, mm, A, PAGE_SIZE, {
    invalidate(s, _r, seq) {
      try {
        body(s, seq);
      } catch (e) {
        thrown = e;
      }
      return true;
    },
  });
  invalidatePageAtA(mm);
  return thrown;
}

describe('mmu_interval_notifier_insert', () => {
  it('starts the subscription one below the even global sequence, so read_begin does not wait', () => {
    const mm = new Mm(createTestMachine());
    const sub = new MmuIntervalNotifier();
    expect(mmuIntervalNotifierInsert(sub, mm, A, 4 * PAGE_SIZE, recorder().ops)).toBe(0);
    expect(mm.notifierSubscriptions.invalidateSeq).toBe(2);
    expect(sub.invalidateSeq).toBe(1);
    expect(mmuIntervalReadBegin(sub)).toBe(1);
    expect(sub.start).toBe(A);
    expect(sub.last).toBe(A + 4 * PAGE_SIZE - 1);
  });

  it('rejects an empty or wrapping range with -Errno.EOVERFLOW and an exited mm with -EINVAL', () => {
    const mm = new Mm(createTestMachine());
    expect(mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A, 0, recorder().ops)).toBe(
      -Errno.EOVERFLOW,
    );
    expect(
      mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, Number.MAX_SAFE_INTEGER, 2, recorder().ops),
    ).toBe(-Errno.EOVERFLOW);
    mm.exit();
    expect(mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A, PAGE_SIZE, recorder().ops)).toBe(
      -Errno.EINVAL,
    );
  });

  it('defers an insert made during an invalidation to the last invalidate_range_end', () => {
    const mm = new Mm(createTestMachine());
    const late = new MmuIntervalNotifier();
    const sub = new MmuIntervalNotifier();
    mmuIntervalNotifierInsert(sub, mm, A, PAGE_SIZE, {
      invalidate(s, _r, seq) {
        mmuIntervalSetSeq(s, seq);
        expect(mmuIntervalNotifierInsert(late, mm, A, PAGE_SIZE, recorder().ops)).toBe(0);
        return true;
      },
    });
    const range = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, A, A + PAGE_SIZE);
    expect(mmuNotifierInvalidateRangeStart(range)).toBe(0);
    expect(late.inTree).toBe(false);
    expect(mm.notifierSubscriptions.deferredList).toContain(late);
    // the new subscription got the running (odd) sequence: the running invalidation counts against it
    expect(late.invalidateSeq).toBe(mm.notifierSubscriptions.invalidateSeq);
    mmuNotifierInvalidateRangeEnd(range);
    expect(late.inTree).toBe(true);
    expect(mm.notifierSubscriptions.invalidateSeq % 2).toBe(0);
  });
});

describe('mmu_interval_read_begin / mmu_interval_read_retry', () => {
  it('read_retry is false until an invalidation covering the range runs, then true', () => {
    const mm = new Mm(createTestMachine());
    const { ops, calls } = recorder();
    const sub = new MmuIntervalNotifier();
    mmuIntervalNotifierInsert(sub, mm, A, 4 * PAGE_SIZE, ops);
    const seq = mmuIntervalReadBegin(sub);
    expect(mmuIntervalReadRetry(sub, seq)).toBe(false);
    const range = mmuNotifierRangeInit(
      MMU_NOTIFY_UNMAP,
      MMU_NOTIFIER_RANGE_BLOCKABLE,
      mm,
      A + PAGE_SIZE,
      A + 2 * PAGE_SIZE,
    );
    expect(mmuNotifierInvalidateRangeStart(range)).toBe(0);
    mmuNotifierInvalidateRangeEnd(range);
    expect(calls).toEqual([
      { start: A + PAGE_SIZE, end: A + 2 * PAGE_SIZE, event: MMU_NOTIFY_UNMAP, seq: 3 },
    ]);
    expect(mmuIntervalCheckRetry(sub, seq)).toBe(true);
    expect(mmuIntervalReadRetry(sub, seq)).toBe(true);
    // global back to even; a new critical section starts clean
    expect(mm.notifierSubscriptions.invalidateSeq).toBe(4);
    const seq2 = mmuIntervalReadBegin(sub);
    expect(seq2).toBe(3);
    expect(mmuIntervalReadRetry(sub, seq2)).toBe(false);
  });

  it('an invalidation elsewhere in the mm leaves the subscription alone', () => {
    const mm = new Mm(createTestMachine());
    const { ops, calls } = recorder();
    const sub = new MmuIntervalNotifier();
    mmuIntervalNotifierInsert(sub, mm, A, PAGE_SIZE, ops);
    const seq = mmuIntervalReadBegin(sub);
    const range = mmuNotifierRangeInit(
      MMU_NOTIFY_UNMAP,
      MMU_NOTIFIER_RANGE_BLOCKABLE,
      mm,
      A + PAGE_SIZE,
      A + 9 * PAGE_SIZE,
    );
    mmuNotifierInvalidateRangeStart(range);
    mmuNotifierInvalidateRangeEnd(range);
    expect(calls).toEqual([]);
    expect(mmuIntervalReadRetry(sub, seq)).toBe(false);
  });

  it('read_begin during an invalidation of the subscription throws: the kernel would wait for it forever', () => {
    const mm = new Mm(createTestMachine());
    const sub = new MmuIntervalNotifier();
    const thrown = throwsDuringInvalidation(mm, sub, (s, seq) => {
      mmuIntervalSetSeq(s, seq);
      mmuIntervalReadBegin(s);
    });
    expect(thrown).toBeInstanceOf(OdpError);
    expect((thrown as OdpError).rule).toBe('mmu_interval_read_begin: invalidation in progress');
  });
});

describe('mmu_interval_set_seq', () => {
  it('is what makes read_retry see the collision: a callback that skips it leaves read_retry false', () => {
    const mm = new Mm(createTestMachine());
    const sub = new MmuIntervalNotifier();
    mmuIntervalNotifierInsert(sub, mm, A, PAGE_SIZE, recorder({ setSeq: false }).ops);
    const seq = mmuIntervalReadBegin(sub);
    invalidatePageAtA(mm);
    expect(mmuIntervalReadRetry(sub, seq)).toBe(false);
  });
});

describe('mmu_notifier_invalidate_range_start', () => {
  it('passes the same odd sequence to every overlapping subscription and the end makes it even', () => {
    const mm = new Mm(createTestMachine());
    const r1 = recorder();
    const r2 = recorder();
    const r3 = recorder();
    mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A, 2 * PAGE_SIZE, r1.ops);
    mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A + PAGE_SIZE, 2 * PAGE_SIZE, r2.ops);
    mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A + 8 * PAGE_SIZE, PAGE_SIZE, r3.ops);
    const range = mmuNotifierRangeInit(
      MMU_NOTIFY_CLEAR,
      MMU_NOTIFIER_RANGE_BLOCKABLE,
      mm,
      A + PAGE_SIZE,
      A + 2 * PAGE_SIZE,
    );
    expect(mmuNotifierInvalidateRangeStart(range)).toBe(0);
    expect(mm.notifierSubscriptions.invalidateSeq % 2).toBe(1);
    mmuNotifierInvalidateRangeEnd(range);
    expect(r1.calls.map((c) => c.seq)).toEqual([3]);
    expect(r2.calls.map((c) => c.seq)).toEqual([3]);
    expect(r3.calls).toEqual([]);
    expect(mm.notifierSubscriptions.invalidateSeq).toBe(4);
  });

  it('a non-blockable range refused by a subscriber is -EAGAIN and already ended', () => {
    const mm = new Mm(createTestMachine());
    mmuIntervalNotifierInsert(
      new MmuIntervalNotifier(),
      mm,
      A,
      PAGE_SIZE,
      recorder({ refuseNonBlocking: true }).ops,
    );
    const range = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, A, A + PAGE_SIZE);
    expect(mmuNotifierInvalidateRangeStart(range)).toBe(-Errno.EAGAIN);
    expect(mm.notifierSubscriptions.activeInvalidateRanges).toBe(0);
    expect(mm.notifierSubscriptions.invalidateSeq % 2).toBe(0);
  });

  it('a blockable range refused by a subscriber is a kernel WARN: OdpError', () => {
    const mm = new Mm(createTestMachine());
    mmuIntervalNotifierInsert(new MmuIntervalNotifier(), mm, A, PAGE_SIZE, { invalidate: () => false });
    const range = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, A, A + PAGE_SIZE);
    expect(() => mmuNotifierInvalidateRangeStart(range)).toThrow(OdpError);
    expect(mm.notifierSubscriptions.activeInvalidateRanges).toBe(0);
  });
});

describe('mmu_interval_notifier_remove', () => {
  it('removes the subscription; from inside a callback it throws (the kernel would wait forever)', () => {
    const mm = new Mm(createTestMachine());
    const sub = new MmuIntervalNotifier();
    const thrown = throwsDuringInvalidation(mm, sub, (s) => mmuIntervalNotifierRemove(s));
    expect((thrown as OdpError).rule).toBe('mmu_interval_notifier_remove: called from an invalidation');
    mmuIntervalNotifierRemove(sub);
    expect(mm.notifierSubscriptions.itree).toEqual([]);
    expect(() => mmuIntervalNotifierRemove(sub)).toThrow(OdpError);
  });
});
