// The README example runner: a block runs as a module inside the package directory, its failure
// names the README line, its console output is kept out of the test log.
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { readmeImports, readmeTsBlocks, runBlock } from '../src/readme.js';

const here = fileURLToPath(new URL('..', import.meta.url));

describe('runBlock', () => {
  it('runs a block with top-level await and returns what it logged', async () => {
    const out = await runBlock(here, {
      lang: 'ts',
      meta: '',
      line: 7,
      code: "const x: number = await Promise.resolve(6 * 7);\nconsole.log('x', x);",
    });
    expect(out).toEqual(['x 42']);
    expect(readdirSync(join(here, '.readme-examples'))).not.toContain('readme-7.ts');
  });

  it('a throwing block fails with the README line and its output', async () => {
    await expect(
      runBlock(here, {
        lang: 'ts',
        meta: '',
        line: 12,
        code: "console.log('before');\nthrow new Error('boom');",
      }),
    ).rejects.toThrow(/README block at line 12 threw: boom[\s\S]*before/);
  });

  it('a block importing a name that does not exist fails', async () => {
    await expect(
      runBlock(here, { lang: 'ts', meta: '', line: 3, code: "import { nope } from 'node:path';\nnope();" }),
    ).rejects.toThrow(/line 3/);
  });
});

describe('readmeTsBlocks / readmeImports', () => {
  it('keeps only ts and typescript blocks', () => {
    const dir = mkdtempSync(join(tmpdir(), 'readme-'));
    writeFileSync(
      join(dir, 'README.md'),
      '```sh\nls\n```\n```ts\na\n```\n```typescript\nb\n```\n```js\nc\n```\n',
    );
    expect(readmeTsBlocks(join(dir, 'README.md')).map((b) => b.code)).toEqual(['a', 'b']);
  });

  it('lists value imports from blocks and prose, dropping type imports and aliases', () => {
    const md =
      "x\n`import { a, type B, c as d } from 'iovalink'` and\n```ts\nimport {\n  e,\n} from '@iovalink/iommu';\n```";
    expect(readmeImports(md)).toEqual([
      { specifier: 'iovalink', names: ['a', 'c'], line: 2 },
      { specifier: '@iovalink/iommu', names: ['e'], line: 4 },
    ]);
  });
});
