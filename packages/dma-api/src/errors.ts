/**
 * Errors of the DMA API layer. `DmaError` is what the kernel's DMA core would WARN/BUG on;
 * `DmaDebugError` is what CONFIG_DMA_API_DEBUG (kernel/dma/debug.c) would report. Both carry the
 * rule broken in `rule` and leave all state as it was.
 */
import { IovalinkError, type IovalinkErrorOptions } from '@iovalink/iommu';

/** Misuse of the DMA API that the kernel WARNs or BUGs on (bad direction, no mask, …). */
export class DmaError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'DmaError';
  }
}

/** A misuse that dma-debug (kernel/dma/debug.c) reports, with the mapping it concerns. */
export class DmaDebugError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'DmaDebugError';
  }
}
