/**
 * Tag allocation for blk-mq hardware queues, as in Linux `block/blk-mq-tag.c`: each hardware
 * queue owns `queueDepth` tags, a request holds one while it is in flight, and the driver finds
 * the request again from the tag the device echoes back (NVMe's command id).
 * Differs on purpose: a free-list stack instead of sbitmap (no per-CPU hints, no wait queues, no
 * reserved tags, no scheduler tags); a caller that finds no tag waits in the request queue's list
 * instead of sleeping.
 */
import { BlkError } from './errors.js';

/** "No tag" (kernel: `BLK_MQ_NO_TAG`). */
export const BLK_MQ_NO_TAG = -1;
/** Largest queue depth blk-mq accepts (kernel: `BLK_MQ_MAX_DEPTH`). */
export const BLK_MQ_MAX_DEPTH = 10240;

/** The tags of one hardware queue (kernel: `struct blk_mq_tags`). */
export class BlkMqTags {
  /** Number of tags (kernel: `nr_tags`). */
  readonly nrTags: number;
  readonly #free: Int32Array;
  #top: number;
  readonly #busy: Uint8Array;

  constructor(nrTags: number) {
    if (!(Number.isInteger(nrTags) && nrTags >= 1 && nrTags <= BLK_MQ_MAX_DEPTH)) {
      throw new BlkError(`blk_mq_init_tags: depth ${nrTags} is not in 1..${BLK_MQ_MAX_DEPTH}`, {
        rule: 'blk_mq_init_tags: depth',
      });
    }
    this.nrTags = nrTags;
    this.#free = new Int32Array(nrTags);
    for (let i = 0; i < nrTags; i++) this.#free[i] = nrTags - 1 - i;
    this.#top = nrTags;
    this.#busy = new Uint8Array(nrTags);
  }

  /** Tags in use. */
  get busy(): number {
    return this.nrTags - this.#top;
  }

  /** True when `tag` is allocated. */
  isBusy(tag: number): boolean {
    return this.#busy[tag] === 1;
  }

  /** Takes a free tag, or BLK_MQ_NO_TAG when all are busy (kernel: `blk_mq_get_tag` with NOWAIT). */
  get(): number {
    if (this.#top === 0) return BLK_MQ_NO_TAG;
    const tag = this.#free[--this.#top]!;
    this.#busy[tag] = 1;
    return tag;
  }

  /** Returns a tag (kernel: `blk_mq_put_tag`); throws on a tag that is not busy. */
  put(tag: number): void {
    if (!(tag >= 0 && tag < this.nrTags) || this.#busy[tag] !== 1) {
      throw new BlkError(`blk_mq_put_tag: tag ${tag} is not in use (double free?)`, {
        rule: 'blk_mq_put_tag: not busy',
      });
    }
    this.#busy[tag] = 0;
    this.#free[this.#top++] = tag;
  }
}
