// Keeps this package's README true. Its examples are command lines, so besides running any
// ```ts block (the shared runner in @iovalink/test-utils), the commands its headings document
// must exist, every option of the `demo` table must be a `demo` option, and every name its
// library-use imports show must be exported by the entry it names.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describeReadmeExamples, readmeImports } from '@iovalink/test-utils';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli.js';

const dir = fileURLToPath(new URL('..', import.meta.url));
const readme = readFileSync(`${dir}README.md`, 'utf8');

describeReadmeExamples(dir, { allowNone: true });

function longOptions(cmd: Command): string[] {
  return cmd.options.map((o) => o.long ?? '').filter((l) => l !== '');
}

describe('README.md (command line)', () => {
  const program = buildProgram(() => {});
  const commands = new Map(program.commands.map((c) => [c.name(), c]));

  it('every `## `iovalink <command>`` heading is a command', () => {
    const headed = [...readme.matchAll(/^## `iovalink ([a-z-]+)/gm)].map((m) => m[1] ?? '');
    expect(headed.length).toBeGreaterThanOrEqual(5);
    expect(headed.filter((c) => !commands.has(c))).toEqual([]);
  });

  it('every option in the demo table is a demo option', () => {
    const section = readme.slice(readme.indexOf('## `iovalink demo`'), readme.indexOf('## `iovalink bench`'));
    const documented = [...section.matchAll(/^\| `(--[a-z-]+)/gm)].map((m) => m[1] ?? '');
    expect(documented.length).toBeGreaterThanOrEqual(5);
    const demo = commands.get('demo');
    expect(demo).toBeDefined();
    const accepted = new Set(longOptions(demo as Command));
    expect(documented.filter((o) => !accepted.has(o))).toEqual([]);
  });

  it('every name the README imports from iovalink is exported there', async () => {
    const imports = readmeImports(readme).filter(
      (i) => i.specifier === 'iovalink' || i.specifier.startsWith('iovalink/'),
    );
    expect(imports.length).toBeGreaterThanOrEqual(1);
    for (const imp of imports) {
      const mod = (await import(/* @vite-ignore */ imp.specifier)) as Record<string, unknown>;
      expect(
        imp.names.filter((n) => mod[n] === undefined),
        `README line ${imp.line}: names missing from '${imp.specifier}'`,
      ).toEqual([]);
    }
  });
});
