import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WordRing } from '../src/nbd/word-ring.js';

/** Appends one record; false when the ring is full. */
function put(r: WordRing, rec: readonly number[]): boolean {
  const i = r.reserve(rec.length);
  if (i < 0) return false;
  for (const [k, v] of rec.entries()) r.set(i + k, v);
  r.publish();
  return true;
}

function take(r: WordRing): number[][] {
  const out: number[][] = [];
  r.consume((w, f, n) => out.push(Array.from(w.subarray(f, f + n))));
  return out;
}

describe('WordRing', () => {
  it('delivers records in order, whole, across the end of the ring', () => {
    const sab = WordRing.create(64);
    const p = new WordRing(sab);
    const c = new WordRing(sab);
    const seen: number[][] = [];
    for (let k = 0; k < 50; k++) {
      const rec = Array.from({ length: 1 + (k % 7) }, (_, j) => k * 1000 + j + 2 ** 40);
      expect(put(p, rec)).toBe(true);
      seen.push(...take(c));
      expect(seen.at(-1)).toEqual(rec);
    }
    expect(seen).toHaveLength(50);
  });

  it('refuses a record when full, accepts it again once the consumer has read', () => {
    const sab = WordRing.create(64);
    const p = new WordRing(sab);
    const c = new WordRing(sab);
    let n = 0;
    while (put(p, [n, n, n])) n++;
    expect(n).toBe(15); // 4 words a record, one word always free: 63 / 4
    expect(take(c)).toHaveLength(15);
    expect(put(p, [1, 2, 3])).toBe(true);
  });

  it('rejects records of no words or of half the ring or more', () => {
    const p = new WordRing(WordRing.create(64));
    expect(() => p.reserve(0)).toThrow(RangeError);
    expect(() => p.reserve(32)).toThrow(/1\.\.31/);
    expect(() => WordRing.create(8)).toThrow(/64\.\.2\^26/);
  });

  it('loses and reorders nothing under any interleaving of writes and reads (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.integer({ min: 1, max: 30 }), fc.constant(0)), { maxLength: 300 }),
        (script) => {
          const sab = WordRing.create(64);
          const p = new WordRing(sab);
          const c = new WordRing(sab);
          const sent: number[][] = [];
          const got: number[][] = [];
          let seq = 0;
          for (const op of script) {
            if (op === 0) got.push(...take(c));
            else {
              const rec = Array.from({ length: op }, () => seq++);
              if (put(p, rec)) sent.push(rec);
            }
          }
          got.push(...take(c));
          expect(got).toEqual(sent);
        },
      ),
    );
  });

  it('wakes a sleeping consumer when the producer publishes', async () => {
    const sab = WordRing.create(64);
    const p = new WordRing(sab);
    const c = new WordRing(sab);
    const woke = new Promise<number[][]>((resolve) => c.sleep(() => resolve(take(c))));
    put(p, [7, 8]);
    expect(await woke).toEqual([[7, 8]]);
    // already published: the wake-up comes at once
    put(p, [9]);
    expect(await new Promise<number[][]>((resolve) => c.sleep(() => resolve(take(c))))).toEqual([[9]]);
  });

  it('waitSync: true at once when a record waits, false when none is published; a sleeper is woken by the next publish', async () => {
    const sab = WordRing.create(64);
    const p = new WordRing(sab);
    const c = new WordRing(sab);
    expect(c.ready).toBe(false);
    expect(c.waitSync(10, 1)).toBe(false); // nothing published: it gives up after its timeout
    put(p, [1]);
    expect(c.ready).toBe(true);
    expect(c.waitSync(0, 0)).toBe(true);
    expect(take(c)).toEqual([[1]]);
    // after a waitSync, an asynchronous sleeper is still woken by the next publish
    const woke = new Promise<number[][]>((resolve) => c.sleep(() => resolve(take(c))));
    put(p, [2]);
    put(p, [3]); // the second publish needs no wake-up; both records are there
    expect(await woke).toEqual([[2], [3]]);
  });
});
