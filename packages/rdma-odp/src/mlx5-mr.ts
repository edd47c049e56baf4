/**
 * Registration and deregistration of mlx5 ODP memory regions. Kernel counterpart:
 * drivers/infiniband/hw/mlx5/mr.c — `mlx5_ib_reg_user_mr` → `create_user_odp_mr` (explicit:
 * `ib_umem_odp_get`, an MTT mkey, `mlx5r_store_odp_mkey`, `mlx5_ib_init_odp_mr`; implicit, for
 * `start == 0 && length == U64_MAX`: `mlx5_ib_alloc_implicit_mr`) and `mlx5_ib_dereg_mr` (revoke
 * the mkey to stop DMA, then release the umem; implicit parents deregister their children).
 * Deliberate differences: only ODP MRs (pinned MRs are another package's concern); no MR cache;
 * the MR's iova must have the same offset in its page as the user address.
 */
import { Errno, PAGE_SHIFT, PAGE_SIZE } from '@iovalink/iommu';
import { isErr, OdpError } from './errors.js';
import { IB_ACCESS_ON_DEMAND, type IbMr, type IbPd } from './ib-verbs.js';
import { type Mlx5IbDev, Mlx5IbMr } from './mlx5-ib.js';
import { mlx5DeregOdpMrHw, mlx5IbAllocImplicitMr, mlx5IbInitOdpMr, mlx5MnOps } from './mlx5-odp.js';
import { MLX5_MKC_ACCESS_MODE_MTT } from './nic.js';
import { ibUmemOdpGet } from './umem-odp.js';

/**
 * The length that, with start 0, asks for an implicit MR covering the whole address space. The
 * kernel passes `U64_MAX` (2^64 − 1), which a JS number cannot hold; the model uses the largest
 * safe integer instead, so this is not `U64_MAX` and must not be used as one.
 */
export const IMPLICIT_MR_LENGTH = Number.MAX_SAFE_INTEGER;

/**
 * Registers a user MR (kernel: `mlx5_ib_reg_user_mr` → `create_user_odp_mr`). Only ODP MRs:
 * without `IB_ACCESS_ON_DEMAND` -EOPNOTSUPP. `start == 0 && length == IMPLICIT_MR_LENGTH` (the
 * kernel's `U64_MAX`) gives an implicit MR (iova must be 0). Nothing is pinned: present pages are mirrored (snapshot), the rest fault
 * in on access. Returns the MR or -errno (-EINVAL, -EOVERFLOW, -ENOMEM, -EOPNOTSUPP).
 */
export function mlx5IbRegUserMr(
  pd: IbPd,
  start: number,
  length: number,
  iova: number,
  access: number,
): Mlx5IbMr | number {
  const dev = pd.device as Mlx5IbDev;
  dev.flushWork();
  if ((access & IB_ACCESS_ON_DEMAND) === 0 || !dev.odpSupport) return -Errno.EOPNOTSUPP;
  if (start === 0 && length === IMPLICIT_MR_LENGTH) {
    if (iova !== 0 || !dev.implicitOdpSupport) return -Errno.EINVAL;
    return mlx5IbAllocImplicitMr(pd, access);
  }
  if (iova % PAGE_SIZE !== start % PAGE_SIZE || !(iova >= 0)) return -Errno.EINVAL;
  const odp = ibUmemOdpGet(dev, pd.mm, start, length, access, mlx5MnOps, dev.mode, dev.stats.umem);
  if (isErr(odp)) return odp;
  odp.hooks = dev.hooks;
  const mkey = dev.nic.createMkey(MLX5_MKC_ACCESS_MODE_MTT, iova, length, access, PAGE_SHIFT, odp.numPages);
  const mr = new Mlx5IbMr(dev, pd, odp, mkey, iova, length, access, undefined, false);
  odp.private = mr;
  dev.odpMkeys.set(mkey.key, mr);
  const r = mlx5IbInitOdpMr(mr);
  if (r < 0) {
    mlx5DeregOdpMrHw(mr);
    return r;
  }
  return mr;
}

/**
 * Deregisters an MR (kernel: `mlx5_ib_dereg_mr`): pending driver work is flushed, the mkey is
 * revoked so the NIC stops using it, then the umem is released (every page DMA-unmapped, notifier
 * removed, lists and IOVA freed). An implicit MR deregisters its children first. Returns 0.
 */
export function mlx5IbDeregMr(ibmr: IbMr): number {
  const mr = ibmr as Mlx5IbMr;
  if (mr.deregistered) {
    throw new OdpError(`mlx5_ib_dereg_mr: mkey 0x${mr.lkey.toString(16)} deregistered twice`, {
      rule: 'ib_dereg_mr: double dereg',
    });
  }
  mr.device.flushWork();
  mlx5DeregOdpMrHw(mr);
  return 0;
}
