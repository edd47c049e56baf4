// Every README and doc in the repository is readable from a clone alone: no link into the
// design workspace outside it (`../shared`), no relative link to a file that does not exist, and
// no anchor into a markdown file that has no such heading.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { codeBlocks, isRelativeTarget, markdownLinks } from '@iovalink/test-utils';
import { describe, expect, it } from 'vitest';
import { markdownFiles, ROOT } from './repo.js';

/** GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[`*_]/g, '')
    .replace(/[^\p{L}\p{N}\s-]/gu, '')
    .replace(/\s/g, '-');
}

function anchors(markdown: string): Set<string> {
  const inBlock = new Set<number>();
  for (const b of codeBlocks(markdown)) {
    const n = b.code === '' ? 0 : b.code.split('\n').length;
    for (let l = b.line; l <= b.line + n + 1; l++) inBlock.add(l);
  }
  const seen = new Map<string, number>();
  const out = new Set<string>();
  markdown.split('\n').forEach((line, i) => {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (m === null || inBlock.has(i + 1)) return;
    const base = slug(m[1] ?? '');
    const k = seen.get(base) ?? 0;
    seen.set(base, k + 1);
    out.add(k === 0 ? base : `${base}-${k}`);
  });
  return out;
}

const files = markdownFiles();

describe('repository docs', () => {
  it('finds the READMEs and docs/ (the walk itself works)', () => {
    for (const f of [
      'README.md',
      'docs/architecture.md',
      'docs/kernel-map.md',
      'docs/time.md',
      'docs/releasing.md',
    ]) {
      expect(files).toContain(f);
    }
    for (const p of ['iommu', 'dma-api', 'blk-mq', 'rdma-odp', 'vfio-migration']) {
      expect(files).toContain(`packages/${p}/README.md`);
    }
  });

  it.each(files)('%s never points at ../shared', (file) => {
    const text = readFileSync(join(ROOT, file), 'utf8');
    const hits = text
      .split('\n')
      .map((l, i) => [i + 1, l] as const)
      .filter(([, l]) => /(\.\.\/)+shared\b/.test(l));
    expect(hits, `${file} refers to the shared design folder, which a clone does not have`).toEqual([]);
  });

  it.each(files)('%s: every relative link resolves', (file) => {
    const text = readFileSync(join(ROOT, file), 'utf8');
    const broken: string[] = [];
    for (const link of markdownLinks(text)) {
      if (!isRelativeTarget(link.target)) continue;
      const [path = '', anchor] = link.target.split('#');
      const target = path === '' ? join(ROOT, file) : join(ROOT, dirname(file), decodeURI(path));
      if (relative(ROOT, target).startsWith('..')) {
        broken.push(`line ${link.line}: ${link.target} leaves the repository`);
      } else if (!existsSync(target)) {
        broken.push(`line ${link.line}: ${link.target} does not exist`);
      } else if (
        anchor !== undefined &&
        target.endsWith('.md') &&
        !anchors(readFileSync(target, 'utf8')).has(anchor)
      ) {
        broken.push(`line ${link.line}: ${link.target} has no heading #${anchor}`);
      }
    }
    expect(broken).toEqual([]);
  });
});
