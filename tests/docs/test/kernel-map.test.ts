// docs/kernel-map.md stays true: it lists every source file of every library package, each file
// opens with the header the map is read from, and the committed map is what the headers say today.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileHeader, KERNEL_MAP_PACKAGES, renderKernelMap, sourceFiles } from '@iovalink/test-utils';
import { describe, expect, it } from 'vitest';
import { ROOT } from './repo.js';

const map = readFileSync(join(ROOT, 'docs/kernel-map.md'), 'utf8');
const files = KERNEL_MAP_PACKAGES.flatMap((p) =>
  sourceFiles(join(ROOT, 'packages', p)).map((f) => `packages/${p}/${f}`),
);

describe('docs/kernel-map.md', () => {
  it('covers the five library packages', () => {
    expect(files.length).toBeGreaterThan(50);
    for (const p of KERNEL_MAP_PACKAGES) expect(map).toContain(`## @iovalink/${p}`);
  });

  it.each(files)('lists %s', (file) => {
    expect(map, `run \`pnpm docs:kernel-map\` to add ${file}`).toContain(`](../${file})`);
  });

  it.each(files)('%s opens with a header (what it models, kernel file, differences)', (file) => {
    expect(fileHeader(readFileSync(join(ROOT, file), 'utf8')).length).toBeGreaterThan(20);
  });

  it('is what the source headers say today (regenerate with `pnpm docs:kernel-map`)', () => {
    expect(map === renderKernelMap(ROOT), 'docs/kernel-map.md is stale: run `pnpm docs:kernel-map`').toBe(
      true,
    );
  });
});
