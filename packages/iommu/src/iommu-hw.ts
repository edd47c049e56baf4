/**
 * IOMMU hardware as data: what one IOMMU implementation supports (page sizes, IOTLB size, whether
 * it caches non-present entries) and how its driver invalidates (SMMUv3 per-page vs range TLBI,
 * VT-d page-selective with an address-mask limit, AMD-Vi INVALIDATE_IOMMU_PAGES with the size
 * bit). `IommuDevice` follows one of these; the invalidation files (`arm-smmu-v3-tlbi.ts`,
 * `intel-cache-tag.ts`, `amd-iommu-inv.ts`) turn a flush request into that driver's commands.
 * Kernel counterparts: the feature bits the drivers probe (`arm_smmu_device_hw_probe`: IDR3.RIL →
 * ARM_SMMU_FEAT_RANGE_INV; VT-d `cap_pgsel_inv`, `cap_max_amask_val`, `cap_caching_mode`; AMD
 * `amd_iommu_np_cache`), v6.17.
 *
 * Why typed objects and a validator rather than JSON files: this package runs anywhere (no file
 * system), the presets are checked by the compiler and by the same validator users' JSON goes
 * through (`validateIommuHw`), and the CLI reads user files and hands the parsed object here.
 * Differs on purpose: one IOMMU per domain, no ATS/device-TLB, no nested stages.
 */
import { IommuError } from './errors.js';

/** 4 KiB. */
const SZ_4K = 0x1000;
/** 4K | 2M | 1G, the page sizes our page-table format offers. */
const PGSIZES_4K_2M_1G = 0x1000 | 0x200000 | 0x40000000;

/** SMMUv3 command-queue batch size (kernel: `CMDQ_BATCH_ENTRIES` = BITS_PER_LONG = 64). */
export const CMDQ_BATCH_ENTRIES = 64;
/** Largest RIL NUM field + 1 (kernel: `CMDQ_TLBI_RANGE_NUM_MAX` = 31, so 1..31 chunks). */
export const CMDQ_TLBI_RANGE_NUM_MAX = 31;
/** VT-d descriptors batched before a submit (kernel: `QI_MAX_BATCHED_DESC_COUNT` = 16). */
export const QI_MAX_BATCHED_DESC_COUNT = 16;
/** VT-d mask meaning "everything" (kernel: `MAX_AGAW_PFN_WIDTH` = MAX_AGAW_WIDTH 64 − VTD_PAGE_SHIFT 12). */
export const MAX_AGAW_PFN_WIDTH = 52;

/** Arm SMMUv3 invalidation capabilities (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c). */
export interface SmmuV3Invalidation {
  kind: 'arm-smmu-v3';
  /** IDR3.RIL → ARM_SMMU_FEAT_RANGE_INV: range TLBI (TG/SCALE/NUM/TTL) instead of one per granule. */
  rangeInvalidation: boolean;
  /** ARM_SMMU_OPT_CMDQ_FORCE_SYNC (MMU-700 erratum 2812531): a CMD_SYNC every 63 batched commands. */
  cmdqForceSync: boolean;
  /**
   * Above CMDQ_MAX_TLBI_OPS (granule/8 granules) without RIL, one CMD_TLBI_NH_ASID replaces the
   * per-page TLBIs. Mainline v6.6–v6.18 does this only for SVA
   * (`arm_smmu_mm_arch_invalidate_secondary_tlbs`); the `arm_smmu_domain_inv_range` series (2025,
   * `arm_smmu_inv_size_too_big`) extends it to DMA domains. False = the v6.17 DMA-domain path.
   */
  maxTlbiOpsFallback: boolean;
}

/** Intel VT-d invalidation capabilities (drivers/iommu/intel/cache.c), second-stage domains. */
export interface VtdInvalidation {
  kind: 'intel-vtd';
  /** CAP.PSI (`cap_pgsel_inv`): page-selective IOTLB invalidation supported. */
  pageSelective: boolean;
  /** CAP.MAMV (`cap_max_amask_val`): largest PSI address mask; larger falls back to DSI. */
  maxAddressMask: number;
}

/** AMD-Vi invalidation (drivers/iommu/amd/iommu.c): INVALIDATE_IOMMU_PAGES with the S bit. */
export interface AmdViInvalidation {
  kind: 'amd-vi';
}

/** Invalidation capabilities by IOMMU kind. */
export type IommuInvalidation = SmmuV3Invalidation | VtdInvalidation | AmdViInvalidation;

/** One IOMMU implementation as the model follows it. */
export interface IommuHw {
  /** Preset or file name, e.g. `"smmuv3-norange"`. */
  name: string;
  /** What hardware this stands for. */
  description: string;
  /** Kernel version whose driver rules are encoded, e.g. `"v6.17"`. */
  kernel: string;
  /** Feature bits assumed, as the driver names them (documentation; the fields below act). */
  featureBits: readonly string[];
  /**
   * The cost-model preset front ends use for this hardware unless told otherwise (the CLI's
   * `cost-models/<name>.json`); this package does not read it.
   */
  costModel: string;
  /** Page sizes (4K required; only 4K, 2M, 1G exist in our format). */
  pgsizeBitmap: number;
  /** IOTLB entries modelled. */
  iotlbEntries: number;
  /** Caches non-present entries (VT-d caching mode, AMD NpCache): map needs `iotlb_sync_map`. */
  cachesNonPresent: boolean;
  /** How the driver invalidates. */
  invalidation: IommuInvalidation;
}

/** The hardware presets shipped with the model. */
export const IOMMU_HW_PRESETS = {
  'smmuv3-norange': {
    name: 'smmuv3-norange',
    costModel: 'arm-smmuv3',
    description:
      'Arm SMMUv3.1-class server IOMMU (e.g. MMU-600) without range invalidation: one CMD_TLBI_NH_VA per granule, CMD_SYNC at the end of each batch submit',
    kernel: 'v6.17',
    featureBits: [
      'ARM_SMMU_FEAT_TRANS_S1',
      'ARM_SMMU_FEAT_COHERENCY',
      'IDR5.GRAN4K',
      '!ARM_SMMU_FEAT_RANGE_INV',
    ],
    pgsizeBitmap: PGSIZES_4K_2M_1G,
    iotlbEntries: 512,
    cachesNonPresent: false,
    invalidation: {
      kind: 'arm-smmu-v3',
      rangeInvalidation: false,
      cmdqForceSync: false,
      maxTlbiOpsFallback: false,
    },
  },
  'smmuv3-range': {
    name: 'smmuv3-range',
    costModel: 'arm-smmuv3',
    description:
      'Arm SMMUv3.2+ IOMMU with range invalidation (IDR3.RIL): TLBI with TG/SCALE/NUM/TTL, 5 bits of page count per command',
    kernel: 'v6.17',
    featureBits: [
      'ARM_SMMU_FEAT_TRANS_S1',
      'ARM_SMMU_FEAT_COHERENCY',
      'IDR5.GRAN4K',
      'ARM_SMMU_FEAT_RANGE_INV',
    ],
    pgsizeBitmap: PGSIZES_4K_2M_1G,
    iotlbEntries: 512,
    cachesNonPresent: false,
    invalidation: {
      kind: 'arm-smmu-v3',
      rangeInvalidation: true,
      cmdqForceSync: false,
      maxTlbiOpsFallback: false,
    },
  },
  'intel-vtd': {
    name: 'intel-vtd',
    costModel: 'intel-vtd',
    description:
      'Intel VT-d with queued invalidation, second-stage DMA domains: one page-selective IOTLB descriptor with an address mask, domain-selective above CAP.MAMV, then a wait descriptor',
    kernel: 'v6.17',
    featureBits: [
      'ecap_qis',
      'cap_pgsel_inv',
      'cap_max_amask_val=18 (Xeon CAP 0x8d2078c106f0466)',
      '!cap_caching_mode',
    ],
    pgsizeBitmap: PGSIZES_4K_2M_1G,
    iotlbEntries: 512,
    cachesNonPresent: false,
    invalidation: { kind: 'intel-vtd', pageSelective: true, maxAddressMask: 18 },
  },
  'amd-vi': {
    name: 'amd-vi',
    costModel: 'amd-vi',
    description:
      'AMD-Vi (bare metal, no NpCache): one INVALIDATE_IOMMU_PAGES per flush, the S bit covering the naturally aligned block that holds the range, then COMPLETION_WAIT',
    kernel: 'v6.17',
    featureBits: ['CMD_INV_IOMMU_PAGES S bit', '!amd_iommu_np_cache'],
    pgsizeBitmap: PGSIZES_4K_2M_1G,
    iotlbEntries: 512,
    cachesNonPresent: false,
    invalidation: { kind: 'amd-vi' },
  },
} as const satisfies Record<string, IommuHw>;

/** A preset name. */
export type IommuHwPreset = keyof typeof IOMMU_HW_PRESETS;
/** The preset names. */
export const IOMMU_HW_PRESET_NAMES = Object.keys(IOMMU_HW_PRESETS) as IommuHwPreset[];
/** The preset `IommuDevice` follows when none is given. */
export const DEFAULT_IOMMU_HW: IommuHwPreset = 'smmuv3-norange';

/** The preset named `name`, or throws naming the presets. */
export function iommuHwPreset(name: string): IommuHw {
  if (!Object.hasOwn(IOMMU_HW_PRESETS, name)) {
    throw new IommuError(
      `iommu hw: unknown preset "${name}"; expected one of ${IOMMU_HW_PRESET_NAMES.join(', ')}`,
      {
        rule: 'iommu hw: preset',
      },
    );
  }
  return IOMMU_HW_PRESETS[name as IommuHwPreset];
}

const HW_KEYS = [
  'name',
  'description',
  'kernel',
  'featureBits',
  'costModel',
  'pgsizeBitmap',
  'iotlbEntries',
  'cachesNonPresent',
  'invalidation',
] as const;
const INV_KEYS: Record<IommuInvalidation['kind'], readonly string[]> = {
  'arm-smmu-v3': ['kind', 'rangeInvalidation', 'cmdqForceSync', 'maxTlbiOpsFallback'],
  'intel-vtd': ['kind', 'pageSelective', 'maxAddressMask'],
  'amd-vi': ['kind'],
};

function fail(where: string, msg: string): never {
  throw new IommuError(`${where}: ${msg}`, { rule: 'iommu hw: description' });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(where: string, v: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) fail(where, `unknown key "${k}"; expected only ${allowed.join(', ')}`);
  }
}

function bool(where: string, v: Record<string, unknown>, key: string): boolean {
  if (typeof v[key] !== 'boolean')
    fail(where, `"${key}" must be true or false, got ${JSON.stringify(v[key])}`);
  return v[key] as boolean;
}

function validateInvalidation(where: string, raw: unknown, cachesNonPresent: boolean): IommuInvalidation {
  if (!isObject(raw)) fail(where, '"invalidation" must be an object with a "kind"');
  const kind = raw.kind;
  if (kind !== 'arm-smmu-v3' && kind !== 'intel-vtd' && kind !== 'amd-vi') {
    fail(where, `"invalidation.kind" must be arm-smmu-v3, intel-vtd or amd-vi, got ${JSON.stringify(kind)}`);
  }
  const w = `${where}: invalidation`;
  onlyKeys(w, raw, INV_KEYS[kind]);
  if (kind === 'arm-smmu-v3') {
    if (cachesNonPresent) {
      fail(where, '"cachesNonPresent" cannot be true for arm-smmu-v3 (SMMUv3 has no iotlb_sync_map)');
    }
    return {
      kind,
      rangeInvalidation: bool(w, raw, 'rangeInvalidation'),
      cmdqForceSync: bool(w, raw, 'cmdqForceSync'),
      maxTlbiOpsFallback: bool(w, raw, 'maxTlbiOpsFallback'),
    };
  }
  if (kind === 'intel-vtd') {
    const mask = raw.maxAddressMask;
    if (!(typeof mask === 'number' && Number.isInteger(mask) && mask >= 0 && mask <= 63)) {
      fail(w, `"maxAddressMask" must be an integer 0..63 (CAP.MAMV), got ${JSON.stringify(mask)}`);
    }
    return { kind, pageSelective: bool(w, raw, 'pageSelective'), maxAddressMask: mask };
  }
  return { kind };
}

/**
 * Checks a parsed object (e.g. a user's JSON file) is an IOMMU description, naming the first thing
 * wrong: unknown keys, a page-size bitmap without 4K or with sizes our format lacks, a bad IOTLB
 * size, or invalidation capabilities that do not fit the kind. Kernel counterpart: the feature
 * probe of each driver, which decides the same things from ID registers.
 */
export function validateIommuHw(raw: unknown, where: string): IommuHw {
  if (!isObject(raw)) fail(where, 'expected a JSON object');
  onlyKeys(where, raw, HW_KEYS);
  for (const k of ['name', 'description', 'kernel', 'costModel'] as const) {
    if (typeof raw[k] !== 'string' || (raw[k] as string).length === 0)
      fail(where, `"${k}" must be a non-empty string`);
  }
  const bits = raw.featureBits;
  if (!(Array.isArray(bits) && bits.every((b) => typeof b === 'string'))) {
    fail(where, '"featureBits" must be an array of strings (the feature bits assumed)');
  }
  const pg = raw.pgsizeBitmap;
  if (
    !(typeof pg === 'number' && Number.isInteger(pg) && (pg & SZ_4K) !== 0 && (pg & ~PGSIZES_4K_2M_1G) === 0)
  ) {
    fail(
      where,
      `"pgsizeBitmap" must include 4K (0x1000) and only 4K/2M/1G (0x40201000), got ${JSON.stringify(pg)}`,
    );
  }
  const entries = raw.iotlbEntries;
  if (!(typeof entries === 'number' && Number.isInteger(entries) && entries >= 1 && entries <= 1 << 20)) {
    fail(where, `"iotlbEntries" must be an integer 1..1048576, got ${JSON.stringify(entries)}`);
  }
  const cnp = bool(where, raw, 'cachesNonPresent');
  return {
    name: raw.name as string,
    description: raw.description as string,
    kernel: raw.kernel as string,
    featureBits: bits as string[],
    costModel: raw.costModel as string,
    pgsizeBitmap: pg,
    iotlbEntries: entries,
    cachesNonPresent: cnp,
    invalidation: validateInvalidation(where, raw.invalidation, cnp),
  };
}
