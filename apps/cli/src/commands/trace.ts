/**
 * `iovalink trace`: records the DMA/IOMMU events of a short workload as Chrome trace-event JSON
 * (the format Perfetto and chrome://tracing open): one event per map, link, sync, unlink, iommu
 * map/unmap, IOTLB invalidation and device DMA, one track per path. By default the clock is
 * modeled kernel time, so a slice lasts as long as the kernel would spend on it by the cost model
 * (where kernel time would go); `--clock wall` stamps simulator time instead (where this model's
 * own time goes, JIT and GC pauses included). Kernel counterpart: the iommu and dma tracepoints.
 */
import { writeFileSync } from 'node:fs';
import {
  type CounterSnapshot,
  DEFAULT_IOMMU_HW,
  diffCounters,
  type Machine,
  type TraceArgs,
  type Tracer,
} from '@iovalink/iommu';
import { type CostModel, modeledNs, resolveCostModel } from '../cost-model.js';
import { type DmaPath, PATH_LABEL, type WorkloadResult } from '../results.js';
import { type IommuMode, loadIommuHw } from '../rig.js';
import { blockWorkload, TRACE_BLOCK_CASE } from '../workloads/block.js';
import { odpWorkload } from '../workloads/odp.js';
import type { Workload } from '../workloads/types.js';
import { vfioWorkload } from '../workloads/vfio.js';

/** One Chrome trace event. */
export interface TraceEvent {
  name: string;
  cat: string;
  ph: 'B' | 'E' | 'i' | 'X' | 'M';
  ts: number;
  /** Duration in µs ('X' events only). */
  dur?: number;
  pid: number;
  tid: number;
  s?: 't';
  args?: TraceArgs;
}

/** The clocks a trace can be stamped with. */
export const TRACE_CLOCKS = ['modeled', 'wall'] as const;
/** One of TRACE_CLOCKS. */
export type TraceClock = (typeof TRACE_CLOCKS)[number];

/**
 * Point events that the layers emit after the work they name (the modeled time since the previous
 * event on the track is theirs); every other point event is emitted before its work, which then
 * runs until the next event. Read off the emitting code: `dma_iova_try_alloc` and `dma_iova_free`
 * report once the IOVA is allocated or freed, `iotlb_inv_*` and `dma_iova_sync` before they
 * invalidate or sync.
 */
const REPORTED_AFTER_WORK: ReadonlySet<string> = new Set(['dma_iova_try_alloc', 'dma_iova_free']);

/**
 * A tracer writing Chrome trace events for one track. On the wall clock, timestamps are
 * simulator time in µs since `t0` and point events stay points. On the modeled clock, the clock
 * is the modeled kernel time (counts × cost model) spent on the attached machines so far, so a
 * span lasts as long as the work inside it would take the kernel, and each point event becomes a
 * slice holding the modeled time of its own work (see REPORTED_AFTER_WORK). Attach it to each
 * machine of its track in turn (`attach`); the modeled clock carries on from one to the next.
 */
export class ChromeTracer implements Tracer {
  readonly events: TraceEvent[];
  readonly #tid: number;
  readonly #clock: TraceClock;
  readonly #t0: number;
  readonly #model: CostModel | undefined;
  #machine: Machine | undefined;
  #start: CounterSnapshot | undefined;
  /** Modeled µs of the machines attached before the current one. */
  #base = 0;
  #lastTs = 0;
  /** A point-event slice waiting for the next event to end it. */
  #open: TraceEvent | undefined;
  #depth = 0;
  /** Events this track recorded. */
  #count = 0;
  /** Stop recording this track after this many events (a long run stays openable). */
  readonly limit: number;

  constructor(
    events: TraceEvent[],
    tid: number,
    clock: { kind: 'wall'; t0: number } | { kind: 'modeled'; model: CostModel },
    limit = 100_000,
  ) {
    this.events = events;
    this.#tid = tid;
    this.#clock = clock.kind;
    this.#t0 = clock.kind === 'wall' ? clock.t0 : 0;
    this.#model = clock.kind === 'modeled' ? clock.model : undefined;
    this.limit = limit;
  }

  /** Installs this tracer on `machine`; the modeled clock counts its events from now on. */
  attach(machine: Machine): void {
    if (this.#machine !== undefined && this.#clock === 'modeled') this.#base = this.#now();
    this.#machine = machine;
    this.#start = machine.counters.snapshot();
    machine.tracer = this;
  }

  #now(): number {
    if (this.#clock === 'wall') return (performance.now() - this.#t0) * 1000;
    if (this.#machine === undefined || this.#start === undefined) return this.#base;
    const d = diffCounters(this.#start, this.#machine.counters.snapshot());
    return this.#base + modeledNs(this.#model!, d) / 1000;
  }

  /** The current time; ends a pending point-event slice there. */
  #tick(): number {
    const ts = this.#now();
    if (this.#open !== undefined) {
      this.#open.dur = ts - this.#open.ts;
      this.#open = undefined;
    }
    return ts;
  }

  begin(name: string, cat: string, args?: TraceArgs): void {
    if (this.#count >= this.limit) return;
    const ts = this.#tick();
    this.#depth++;
    this.#count++;
    this.events.push({ name, cat, ph: 'B', ts, pid: 1, tid: this.#tid, ...(args ? { args } : {}) });
    this.#lastTs = ts;
  }

  end(): void {
    if (this.#depth === 0) return;
    const ts = this.#tick();
    this.#depth--;
    this.#count++;
    this.events.push({ name: '', cat: '', ph: 'E', ts, pid: 1, tid: this.#tid });
    this.#lastTs = ts;
  }

  instant(name: string, cat: string, args?: TraceArgs): void {
    if (this.#count >= this.limit) return;
    const ts = this.#tick();
    this.#count++;
    const a = args ? { args } : {};
    if (this.#clock === 'wall') {
      this.events.push({ name, cat, ph: 'i', s: 't', ts, pid: 1, tid: this.#tid, ...a });
    } else if (REPORTED_AFTER_WORK.has(name)) {
      this.events.push({
        name,
        cat,
        ph: 'X',
        ts: this.#lastTs,
        dur: ts - this.#lastTs,
        pid: 1,
        tid: this.#tid,
        ...a,
      });
    } else {
      this.#open = { name, cat, ph: 'X', ts, dur: 0, pid: 1, tid: this.#tid, ...a };
      this.events.push(this.#open);
    }
    this.#lastTs = ts;
  }

  /** Ends a pending point-event slice at the current time (call when the run is over). */
  close(): void {
    this.#tick();
  }
}

/** Options of `iovalink trace`. */
export interface TraceOptions {
  out: string;
  workload: WorkloadResult['subsystem'];
  iommu: IommuMode;
  seed: number;
  /** Timestamps: modeled kernel time (default) or wall-clock simulator time. */
  clock?: TraceClock;
  /** Cost model of the modeled clock (default: the hardware's own). */
  costModel?: string;
  /** IOMMU hardware preset or file (default smmuv3-norange). */
  hw?: string;
}

/**
 * The workloads `iovalink trace` records, one per subsystem: block is 128 KiB sequential (the
 * two paths differ there: the two-step path links the request's pages into one IOVA range, the
 * legacy path maps a scatterlist), then RDMA ODP and VFIO migration as in the demo.
 */
export function traceWorkloads(): Workload[] {
  return [blockWorkload(TRACE_BLOCK_CASE), odpWorkload(), vfioWorkload()];
}

/** Runs one workload (quick size) with a tracer per path and returns the trace document. */
export async function recordTrace(
  o: Omit<TraceOptions, 'out'>,
  workloads: readonly Workload[] = traceWorkloads(),
) {
  const w = workloads.find((x) => x.subsystem === o.workload);
  if (w === undefined)
    throw new Error(
      `no ${o.workload} workload; choose one of ${workloads.map((x) => x.subsystem).join(', ')}`,
    );
  const events: TraceEvent[] = [];
  const t0 = performance.now();
  const clock = o.clock ?? 'modeled';
  const hw = loadIommuHw(o.hw ?? DEFAULT_IOMMU_HW);
  const model = resolveCostModel(o.costModel, hw);
  const tids: Record<DmaPath, number> = { sg: 1, iova: 2 };
  for (const p of ['sg', 'iova'] as const) {
    events.push({
      name: 'thread_name',
      cat: '',
      ph: 'M',
      ts: 0,
      pid: 1,
      tid: tids[p],
      args: { name: PATH_LABEL[p] },
    });
  }
  events.push({
    name: 'process_name',
    cat: '',
    ph: 'M',
    ts: 0,
    pid: 1,
    tid: 0,
    args: { name: `iovalink ${w.name}` },
  });
  const tracers: Record<DmaPath, ChromeTracer> = {
    sg: new ChromeTracer(
      events,
      tids.sg,
      clock === 'wall' ? { kind: 'wall', t0 } : { kind: 'modeled', model },
    ),
    iova: new ChromeTracer(
      events,
      tids.iova,
      clock === 'wall' ? { kind: 'wall', t0 } : { kind: 'modeled', model },
    ),
  };
  const traced = new Set<DmaPath>();
  await w.run({
    iommu: o.iommu,
    hw,
    seed: o.seed,
    quick: true,
    debug: false,
    costModel: model,
    // the first measured machine of each path: the block and ODP sessions run all their rounds
    // on it; VFIO builds one per migration, and one migration per path is what a trace needs
    onMachine: (machine: Machine, path: DmaPath) => {
      if (!traced.has(path)) tracers[path].attach(machine);
      traced.add(path);
    },
  });
  tracers.sg.close();
  tracers.iova.close();
  return {
    traceEvents: events,
    displayTimeUnit: 'ns' as const,
    otherData: {
      timeKind: clock === 'wall' ? 'simulator' : 'modeled',
      clock:
        clock === 'wall'
          ? 'wall-clock simulator time (how fast this model ran here)'
          : `modeled kernel time: each slice lasts the modeled cost of its events (cost model ${model.name})`,
      hw: hw.name,
      workload: w.name,
    },
  };
}

/** `iovalink trace`: writes the file and says what it holds. */
export async function trace(o: TraceOptions): Promise<string> {
  const doc = await recordTrace(o);
  writeFileSync(o.out, JSON.stringify(doc));
  const counts = new Map<string, number>();
  for (const e of doc.traceEvents)
    if (e.ph === 'B' || e.ph === 'i' || e.ph === 'X') counts.set(e.name, (counts.get(e.name) ?? 0) + 1);
  const summary = [...counts].map(([k, v]) => `${k} ${v}`).join(', ');
  return `wrote ${doc.traceEvents.length} events of ${doc.otherData.workload} to ${o.out} (open it in https://ui.perfetto.dev or chrome://tracing)\nclock: ${doc.otherData.clock}\n${summary}`;
}
