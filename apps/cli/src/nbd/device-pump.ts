/**
 * The device thread's loop (`nbd-device-worker.ts`): take every submission there is, then poll a
 * little and block in `Atomics.wait` for the next one (a wake-up within microseconds, where the
 * event loop's `waitAsync` takes far longer), giving the thread's event loop a turn every
 * `sliceMs` for its messages; once nothing has arrived for `idleMs`, sleep on the event loop, which
 * costs no CPU until the next submission. The idle time counts across slices: a loop that
 * measured it within one slice (shorter than `idleMs`) never slept, and an idle server kept
 * polling in 1 ms waits (~5 % of a core). Kernel counterpart: none (the NVMe controller's
 * doorbell-driven fetch; `nvme_poll` is the host-side analogue of the polling).
 */

/** What the loop works with: the ring, the event loop and a clock (injected for tests). */
export interface DevicePumpIo {
  /** Takes and runs every submission waiting now. */
  drain(): void;
  /** Polls, then blocks up to the wait timeout; true when a submission arrived. */
  waitSync(): boolean;
  /** Runs `wake` on the event loop once a submission arrives. */
  sleep(wake: () => void): void;
  /** Runs `fn` on the event loop's next turn. */
  yieldTurn(fn: () => void): void;
  /** Milliseconds, monotonic. */
  now(): number;
  /** True once the device is closed: the loop stops. */
  closed(): boolean;
}

/** Timings of the loop (ms). */
export interface DevicePumpTimes {
  /** The event loop gets a turn at least this often while the loop runs. */
  sliceMs: number;
  /** With no submission for this long the loop sleeps on the event loop. */
  idleMs: number;
}

/** Returns the loop's entry point: call it to start, and it re-enters itself (slices, wake-ups). */
export function createDevicePump(io: DevicePumpIo, t: DevicePumpTimes): () => void {
  /** When the last submission arrived, or -1 while asleep (a wake-up means one has). */
  let lastWork = -1;
  const pump = (): void => {
    if (io.closed()) return;
    const start = io.now();
    if (lastWork < 0) lastWork = start;
    for (;;) {
      io.drain();
      const now = io.now();
      if (now - lastWork > t.idleMs) break;
      if (now - start > t.sliceMs) {
        io.yieldTurn(pump);
        return;
      }
      if (io.waitSync()) lastWork = io.now();
    }
    lastWork = -1;
    io.sleep(pump);
  };
  return pump;
}
