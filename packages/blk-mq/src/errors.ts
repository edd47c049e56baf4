/**
 * Errors of the block layer model. `BlkError` is what the kernel's block layer or a block driver
 * would WARN/BUG on (a request built against its own limits, a bio advanced past its end, a tag
 * freed twice); `rule` names the kernel rule broken. Ordinary I/O failures are not errors: they
 * complete with a block status code (`blk-status.ts`), as in the kernel.
 * Kernel counterpart: the WARN_ON/BUG_ON sites of block/ and drivers/nvme/host/pci.c.
 */
import { IovalinkError, type IovalinkErrorOptions } from '@iovalink/iommu';

/** Misuse of the block layer that the kernel WARNs or BUGs on. Leaves state unchanged. */
export class BlkError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'BlkError';
  }
}
