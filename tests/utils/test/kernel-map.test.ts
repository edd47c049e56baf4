// Reading source headers into the kernel map.
import { describe, expect, it } from 'vitest';
import { fileHeader, kernelMapEntry } from '../src/kernel-map.js';

describe('kernelMapEntry', () => {
  const src = [
    '/**',
    ' * The IOVA allocator: hands out ranges. Models Linux `drivers/iommu/iova.c` and',
    ' * `include/linux/iova.h` (v6.17), with v6.16+ rules and mm/hmm.c, v6.16–v6.18.',
    ' * Fast path `alloc_iova_fast()` and `free_iova_fast`, not `IovaDomain` or `iova.h`.',
    ' * Deliberate differences: none worth naming.',
    ' */',
    "import x from 'y';",
  ].join('\n');

  it('takes the first sentence, kernel paths and versions from the header', () => {
    expect(kernelMapEntry('src/iova.ts', src)).toEqual({
      file: 'src/iova.ts',
      models: 'The IOVA allocator: hands out ranges.',
      kernelFiles: ['drivers/iommu/iova.c', 'include/linux/iova.h', 'mm/hmm.c'],
      kernelSymbols: ['alloc_iova_fast', 'free_iova_fast'],
      versions: ['v6.17', 'v6.16+', 'v6.16–v6.18'],
      differs: true,
    });
  });

  it('a file without a leading doc comment has no header', () => {
    expect(fileHeader("// plain\nimport x from 'y';")).toBe('');
    expect(fileHeader('#!/usr/bin/env node\n/** Tool. */\n')).toBe('Tool.');
  });
});
