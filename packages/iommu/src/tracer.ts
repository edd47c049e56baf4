/**
 * Tracing hooks: layers report the start and end of the operations a user wants to see on a
 * timeline (DMA map/unmap, IOVA link/sync/unlink, iommu map/unmap, IOTLB invalidations, device DMA)
 * to the machine's tracer, if one is installed. The tracer stamps them with whatever clock it likes
 * (the CLI uses simulator time). Off by default: one property check per operation. Kernel
 * counterpart: the tracepoints of `include/trace/events/iommu.h` and `dma.h`.
 */

/** Event arguments: small numbers and strings. */
export type TraceArgs = Record<string, number | string>;

/** Receives trace events (kernel: a tracepoint consumer). */
export interface Tracer {
  /** An operation begins; `end` closes the innermost open one. */
  begin(name: string, category: string, args?: TraceArgs): void;
  /** The innermost open operation ends. */
  end(): void;
  /** A point event (e.g. an IOTLB invalidation). */
  instant(name: string, category: string, args?: TraceArgs): void;
}
