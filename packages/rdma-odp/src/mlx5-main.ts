/**
 * Bringing an mlx5 RDMA device up over a NIC: the driver object, its verbs ops and its page-fault
 * event queue. Kernel counterpart: drivers/infiniband/hw/mlx5/main.c (`mlx5_ib_add`, the
 * `mlx5_ib_dev_ops` table) and odp.c (`mlx5_ib_odp_init_one`, `mlx5r_odp_create_eq`,
 * `mlx5_ib_odp_init` for the implicit-MR geometry).
 * Deliberate difference: the page-fault EQ is a direct callback from the NIC model.
 */

import type { Device } from '@iovalink/dma-api';
import { Mlx5IbDev, type Mlx5IbDevOptions } from './mlx5-ib.js';
import { mlx5IbDeregMr, mlx5IbRegUserMr } from './mlx5-mr.js';
import { mlx5IbAdviseMr, mlx5IbPageFaultHandler } from './mlx5-odp.js';
import { TASK_SIZE } from './mm-types.js';
import { Nic, type NicOptions } from './nic.js';

/**
 * Creates the NIC on DMA function `dev` and the mlx5 RDMA device driving it (kernel:
 * `mlx5_ib_add`): verbs ops wired, page faults routed to `mlx5_ib_eq_pf_process`.
 */
export function mlx5IbAdd(dev: Device, options: Mlx5IbDevOptions & NicOptions = {}): Mlx5IbDev {
  const nic = new Nic(dev, options);
  const ibdev = new Mlx5IbDev(
    nic,
    { regUserMr: mlx5IbRegUserMr, deregMr: mlx5IbDeregMr, adviseMr: mlx5IbAdviseMr },
    options,
    TASK_SIZE,
  );
  nic.pageFaultHandler = mlx5IbPageFaultHandler(ibdev);
  return ibdev;
}
