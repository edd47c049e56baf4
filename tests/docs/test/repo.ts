// The repository's markdown files, found on disk (no git needed): everything a clone carries,
// minus installed, built and generated trees.
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

const SKIP = new Set(['node_modules', 'dist', '.git', '.turbo', '.packs', 'coverage', '.readme-examples']);

/** Repository-relative paths of every `.md` file. */
export function markdownFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      if (SKIP.has(name)) continue;
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.md')) out.push(relative(ROOT, p));
    }
  };
  walk(ROOT);
  return out.sort();
}
