// Runs a package's benchmarks: every bench/*.bench.ts file under the given folder is imported and
// each exported function whose name starts with "run" and ends with "Bench" is called in turn, in
// one process, so ratios printed by a bench are same-run figures. Results go to
// bench-results/<package>.json (simulator time: how fast this model runs on this host).
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = resolve(process.argv[2] ?? 'bench');
const only = process.argv[3];
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts') && (only === undefined || f.includes(only)))
  .sort();
const results: Record<string, unknown> = {};
for (const f of files) {
  const mod = (await import(pathToFileURL(join(dir, f)).href)) as Record<string, unknown>;
  for (const [name, fn] of Object.entries(mod)) {
    if (typeof fn === 'function' && name.startsWith('run') && name.endsWith('Bench')) {
      console.log(`\n## ${f} :: ${name}`);
      results[`${basename(f, '.bench.ts')}.${name}`] = await (fn as () => Promise<unknown>)();
    }
  }
}
const pkg = basename(resolve(dir, '..'));
mkdirSync(resolve(dir, '..', 'bench-results'), { recursive: true });
const out = resolve(dir, '..', 'bench-results', `${pkg}.json`);
writeFileSync(
  out,
  `${JSON.stringify({ date: new Date().toISOString(), node: process.version, results }, null, 2)}\n`,
);
console.log(`\nresults written to ${out}`);
