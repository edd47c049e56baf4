import { describe, expect, it } from 'vitest';
import { VirtualClock } from '../src/clock.js';
import { Prng } from '../src/prng.js';

describe('VirtualClock timers', () => {
  it('fire by deadline, timers due together in the order they were armed', () => {
    const clock = new VirtualClock();
    const rng = new Prng(11);
    const armed: Array<{ id: number; at: number }> = [];
    const fired: number[] = [];
    for (let id = 0; id < 200; id++) {
      const delay = rng.int(0, 20) * 1000;
      armed.push({ id, at: delay });
      clock.setTimer(delay, () => fired.push(id));
    }
    expect(clock.pending).toBe(200);
    clock.advance(20_000);
    // a stable sort by deadline: ties keep arming order
    expect(fired).toEqual([...armed].sort((a, b) => a.at - b.at).map((x) => x.id));
    expect(clock.pending).toBe(0);
  });

  it('keeps the order for timers armed while others fire, and skips cancelled ones', () => {
    const clock = new VirtualClock();
    const fired: string[] = [];
    clock.setTimer(300, () => fired.push('c300'));
    const dropped = clock.setTimer(200, () => fired.push('dropped'));
    clock.setTimer(100, () => {
      fired.push('a100');
      clock.setTimer(100, () => fired.push('d200'));
      clock.setTimer(0, () => fired.push('b100'));
    });
    clock.setTimer(200, () => fired.push('e200'));
    clock.cancel(dropped);
    clock.advance(1000);
    expect(fired).toEqual(['a100', 'b100', 'e200', 'd200', 'c300']);
    expect(clock.nowNs).toBe(1000);
  });
});
