/**
 * A clock for the NBD server's time limits that only the test advances (`NbdTimers`), so tests of
 * handshake limits and grace periods never wait on the wall clock.
 */
import type { NbdTimers } from '../src/nbd/nbd-server.js';

export class ManualTimers implements NbdTimers {
  #now = 0;
  #next = 1;
  readonly #pending = new Map<number, { at: number; fn: () => void }>();

  set(fn: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#pending.set(id, { at: this.#now + ms, fn });
    return id;
  }

  clear(handle: unknown): void {
    this.#pending.delete(handle as number);
  }

  /** Timers set and not yet run or cleared. */
  get pending(): number {
    return this.#pending.size;
  }

  /** Moves the clock forward by `ms`, running every timer that falls due (in order). */
  advance(ms: number): void {
    this.#now += ms;
    for (;;) {
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.#pending)
        if (e[1].at <= this.#now && (due === undefined || e[1].at < due[1].at)) due = e;
      if (due === undefined) return;
      this.#pending.delete(due[0]);
      due[1].fn();
    }
  }
}
