/**
 * Statistics of simulator-time measurements: medians over interleaved rounds and the spread of the
 * paired two-step / legacy ratio, so a comparison of two paths says "≈" when the rounds do not
 * tell them apart instead of printing a ratio that only reflects run order, JIT or GC. No kernel
 * counterpart (the kernel's dma_map_benchmark reports a mean and standard deviation; we use
 * medians because a few GC pauses in a mean swamp everything else).
 */

/** The median of `xs` (the mean of the two middle values for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * Simulator-time comparison of two paths measured in the same rounds: `rounds[i]` of each path ran
 * back to back in round i (the order alternating A B, B A, B A, A B, …).
 */
export interface SimComparison {
  /** Median over rounds of the per-round ratio two-step / legacy (per-op simulator time). */
  ratio: number;
  /**
   * A distribution-free interval of at least 95% confidence for that median (order statistics of
   * the per-round ratios; with few rounds it widens to their min–max).
   */
  low: number;
  high: number;
  /** Rounds compared. */
  rounds: number;
  /** True when the interval includes 1: the rounds do not tell the two paths apart. */
  similar: boolean;
}

/**
 * Rank k (1-based) of the order statistics [x_(k), x_(n+1-k)] that bound the median of n samples
 * with at least 95% confidence (coverage 1 − 2·P(Binomial(n, ½) < k)): the largest k with
 * P(Binomial(n, ½) < k) ≤ 2.5%, and 1 (min–max, less than 95%) when n < 6.
 */
export function medianCiRank(n: number): number {
  let k = 1;
  let below = 0; // P(X ≤ k - 1) for X ~ Binomial(n, 1/2)
  let term = 0.5 ** n; // P(X = 0)
  for (let j = 0; j < n; j++) {
    below += term;
    if (below > 0.025) break;
    k = j + 1;
    term = (term * (n - j)) / (j + 1);
  }
  return Math.min(k, Math.ceil(n / 2));
}

/**
 * Compares two paths' per-round per-op simulator times (same length, paired by round). Throws when
 * the lengths differ or a round has no time, since a ratio of unpaired rounds means nothing.
 */
export function compareRounds(legacy: readonly number[], twoStep: readonly number[]): SimComparison {
  if (legacy.length !== twoStep.length || legacy.length === 0) {
    throw new Error(
      `compareRounds: expected the same non-zero number of rounds for both paths, got ${legacy.length} and ${twoStep.length}`,
    );
  }
  const ratios = legacy.map((l, i) => {
    if (!(l > 0)) throw new Error(`compareRounds: round ${i} of the legacy path has no time (${l} ns)`);
    return twoStep[i]! / l;
  });
  const sorted = [...ratios].sort((a, b) => a - b);
  const k = medianCiRank(sorted.length);
  const low = sorted[k - 1]!;
  const high = sorted[sorted.length - k]!;
  return { ratio: median(ratios), low, high, rounds: ratios.length, similar: low <= 1 && high >= 1 };
}

/** A ratio as "0.42×": two decimals, or two significant digits below 0.1 ("0.059×"). */
export function fmtRatio(r: number): string {
  if (!Number.isFinite(r)) return r > 0 ? '∞' : '—';
  return r >= 0.1 ? `${r.toFixed(2)}×` : `${r.toPrecision(2)}×`;
}

/**
 * A comparison as users read it: "≈ (0.94–1.07×)" when the rounds do not tell the paths apart,
 * otherwise the median ratio and its 95% interval, "0.42× (0.40–0.45×)".
 */
export function fmtComparison(c: SimComparison): string {
  const spread = `(${fmtRatio(c.low).slice(0, -1)}–${fmtRatio(c.high)})`;
  return c.similar ? `≈ ${spread}` : `${fmtRatio(c.ratio)} ${spread}`;
}

/** The order of the two paths in round `round`: A B, B A, B A, A B, repeating (ABBA). */
export function roundOrder<T>(round: number, a: T, b: T): [T, T] {
  const r = round % 4;
  return r === 0 || r === 3 ? [a, b] : [b, a];
}

/** Splits `units` into `rounds` chunks differing by at most one (fewer rounds if units < rounds). */
export function splitUnits(units: number, rounds: number): number[] {
  const n = Math.max(1, Math.min(rounds, units));
  const base = Math.floor(units / n);
  return Array.from({ length: n }, (_, i) => base + (i < units % n ? 1 : 0));
}
