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
import type { TraceArgs, Tracer } from '@iovalink/iommu';
import type { Device } from './device.js';
import type { DmaDebug } from './dma-debug.js';
import { type DmaDataDirection, dmaDirectionName, validDmaDirection } from './dma-direction.js';
import { DmaError } from './errors.js';

/** Pass as `dir` for an entry point that takes no direction (`dma_iova_sync`, `dma_iova_free`). */
export const DMA_ENTRY_NO_DIR = -1;

/**
 * What one entry point checks, reports to dma-debug and traces on the way in; `A` to
 * `D` the four arguments it hands to the hooks (unused ones are 0).
 */
export interface DmaEntry<A, B, C, D> {
  /** Kernel symbol: the span's name and the prefix of every rule it reports. */
  readonly name: string;
  /** Trace category. */
  readonly category: 'dma' | 'iova';
  /** The device must have a DMA mask (the streaming API's `dma_map_*` / `dma_unmap_*` / syncs). */
  readonly needsMask: boolean;
  /** Further argument checks; throws a typed error and changes nothing. */
  readonly check?: (dev: Device, a: A, b: B, c: C, d: D) => void;
  /** The dma-debug hook, called only when the device has dma-debug on. */
  readonly debug?: (debug: DmaDebug, a: A, b: B, c: C, d: D, dir: DmaDataDirection) => void;
  /**
   * Checks the kernel does not make (it WARNs after the damage, if at all), run after dma-debug
   * so that with dma-debug on its report, which names the mapping, comes first.
   */
  readonly verify?: (dev: Device, a: A, b: B, c: C, d: D) => void;
  /** The span's arguments (built only while tracing); none: no span, or `instant` below. */
  readonly trace?: (dev: Device, a: A, b: B, c: C, d: D) => TraceArgs;
  /** Report an instant event instead of opening a span. */
  readonly instant?: boolean;
}

/** Throws the kernel's BUG for a bad direction. */
function throwBadDirection(dev: Device, dir: number, what: string): never {
  throw new DmaError(`${what}: ${dev.name}: invalid direction ${dmaDirectionName(dir)}`, {
    rule: `${what}: invalid direction`,
  });
}

/**
 * Runs the opening of entry point `e`: direction (unless `DMA_ENTRY_NO_DIR`) and mask checks,
 * `e.check`, the dma-debug hook, `e.verify`, then the tracepoint. Returns the tracer when it opened a span
 * (the caller closes it with `end()` after the work), else undefined.
 */
export function dmaEntry<A, B, C, D>(
  dev: Device,
  e: DmaEntry<A, B, C, D>,
  dir: number,
  a: A,
  b: B,
  c: C,
  d: D,
): Tracer | undefined {
  if (dir !== DMA_ENTRY_NO_DIR && !validDmaDirection(dir)) throwBadDirection(dev, dir, e.name);
  if (e.needsMask && dev.dmaMask === 0) {
    throw new DmaError(`${e.name}: ${dev.name}: device has no DMA mask`, { rule: `${e.name}: no dma_mask` });
  }
  if (e.check !== undefined) e.check(dev, a, b, c, d);
  const debug = dev.debug;
  if (debug !== undefined && e.debug !== undefined) e.debug(debug, a, b, c, d, dir as DmaDataDirection);
  if (e.verify !== undefined) e.verify(dev, a, b, c, d);
  const tr = dev.machine.tracer;
  if (tr === undefined || e.trace === undefined) return undefined;
  if (e.instant === true) {
    tr.instant(e.name, e.category, e.trace(dev, a, b, c, d));
    return undefined;
  }
  tr.begin(e.name, e.category, e.trace(dev, a, b, c, d));
  return tr;
}
