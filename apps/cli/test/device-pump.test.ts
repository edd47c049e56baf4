// The device thread's loop (src/nbd/device-pump.ts) on a fake clock and a scripted ring: it works
// while submissions come, yields to the event loop every slice, and sleeps once idle for idleMs
// counted across slices (the bug it fixes: an idle device thread that never slept).
import { describe, expect, it } from 'vitest';
import { createDevicePump, type DevicePumpIo } from '../src/nbd/device-pump.js';

/** A ring that delivers a submission at each time in `arrivals` (ms); each blocking wait is 1 ms. */
function rig(arrivals: number[], closedAt = Number.POSITIVE_INFINITY) {
  let now = 0;
  const pending = [...arrivals];
  const log: string[] = [];
  let drained = 0;
  let waits = 0;
  let turn: (() => void) | undefined;
  let wake: (() => void) | undefined;
  const io: DevicePumpIo = {
    drain: () => {
      while (pending.length > 0 && pending[0]! <= now) {
        pending.shift();
        drained++;
      }
    },
    waitSync: () => {
      waits++;
      // the poll and a wait of up to 1 ms; a submission due in that time ends it early
      const next = pending[0];
      if (next !== undefined && next <= now + 1) {
        now = Math.max(now, next);
        return true;
      }
      now += 1;
      return false;
    },
    sleep: (w) => {
      log.push(`sleep@${now}`);
      wake = w;
    },
    yieldTurn: (fn) => {
      log.push(`turn@${now}`);
      turn = fn;
    },
    now: () => now,
    closed: () => now >= closedAt,
  };
  return {
    io,
    log,
    get now() {
      return now;
    },
    set now(v: number) {
      now = v;
    },
    get drained() {
      return drained;
    },
    get waits() {
      return waits;
    },
    /** Runs queued event-loop turns until the loop sleeps or stops. */
    runTurns(max = 10_000) {
      for (let i = 0; i < max && turn !== undefined; i++) {
        const f = turn;
        turn = undefined;
        f();
      }
    },
    takeWake() {
      const w = wake;
      wake = undefined;
      return w;
    },
  };
}

describe('device pump', () => {
  const times = { sliceMs: 5, idleMs: 50 };

  it('with no submissions, sleeps after idleMs although each slice is shorter', () => {
    const r = rig([]);
    const pump = createDevicePump(r.io, times);
    pump();
    r.runTurns();
    expect(r.log.at(-1)).toMatch(/^sleep@/);
    // about idleMs of 1 ms waits, in slices of sliceMs: then no more polling
    const sleptAt = Number(r.log.at(-1)!.slice(6));
    expect(sleptAt).toBeGreaterThan(times.idleMs);
    expect(sleptAt).toBeLessThanOrEqual(times.idleMs + times.sliceMs + 2);
    expect(r.log.filter((l) => l.startsWith('turn@')).length).toBeGreaterThanOrEqual(5); // the event loop had turns
    expect(r.waits).toBeLessThanOrEqual(times.idleMs + 2);
  });

  it('keeps working while submissions come closer than idleMs, then sleeps idleMs after the last', () => {
    const arrivals = Array.from({ length: 40 }, (_, i) => 3 + i * 7); // every 7 ms until 276 ms
    const r = rig(arrivals);
    createDevicePump(r.io, times)();
    r.runTurns();
    expect(r.drained).toBe(arrivals.length);
    const sleeps = r.log.filter((l) => l.startsWith('sleep@'));
    expect(sleeps).toHaveLength(1);
    const sleptAt = Number(sleeps[0]!.slice(6));
    expect(sleptAt).toBeGreaterThan(arrivals.at(-1)! + times.idleMs);
    expect(sleptAt).toBeLessThanOrEqual(arrivals.at(-1)! + times.idleMs + times.sliceMs + 2);
  });

  it('a wake-up after sleeping counts as work: it polls for idleMs again, then sleeps', () => {
    const r = rig([]);
    createDevicePump(r.io, times)();
    r.runTurns();
    const wake = r.takeWake()!;
    expect(wake).toBeDefined();
    r.now = 1000;
    wake();
    r.runTurns();
    const sleeps = r.log.filter((l) => l.startsWith('sleep@'));
    expect(sleeps).toHaveLength(2);
    expect(Number(sleeps[1]!.slice(6))).toBeGreaterThan(1000 + times.idleMs);
  });

  it('stops once closed', () => {
    const r = rig([], 20);
    createDevicePump(r.io, times)();
    r.runTurns();
    expect(r.log.some((l) => l.startsWith('sleep@'))).toBe(false);
    expect(r.now).toBeLessThan(30);
  });
});
