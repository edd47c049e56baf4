/**
 * The TLB invalidation commands arm-smmu-v3 issues for a DMA domain, counted by kind and applied
 * to the IOTLB model. Kernel counterpart: drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c (v6.17):
 * `arm_smmu_iotlb_sync` → `arm_smmu_tlb_inv_range_domain` → `__arm_smmu_tlb_inv_range` (one
 * CMD_TLBI_NH_VA per `granule` step without ARM_SMMU_FEAT_RANGE_INV; with it, range commands whose
 * TG/SCALE/NUM encode up to 5 bits of the remaining page count each), `arm_smmu_cmdq_batch_add`
 * (CMDQ_BATCH_ENTRIES commands per list, an extra CMD_SYNC every 63 with
 * ARM_SMMU_OPT_CMDQ_FORCE_SYNC) and `arm_smmu_cmdq_batch_submit` (the list plus CMD_SYNC);
 * `arm_smmu_flush_iotlb_all` → `arm_smmu_tlb_inv_context` → CMD_TLBI_NH_ASID + CMD_SYNC.
 * Differs on purpose: stage 1 only, no E2H/EL2 opcodes, no ATS (CMD_ATC_INV), one command queue.
 */
import type { Counters } from './counters.js';
import { CMDQ_BATCH_ENTRIES, CMDQ_TLBI_RANGE_NUM_MAX, type SmmuV3Invalidation } from './iommu-hw.js';
import type { Iotlb } from './iotlb.js';

/** Index of the lowest set bit of a positive safe integer (kernel: `__ffs`). */
function ffs(n: number): number {
  let b = 0;
  while (n % 2 === 0) {
    n /= 2;
    b++;
  }
  return b;
}

/** Commands a range TLBI sequence needs for `numPages` pages (the loop of `__arm_smmu_tlb_inv_range`). */
export function armSmmuRangeTlbiCount(numPages: number): number {
  let cmds = 0;
  while (numPages > 0) {
    const scale = ffs(numPages);
    const unit = 2 ** scale;
    const num = Math.floor(numPages / unit) % (CMDQ_TLBI_RANGE_NUM_MAX + 1);
    numPages -= num * unit;
    cmds++;
  }
  return cmds;
}

/**
 * CMD_SYNCs for one batch of `n` commands (`arm_smmu_cmdq_batch_add` + `_submit`): one at the
 * submit, plus one each time a 64th command would be added under ARM_SMMU_OPT_CMDQ_FORCE_SYNC.
 */
export function armSmmuBatchSyncs(caps: SmmuV3Invalidation, n: number): number {
  const forced = caps.cmdqForceSync && n > 0 ? Math.floor((n - 1) / (CMDQ_BATCH_ENTRIES - 1)) : 0;
  return 1 + forced;
}

/**
 * Invalidates `[iova, iova + size)` of ASID `domainId` with leaf entries of `granule` bytes
 * (kernel: `arm_smmu_tlb_inv_range_domain`, leaf = true, as `arm_smmu_iotlb_sync` calls it).
 * `minPgsize` is the domain's smallest page size (the RIL translation granule, TG). Without RIL
 * and with `maxTlbiOpsFallback`, a range of granule/8 granules or more becomes the ASID-wide
 * invalidation instead (`arm_smmu_inv_size_too_big`).
 */
export function armSmmuTlbInvRange(
  counters: Counters,
  iotlb: Iotlb,
  caps: SmmuV3Invalidation,
  minPgsize: number,
  domainId: number,
  iova: number,
  size: number,
  granule: number,
): void {
  if (size <= 0) return;
  if (!caps.rangeInvalidation && caps.maxTlbiOpsFallback) {
    const maxTlbiOps = granule / 8; // 1 << (ilog2(granule) - 3)
    if (size >= maxTlbiOps * granule) {
      armSmmuTlbInvContext(counters, iotlb, domainId);
      return;
    }
  }
  let cmds: number;
  if (caps.rangeInvalidation) {
    cmds = armSmmuRangeTlbiCount(Math.floor(size / minPgsize));
    counters.iotlbInvRangeCmds += cmds;
  } else {
    cmds = Math.ceil(size / granule);
    counters.iotlbInvPageCmds += cmds;
  }
  counters.iotlbInvSyncs += armSmmuBatchSyncs(caps, cmds);
  // Per-granule and range commands together cover exactly the range.
  iotlb.invalidateRange(domainId, iova, size);
}

/** CMD_TLBI_NH_ASID + CMD_SYNC for the whole domain (kernel: `arm_smmu_tlb_inv_context`). */
export function armSmmuTlbInvContext(counters: Counters, iotlb: Iotlb, domainId: number): void {
  counters.iotlbInvDomainCmds++;
  counters.iotlbInvSyncs++;
  iotlb.invalidateAll(domainId);
}
