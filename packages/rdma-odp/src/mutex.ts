/**
 * A sleeping lock as the model sees it: held or not, by whom. Kernel counterpart: `struct mutex`
 * (kernel/locking/mutex.c) as used for `ib_umem_odp::umem_mutex`. Deliberate difference: the model
 * is single-threaded, so a contended lock can never be waited for; taking a held lock means the
 * caller would deadlock (the holder is the caller itself) and throws an `OdpError` instead — the
 * case lockdep reports.
 */
import { OdpError } from './errors.js';

/** A mutex (kernel: `struct mutex`). */
export class Mutex {
  readonly name: string;
  #owner: string | undefined;

  constructor(name: string) {
    this.name = name;
  }

  /** True while held (kernel: `mutex_is_locked`). */
  get locked(): boolean {
    return this.#owner !== undefined;
  }

  /** Who holds it, for messages. */
  get owner(): string | undefined {
    return this.#owner;
  }

  /** Takes the lock (kernel: `mutex_lock`); see `mutexLock`. */
  lock(owner: string): void {
    if (this.#owner !== undefined) {
      throw new OdpError(
        `mutex_lock: ${this.name} taken by ${owner} while held by ${this.#owner}: would deadlock`,
        {
          rule: 'mutex_lock: already held (deadlock)',
        },
      );
    }
    this.#owner = owner;
  }

  /** Releases the lock (kernel: `mutex_unlock`); see `mutexUnlock`. */
  unlock(): void {
    if (this.#owner === undefined) {
      throw new OdpError(`mutex_unlock: ${this.name} is not held`, { rule: 'mutex_unlock: not held' });
    }
    this.#owner = undefined;
  }
}

/** Takes the lock (kernel: `mutex_lock`). Throws when it is already held: a self-deadlock. */
export function mutexLock(m: Mutex, owner: string): void {
  m.lock(owner);
}

/** Releases the lock (kernel: `mutex_unlock`). Throws when it is not held. */
export function mutexUnlock(m: Mutex): void {
  m.unlock();
}

/** Throws unless the lock is held (kernel: `lockdep_assert_held`). */
export function lockdepAssertHeld(m: Mutex, what: string): void {
  if (!m.locked) {
    throw new OdpError(`${what}: ${m.name} must be held`, { rule: `${what}: lock not held` });
  }
}
