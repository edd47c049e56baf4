/**
 * The machine's virtual clock: nanoseconds that advance only when the model says so, and timers
 * that fire when the clock passes their deadline. Kernel counterpart: jiffies/ktime plus
 * `timer_list` (e.g. the flush-queue timer of `drivers/iommu/dma-iommu.c`). Differs on purpose:
 * nothing sleeps; time is stepped, so every run is reproducible.
 */

/** A pending timer. */
export interface Timer {
  readonly deadlineNs: number;
  readonly fn: () => void;
  cancelled: boolean;
}

/** A stepped clock with one-shot timers. */
export class VirtualClock {
  #now = 0;
  #timers: Timer[] = [];

  /** Current virtual time in nanoseconds. */
  get nowNs(): number {
    return this.#now;
  }

  /** Arms a one-shot timer `delayNs` from now (kernel: `mod_timer`). */
  setTimer(delayNs: number, fn: () => void): Timer {
    const t: Timer = { deadlineNs: this.#now + delayNs, fn, cancelled: false };
    // the list is ordered by deadline: the new timer goes after every one due no later (where a
    // stable sort of the list with it appended would put it), moving the later ones up
    const timers = this.#timers;
    timers.push(t);
    let i = timers.length - 1;
    while (i > 0 && timers[i - 1]!.deadlineNs > t.deadlineNs) {
      timers[i] = timers[i - 1]!;
      i--;
    }
    timers[i] = t;
    return t;
  }

  /** Cancels a timer (kernel: `del_timer`). */
  cancel(t: Timer): void {
    t.cancelled = true;
    this.#timers = this.#timers.filter((x) => x !== t);
  }

  /** Number of armed timers. */
  get pending(): number {
    return this.#timers.length;
  }

  /** Advances the clock by `ns`, firing every timer whose deadline is passed, in order. */
  advance(ns: number): void {
    const target = this.#now + ns;
    for (;;) {
      const t = this.#timers[0];
      if (t === undefined || t.deadlineNs > target) break;
      this.#timers.shift();
      this.#now = Math.max(this.#now, t.deadlineNs);
      if (!t.cancelled) t.fn();
    }
    this.#now = target;
  }
}
