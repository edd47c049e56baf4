/**
 * `@iovalink/test-utils`: repository test helpers (private, never published). No kernel
 * counterpart.
 */

export {
  fileHeader,
  KERNEL_MAP_PACKAGES,
  type KernelMapEntry,
  kernelMapEntry,
  renderKernelMap,
  sourceFiles,
} from './kernel-map.js';
export {
  type CodeBlock,
  codeBlocks,
  isRelativeTarget,
  type MarkdownLink,
  markdownLinks,
} from './markdown.js';
export {
  describeReadmeExamples,
  type ReadmeExamplesOptions,
  type ReadmeImport,
  readmeImports,
  readmeTsBlocks,
  runBlock,
} from './readme.js';
