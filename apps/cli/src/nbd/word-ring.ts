/**
 * A single-producer, single-consumer ring of variable-length records of numbers in a
 * `SharedArrayBuffer`, for two threads of one process: the producer appends records and publishes
 * them with one atomic store (several records at once if it likes: one store and at most one
 * wake-up for the batch); the consumer reads every published record, then sleeps until the
 * producer publishes again (the producer notifies only a sleeping consumer): with
 * `Atomics.waitAsync` on a thread that serves an event loop (`sleep`), or, on a thread that does
 * nothing else, by polling a little and then blocking in `Atomics.wait` (`waitSync`), which wakes
 * in a few microseconds instead of a trip through the event loop. No kernel counterpart: it plays the part of an NVMe submission/completion queue pair's
 * doorbells between the server thread and the device thread.
 *
 * Layout: four int32 control words (head, tail, consumer asleep, unused), then the record words as
 * float64 (safe integers: addresses, lengths, ids). A record is `[n, w1 … wn]`; a record that
 * would cross the end of the ring is preceded by a wrap marker (-1) and starts at word 0.
 */

const HEAD = 0;
const TAIL = 1;
const ASLEEP = 2;
const CTL_BYTES = 16;
const WRAP = -1;

/** One end of a `WordRing`'s shared memory. */
export class WordRing {
  /** Capacity in words. */
  readonly capacity: number;
  readonly #ctl: Int32Array;
  readonly #w: Float64Array;
  /** Producer: tail not yet published. */
  #tail: number;
  /** Consumer: records are read from here. */
  #head: number;

  /** A new ring's shared memory, for `capacity` words (at least 64). */
  static create(capacity: number): SharedArrayBuffer {
    if (!(Number.isInteger(capacity) && capacity >= 64 && capacity <= 2 ** 26)) {
      throw new RangeError(`ring capacity ${capacity} must be an integer in 64..2^26 words`);
    }
    return new SharedArrayBuffer(CTL_BYTES + capacity * 8);
  }

  constructor(sab: SharedArrayBuffer) {
    this.#ctl = new Int32Array(sab, 0, 4);
    this.#w = new Float64Array(sab, CTL_BYTES);
    this.capacity = this.#w.length;
    this.#tail = Atomics.load(this.#ctl, TAIL);
    this.#head = Atomics.load(this.#ctl, HEAD);
  }

  // -------------------------------------------------------------------------------------------
  // Producer
  // -------------------------------------------------------------------------------------------

  /**
   * Starts a record of `n` words (1 ≤ n < capacity / 2) and returns the index of its first word,
   * or -1 when the ring has no room now (retry after the consumer has read). Fill the words with
   * `set`, then `publish`.
   */
  reserve(n: number): number {
    if (!(n >= 1 && n < this.capacity / 2)) {
      throw new RangeError(`ring record of ${n} words: expected 1..${Math.ceil(this.capacity / 2) - 1}`);
    }
    const cap = this.capacity;
    const head = Atomics.load(this.#ctl, HEAD);
    let t = this.#tail;
    const used = (t - head + cap) % cap;
    let need = n + 1;
    if (t + need > cap) need += cap - t; // the wrap marker's gap
    if (used + need >= cap) return -1; // one word stays free so that full and empty differ
    if (t + n + 1 > cap) {
      this.#w[t] = WRAP;
      t = 0;
    }
    this.#w[t] = n;
    this.#tail = (t + n + 1) % cap;
    return t + 1;
  }

  /** Sets word `i` (from `reserve`). */
  set(i: number, v: number): void {
    this.#w[i] = v;
  }

  /**
   * Makes every reserved record visible to the consumer and wakes it if it sleeps: one wake-up a
   * sleep (the flag is taken back as the consumer is notified, so the publishes that follow
   * before it runs cost one atomic store and one exchange each, no system call).
   */
  publish(): void {
    Atomics.store(this.#ctl, TAIL, this.#tail);
    if (Atomics.exchange(this.#ctl, ASLEEP, 0) !== 0) Atomics.notify(this.#ctl, TAIL);
  }

  // -------------------------------------------------------------------------------------------
  // Consumer
  // -------------------------------------------------------------------------------------------

  /**
   * Calls `onRecord(words, first, n)` for every published record, in order, and frees their
   * words when it returns; returns the number of records read.
   */
  consume(onRecord: (w: Float64Array, first: number, n: number) => void): number {
    const w = this.#w;
    let h = this.#head;
    let count = 0;
    for (;;) {
      const tail = Atomics.load(this.#ctl, TAIL);
      if (h === tail) break;
      while (h !== tail) {
        let n = w[h]!;
        if (n === WRAP) {
          h = 0;
          n = w[0]!;
        }
        onRecord(w, h + 1, n);
        count++;
        h = (h + n + 1) % this.capacity;
        this.#head = h;
        Atomics.store(this.#ctl, HEAD, h);
      }
    }
    return count;
  }

  /** True when a published record waits to be consumed. */
  get ready(): boolean {
    return Atomics.load(this.#ctl, TAIL) !== this.#head;
  }

  /**
   * Blocks this thread until a record not yet consumed is published, polling `spins` times first
   * (cheap when the producer is about to publish), then sleeping at most `timeoutMs`; returns
   * whether a record is there. Not for a thread whose event loop must go on meanwhile.
   */
  waitSync(spins: number, timeoutMs: number): boolean {
    for (let i = 0; i < spins; i++) if (this.ready) return true;
    Atomics.store(this.#ctl, ASLEEP, 1);
    const tail = Atomics.load(this.#ctl, TAIL);
    if (tail === this.#head) Atomics.wait(this.#ctl, TAIL, tail, timeoutMs);
    Atomics.store(this.#ctl, ASLEEP, 0);
    return this.ready;
  }

  /**
   * Runs `wake` once the producer publishes a record not yet consumed (at once, in a microtask,
   * if one is already there).
   */
  sleep(wake: () => void): void {
    Atomics.store(this.#ctl, ASLEEP, 1);
    const tail = Atomics.load(this.#ctl, TAIL);
    if (tail !== this.#head) {
      Atomics.store(this.#ctl, ASLEEP, 0);
      queueMicrotask(wake);
      return;
    }
    const r = Atomics.waitAsync(this.#ctl, TAIL, tail);
    const woke = () => {
      Atomics.store(this.#ctl, ASLEEP, 0);
      wake();
    };
    if (r.async) void r.value.then(woke);
    else queueMicrotask(woke);
  }
}
