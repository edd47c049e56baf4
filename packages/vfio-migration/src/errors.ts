/**
 * The error class of the VFIO migration layer. `VfioError` is what the kernel would WARN or BUG
 * on in drivers/vfio (a driver returning a file from a non-final arc, an arc the FSM never
 * produces, a corrupt driver state), or a misuse of the model itself (bad configuration). It
 * carries the kernel rule broken in `rule` and leaves all state as it was. Errors the kernel
 * returns to userspace are returned as `-errno`, never thrown. Kernel counterpart: WARN_ON sites
 * of drivers/vfio/vfio_main.c and drivers/vfio/pci/mlx5/main.c.
 */
import { IovalinkError, type IovalinkErrorOptions } from '@iovalink/iommu';

/**
 * A VFIO migration rule broken where the kernel would WARN (kernel counterpart: WARN_ON in
 * drivers/vfio/vfio_main.c and drivers/vfio/pci/mlx5/*.c); recognisable across package copies
 * through `isIovalinkError`.
 */
export class VfioError extends IovalinkError {
  constructor(message: string, options: IovalinkErrorOptions) {
    super(message, options);
    this.name = 'VfioError';
  }
}
