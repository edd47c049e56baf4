/**
 * `iovalink trace`: records the DMA/IOMMU events of a short workload as Chrome trace-event JSON
 * (the format Perfetto and chrome://tracing open): one event per map, link, sync, unlink, iommu
 * map/unmap, IOTLB invalidation and device DMA, one track per path. Timestamps are simulator time.
 */
import { writeFileSync } from 'node:fs';
import type { Machine, TraceArgs, Tracer } from '@iovalink/iommu';
import { loadCostModel } from '../cost-model.js';
import { type DmaPath, PATH_LABEL, type WorkloadResult } from '../results.js';
import type { IommuMode } from '../rig.js';
import { allWorkloads } from '../workloads/index.js';
import type { Workload } from '../workloads/types.js';

/** One Chrome trace event. */
export interface TraceEvent {
  name: string;
  cat: string;
  ph: 'B' | 'E' | 'i' | 'M';
  ts: number;
  pid: number;
  tid: number;
  s?: 't';
  args?: TraceArgs;
}

/** A tracer writing Chrome trace events for one track, stamped with simulator time in µs. */
export class ChromeTracer implements Tracer {
  readonly events: TraceEvent[];
  readonly #tid: number;
  readonly #t0: number;
  #depth = 0;
  /** Stop recording after this many events (a long run stays openable). */
  readonly limit: number;

  constructor(events: TraceEvent[], tid: number, t0: number, limit = 200_000) {
    this.events = events;
    this.#tid = tid;
    this.#t0 = t0;
    this.limit = limit;
  }

  #ts(): number {
    return (performance.now() - this.#t0) * 1000;
  }

  begin(name: string, cat: string, args?: TraceArgs): void {
    if (this.events.length >= this.limit) return;
    this.#depth++;
    this.events.push({
      name,
      cat,
      ph: 'B',
      ts: this.#ts(),
      pid: 1,
      tid: this.#tid,
      ...(args ? { args } : {}),
    });
  }

  end(): void {
    if (this.#depth === 0) return;
    this.#depth--;
    this.events.push({ name: '', cat: '', ph: 'E', ts: this.#ts(), pid: 1, tid: this.#tid });
  }

  instant(name: string, cat: string, args?: TraceArgs): void {
    if (this.events.length >= this.limit) return;
    this.events.push({
      name,
      cat,
      ph: 'i',
      s: 't',
      ts: this.#ts(),
      pid: 1,
      tid: this.#tid,
      ...(args ? { args } : {}),
    });
  }
}

/** Options of `iovalink trace`. */
export interface TraceOptions {
  out: string;
  workload: WorkloadResult['subsystem'];
  iommu: IommuMode;
  seed: number;
}

/** Runs one workload (quick size) with a tracer per path and returns the trace document. */
export function recordTrace(o: Omit<TraceOptions, 'out'>, workloads: readonly Workload[] = allWorkloads()) {
  const w = workloads.find((x) => x.subsystem === o.workload);
  if (w === undefined)
    throw new Error(
      `no ${o.workload} workload; choose one of ${workloads.map((x) => x.subsystem).join(', ')}`,
    );
  const events: TraceEvent[] = [];
  const t0 = performance.now();
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
  w.run({
    iommu: o.iommu,
    seed: o.seed,
    quick: true,
    debug: false,
    costModel: loadCostModel('arm-smmuv3'),
    onMachine: (machine: Machine, path: DmaPath) => {
      machine.tracer = new ChromeTracer(events, tids[path], t0);
    },
  });
  return {
    traceEvents: events,
    displayTimeUnit: 'ns' as const,
    otherData: { timeKind: 'simulator', workload: w.name },
  };
}

/** `iovalink trace`: writes the file and says what it holds. */
export function trace(o: TraceOptions): string {
  const doc = recordTrace(o);
  writeFileSync(o.out, JSON.stringify(doc));
  const counts = new Map<string, number>();
  for (const e of doc.traceEvents)
    if (e.ph === 'B' || e.ph === 'i') counts.set(e.name, (counts.get(e.name) ?? 0) + 1);
  const summary = [...counts].map(([k, v]) => `${k} ${v}`).join(', ');
  return `wrote ${doc.traceEvents.length} events to ${o.out} (open it in https://ui.perfetto.dev or chrome://tracing)\n${summary}`;
}
