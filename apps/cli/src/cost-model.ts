/**
 * The cost model: nanoseconds per counted event kind, each with its source and a category, turning
 * the counters a run collected into modeled kernel time. Modeled time = Σ count × cost over event
 * kinds (invalidation commands, sync waits, PTE writes, table pages, IOVA work, scatterlist chunks,
 * bounce bytes, …), never a lump sum per operation, never tuned per workload, and always shown
 * apart from simulator time (how fast this model runs here). Presets live in `cost-models/*.json`
 * beside this package; users edit them or pass their own file. Kernel counterpart: none; the
 * figures come from kernel benchmarks, vendor documents or are marked `estimate: true` with the
 * reasoning in `source`.
 */
import { readFileSync } from 'node:fs';
import { COUNTER_NAMES, type CounterName, type CounterSnapshot, type IommuHw } from '@iovalink/iommu';

/** Where modeled time goes, for breakdowns and stacked charts. */
export const COST_CATEGORIES = [
  'invalidation',
  'sync-wait',
  'page-table',
  'iova',
  'scatterlist',
  'metadata',
  'bounce',
  'cache-sync',
  'dma-api',
] as const;
/** One of COST_CATEGORIES. */
export type CostCategory = (typeof COST_CATEGORIES)[number];

/** One cost figure per counted event. */
export interface CostEntry {
  ns: number;
  category: CostCategory;
  /** Where the figure comes from; for an estimate, how it was chosen. */
  source: string;
  /** True where no figure is published and the value is our estimate. */
  estimate: boolean;
}

/** One metadata kind's allocation and free cost (per kmalloc / kfree counted). */
export interface MetaCost {
  allocNs: number;
  freeNs: number;
  category: CostCategory;
  source: string;
  estimate: boolean;
}

/** A cost model. */
export interface CostModel {
  name: string;
  description: string;
  events: Partial<Record<CounterName, CostEntry>>;
  metadata: { default: MetaCost; kinds: Record<string, MetaCost> };
}

/** The presets shipped with the CLI. */
export const COST_MODEL_PRESETS = ['arm-smmuv3', 'intel-vtd', 'amd-vi'] as const;
/** A preset name. */
export type CostModelPreset = (typeof COST_MODEL_PRESETS)[number];

/** Error for a cost-model file that is not one. */
export class CostModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CostModelError';
  }
}

const TOP_KEYS = ['name', 'description', 'events', 'metadata'];
const ENTRY_KEYS = ['ns', 'category', 'source', 'estimate'];
const META_KEYS = ['allocNs', 'freeNs', 'category', 'source', 'estimate'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(where: string, v: Record<string, unknown>, allowed: readonly string[]): void {
  for (const k of Object.keys(v)) {
    if (!allowed.includes(k)) {
      throw new CostModelError(`${where}: unknown key "${k}"; expected only ${allowed.join(', ')}`);
    }
  }
}

function checkCommon(where: string, v: Record<string, unknown>): void {
  if (!(COST_CATEGORIES as readonly string[]).includes(v.category as string)) {
    throw new CostModelError(
      `${where}: "category" must be one of ${COST_CATEGORIES.join(', ')}, got ${JSON.stringify(v.category)}`,
    );
  }
  if (typeof v.source !== 'string' || v.source.trim().length === 0) {
    throw new CostModelError(`${where}: "source" must be a non-empty string (a reference, or the reasoning)`);
  }
  if (typeof v.estimate !== 'boolean') {
    throw new CostModelError(`${where}: "estimate" must be true or false`);
  }
}

function isCost(n: unknown): n is number {
  return typeof n === 'number' && Number.isFinite(n) && n >= 0;
}

function validateEntry(where: string, v: unknown): CostEntry {
  if (!isObject(v)) throw new CostModelError(`${where}: expected {"ns", "category", "source", "estimate"}`);
  checkKeys(where, v, ENTRY_KEYS);
  if (!isCost(v.ns))
    throw new CostModelError(`${where}: "ns" must be a number >= 0, got ${JSON.stringify(v.ns)}`);
  checkCommon(where, v);
  return v as unknown as CostEntry;
}

function validateMeta(where: string, v: unknown): MetaCost {
  if (!isObject(v)) {
    throw new CostModelError(`${where}: expected {"allocNs", "freeNs", "category", "source", "estimate"}`);
  }
  checkKeys(where, v, META_KEYS);
  if (!(isCost(v.allocNs) && isCost(v.freeNs))) {
    throw new CostModelError(`${where}: "allocNs" and "freeNs" must be numbers >= 0`);
  }
  checkCommon(where, v);
  return v as unknown as MetaCost;
}

/**
 * Checks a parsed JSON object is a cost model, naming the first thing wrong: an unknown top-level
 * key, an event that is not a counter name, an entry without a number, category, source or
 * estimate flag, or an unknown key inside an entry.
 */
export function validateCostModel(raw: unknown, where: string): CostModel {
  if (!isObject(raw)) throw new CostModelError(`${where}: expected a JSON object`);
  checkKeys(where, raw, TOP_KEYS);
  if (typeof raw.name !== 'string') throw new CostModelError(`${where}: "name" must be a string`);
  if (raw.description !== undefined && typeof raw.description !== 'string') {
    throw new CostModelError(`${where}: "description" must be a string`);
  }
  if (!isObject(raw.events)) throw new CostModelError(`${where}: "events" must be an object`);
  const events: Partial<Record<CounterName, CostEntry>> = {};
  for (const [k, v] of Object.entries(raw.events)) {
    if (!(COUNTER_NAMES as readonly string[]).includes(k)) {
      throw new CostModelError(`${where}: unknown event "${k}"; expected one of ${COUNTER_NAMES.join(', ')}`);
    }
    events[k as CounterName] = validateEntry(`${where}: event "${k}"`, v);
  }
  const md = raw.metadata;
  if (!isObject(md))
    throw new CostModelError(`${where}: "metadata" must be {"default": {...}, "kinds": {...}}`);
  checkKeys(`${where}: metadata`, md, ['default', 'kinds']);
  const def = validateMeta(`${where}: metadata "default"`, md.default);
  const kinds: Record<string, MetaCost> = {};
  if (md.kinds !== undefined) {
    if (!isObject(md.kinds)) throw new CostModelError(`${where}: "metadata.kinds" must be an object`);
    for (const [k, v] of Object.entries(md.kinds)) kinds[k] = validateMeta(`${where}: metadata "${k}"`, v);
  }
  return {
    name: raw.name,
    description: (raw.description as string | undefined) ?? '',
    events,
    metadata: { default: def, kinds },
  };
}

/** Loads a preset by name. */
export function loadPreset(name: CostModelPreset): CostModel {
  const url = new URL(`../cost-models/${name}.json`, import.meta.url);
  return validateCostModel(JSON.parse(readFileSync(url, 'utf8')), `cost model ${name}`);
}

/** Loads a preset name or a JSON file path. */
export function loadCostModel(nameOrPath: string): CostModel {
  if ((COST_MODEL_PRESETS as readonly string[]).includes(nameOrPath))
    return loadPreset(nameOrPath as CostModelPreset);
  let text: string;
  try {
    text = readFileSync(nameOrPath, 'utf8');
  } catch (e) {
    throw new CostModelError(
      `cost model "${nameOrPath}": not a preset (${COST_MODEL_PRESETS.join(', ')}) and not a readable file (${(e as Error).message})`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CostModelError(`cost model ${nameOrPath}: not valid JSON (${(e as Error).message})`);
  }
  return validateCostModel(raw, `cost model ${nameOrPath}`);
}

/** The cost model named by `--cost-model`, or the hardware description's own default. */
export function resolveCostModel(nameOrPath: string | undefined, hw: IommuHw): CostModel {
  return loadCostModel(nameOrPath ?? hw.costModel);
}

/** Modeled kernel time split by category, plus the total. */
export interface ModeledBreakdown {
  totalNs: number;
  byCategory: Record<CostCategory, number>;
}

/**
 * Modeled kernel time of the counters of a run (a diff of two snapshots), by category:
 * Σ count × ns over the model's events, plus metadata allocs × allocNs + frees × freeNs per kind
 * (kinds without an entry use `metadata.default`). `totalNs` is the sum of the categories.
 */
export function modeledBreakdown(model: CostModel, counts: CounterSnapshot): ModeledBreakdown {
  const byCategory = {} as Record<CostCategory, number>;
  for (const c of COST_CATEGORIES) byCategory[c] = 0;
  for (const [name, entry] of Object.entries(model.events) as Array<[CounterName, CostEntry]>) {
    byCategory[entry.category] += (counts.events[name] ?? 0) * entry.ns;
  }
  for (const [kind, stat] of Object.entries(counts.meta)) {
    const c = model.metadata.kinds[kind] ?? model.metadata.default;
    byCategory[c.category] += stat.allocs * c.allocNs + stat.frees * c.freeNs;
  }
  let totalNs = 0;
  for (const c of COST_CATEGORIES) totalNs += byCategory[c];
  return { totalNs, byCategory };
}

/** Modeled kernel time in ns for the counters of a run (the total of `modeledBreakdown`). */
export function modeledNs(model: CostModel, counts: CounterSnapshot): number {
  return modeledBreakdown(model, counts).totalNs;
}
