/**
 * Fault injection points, like the kernel's `failslab`/`fail_page_alloc`/`fail_iommu` fault
 * attributes (lib/fault-inject.c): a named point can be told to fail its Nth next call, the next
 * N calls, every call, or with a probability drawn from the machine's seeded PRNG.
 */
import type { Prng } from './prng.js';

/** Points the model consults. Upper layers may add their own names. */
export type FaultPoint =
  | 'page_alloc'
  | 'pgtable_page'
  | 'iova_alloc'
  | 'iova_magazine'
  | 'swiotlb'
  | 'iotlb_sync_map'
  | (string & {});

interface Rule {
  /** Calls to let through before failing. */
  skip: number;
  /** Failures left to inject (Infinity = always). */
  times: number;
  /** Probability of failure once `skip` is used up (1 = certain). */
  probability: number;
}

/** The machine's fault injector. */
export class FaultInjector {
  readonly #rules = new Map<string, Rule>();
  readonly #rng: Prng;
  /** Number of armed rules; zero keeps `shouldFail` to one comparison on hot paths. */
  #armed = 0;
  /** Failures injected so far, per point. */
  readonly injected = new Map<string, number>();

  constructor(rng: Prng) {
    this.#rng = rng;
  }

  /** Makes the `nth` next call at `point` fail (1 = the very next), `times` times in a row. */
  failNth(point: FaultPoint, nth: number, times = 1): void {
    if (!(nth >= 1)) throw new RangeError(`failNth: nth must be >= 1, got ${nth}`);
    this.#set(point, { skip: nth - 1, times, probability: 1 });
  }

  /** Makes every call at `point` fail until cleared. */
  failAlways(point: FaultPoint): void {
    this.#set(point, { skip: 0, times: Number.POSITIVE_INFINITY, probability: 1 });
  }

  /** Makes each call at `point` fail with `probability`, drawn from the machine's PRNG. */
  failRandomly(point: FaultPoint, probability: number): void {
    this.#set(point, { skip: 0, times: Number.POSITIVE_INFINITY, probability });
  }

  /** Disarms `point`, or every point when none is given. */
  clear(point?: FaultPoint): void {
    if (point === undefined) this.#rules.clear();
    else this.#rules.delete(point);
    this.#armed = this.#rules.size;
  }

  /** Asks whether this call at `point` must fail (and records it if so). */
  shouldFail(point: FaultPoint): boolean {
    if (this.#armed === 0) return false;
    const r = this.#rules.get(point);
    if (r === undefined) return false;
    if (r.skip > 0) {
      r.skip--;
      return false;
    }
    if (r.probability < 1 && this.#rng.float() >= r.probability) return false;
    r.times--;
    if (r.times <= 0) this.clear(point);
    this.injected.set(point, (this.injected.get(point) ?? 0) + 1);
    return true;
  }

  #set(point: string, rule: Rule): void {
    this.#rules.set(point, rule);
    this.#armed = this.#rules.size;
  }
}
