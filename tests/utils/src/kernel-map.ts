/**
 * Generates docs/kernel-map.md from the source files themselves: every package source file opens
 * with a header naming the kernel unit it follows (kernel files, functions, version) and its
 * deliberate differences, so the map reads those headers rather than restating them. The docs test
 * checks the committed map equals what this produces; `pnpm docs:kernel-map` rewrites it.
 * No kernel counterpart.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/** What one source file's header says. */
export interface KernelMapEntry {
  /** Path inside the package, e.g. `src/iova.ts`. */
  file: string;
  /** The header's first sentence. */
  models: string;
  /** Kernel (or QEMU) source paths named in the header, in order of appearance. */
  kernelFiles: string[];
  /** Kernel functions and symbols the header names in backticks (snake_case), in order. */
  kernelSymbols: string[];
  /** Kernel versions named in the header (`v6.17`, `v6.16+`, `v6.16–v6.18`). */
  versions: string[];
  /** True when the header names deliberate differences from the kernel. */
  differs: boolean;
}

/** The packages the map covers, bottom layer first. */
export const KERNEL_MAP_PACKAGES = ['iommu', 'dma-api', 'blk-mq', 'rdma-odp', 'vfio-migration'] as const;

const KERNEL_PATH =
  /\b((?:drivers|mm|kernel|lib|include|block|arch|fs|net|hw|Documentation|virt)\/[\w./*{},-]*\w(?:\.[ch]|\.rst|\/)?)/g;
const VERSION = /\bv\d+\.\d+(?:\s*[–-]\s*v\d+\.\d+|\+)?/g;

/** The source files of a package's `src/` (recursively), sorted, as paths relative to the package. */
export function sourceFiles(packageDir: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(relative(packageDir, p));
    }
  };
  walk(join(packageDir, 'src'));
  return out.sort();
}

/** The leading `/** ... *\/` comment of a source file, without the comment markers. */
export function fileHeader(source: string): string {
  const m = /^(?:#![^\n]*\n)?\s*\/\*\*([\s\S]*?)\*\//.exec(source);
  if (m === null) return '';
  return (m[1] ?? '')
    .split('\n')
    .map((l) => l.replace(/^\s*\* ?/, ''))
    .join('\n')
    .trim();
}

function firstSentence(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  const m = /^(.+?[.:])(?=\s+[A-Z(`]|$)/.exec(flat);
  return (m?.[1] ?? flat).replace(/:$/, '.');
}

/** Reads one file's header into a map entry. */
export function kernelMapEntry(file: string, source: string): KernelMapEntry {
  const header = fileHeader(source);
  const unique = (xs: string[]): string[] => [...new Set(xs)];
  return {
    file,
    models: firstSentence(header),
    kernelFiles: unique([...header.matchAll(KERNEL_PATH)].map((m) => (m[1] ?? '').replace(/[.,]$/, ''))),
    kernelSymbols: unique(
      [...header.matchAll(/`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?:\(\))?`/g)].map((m) => m[1] ?? ''),
    ),
    versions: unique([...header.matchAll(VERSION)].map((m) => (m[0] ?? '').replace(/\s+/g, ''))),
    differs: /differ|deliberate|on purpose|unlike the kernel|simplif/i.test(header),
  };
}

/** How many of a header's kernel symbols a row shows (the header has them all). */
const SYMBOLS_SHOWN = 6;

const cell = (s: string): string => s.replace(/\|/g, '\\|');

/** The whole docs/kernel-map.md for the repository at `root`. */
export function renderKernelMap(root: string): string {
  const out: string[] = [
    '# Kernel map',
    '',
    '<!-- Generated from the source file headers by `pnpm docs:kernel-map`; the docs test fails when',
    '     it is out of date. Edit the headers, not this file. -->',
    '',
    'Every source file of the library packages, with the kernel unit it follows as its own header',
    "states it: what it models (the header's first sentence), the kernel files, the kernel functions",
    'and symbols it names (the first six; the header has them all), the versions it names, and whether',
    'it lists deliberate differences. The header itself is the reference: it says where and why the',
    'model differs. Paths are Linux source paths (`hw/mlx5/…` is under `drivers/infiniband/`; QEMU',
    'paths are marked as such in the header). A row without a kernel path is either model-only (an',
    "index, a fixture, a device's hardware side, the counters) or a file whose header names its",
    'kernel counterpart by structure or function rather than by path.',
    '',
    'Versions: the model follows Linux v6.17 unless a header names another; `v6.16+` means the rule',
    'holds from v6.16 on, `v6.16–v6.18` a range the header checked. The IOVA allocator, iommu-dma and',
    'swiotlb are also replayed against traces recorded from a running Linux 6.1 (see',
    '[the README](../README.md#validated-against-linux)).',
    '',
  ];
  for (const pkg of KERNEL_MAP_PACKAGES) {
    const dir = join(root, 'packages', pkg);
    out.push(`## @iovalink/${pkg}`, '');
    out.push(
      '| file | models | kernel files | kernel functions named | version | differences |',
      '|---|---|---|---|---|---|',
    );
    for (const file of sourceFiles(dir)) {
      const e = kernelMapEntry(file, readFileSync(join(dir, file), 'utf8'));
      const link = `[\`${file.replace(/^src\//, '')}\`](../packages/${pkg}/${file})`;
      const kf = e.kernelFiles.length === 0 ? '—' : e.kernelFiles.map((k) => `\`${k}\``).join(', ');
      const shown = e.kernelSymbols.slice(0, SYMBOLS_SHOWN).map((f) => `\`${f}\``);
      if (e.kernelSymbols.length > SYMBOLS_SHOWN) shown.push('…');
      const fns = shown.length === 0 ? '—' : shown.join(', ');
      const v = e.versions.length === 0 ? '—' : e.versions.join(', ');
      const d = e.differs ? 'named in header' : 'none named';
      out.push(`| ${link} | ${cell(e.models)} | ${cell(kf)} | ${fns} | ${v} | ${d} |`);
    }
    out.push('');
  }
  return `${out.join('\n').trimEnd()}\n`;
}
