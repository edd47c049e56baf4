/**
 * Replays (b) and (c): every recorded DMA API call of the traced device, rebuilt from the recorded
 * physical pages and replayed through the model's legacy iommu-dma path, which must emit the same
 * allocator calls (`alloc_iova_fast` arguments and result, `free_iova_fast`), the same `iommu_map`
 * runs (iova, paddr, size, in order) and the same `iommu_unmap` calls. In lazy (DMA_FQ) traces
 * the virtual clock follows the trace's timestamps, and frees must leave the flush queue in the
 * same batches: inside the same unmap (ring full or already flushed) or at the same timer expiry.
 * Kernel counterparts (v6.1): `iommu_dma_map_page`/`_unmap_page`, `iommu_dma_map_sg`/`_unmap_sg`,
 * `iommu_dma_alloc`/`_free`, `queue_iova`/`fq_flush_timeout` in drivers/iommu/dma-iommu.c.
 *
 * How requests are rebuilt: a `map_page` is the recorded physical address (the `map` event's
 * paddr plus the probe's in-page offset) and length; a `map_sg` is one 4 KiB scatterlist entry per
 * recorded physical page, in order (the block layer's bvecs before merging), so the model's
 * `iommu_map_sg` must itself coalesce physically contiguous pages into the recorded runs; a
 * coherent allocation is its recorded physical pages mapped bidirectionally.
 *
 * Version switches and differences (documented, each visible in the notes):
 * - 6.1 tries a 32-bit IOVA first on every PCI allocation unless `iommu.forcedac=1`; later kernels
 *   stop trying after the first failure (sticky `pci_32bit_workaround`). For traces of kernels
 *   before 6.4 the replay re-arms the model's flag before each call (forcedac: never set).
 * - The kernel's flush-queue timer expires on a jiffy tick in a (threaded) softirq, so it fires
 *   at or after the 10 ms the model waits, never before. The replay fires the model's timer at the
 *   recorded expiry, after checking that the model's timer is armed and due by then (a kernel
 *   flush before the model's deadline is a divergence); the lateness is reported, not hidden.
 */
import {
  type Device,
  DMA_BIDIRECTIONAL,
  type DmaDataDirection,
  DmaError,
  IOVA_DEFAULT_FQ_TIMEOUT,
  type IommuDmaCookie,
  iommuDmaCookie,
  iommuDmaMapPhys,
  iommuDmaMapSg,
  iommuDmaUnmapPhys,
  iommuDmaUnmapSg,
  type Scatterlist,
  sgArray,
  sgDmaAddress,
  sgInitTable,
  sgSetPage,
} from '@iovalink/dma-api';
import { IommuError, type IovaDomain, type Machine, type TraceArgs, type Tracer } from '@iovalink/iommu';
import { countCompared, type Divergence, DivergenceFound, hx, type ReplayResult } from './divergence.js';
import { KERNEL_IOVA_GRANULE, kernelDevice, replayMachine } from './kernel-domain.js';
import { DMA_API_EVENT_KINDS, type KernelEvent, type KernelTrace } from './kernel-trace.js';
import { traceCpus } from './replay-iova.js';

/** One allocator, map or unmap step, as a comparable line of text. */
interface Step {
  readonly kind: 'alloc_iova' | 'free_iova' | 'map' | 'unmap';
  readonly text: string;
}

const allocText = (size: number, limit: number, flush: number, pfn: number): string =>
  `alloc_iova_fast(size ${size}, limit ${hx(limit)}, flush ${flush}) = ${hx(pfn)}`;
const freeText = (pfn: number, size: number): string => `free_iova_fast(pfn ${hx(pfn)}, size ${size})`;
const mapText = (iova: number, paddr: number, size: number): string =>
  `iommu_map(iova ${hx(iova)}, paddr ${hx(paddr)}, size ${hx(size)})`;
const unmapText = (iova: number, size: number): string => `iommu_unmap(iova ${hx(iova)}, size ${hx(size)})`;

/** Collects the model's `iommu_map`/`iommu_unmap` trace events as steps. */
class StepTracer implements Tracer {
  readonly steps: Step[] = [];
  begin(name: string, _category: string, args?: TraceArgs): void {
    if (args === undefined) return;
    const n = (k: string): number => Number(args[k]);
    if (name === 'iommu_map')
      this.steps.push({ kind: 'map', text: mapText(n('iova'), n('paddr'), n('size')) });
    else if (name === 'iommu_unmap')
      this.steps.push({ kind: 'unmap', text: unmapText(n('iova'), n('size')) });
  }
  end(): void {}
  instant(): void {}
}

/**
 * Makes the model's allocator report its fast-path calls as steps, in call order with the
 * iommu events (an instance-level wrapper; the allocator itself is unchanged).
 */
function recordAllocator(iovad: IovaDomain, steps: Step[]): void {
  const alloc = iovad.allocIovaFast.bind(iovad);
  const free = iovad.freeIovaFast.bind(iovad);
  iovad.allocIovaFast = (size: number, limitPfn: number, flushRcache: boolean): number => {
    const pfn = alloc(size, limitPfn, flushRcache);
    steps.push({ kind: 'alloc_iova', text: allocText(size, limitPfn, flushRcache ? 1 : 0, pfn) });
    return pfn;
  };
  iovad.freeIovaFast = (pfn: number, size: number): void => {
    steps.push({ kind: 'free_iova', text: freeText(pfn, size) });
    free(pfn, size);
  };
}

/** The DMA API calls that open a segment of the trace. */
const OPS: ReadonlySet<string> = new Set(DMA_API_EVENT_KINDS);

/** A DMA API call and the kernel events that followed it until the next call. */
interface Segment {
  readonly op: KernelEvent;
  readonly events: KernelEvent[];
}

/** A live model mapping, by the bus address the kernel's later unmap names. */
type LiveMapping =
  | { kind: 'phys'; size: number }
  | { kind: 'sg'; sgl: Scatterlist; nents: number; dir: DmaDataDirection };

function segmentsOf(events: readonly KernelEvent[]): { segments: Segment[]; stray: KernelEvent | undefined } {
  const segments: Segment[] = [];
  let stray: KernelEvent | undefined;
  let cur: Segment | undefined;
  for (const e of events) {
    if (OPS.has(e.kind)) {
      cur = { op: e, events: [] };
      segments.push(cur);
    } else if (
      e.kind === 'alloc_iova' ||
      e.kind === 'alloc_iova_ret' ||
      e.kind === 'free_iova' ||
      e.kind === 'map' ||
      e.kind === 'unmap'
    ) {
      if (cur === undefined) stray ??= e;
      else cur.events.push(e);
    }
  }
  return { segments, stray };
}

/** The kernel's steps of a segment, each with the trace line it came from. */
function kernelSteps(seg: Segment): Array<Step & { line: number }> {
  const out: Array<Step & { line: number }> = [];
  let call: KernelEvent | undefined;
  for (const e of seg.events) {
    const a = e.args;
    if (e.kind === 'alloc_iova') call = e;
    else if (e.kind === 'alloc_iova_ret' && call !== undefined) {
      out.push({
        kind: 'alloc_iova',
        text: allocText(call.args.size ?? 0, call.args.limit ?? 0, call.args.flush ?? 0, a.pfn ?? 0),
        line: e.line,
      });
      call = undefined;
    } else if (e.kind === 'free_iova')
      out.push({ kind: 'free_iova', text: freeText(a.pfn ?? 0, a.size ?? 0), line: e.line });
    else if (e.kind === 'map')
      out.push({ kind: 'map', text: mapText(a.iova ?? 0, a.paddr ?? 0, a.size ?? 0), line: e.line });
    else if (e.kind === 'unmap')
      out.push({ kind: 'unmap', text: unmapText(a.iova ?? 0, a.size ?? 0), line: e.line });
  }
  return out;
}

/** The physical pages the segment's `map` events name, in order. */
function recordedPages(seg: Segment): number[] {
  const pages: number[] = [];
  for (const e of seg.events) {
    if (e.kind !== 'map') continue;
    const paddr = e.args.paddr ?? 0;
    const size = e.args.size ?? 0;
    for (let off = 0; off < size; off += KERNEL_IOVA_GRANULE) pages.push(paddr + off);
  }
  return pages;
}

function firstOf(seg: Segment, kind: KernelEvent['kind']): KernelEvent | undefined {
  return seg.events.find((e) => e.kind === kind);
}

function asDir(d: number | undefined): DmaDataDirection {
  return (d ?? DMA_BIDIRECTIONAL) as DmaDataDirection;
}

/** Builds a one-entry-per-page scatterlist over `pages`. */
function pageList(pages: readonly number[]): Scatterlist {
  const sg = sgArray(pages.length);
  const first = sg[0] as Scatterlist;
  sgInitTable(first, pages.length);
  pages.forEach((p, i) => {
    sgSetPage(sg[i] as Scatterlist, p, KERNEL_IOVA_GRANULE, 0);
  });
  return first;
}

/** Largest physical address a trace names (to size the replay machine). */
function maxPhys(trace: KernelTrace): number {
  let max = 0;
  for (const e of trace.events) {
    if (e.kind === 'map') max = Math.max(max, (e.args.paddr ?? 0) + (e.args.size ?? 0));
  }
  return max;
}

/**
 * Replays the DMA API calls of an IOMMU trace (strict, lazy or forcedac). Returns the events
 * compared by kind and the first divergence; the replay stops there.
 */
export function replayDmaIommu(trace: KernelTrace): ReplayResult {
  const replay = new DmaIommuReplay(trace);
  const divergence = replay.run();
  return { replay: 'dma-iommu', compared: replay.compared, divergence, notes: replay.notes };
}

/** Reports a divergence: throws it, so the replay stops at the first one. */
function diverge(line: number, kind: string, what: string, kernel: string, model: string): never {
  throw new DivergenceFound({ replay: 'dma-iommu', line, kind, what, kernel, model });
}

/**
 * One replay of an IOMMU trace on a fresh model machine: a segment at a time, the recorded call is
 * rebuilt and made on the model, then the model's allocator and page-table steps are compared with
 * the kernel's. In lazy mode the virtual clock follows the trace and the flush-queue timer fires
 * only at a recorded expiry.
 */
class DmaIommuReplay {
  readonly compared: Record<string, number> = {};
  readonly notes: string[] = [];
  readonly #trace: KernelTrace;
  readonly #lazy: boolean;
  readonly #machine: Machine;
  readonly #dev: Device;
  readonly #cookie: IommuDmaCookie;
  readonly #steps: Step[];
  /** Kernels before 6.4 try a 32-bit IOVA first on every allocation. */
  readonly #rearmSac: boolean;
  readonly #live = new Map<number, LiveMapping>();
  readonly #t0: number;
  /** Model flush-queue timer deadline (virtual ns), -1 when not armed. */
  #deadline = -1;
  #batches = 0;
  #maxLateNs = 0;

  constructor(trace: KernelTrace) {
    const { header } = trace;
    this.#trace = trace;
    this.#lazy = header.mode === 'lazy';
    this.#machine = replayMachine(maxPhys(trace), traceCpus(trace));
    const tracer = new StepTracer();
    this.#machine.tracer = tracer;
    this.#dev = kernelDevice(this.#machine, header, { lazy: this.#lazy });
    const domain = this.#dev.domain;
    if (domain === undefined) throw new Error('replayDmaIommu: device without a domain');
    this.#cookie = iommuDmaCookie(domain);
    this.#steps = tracer.steps;
    recordAllocator(this.#cookie.iovad, this.#steps);
    const [major, minor] = header.kernelVersion;
    this.#rearmSac = header.mode !== 'forcedac' && (major < 6 || (major === 6 && minor < 4));
    if (header.mode === 'forcedac') this.#dev.pci32bitWorkaround = false;
    this.notes.push(
      header.mode === 'forcedac'
        ? 'iommu.forcedac=1: no 32-bit-first attempt (model: pci32bitWorkaround off)'
        : this.#rearmSac
          ? `kernel ${header.kernelRelease} < 6.4: 32-bit-first attempt on every allocation (model flag re-armed per call)`
          : 'kernel >= 6.4: sticky pci_32bit_workaround, as the model does',
    );
    this.#t0 = trace.events[0]?.ts ?? 0;
  }

  /** Replays every segment; returns the first divergence, if any. */
  run(): Divergence | undefined {
    let divergence: Divergence | undefined;
    try {
      const { segments, stray } = segmentsOf(this.#trace.events);
      if (stray !== undefined) {
        diverge(
          stray.line,
          stray.kind,
          'allocator or map event before any recorded DMA API call',
          'a DMA API call',
          'none',
        );
      }
      for (const seg of segments) this.#segment(seg);
    } catch (err) {
      if (!(err instanceof DivergenceFound)) throw err;
      divergence = err.divergence;
    }
    if (this.#lazy) {
      this.notes.push(
        `${this.#batches} flush-queue timer batches; kernel expiry at most ${(this.#maxLateNs / 1e6).toFixed(3)} ms after the model's 10 ms deadline (jiffy tick + softirq thread)`,
      );
    }
    return divergence;
  }

  /** One recorded call: clock, the call on the model, the timer, then the step comparison. */
  #segment(seg: Segment): void {
    const op = seg.op;
    const rel = op.ts - this.#t0;
    this.#machine.setCpu(op.cpu);
    // the virtual clock follows the trace, but the model's flush timer fires only at a recorded expiry
    if (this.#lazy && op.kind !== 'fq_timeout') {
      const target = this.#deadline >= 0 && this.#deadline <= rel ? this.#deadline - 1 : rel;
      if (target > this.#machine.clock.nowNs) this.#machine.clock.advance(target - this.#machine.clock.nowNs);
    }
    const first = this.#steps.length;
    const armedBefore = this.#cookie.fq?.timerArmed ?? false;
    switch (op.kind) {
      case 'map_page':
        this.#mapPage(seg);
        break;
      case 'dma_alloc':
      case 'map_sg':
        this.#mapPages(seg);
        break;
      case 'unmap_page':
        this.#unmapPage(seg);
        break;
      case 'unmap_sg':
      case 'dma_free':
        this.#unmapMapping(seg);
        break;
      case 'fq_timeout':
        this.#fqTimeout(seg, rel);
        break;
      default:
        break;
    }
    const fq = this.#cookie.fq;
    if (this.#lazy && fq !== undefined) {
      if (!fq.timerArmed) this.#deadline = -1;
      else if (!armedBefore || op.kind === 'fq_timeout')
        this.#deadline = this.#machine.clock.nowNs + IOVA_DEFAULT_FQ_TIMEOUT * 1e6;
    }
    compareSteps(seg, this.#steps.slice(first), this.compared, diverge);
  }

  /** Runs a model call; a refusal by the model is a divergence. */
  #modelCall(seg: Segment, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (err instanceof DmaError || err instanceof IommuError) {
        diverge(
          seg.op.line,
          seg.op.kind,
          'the model refused the recorded call',
          `${seg.op.kind} as recorded`,
          err.message,
        );
      }
      throw err;
    }
  }

  /** `map_page`: the physical address comes from the map event that follows. */
  #mapPage(seg: Segment): void {
    const { op } = seg;
    const a = op.args;
    const m = firstOf(seg, 'map');
    if (m === undefined)
      diverge(op.line, op.kind, 'no map event follows: cannot rebuild the request', 'map', 'none');
    const phys = (m?.args.paddr ?? 0) + ((a.off ?? 0) % KERNEL_IOVA_GRANULE);
    if (this.#rearmSac) this.#dev.pci32bitWorkaround = true;
    this.#modelCall(seg, () => {
      const dma = iommuDmaMapPhys(this.#dev, phys, a.size ?? 0, asDir(a.dir), 0);
      this.#live.set(dma, { kind: 'phys', size: a.size ?? 0 });
    });
  }

  /** `map_sg` and `dma_alloc`: the pages come from the map events that follow. */
  #mapPages(seg: Segment): void {
    const { op } = seg;
    const a = op.args;
    const pages = recordedPages(seg);
    if (pages.length === 0)
      diverge(op.line, op.kind, 'no map event follows: cannot rebuild the request', 'map', 'none');
    if (this.#rearmSac) this.#dev.pci32bitWorkaround = true;
    const dir = op.kind === 'dma_alloc' ? DMA_BIDIRECTIONAL : asDir(a.dir);
    if (op.kind === 'dma_alloc' && seg.events.filter((e) => e.kind === 'map').length === 1) {
      // one contiguous run: iommu_dma_alloc -> __iommu_dma_map of the pages
      this.#modelCall(seg, () => {
        const dma = iommuDmaMapPhys(this.#dev, pages[0] as number, a.size ?? 0, dir, 0);
        this.#live.set(dma, { kind: 'phys', size: a.size ?? 0 });
      });
      return;
    }
    this.#modelCall(seg, () => {
      const sgl = pageList(pages);
      const n = iommuDmaMapSg(this.#dev, sgl, pages.length, dir, 0);
      if (n > 0) this.#live.set(sgDmaAddress(sgl), { kind: 'sg', sgl, nents: pages.length, dir });
    });
  }

  /** `unmap_page` at the recorded address. */
  #unmapPage(seg: Segment): void {
    const a = seg.op.args;
    this.#modelCall(seg, () => {
      iommuDmaUnmapPhys(this.#dev, a.addr ?? 0, a.size ?? 0, asDir(a.dir), 0);
      this.#live.delete(a.addr ?? 0);
    });
  }

  /** `unmap_sg` and `dma_free`: the mapping the model made at the IOVA of the unmap event that follows. */
  #unmapMapping(seg: Segment): void {
    const { op } = seg;
    const a = op.args;
    const u = firstOf(seg, 'unmap');
    if (u === undefined)
      diverge(op.line, op.kind, 'no unmap event follows: cannot tell which mapping', 'unmap', 'none');
    const iova = u?.args.iova ?? 0;
    const live = this.#live;
    const m =
      live.get(iova) ?? [...live.entries()].find(([k]) => k - (k % KERNEL_IOVA_GRANULE) === iova)?.[1];
    if (m === undefined)
      diverge(
        op.line,
        op.kind,
        'the model has nothing mapped at the recorded address',
        hx(iova),
        'no mapping',
      );
    this.#modelCall(seg, () => {
      if (m?.kind === 'sg') iommuDmaUnmapSg(this.#dev, m.sgl, m.nents, m.dir, 0);
      else
        iommuDmaUnmapPhys(
          this.#dev,
          iova,
          op.kind === 'dma_free' ? (a.size ?? 0) : (m?.size ?? 0),
          asDir(a.dir),
          0,
        );
    });
    for (const k of live.keys()) if (k - (k % KERNEL_IOVA_GRANULE) === iova) live.delete(k);
  }

  /** `fq_timeout`: the kernel's flush-queue timer fired; the model's must be armed and due. */
  #fqTimeout(seg: Segment, rel: number): void {
    const { op } = seg;
    const fq = this.#cookie.fq;
    if (fq === undefined || !fq.timerArmed || this.#deadline < 0) {
      diverge(
        op.line,
        op.kind,
        'the kernel flush-queue timer fired but the model has none armed',
        'timer expiry',
        'no timer',
      );
    }
    if (this.#deadline > rel) {
      diverge(
        op.line,
        op.kind,
        'the kernel flushed before the model timer was due',
        `${rel} ns`,
        `due at ${this.#deadline} ns`,
      );
    }
    this.#maxLateNs = Math.max(this.#maxLateNs, rel - this.#deadline);
    this.#machine.clock.advance(this.#deadline - this.#machine.clock.nowNs);
    this.#batches++;
    countCompared(this.compared, 'fq_batch');
  }
}

/** Compares one segment's kernel steps with the model's, in order. */
function compareSteps(
  seg: Segment,
  model: readonly Step[],
  compared: Record<string, number>,
  diverge: (line: number, kind: string, what: string, kernel: string, model: string) => never,
): void {
  const kernel = kernelSteps(seg);
  const n = Math.max(kernel.length, model.length);
  for (let i = 0; i < n; i++) {
    const k = kernel[i];
    const m = model[i];
    if (k === undefined) {
      diverge(
        seg.op.line,
        (m as Step).kind,
        `the model did more in ${seg.op.kind} than the kernel`,
        'nothing',
        (m as Step).text,
      );
    }
    if (m === undefined || m.text !== k?.text) {
      diverge(
        k?.line ?? seg.op.line,
        k?.kind ?? '',
        `${seg.op.kind}: step ${i + 1} differs`,
        k?.text ?? '',
        m?.text ?? 'nothing',
      );
    }
    countCompared(compared, (k as Step).kind);
  }
}
