import { describe, expect, it } from 'vitest';
import { fmtNs, fmtNum } from '../src/format.js';
import {
  compareRounds,
  fmtComparison,
  median,
  medianCiRank,
  roundOrder,
  splitUnits,
} from '../src/measure.js';

describe('median', () => {
  it('is the middle value, or the mean of the two middle values', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 100])).toBe(3.5);
    expect(median([])).toBeNaN();
  });
});

describe('medianCiRank', () => {
  it('picks the order statistics of a ≥ 95% interval for the median from the binomial tail', () => {
    // n = 6: P(X = 0) = 1/64 ≤ 2.5% < P(X ≤ 1) = 7/64, so min–max (coverage 1 − 2/64 ≈ 96.9%)
    expect(medianCiRank(6)).toBe(1);
    // n = 12: P(X ≤ 2) = 79/4096 ≈ 1.9% ≤ 2.5% < P(X ≤ 3) = 299/4096 ≈ 7.3%
    expect(medianCiRank(12)).toBe(3);
    // n = 24: P(X ≤ 6) ≈ 1.13% ≤ 2.5% < P(X ≤ 7) ≈ 3.20%
    expect(medianCiRank(24)).toBe(7);
    // fewer than 6 rounds: min–max, the widest there is
    expect(medianCiRank(5)).toBe(1);
    expect(medianCiRank(1)).toBe(1);
  });
});

describe('roundOrder and splitUnits', () => {
  it('alternates A B, B A, B A, A B so each path runs first in half the rounds', () => {
    const orders = Array.from({ length: 8 }, (_, r) => roundOrder(r, 'A', 'B').join(''));
    expect(orders).toEqual(['AB', 'BA', 'BA', 'AB', 'AB', 'BA', 'BA', 'AB']);
  });

  it('splits units into near-equal rounds, fewer rounds when there are fewer units', () => {
    expect(splitUnits(50, 24)).toEqual([...Array(2).fill(3), ...Array(22).fill(2)]);
    expect(splitUnits(5, 24)).toEqual([1, 1, 1, 1, 1]);
    expect(splitUnits(0, 24)).toEqual([0]);
  });
});

describe('compareRounds', () => {
  it('says ≈ for identical work even when whichever path runs second in a round is faster', () => {
    // 12 rounds in ABBA order; the second runner of each round takes 80 instead of 100
    const legacy: number[] = [];
    const twoStep: number[] = [];
    for (let r = 0; r < 12; r++) {
      const [first] = roundOrder(r, 'sg', 'iova');
      legacy.push(first === 'sg' ? 100 : 80);
      twoStep.push(first === 'iova' ? 100 : 80);
    }
    const c = compareRounds(legacy, twoStep);
    // ratios: six 0.8 (legacy first) and six 1.25; rank 3 and 10 of 12 bound the median
    expect(c).toEqual({ ratio: (0.8 + 1.25) / 2, low: 0.8, high: 1.25, rounds: 12, similar: true });
    expect(fmtComparison(c)).toBe('≈ (0.80–1.25×)');
  });

  it('gives the ratio and its interval when every round shows the difference', () => {
    const legacy = Array.from({ length: 24 }, (_, i) => 1000 + 10 * (i % 5));
    const twoStep = legacy.map((x, i) => x * (0.5 + 0.01 * (i % 3)));
    const c = compareRounds(legacy, twoStep);
    expect(c.similar).toBe(false);
    expect(c.low).toBeCloseTo(0.5, 9);
    expect(c.high).toBeCloseTo(0.52, 9);
    expect(fmtComparison(c)).toBe('0.51× (0.50–0.52×)');
  });

  it('refuses unpaired rounds and rounds without time, naming them', () => {
    expect(() => compareRounds([1, 2], [1])).toThrow(/same non-zero number of rounds.*got 2 and 1/);
    expect(() => compareRounds([1, 0], [1, 1])).toThrow(/round 1 of the legacy path has no time/);
  });
});

describe('fmtNum and fmtNs', () => {
  it('keeps three significant digits so small per-op figures never round to zero', () => {
    expect(fmtNum(1 / 1024)).toBe('0.000977');
    expect(fmtNum(1 / 2575)).toBe('0.000388');
    expect(fmtNum(35.17)).toBe('35.2');
    expect(fmtNum(6793.4)).toBe('6,793');
    expect(fmtNum(20_000)).toBe('20,000');
    expect(fmtNum(0)).toBe('0');
  });

  it('scales times to ns, µs, ms or s', () => {
    expect(fmtNs(857)).toBe('857 ns');
    expect(fmtNs(5210)).toBe('5.21 µs');
    expect(fmtNs(392_459)).toBe('392 µs');
    expect(fmtNs(3.2e6)).toBe('3.2 ms');
    expect(fmtNs(1.5e9)).toBe('1.5 s');
  });
});
