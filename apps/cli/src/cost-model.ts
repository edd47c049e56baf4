/**
 * The cost model: nanoseconds per counted event, each with its source, turning the counters a run
 * collected into modeled kernel time. Modeled time is a prediction from counts × costs, never tuned
 * per workload, and is always shown apart from simulator time (how fast this model runs here).
 * Presets live in `cost-models/*.json` beside this package; users edit them or pass their own file.
 */
import { readFileSync } from 'node:fs';
import { COUNTER_NAMES, type CounterName, type CounterSnapshot } from '@iovalink/iommu';

/** One cost figure. */
export interface CostEntry {
  ns: number;
  source: string;
  /** True where no figure is published and the value is our estimate. */
  estimate: boolean;
}

/** One metadata kind's allocation and free cost. */
export interface MetaCost {
  allocNs: number;
  freeNs: number;
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
export const COST_MODEL_PRESETS = ['arm-smmuv3', 'intel-vtd'] as const;
/** A preset name. */
export type CostModelPreset = (typeof COST_MODEL_PRESETS)[number];

/** Error for a cost-model file that is not one. */
export class CostModelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CostModelError';
  }
}

function isEntry(v: unknown): v is CostEntry {
  const e = v as CostEntry;
  return (
    typeof e === 'object' && e !== null && Number.isFinite(e.ns) && e.ns >= 0 && typeof e.source === 'string'
  );
}

/** Checks a parsed JSON object is a cost model, naming the first thing wrong. */
export function validateCostModel(raw: unknown, where: string): CostModel {
  const m = raw as CostModel;
  if (typeof m !== 'object' || m === null) throw new CostModelError(`${where}: expected a JSON object`);
  if (typeof m.name !== 'string') throw new CostModelError(`${where}: "name" must be a string`);
  if (typeof m.events !== 'object' || m.events === null)
    throw new CostModelError(`${where}: "events" must be an object`);
  for (const [k, v] of Object.entries(m.events)) {
    if (!(COUNTER_NAMES as readonly string[]).includes(k)) {
      throw new CostModelError(`${where}: unknown event "${k}"; expected one of ${COUNTER_NAMES.join(', ')}`);
    }
    if (!isEntry(v)) {
      throw new CostModelError(`${where}: event "${k}" needs {"ns": a number >= 0, "source": a string}`);
    }
  }
  const md = m.metadata;
  if (typeof md !== 'object' || md === null || typeof md.default !== 'object') {
    throw new CostModelError(`${where}: "metadata.default" must be {"allocNs", "freeNs", "source"}`);
  }
  for (const [k, v] of Object.entries({ default: md.default, ...(md.kinds ?? {}) })) {
    if (!(Number.isFinite(v.allocNs) && Number.isFinite(v.freeNs))) {
      throw new CostModelError(`${where}: metadata "${k}" needs numeric "allocNs" and "freeNs"`);
    }
  }
  return { ...m, description: m.description ?? '', metadata: { default: md.default, kinds: md.kinds ?? {} } };
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

/** Modeled kernel time in ns for the counters of a run (a diff of two snapshots). */
export function modeledNs(model: CostModel, counts: CounterSnapshot): number {
  let ns = 0;
  for (const [name, entry] of Object.entries(model.events) as Array<[CounterName, CostEntry]>) {
    ns += (counts.events[name] ?? 0) * entry.ns;
  }
  for (const [kind, stat] of Object.entries(counts.meta)) {
    const c = model.metadata.kinds[kind] ?? model.metadata.default;
    ns += stat.allocs * c.allocNs + stat.frees * c.freeNs;
  }
  return ns;
}
