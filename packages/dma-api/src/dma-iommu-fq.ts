/**
 * The flush queue of lazy (DMA_FQ) domains: unmapped IOVAs and the page-table pages their unmap
 * freed wait in a per-CPU ring until one global IOTLB flush has completed after they were queued;
 * a 10 ms timer (virtual clock) or a full ring triggers the flush. Kernel counterpart: the
 * `iova_fq` code in drivers/iommu/dma-iommu.c (v6.17): `queue_iova`, `fq_ring_free`,
 * `fq_flush_iotlb`, `fq_flush_timeout`. The flush is the driver's `flush_iotlb_all`: the IOMMU's
 * hardware description decides the commands (e.g. CMD_TLBI_NH_ASID + CMD_SYNC on SMMUv3, a
 * domain-selective descriptor + wait on VT-d) and counts them. Differs on purpose: no single-queue
 * mode for IOMMUs that shadow on flush (32768 entries, 1 s), no locking.
 */
import { type IommuDomain, type IovaDomain, iommuFlushIotlbAll, type Timer } from '@iovalink/iommu';
import { freeTablePage } from '@iovalink/iommu/internal';

/** Ring entries per CPU (kernel: `IOVA_DEFAULT_FQ_SIZE` = 256; one slot stays empty). */
export const IOVA_DEFAULT_FQ_SIZE = 256;
/** Flush timeout in ms (kernel: `IOVA_DEFAULT_FQ_TIMEOUT` = 10). */
export const IOVA_DEFAULT_FQ_TIMEOUT = 10;

/** One queued IOVA range with its page-table pages and the flush counter it waits for. */
interface FqEntry {
  pfn: number;
  pages: number;
  freelist: number[];
  counter: number;
}

/** One CPU's ring. */
class FqRing {
  readonly entries: (FqEntry | undefined)[] = new Array(IOVA_DEFAULT_FQ_SIZE);
  head = 0;
  tail = 0;
  get full(): boolean {
    return (this.tail + 1) % IOVA_DEFAULT_FQ_SIZE === this.head;
  }
  get length(): number {
    return (this.tail - this.head + IOVA_DEFAULT_FQ_SIZE) % IOVA_DEFAULT_FQ_SIZE;
  }
}

/** A domain's flush queue (kernel: the `fq` part of `struct iommu_dma_cookie`). */
export class FlushQueue {
  readonly #domain: IommuDomain;
  readonly #iovad: IovaDomain;
  readonly #rings: FqRing[];
  /** Flushes started (kernel: `fq_flush_start_cnt`). */
  flushStartCnt = 0;
  /** Flushes finished (kernel: `fq_flush_finish_cnt`). */
  flushFinishCnt = 0;
  #timer: Timer | undefined;

  constructor(domain: IommuDomain, iovad: IovaDomain) {
    this.#domain = domain;
    this.#iovad = iovad;
    const cpus = domain.iommu.machine.cpus;
    this.#rings = Array.from({ length: cpus }, () => new FqRing());
  }

  /** Ranges waiting in all rings. */
  get queued(): number {
    let n = 0;
    for (const r of this.#rings) n += r.length;
    return n;
  }

  /** True while the flush timer is armed (kernel: `fq_timer_on`). */
  get timerArmed(): boolean {
    return this.#timer !== undefined;
  }

  /**
   * Queues an unmapped IOVA range and its freed page-table pages (kernel: `queue_iova`): frees
   * entries whose flush has completed, flushes at once if the ring is still full, appends the
   * entry tagged with the current flush-start count, arms the timer.
   */
  queueIova(pfn: number, pages: number, freelist: number[]): void {
    const machine = this.#domain.iommu.machine;
    const ring = this.#rings[machine.currentCpu]!;
    this.#ringFree(ring);
    if (ring.full) {
      this.#flushIotlb();
      this.#ringFree(ring);
    }
    ring.entries[ring.tail] = { pfn, pages, freelist, counter: this.flushStartCnt };
    ring.tail = (ring.tail + 1) % IOVA_DEFAULT_FQ_SIZE;
    machine.counters.fqEnqueued++;
    if (this.#timer === undefined) {
      this.#timer = machine.clock.setTimer(IOVA_DEFAULT_FQ_TIMEOUT * 1e6, () => this.#timeout());
    }
  }

  /** Flushes the IOTLB and frees every queued entry now (kernel: `fq_flush_timeout` body). */
  flushAll(): void {
    if (this.#timer !== undefined) {
      this.#domain.iommu.machine.clock.cancel(this.#timer);
      this.#timer = undefined;
    }
    this.#flushIotlb();
    for (const r of this.#rings) this.#ringFree(r);
  }

  /** Drops the queue at domain teardown, flushing first so nothing leaks (kernel: `iommu_dma_free_fq`). */
  destroy(): void {
    this.flushAll();
  }

  /** The timer fired (kernel: `fq_flush_timeout`): it is disarmed, so `flushAll` cancels nothing. */
  #timeout(): void {
    this.#timer = undefined;
    this.flushAll();
  }

  #flushIotlb(): void {
    this.flushStartCnt++;
    iommuFlushIotlbAll(this.#domain);
    this.#domain.iommu.machine.counters.fqFlushes++;
    this.flushFinishCnt++;
  }

  #ringFree(ring: FqRing): void {
    const machine = this.#domain.iommu.machine;
    while (ring.head !== ring.tail) {
      const e = ring.entries[ring.head]!;
      if (e.counter >= this.flushFinishCnt) break;
      for (const pa of e.freelist) freeTablePage(machine, pa);
      this.#iovad.freeIovaFast(e.pfn, e.pages);
      ring.entries[ring.head] = undefined;
      ring.head = (ring.head + 1) % IOVA_DEFAULT_FQ_SIZE;
    }
  }
}
