/**
 * Errors of the ODP layer: what the kernel would WARN/BUG on in mm/, mm/hmm.c, mm/mmu_notifier.c,
 * drivers/infiniband/core/umem_odp.c and the mlx5 ODP code, as a typed `OdpError` naming the rule
 * broken. Functions that return `0`/`-errno` or an `ERR_PTR` in the kernel return the same here
 * (a negative number); `isErr` is `IS_ERR`.
 */
import { IovalinkError, type IovalinkErrorOptions } from '@iovalink/iommu';

/** A misuse the kernel would WARN or BUG on in the ODP stack; `rule` names the rule broken. */
export class OdpError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'OdpError';
  }
}

/**
 * True when a value returned in place of an object is an error code (kernel: `IS_ERR` on an
 * `ERR_PTR`). Our ERR_PTR is the negative errno itself.
 */
export function isErr(value: unknown): value is number {
  return typeof value === 'number' && value < 0;
}
