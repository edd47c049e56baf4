/**
 * mmu interval notifiers: a driver subscribes to a VA range of an address space and is called
 * back, before the mm changes or frees anything in that range, with the range, the event and a
 * sequence number; a collision-retry protocol (`read_begin` / `read_retry`, like a seqcount) tells
 * a driver that an invalidation raced with the shadow-PTE update it was about to make. Kernel
 * counterpart: mm/mmu_notifier.c and include/linux/mmu_notifier.h (interval tree part, v5.10+;
 * unchanged in substance up to v6.18): `mmu_interval_notifier_insert/remove`,
 * `mmu_interval_read_begin`, `mmu_interval_read_retry`, `mmu_interval_check_retry`,
 * `mmu_interval_set_seq`, `mn_itree_inv_start_range`, `mn_itree_inv_end`, `mn_itree_invalidate`,
 * `mn_itree_release`.
 *
 * Sequence protocol, as in the kernel: the mm-wide `invalidate_seq` starts at 2 and is even when
 * idle; the first invalidation touching a subscribed range makes it odd (`seq |= 1`) and passes
 * that odd value to every callback as `cur_seq`; the driver stores it into its subscription with
 * `mmu_interval_set_seq` under its own lock; the last `invalidate_range_end` makes the global
 * value even again (`seq++`). `read_begin` returns the subscription's value; `read_retry` is true
 * when it has changed since.
 *
 * Deliberate differences: the interval tree is a list (the model holds few subscriptions);
 * nothing sleeps, so where the kernel would wait for an invalidation in progress (`read_begin`
 * or `remove` called from inside an invalidation, which in the kernel can only deadlock) the
 * model throws an `OdpError`. There are no non-interval (`mmu_notifier_ops`) subscribers.
 */
import { Errno } from '@iovalink/iommu';
import { OdpError } from './errors.js';

/** munmap() or mremap() removed the range (kernel: `MMU_NOTIFY_UNMAP`). */
export const MMU_NOTIFY_UNMAP = 0;
/** Page-table entries cleared: reclaim, migration, madvise, COW replacement (kernel: `MMU_NOTIFY_CLEAR`). */
export const MMU_NOTIFY_CLEAR = 1;
/** mprotect() changed the VMA's protection (kernel: `MMU_NOTIFY_PROTECTION_VMA`). */
export const MMU_NOTIFY_PROTECTION_VMA = 2;
/** Pages write-protected, e.g. by fork for copy-on-write (kernel: `MMU_NOTIFY_PROTECTION_PAGE`). */
export const MMU_NOTIFY_PROTECTION_PAGE = 3;
/** Soft-dirty tracking reset (kernel: `MMU_NOTIFY_SOFT_DIRTY`). */
export const MMU_NOTIFY_SOFT_DIRTY = 4;
/** The mm is being torn down (kernel: `MMU_NOTIFY_RELEASE`). */
export const MMU_NOTIFY_RELEASE = 5;
/** Device-private migration (kernel: `MMU_NOTIFY_MIGRATE`). */
export const MMU_NOTIFY_MIGRATE = 6;
/** Exclusive device access (kernel: `MMU_NOTIFY_EXCLUSIVE`). */
export const MMU_NOTIFY_EXCLUSIVE = 7;

/** Why an invalidation happens (kernel: `enum mmu_notifier_event`). */
export type MmuNotifierEvent =
  | typeof MMU_NOTIFY_UNMAP
  | typeof MMU_NOTIFY_CLEAR
  | typeof MMU_NOTIFY_PROTECTION_VMA
  | typeof MMU_NOTIFY_PROTECTION_PAGE
  | typeof MMU_NOTIFY_SOFT_DIRTY
  | typeof MMU_NOTIFY_RELEASE
  | typeof MMU_NOTIFY_MIGRATE
  | typeof MMU_NOTIFY_EXCLUSIVE;

/** Name of an event, as tracepoints print it. */
export function mmuNotifierEventName(event: number): string {
  return (
    ['UNMAP', 'CLEAR', 'PROTECTION_VMA', 'PROTECTION_PAGE', 'SOFT_DIRTY', 'RELEASE', 'MIGRATE', 'EXCLUSIVE'][
      event
    ] ?? `event ${event}`
  );
}

/** The callback may sleep (kernel: `MMU_NOTIFIER_RANGE_BLOCKABLE`). */
export const MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0;

/** The end of the address space, for whole-mm ranges (kernel: `ULONG_MAX`). */
export const MMU_NOTIFIER_RANGE_END_ALL = Number.MAX_SAFE_INTEGER;

/** What an address space offers its subscribers (kernel: the notifier fields of `struct mm_struct`). */
export interface MmNotifierHost {
  /** The mm's subscription state (kernel: `mm->notifier_subscriptions`). */
  readonly notifierSubscriptions: MmuNotifierSubscriptions;
  /** Users of the mm; 0 once it has exited (kernel: `mm->mm_users`). */
  readonly mmUsers: number;
  /** Name for messages. */
  readonly name: string;
}

/** One invalidation (kernel: `struct mmu_notifier_range`). `end` is exclusive. */
export interface MmuNotifierRange {
  readonly mm: MmNotifierHost;
  readonly start: number;
  readonly end: number;
  readonly event: MmuNotifierEvent;
  /** `MMU_NOTIFIER_RANGE_BLOCKABLE` or 0. */
  readonly flags: number;
  /** Owner passed by device-private migration (kernel: `owner`); unused here. */
  readonly owner?: unknown;
}

/** Builds a range (kernel: `mmu_notifier_range_init`). */
export function mmuNotifierRangeInit(
  event: MmuNotifierEvent,
  flags: number,
  mm: MmNotifierHost,
  start: number,
  end: number,
): MmuNotifierRange {
  return { mm, start, end, event, flags };
}

/** True when the callback may sleep (kernel: `mmu_notifier_range_blockable`). */
export function mmuNotifierRangeBlockable(range: MmuNotifierRange): boolean {
  return (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0;
}

/** The subscriber's callbacks (kernel: `struct mmu_interval_notifier_ops`). */
export interface MmuIntervalNotifierOps {
  /**
   * Called before the mm changes `range`, with the odd sequence value to store (kernel:
   * `invalidate`). Returns false only when the range is not blockable and the driver would have
   * to sleep; true otherwise.
   */
  invalidate(sub: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean;
}

/** One subscription (kernel: `struct mmu_interval_notifier`). */
export class MmuIntervalNotifier {
  /** First byte covered (kernel: `interval_tree.start`). */
  start = 0;
  /** Last byte covered, inclusive (kernel: `interval_tree.last`). */
  last = 0;
  /** The subscription's sequence value (kernel: `invalidate_seq`). */
  invalidateSeq = 0;
  ops: MmuIntervalNotifierOps | undefined;
  mm: MmNotifierHost | undefined;
  /**
   * In the interval tree (kernel: `!RB_EMPTY_NODE(&interval_tree.rb)`); a subscription inserted
   * during an invalidation waits on `MmuNotifierSubscriptions.deferredList` instead.
   */
  inTree = false;
  /** Owner's back pointer (kernel: `container_of`). */
  readonly owner: unknown;

  constructor(owner?: unknown) {
    this.owner = owner;
  }
}

/** An mm's subscriptions (kernel: `struct mmu_notifier_subscriptions`). */
export class MmuNotifierSubscriptions {
  /** Even when idle, odd while an invalidation covering a subscription runs (kernel: same). */
  invalidateSeq = 2;
  /** Invalidations between start and end (kernel: `active_invalidate_ranges`). */
  activeInvalidateRanges = 0;
  /** Subscriptions (kernel: `itree`). */
  readonly itree: MmuIntervalNotifier[] = [];
  /** Adds and removes postponed to the last `inv_end` (kernel: `deferred_list`). */
  readonly deferredList: MmuIntervalNotifier[] = [];
  /** An interval subscription was ever inserted (kernel: `has_itree`). */
  hasItree = false;
  /** Invalidation callbacks run so far, for statistics. */
  callbacks = 0;
}

/** True while an invalidation is running (kernel: `mn_itree_is_invalidating`). */
function mnItreeIsInvalidating(subs: MmuNotifierSubscriptions): boolean {
  return subs.invalidateSeq % 2 === 1;
}

/** The mm `sub` is inserted in; throws for a subscription not inserted (the kernel's use-after-remove). */
function insertedMm(sub: MmuIntervalNotifier, fn: string): MmNotifierHost {
  const mm = sub.mm;
  if (mm === undefined) {
    throw new OdpError(`${fn}: the subscription is not inserted`, { rule: `${fn}: not inserted` });
  }
  return mm;
}

function overlaps(sub: MmuIntervalNotifier, start: number, end: number): boolean {
  return sub.start < end && sub.last >= start;
}

/**
 * Starts an invalidation of `range` (kernel: `mn_itree_inv_start_range`): counts it active and,
 * if a subscription overlaps, makes the sequence odd. Returns the overlapping subscriptions and
 * the sequence value to hand to them.
 */
function mnItreeInvStartRange(
  subs: MmuNotifierSubscriptions,
  range: MmuNotifierRange,
): { list: MmuIntervalNotifier[]; seq: number } {
  subs.activeInvalidateRanges++;
  const list = subs.itree.filter((s) => overlaps(s, range.start, range.end));
  if (list.length > 0 && subs.invalidateSeq % 2 === 0) subs.invalidateSeq += 1;
  return { list, seq: subs.invalidateSeq };
}

/**
 * Ends an invalidation (kernel: `mn_itree_inv_end`): when the last active one ends, the sequence
 * becomes even again and deferred inserts/removes are applied.
 */
function mnItreeInvEnd(subs: MmuNotifierSubscriptions): void {
  subs.activeInvalidateRanges--;
  if (subs.activeInvalidateRanges > 0 || !mnItreeIsInvalidating(subs)) return;
  subs.invalidateSeq++;
  for (const sub of subs.deferredList) {
    if (!sub.inTree) {
      subs.itree.push(sub);
      sub.inTree = true;
    } else {
      const i = subs.itree.indexOf(sub);
      if (i >= 0) subs.itree.splice(i, 1);
      sub.inTree = false;
    }
  }
  subs.deferredList.length = 0;
}

/**
 * Calls every subscription overlapping `range` (kernel: `mn_itree_invalidate`). Returns 0, or
 * -EAGAIN when a non-blockable range met a callback that would sleep (then the invalidation is
 * already ended and the caller must not call `mmuNotifierInvalidateRangeEnd`).
 */
function mnItreeInvalidate(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): number {
  const { list, seq } = mnItreeInvStartRange(subs, range);
  for (const sub of list) {
    subs.callbacks++;
    const ok = sub.ops?.invalidate(sub, range, seq) ?? true;
    if (!ok) {
      if (mmuNotifierRangeBlockable(range)) {
        mnItreeInvEnd(subs);
        throw new OdpError(
          `mn_itree_invalidate: ${range.mm.name}: a callback refused a blockable invalidation of [0x${range.start.toString(16)}, 0x${range.end.toString(16)})`,
          { rule: 'mn_itree_invalidate: blockable callback returned false' },
        );
      }
      mnItreeInvEnd(subs);
      return -Errno.EAGAIN;
    }
  }
  return 0;
}

/**
 * Runs the subscriptions covering `range` before the mm changes it (kernel:
 * `mmu_notifier_invalidate_range_start` / `_nonblock`). Returns 0, or -EAGAIN for a
 * non-blockable range whose subscriber would have to sleep: the caller must then leave the range
 * unchanged and must not call the end.
 */
export function mmuNotifierInvalidateRangeStart(range: MmuNotifierRange): number {
  const subs = range.mm.notifierSubscriptions;
  if (!subs.hasItree) return 0;
  return mnItreeInvalidate(subs, range);
}

/** Ends an invalidation started by `mmuNotifierInvalidateRangeStart` (kernel: `mmu_notifier_invalidate_range_end`). */
export function mmuNotifierInvalidateRangeEnd(range: MmuNotifierRange): void {
  const subs = range.mm.notifierSubscriptions;
  if (!subs.hasItree) return;
  if (subs.activeInvalidateRanges <= 0) {
    throw new OdpError(`mmu_notifier_invalidate_range_end: ${range.mm.name}: no invalidation is active`, {
      rule: 'mmu_notifier_invalidate_range_end: not started',
    });
  }
  mnItreeInvEnd(subs);
}

/**
 * Tears every subscription's mappings down as the mm exits (kernel: `mn_itree_release`, from
 * `exit_mmap` → `mmu_notifier_release`): one blockable `MMU_NOTIFY_RELEASE` over the whole space.
 */
export function mmuNotifierRelease(mm: MmNotifierHost): void {
  const subs = mm.notifierSubscriptions;
  if (!subs.hasItree) return;
  const range = mmuNotifierRangeInit(
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    mm,
    0,
    MMU_NOTIFIER_RANGE_END_ALL,
  );
  if (mmuNotifierInvalidateRangeStart(range) === 0) mmuNotifierInvalidateRangeEnd(range);
}

/**
 * Subscribes `sub` to `[start, start + length)` of `mm` (kernel: `mmu_interval_notifier_insert`).
 * Returns 0, -EOVERFLOW for an empty or wrapping range, -EINVAL when the mm has exited. While an
 * invalidation runs, the insert is deferred to its end and the new subscription starts with the
 * current (odd) sequence, so the first `read_begin`/`read_retry` pair fails as it must.
 */
export function mmuIntervalNotifierInsert(
  sub: MmuIntervalNotifier,
  mm: MmNotifierHost,
  start: number,
  length: number,
  ops: MmuIntervalNotifierOps,
): number {
  if (sub.mm !== undefined) {
    throw new OdpError('mmu_interval_notifier_insert: the subscription is already inserted', {
      rule: 'mmu_interval_notifier_insert: already inserted',
    });
  }
  if (!(length > 0) || !Number.isSafeInteger(start) || !Number.isSafeInteger(start + length))
    return -Errno.EOVERFLOW;
  if (mm.mmUsers <= 0) return -Errno.EINVAL;
  const subs = mm.notifierSubscriptions;
  subs.hasItree = true;
  sub.mm = mm;
  sub.ops = ops;
  sub.start = start;
  sub.last = start + length - 1;
  sub.inTree = false;
  if (subs.activeInvalidateRanges > 0) {
    if (mnItreeIsInvalidating(subs)) {
      subs.deferredList.push(sub);
    } else {
      if (subs.invalidateSeq % 2 === 0) subs.invalidateSeq += 1;
      subs.itree.push(sub);
      sub.inTree = true;
    }
    sub.invalidateSeq = subs.invalidateSeq;
  } else {
    // odd, different from the (even) global value, so read_begin does not wait
    sub.invalidateSeq = subs.invalidateSeq - 1;
    subs.itree.push(sub);
    sub.inTree = true;
  }
  return 0;
}

/**
 * Unsubscribes (kernel: `mmu_interval_notifier_remove`). Must not be called from a callback: the
 * kernel would wait for the running invalidation to end, i.e. forever; the model throws.
 */
export function mmuIntervalNotifierRemove(sub: MmuIntervalNotifier): void {
  const mm = insertedMm(sub, 'mmu_interval_notifier_remove');
  const subs = mm.notifierSubscriptions;
  if (mnItreeIsInvalidating(subs)) {
    if (!sub.inTree) {
      // inserted during this invalidation, still deferred: just drop it
      const i = subs.deferredList.indexOf(sub);
      if (i >= 0) subs.deferredList.splice(i, 1);
    } else {
      throw new OdpError(
        `mmu_interval_notifier_remove: ${mm.name}: called while an invalidation runs (from a callback?): would wait forever`,
        { rule: 'mmu_interval_notifier_remove: called from an invalidation' },
      );
    }
  } else {
    const i = subs.itree.indexOf(sub);
    if (i < 0) {
      throw new OdpError('mmu_interval_notifier_remove: subscription missing from the tree', {
        rule: 'mmu_interval_notifier_remove: not in tree',
      });
    }
    subs.itree.splice(i, 1);
    sub.inTree = false;
  }
  sub.mm = undefined;
  sub.ops = undefined;
}

/**
 * Begins a read-side critical section (kernel: `mmu_interval_read_begin`): returns the value to
 * pass to `mmuIntervalReadRetry` after the shadow PTEs are built under the driver's lock. If an
 * invalidation of this subscription is running, the kernel sleeps until it ends; in the
 * single-threaded model that can only be a call from inside the invalidation and throws.
 */
export function mmuIntervalReadBegin(sub: MmuIntervalNotifier): number {
  const mm = insertedMm(sub, 'mmu_interval_read_begin');
  const seq = sub.invalidateSeq;
  if (seq === mm.notifierSubscriptions.invalidateSeq) {
    throw new OdpError(
      `mmu_interval_read_begin: ${mm.name}: an invalidation of [0x${sub.start.toString(16)}, 0x${sub.last.toString(16)}] is running: would wait for it (deadlock when called from it)`,
      { rule: 'mmu_interval_read_begin: invalidation in progress' },
    );
  }
  return seq;
}

/**
 * True when an invalidation collided with the critical section begun with `seq` (kernel:
 * `mmu_interval_read_retry`); call under the same driver lock the invalidate callback takes.
 */
export function mmuIntervalReadRetry(sub: MmuIntervalNotifier, seq: number): boolean {
  return sub.invalidateSeq !== seq;
}

/**
 * Lockless early test of `mmuIntervalReadRetry` (kernel: `mmu_interval_check_retry`): a true
 * result is final, a false one must still be confirmed under the lock.
 */
export function mmuIntervalCheckRetry(sub: MmuIntervalNotifier, seq: number): boolean {
  return sub.invalidateSeq !== seq;
}

/**
 * Records the invalidation's sequence value in the subscription (kernel: `mmu_interval_set_seq`);
 * the invalidate callback calls it under the driver lock, before it tears anything down.
 */
export function mmuIntervalSetSeq(sub: MmuIntervalNotifier, curSeq: number): void {
  sub.invalidateSeq = curSeq;
}
