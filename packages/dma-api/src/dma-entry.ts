/**
 * The opening every DMA API entry point repeats, written once: the argument checks the kernel
 * BUGs/WARNs on (`BUG_ON(!valid_dma_direction(dir))`, a device without a `dma_mask`, the
 * entry point's own range checks), the dma-debug hook (`debug_dma_unmap_page`, …) and the
 * tracepoint (`trace_dma_map_phys`, …). Kernel counterpart: the first lines of each function in
 * kernel/dma/mapping.c and of the IOVA-based API in drivers/iommu/dma-iommu.c (v6.17/v6.18).
 * Differs on purpose: the kernel's tracepoints fire after the work with its result; ours open a
 * span around it (closed by the caller with `tracer.end()`), so nested IOMMU work shows inside.
 * Hot path: each entry point is one constant `DmaEntry`; the call allocates nothing unless a
 * tracer is attached (then the span's arguments).
 */
import type { TraceArgs } from '@iovalink/iommu';
import type { Device } from './device.js';
import type { DmaDebug } from './dma-debug.js';
import { type DmaDataDirection, dmaDirectionName, validDmaDirection } from './dma-direction.js';
import { DmaError } from './errors.js';

/** Pass as `dir` for an entry point that takes no direction (`dma_iova_sync`, `dma_iova_free`). */
export const DMA_ENTRY_NO_DIR = -1;

type Hook<A, B, C, D> = (dev: Device, a: A, b: B, c: C, d: D) => void;
type Check<A, B, C, D> = (dev: Device, a: A, b: B, c: C, d: D) => number;

/**
 * What one entry point checks, reports to dma-debug and traces on the way in; `A` to `D` are
 * the four arguments it hands to the hooks (unused ones are 0). Written as a `DmaEntrySpec`.
 */
export interface DmaEntrySpec<A, B, C, D> {
  /** Kernel symbol: the span's name and the prefix of every rule it reports. */
  readonly name: string;
  /** Trace category. */
  readonly category: 'dma' | 'iova';
  /** The device must have a DMA mask (the streaming API's `dma_map_*` / `dma_unmap_*` / syncs). */
  readonly needsMask?: boolean;
  /**
   * Further argument checks: throws a typed error, or returns a negative errno the entry point
   * returns as is (`dma_iova_link`'s -EIO), or 0; changes nothing.
   */
  readonly check?: Check<A, B, C, D>;
  /** The dma-debug hook, called only when the device has dma-debug on. */
  readonly debug?: (debug: DmaDebug, a: A, b: B, c: C, d: D, dir: DmaDataDirection) => void;
  /**
   * Checks the kernel does not make (it WARNs after the damage, if at all), run after dma-debug
   * so that with dma-debug on its report, which names the mapping, comes first.
   */
  readonly verify?: Hook<A, B, C, D>;
  /** The span's arguments (built only while tracing); none: no span. */
  readonly trace?: (dev: Device, a: A, b: B, c: C, d: D) => TraceArgs;
  /** Report an instant event instead of opening a span. */
  readonly instant?: boolean;
}

/**
 * One entry point's opening, built once from its spec. A class, so every entry point's object
 * has the same shape and the shared opening code reads its fields without megamorphic lookups
 * (measured: object literals of differing shapes made `dma_iova_link` about 1.5× slower).
 */
export class DmaEntry<A, B, C, D> {
  readonly name: string;
  readonly category: 'dma' | 'iova';
  readonly needsMask: boolean;
  readonly check: Check<A, B, C, D> | undefined;
  readonly debug: ((debug: DmaDebug, a: A, b: B, c: C, d: D, dir: DmaDataDirection) => void) | undefined;
  readonly verify: Hook<A, B, C, D> | undefined;
  readonly trace: ((dev: Device, a: A, b: B, c: C, d: D) => TraceArgs) | undefined;
  readonly instant: boolean;

  constructor(spec: DmaEntrySpec<A, B, C, D>) {
    this.name = spec.name;
    this.category = spec.category;
    this.needsMask = spec.needsMask ?? false;
    this.check = spec.check;
    this.debug = spec.debug;
    this.verify = spec.verify;
    this.trace = spec.trace;
    this.instant = spec.instant ?? false;
  }
}

/** Throws the kernel's BUG/WARN for a bad direction or a device without a DMA mask. */
function throwBadArgs(dev: Device, dir: number, what: string): never {
  if (dir !== DMA_ENTRY_NO_DIR && !validDmaDirection(dir)) {
    throw new DmaError(`${what}: ${dev.name}: invalid direction ${dmaDirectionName(dir)}`, {
      rule: `${what}: invalid direction`,
    });
  }
  throw new DmaError(`${what}: ${dev.name}: device has no DMA mask`, { rule: `${what}: no dma_mask` });
}

/** What `dmaEntry` returns when it opened a span: close it with `tracer.end()` after the work. */
export const DMA_ENTRY_SPAN = 1;

/**
 * Runs the opening of entry point `e`: direction (unless `DMA_ENTRY_NO_DIR`) and mask checks,
 * `e.check`, the dma-debug hook, `e.verify`, then the tracepoint. Returns a negative errno from
 * `e.check` (the entry point returns it; nothing else ran), `DMA_ENTRY_SPAN` when it opened a
 * span, else 0. Small on purpose so that V8 inlines it: the error paths and the dma-debug /
 * verify / trace part live in functions of their own, reached only when they have work.
 */
export function dmaEntry<A, B, C, D>(
  dev: Device,
  e: DmaEntry<A, B, C, D>,
  dir: number,
  a: A,
  b: B,
  c: C,
  d: D,
): number {
  if ((dir !== DMA_ENTRY_NO_DIR && !validDmaDirection(dir)) || (e.needsMask && dev.dmaMask === 0)) {
    throwBadArgs(dev, dir, e.name);
  }
  if (e.check !== undefined) {
    const err = e.check(dev, a, b, c, d);
    if (err < 0) return err;
  }
  if (dev.debug === undefined && e.verify === undefined && dev.machine.tracer === undefined) return 0;
  return dmaEntryHooks(dev, e, dir, a, b, c, d);
}

/** The dma-debug hook, `e.verify` and the tracepoint of `dmaEntry`. */
function dmaEntryHooks<A, B, C, D>(
  dev: Device,
  e: DmaEntry<A, B, C, D>,
  dir: number,
  a: A,
  b: B,
  c: C,
  d: D,
): number {
  const debug = dev.debug;
  if (debug !== undefined && e.debug !== undefined) e.debug(debug, a, b, c, d, dir as DmaDataDirection);
  if (e.verify !== undefined) e.verify(dev, a, b, c, d);
  const tr = dev.machine.tracer;
  if (tr === undefined || e.trace === undefined) return 0;
  if (e.instant) {
    tr.instant(e.name, e.category, e.trace(dev, a, b, c, d));
    return 0;
  }
  tr.begin(e.name, e.category, e.trace(dev, a, b, c, d));
  return DMA_ENTRY_SPAN;
}
