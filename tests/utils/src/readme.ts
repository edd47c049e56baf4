/**
 * Runs a package README's TypeScript examples as tests, so the examples stay true. Every ```ts
 * (or ```typescript) block becomes one test: its code is written to
 * `<package>/.readme-examples/readme-<line>.ts` (git-ignored) and imported through vitest, so its
 * imports resolve exactly as they would for code in the package (`@iovalink/<name>` resolves to the
 * package itself, its dependencies through its node_modules, all through the `@iovalink/source`
 * condition). A block passes when it runs to the end without throwing (top-level `await`
 * included); its `console.log` output is captured and shown only when it fails. A block whose
 * info string says `no-run` (```ts no-run) is skipped with the reason in the test name.
 * No kernel counterpart.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { type CodeBlock, codeBlocks } from './markdown.js';

const TS_LANGS = new Set(['ts', 'typescript']);

/** The TypeScript blocks of the README at `readmePath`. */
export function readmeTsBlocks(readmePath: string): CodeBlock[] {
  return codeBlocks(readFileSync(readmePath, 'utf8')).filter((b) => TS_LANGS.has(b.lang));
}

/** Options of `describeReadmeExamples`. */
export interface ReadmeExamplesOptions {
  /** README file name inside the package directory (default `README.md`). */
  readme?: string;
  /**
   * Accept a README without TypeScript blocks (its examples are shell commands, checked by other
   * tests): then no test is declared for it. Default false: such a README fails.
   */
  allowNone?: boolean;
}

/**
 * Declares a `describe` with one test per TypeScript block of the README in `packageDir`. A README
 * without any TypeScript block fails (a README test that runs nothing proves nothing).
 */
export function describeReadmeExamples(packageDir: string, options: ReadmeExamplesOptions = {}): void {
  const readme = options.readme ?? 'README.md';
  const readmePath = join(packageDir, readme);
  const blocks = readmeTsBlocks(readmePath);
  if (blocks.length === 0 && options.allowNone === true) return;
  describe(`${readme} examples`, () => {
    if (blocks.length === 0) {
      it('has at least one ```ts example', () => {
        expect.fail(`${readmePath} has no \`\`\`ts code block to run`);
      });
      return;
    }
    for (const block of blocks) {
      const name = `${readme}:${block.line} runs`;
      if (/\bno-run\b/.test(block.meta)) {
        it.skip(`${name} (marked no-run)`, () => {});
        continue;
      }
      it(name, async () => {
        await runBlock(packageDir, block);
      });
    }
  });
}

/** Runs one block as a module inside `packageDir`; throws with the block's output if it throws. */
export async function runBlock(packageDir: string, block: CodeBlock): Promise<string[]> {
  const dir = join(packageDir, '.readme-examples');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `readme-${block.line}.ts`);
  // `export {}` makes a block without imports a module too (top-level await needs one)
  writeFileSync(file, `${block.code}\nexport {};\n`);
  const output: string[] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => {
    output.push(args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' '));
  };
  try {
    await import(/* @vite-ignore */ pathToFileURL(file).href);
  } catch (e) {
    const err = e as Error;
    err.message = `README block at line ${block.line} threw: ${err.message}${
      output.length > 0 ? `\n--- its console.log output ---\n${output.join('\n')}` : ''
    }`;
    throw err;
  } finally {
    console.log = log;
    rmSync(file, { force: true });
  }
  return output;
}

/** An `import { ... } from '<specifier>'` written in a README, in a code block or in prose. */
export interface ReadmeImport {
  specifier: string;
  /** Value names (not `type` imports), as exported (before any `as`). */
  names: string[];
  /** 1-based line where the statement starts. */
  line: number;
}

/** The named imports a README shows, from code blocks and inline code alike. */
export function readmeImports(markdown: string): ReadmeImport[] {
  const out: ReadmeImport[] = [];
  for (const m of markdown.matchAll(/import\s*\{([^}]*)\}\s*from\s*'([^']+)'/g)) {
    const names = (m[1] ?? '')
      .split(',')
      .map((n) => n.trim())
      .filter((n) => n !== '' && !n.startsWith('type '))
      .map((n) => n.split(/\s+as\s+/)[0] ?? n);
    const line = markdown.slice(0, m.index).split('\n').length;
    out.push({ specifier: m[2] ?? '', names, line });
  }
  return out;
}
